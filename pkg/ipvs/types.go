// Package ipvs plans, diffs and programs the kernel's IP Virtual Server table
// and the kube-ipvs0 dummy link that holds the service addresses.
//
// The package is split in pure parts (Plan, Diff, Dump), which are tested
// without a kernel, and thin kernel adapters (IPVS, Links) with fakes.
package ipvs

import (
	"cmp"
	"net/netip"
	"strconv"

	v1 "k8s.io/api/core/v1"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/servicecache"
)

// DummyLinkName is the dummy link that holds every bound service address, as
// in upstream kube-proxy: the kernel only hands packets to IPVS when their
// destination is a local address.
const DummyLinkName = "kube-ipvs0"

// DefaultScheduler is round robin, upstream's default.
const DefaultScheduler = "rr"

// Proto is the transport protocol of a virtual server.
type Proto uint8

// Protocols IPVS balances. The zero value is invalid.
const (
	ProtoTCP Proto = iota + 1
	ProtoUDP
	ProtoSCTP
)

func (p Proto) String() string {
	switch p {
	case ProtoTCP:
		return "TCP"
	case ProtoUDP:
		return "UDP"
	case ProtoSCTP:
		return "SCTP"
	}
	return "proto(" + strconv.Itoa(int(p)) + ")"
}

// ProtoFromV1 converts an API protocol; ok is false for anything else.
func ProtoFromV1(p v1.Protocol) (proto Proto, ok bool) {
	switch p {
	case v1.ProtocolTCP:
		return ProtoTCP, true
	case v1.ProtocolUDP:
		return ProtoUDP, true
	case v1.ProtocolSCTP:
		return ProtoSCTP, true
	}
	return 0, false
}

// Flags are the kernel's IP_VS_SVC_F_* service flags.
type Flags uint32

// Service flags, with the kernel's values.
const (
	// FlagPersistent is session affinity (ipvsadm -p).
	FlagPersistent Flags = 0x1
	// FlagHashed is set by the kernel on every service; it is stripped when
	// reading so that read and planned servers compare equal.
	FlagHashed Flags = 0x2
	// FlagOnePacket is one-packet scheduling (ipvsadm -o).
	FlagOnePacket Flags = 0x4
	// FlagSched1..3 are scheduler specific (ipvsadm -b): for sh and mh,
	// Sched1 is "fallback" and Sched2 is "port" (hash the source port too).
	FlagSched1 Flags = 0x8
	FlagSched2 Flags = 0x10
	FlagSched3 Flags = 0x20
)

// Forward is a destination's forwarding method (IP_VS_CONN_F_FWD_MASK).
type Forward uint32

// Forwarding methods, with the kernel's values. The proxy only uses Masq.
const (
	ForwardMasq   Forward = 0 // NAT, ipvsadm -m
	ForwardTunnel Forward = 2 // IPIP, ipvsadm -i
	ForwardRoute  Forward = 3 // direct routing, ipvsadm -g
)

// Kind says which part of a Service a virtual server comes from.
type Kind uint8

// Kinds of virtual server. The zero value is used for servers read from the
// kernel, whose origin is unknown.
const (
	KindUnknown Kind = iota
	KindClusterIP
	KindExternalIP
	KindLoadBalancer
	KindNodePort
	// KindFWMark is the firewall-mark virtual server that sends traffic from
	// this cluster's pods and this node to an externalTrafficPolicy: Local
	// Service's external addresses to every endpoint (fwmark.go).
	KindFWMark
)

func (k Kind) String() string {
	switch k {
	case KindClusterIP:
		return "ClusterIP"
	case KindExternalIP:
		return "ExternalIP"
	case KindLoadBalancer:
		return "LoadBalancer"
	case KindNodePort:
		return "NodePort"
	case KindFWMark:
		return "FWMark"
	}
	return "Unknown"
}

// VSKey identifies a virtual server, as the kernel does: by address, port
// and protocol, or, for a firewall-mark one, by FWMark and family (Addr is
// then the family's unspecified address, Port and Proto zero; see
// FWMarkKey).
type VSKey struct {
	Addr   netip.Addr
	Port   uint16
	Proto  Proto
	FWMark uint32
}

// String gives "10.96.0.10:80/TCP", "[fd00::10]:80/TCP" or
// "fwmark 0x10000/IPv4".
func (k VSKey) String() string {
	if k.FWMark != 0 {
		fam := "/IPv4"
		if k.Addr.Is6() {
			fam = "/IPv6"
		}
		return "fwmark 0x" + strconv.FormatUint(uint64(k.FWMark), 16) + fam
	}
	return netip.AddrPortFrom(k.Addr, k.Port).String() + "/" + k.Proto.String()
}

// Compare orders keys by address, port, protocol, then mark.
func (k VSKey) Compare(o VSKey) int {
	if c := k.Addr.Compare(o.Addr); c != 0 {
		return c
	}
	if c := cmp.Compare(k.Port, o.Port); c != 0 {
		return c
	}
	if c := cmp.Compare(k.Proto, o.Proto); c != 0 {
		return c
	}
	return cmp.Compare(k.FWMark, o.FWMark)
}

// RSKey identifies a real server (destination) within a virtual server.
type RSKey struct {
	Addr netip.Addr
	Port uint16
}

func (k RSKey) String() string { return netip.AddrPortFrom(k.Addr, k.Port).String() }

// Compare orders keys by address, then port.
func (k RSKey) Compare(o RSKey) int {
	if c := k.Addr.Compare(o.Addr); c != 0 {
		return c
	}
	return cmp.Compare(k.Port, o.Port)
}

// RealServer is one destination of a virtual server.
type RealServer struct {
	Key     RSKey
	Weight  int
	Forward Forward
}

// VirtualServer is one IPVS service with its destinations.
//
// A *VirtualServer and its RealServers slice are shared between plans, the
// applier's memory and ops, so they are never modified once built: a change
// makes a new value.
type VirtualServer struct {
	Key       VSKey
	Scheduler string
	Flags     Flags
	// Timeout is the persistence timeout in seconds (with FlagPersistent).
	Timeout uint32
	// RealServers, sorted by key, without duplicates.
	RealServers []RealServer

	// The fields below are set by the planner and are zero for servers read
	// from the kernel. They do not take part in comparisons.

	// Bind says Key.Addr must be bound on kube-ipvs0.
	Bind     bool
	Kind     Kind
	Service  servicecache.ServiceKey
	PortName string
	// Match, for a KindFWMark server, are the external virtual servers
	// whose traffic from inside the cluster gets its mark (MarkEntries).
	Match []VSKey
}

// String gives the key and, when known, the Service port it serves.
func (vs *VirtualServer) String() string {
	s := vs.Key.String()
	if vs.Service != (servicecache.ServiceKey{}) {
		s += " (" + vs.Service.String()
		if vs.PortName != "" {
			s += ":" + vs.PortName
		}
		s += ")"
	}
	return s
}

// sameConfig reports whether the kernel would need an update (ipvsadm -E)
// to turn one into the other.
func (vs *VirtualServer) sameConfig(o *VirtualServer) bool {
	return vs.Scheduler == o.Scheduler && vs.Flags == o.Flags && vs.Timeout == o.Timeout
}

// State is a set of virtual servers and the addresses bound on kube-ipvs0:
// either what the kernel holds (observed) or what the proxy wants.
type State struct {
	VirtualServers map[VSKey]*VirtualServer
	// Addresses on kube-ipvs0, sorted, without duplicates.
	Addresses []netip.Addr
}

// Desired is what Plan computes: the wanted State plus what the Applier needs
// to own it and to update it one Service at a time.
type Desired struct {
	State
	// ByService holds the same virtual servers as State.VirtualServers,
	// grouped by Service, in plan order.
	ByService map[servicecache.ServiceKey][]*VirtualServer
	// NodePortAddresses are the node addresses NodePort virtual servers go
	// on. Virtual servers on them belong to the proxy even when no Service
	// uses them any more, so stale ones are removed.
	NodePortAddresses []netip.Addr
	// LocalAddresses are the host's other addresses (Config.LocalAddresses).
	// A virtual server on one of them with a port in DefaultNodePortRange
	// is a NodePort virtual server of an IPVS proxy, so the applier owns
	// it: a stale one, or one kube-proxy left on an address this proxy
	// does not serve NodePorts on (kube-proxy uses every local address),
	// is removed. --cleanup uses the same rule.
	LocalAddresses []netip.Addr
	// ExcludeCIDRs (--ipvs-exclude-cidrs, normalized): virtual servers on
	// addresses in them are never planned and must never be deleted, nor
	// their addresses unbound (see Desired.Excluded).
	ExcludeCIDRs []netip.Prefix
	// Problems are what the planner worked around in the Services (e.g. an
	// unknown scheduler annotation), in Service order.
	Problems []Problem
	// Conflicts counts the virtual servers a Service wanted that another
	// Service keeps, the older one (see Precedes); each is also a Problem
	// (ReasonAddressConflict). The Applier does not trust its memory as a
	// plan (Applier.Known) after one, until the next Reconcile without.
	Conflicts int
	// Replanned lists, sorted, the Services PlanChanges planned besides the
	// keys it was given, because they claim a virtual server one of those
	// claims or released. Their Problems are in Problems, and
	// ApplyServices applies them with the keys.
	Replanned []servicecache.ServiceKey
}

// hostBits is the prefix length of a single address of addr's family.
func hostBits(addr netip.Addr) int {
	if addr.Is4() {
		return 32
	}
	return 128
}
