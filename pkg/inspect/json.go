package inspect

import (
	"encoding/json"
	"io"
	"strconv"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/ipvs"
)

// JSONVersion is the "version" of the JSON form. Fields may be added
// without changing it; it changes when a field is removed or changes
// meaning.
const JSONVersion = 1

// jsonReport is the JSON form, documented in the package comment.
type jsonReport struct {
	Version        int      `json:"version"`
	KernelOnly     bool     `json:"kernelOnly"`
	VirtualServers []jsonVS `json:"virtualServers"`
}

type jsonVS struct {
	Protocol           string   `json:"protocol"`
	Address            string   `json:"address"`
	Port               uint16   `json:"port"`
	Scheduler          string   `json:"scheduler"`
	Flags              []string `json:"flags"`
	PersistenceTimeout uint32   `json:"persistenceTimeout"`
	// A pointer, so that an empty list ("not a Service") is written and
	// only a kernel-only report leaves it out.
	Services    *[]jsonOwner `json:"services,omitempty"`
	RealServers []jsonRS     `json:"realServers"`
}

type jsonOwner struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	PortName  string `json:"portName"`
	Kind      string `json:"kind"`
}

type jsonRS struct {
	Address             string        `json:"address"`
	Port                uint16        `json:"port"`
	Forward             string        `json:"forward"`
	Weight              int           `json:"weight"`
	Draining            bool          `json:"draining"`
	ActiveConnections   int           `json:"activeConnections"`
	InactiveConnections int           `json:"inactiveConnections"`
	Endpoint            *jsonEndpoint `json:"endpoint,omitempty"`
}

type jsonEndpoint struct {
	Slice       string         `json:"slice"`
	TargetRef   *jsonTargetRef `json:"targetRef,omitempty"`
	NodeName    string         `json:"nodeName,omitempty"`
	Ready       bool           `json:"ready"`
	Serving     bool           `json:"serving"`
	Terminating bool           `json:"terminating"`
}

type jsonTargetRef struct {
	Kind      string `json:"kind"`
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name"`
}

// WriteJSON writes r in the JSON form documented in the package comment,
// indented, with a final newline.
func WriteJSON(w io.Writer, r *Report) error {
	out := jsonReport{Version: JSONVersion, KernelOnly: r.KernelOnly, VirtualServers: make([]jsonVS, 0, len(r.VirtualServers))}
	for i := range r.VirtualServers {
		out.VirtualServers = append(out.VirtualServers, toJSONVS(r.KernelOnly, &r.VirtualServers[i]))
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}

func toJSONVS(kernelOnly bool, vs *VirtualServerReport) jsonVS {
	j := jsonVS{
		Protocol:    vs.Key.Proto.String(),
		Address:     vs.Key.Addr.String(),
		Port:        vs.Key.Port,
		Scheduler:   vs.Scheduler,
		Flags:       flagWords(vs.Scheduler, vs.Flags),
		RealServers: make([]jsonRS, 0, len(vs.RealServers)),
	}
	if vs.Flags&ipvs.FlagPersistent != 0 {
		j.PersistenceTimeout = vs.Timeout
	}
	if !kernelOnly {
		owners := make([]jsonOwner, 0, len(vs.Owners))
		for _, o := range vs.Owners {
			owners = append(owners, jsonOwner{Namespace: o.Service.Namespace, Name: o.Service.Name, PortName: o.PortName, Kind: o.Kind.String()})
		}
		j.Services = &owners
	}
	for _, rs := range vs.RealServers {
		jr := jsonRS{
			Address:             rs.Key.Addr.String(),
			Port:                rs.Key.Port,
			Forward:             forwardName(rs.Forward),
			Weight:              rs.Weight,
			Draining:            rs.Draining(),
			ActiveConnections:   rs.ActiveConns,
			InactiveConnections: rs.InactiveConns,
		}
		if ep := rs.Endpoint; ep != nil {
			je := &jsonEndpoint{Slice: ep.Slice, NodeName: ep.NodeName, Ready: ep.Ready, Serving: ep.Serving, Terminating: ep.Terminating}
			if t := ep.TargetRef; t != nil {
				je.TargetRef = &jsonTargetRef{Kind: t.Kind, Namespace: t.Namespace, Name: t.Name}
			}
			jr.Endpoint = je
		}
		j.RealServers = append(j.RealServers, jr)
	}
	return j
}

// flagWords lists the flags as ipvsadm names them, in its order.
func flagWords(sched string, f ipvs.Flags) []string {
	words := schedFlagNames(sched, f)
	if f&ipvs.FlagPersistent != 0 {
		words = append(words, "persistent")
	}
	if f&ipvs.FlagOnePacket != 0 {
		words = append(words, "ops")
	}
	if rest := otherFlags(f); rest != 0 {
		words = append(words, "0x"+strconv.FormatUint(uint64(rest), 16))
	}
	if words == nil {
		words = []string{}
	}
	return words
}
