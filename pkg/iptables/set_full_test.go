package iptables

import (
	"errors"
	"fmt"
	"testing"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/pkg/servicecache"
	v1 "k8s.io/api/core/v1"
)

// threeServices has Services a, b and c, each with its own cluster IP; b
// and c share an external IP.
func threeServices() *servicecache.Snapshot {
	snap := &servicecache.Snapshot{Node: servicecache.Node{Name: "node-a"}}
	for i, name := range []string{"a", "b", "c"} {
		svc := &servicecache.Service{Key: svcKey(name), ClusterIPs: ips(fmt.Sprintf("10.96.0.%d", i+1)),
			Ports: []servicecache.ServicePort{{Name: "p", Protocol: v1.ProtocolTCP, Port: 80}}}
		if name != "a" {
			svc.ExternalIPs = ips("198.51.100.1")
		}
		snap.Services = append(snap.Services, svc)
	}
	return snap
}

// A full set refuses some entries: the apply goes on with everything else
// and reports the refused entries with the Services that want them instead
// of failing; each apply tries them again, and they go in once there is
// room. Other errors are still errors.
func TestApplySetFull(t *testing.T) {
	ipset, tables := NewFakeIPSet(), NewFakeTables()
	a := &Applier{IPSet: ipset, Tables: map[Family]Tables{IPv4: tables}}
	cfg := Config{Families: []Family{IPv4}, ClusterCIDRs: pfxs("10.244.0.0/16")}
	pl := new(Planner)
	snap := threeServices()
	ipset.FullAt["KUBE-CLUSTER-IP"] = 2
	ipset.FullAt["KUBE-EXTERNAL-IP"] = 0

	ch, err := a.Apply(pl.Plan(snap, cfg))
	if err != nil {
		t.Fatalf("apply into full sets: %v", err)
	}
	want := []RefusedEntry{
		{Family: IPv4, Set: "KUBE-CLUSTER-IP", Entry: Entry{IP: ip("10.96.0.3"), Proto: ProtoTCP, Port: 80}, Services: []servicecache.ServiceKey{svcKey("c")}},
		{Family: IPv4, Set: "KUBE-EXTERNAL-IP", Entry: Entry{IP: ip("198.51.100.1"), Proto: ProtoTCP, Port: 80}, Services: []servicecache.ServiceKey{svcKey("b"), svcKey("c")}},
	}
	if fmt.Sprint(ch.Refused) != fmt.Sprint(want) {
		t.Fatalf("refused %v, want %v", ch.Refused, want)
	}
	if n := len(ipset.Sets["KUBE-IPVS-IPS"].Entries); n != 4 || len(ch.ChainsWritten) == 0 {
		t.Fatalf("the rest was not applied: KUBE-IPVS-IPS has %d entries, chains written %v", n, ch.ChainsWritten)
	}

	// Tried again on each apply, also incremental ones; a plan that is
	// not the Planner's last cannot name the Services.
	stale := pl.Plan(snap, cfg)
	pl.Plan(snap, cfg)
	ipset.Ops = nil
	ch, err = a.ApplyIncremental(stale)
	if err != nil || len(ch.Refused) != 2 || ch.Refused[0].Services != nil {
		t.Fatalf("incremental apply: refused %v, err %v; want both again, without Services", ch.Refused, err)
	}
	if countOps(ipset.Ops, "add KUBE-CLUSTER-IP") != 1 {
		t.Fatalf("incremental apply did not try the refused entry again: %q", ipset.Ops)
	}

	// Room again: added, nothing refused.
	delete(ipset.FullAt, "KUBE-CLUSTER-IP")
	delete(ipset.FullAt, "KUBE-EXTERNAL-IP")
	ch, err = a.ApplyIncremental(pl.Plan(snap, cfg))
	if err != nil || len(ch.Refused) != 0 || ch.EntriesAdded != 2 {
		t.Fatalf("with room again: %+v, %v", ch, err)
	}
	if ch, err := a.Apply(pl.Plan(snap, cfg)); err != nil || !ch.Empty() {
		t.Fatalf("full apply after: %+v, %v", ch, err)
	}

	// Any other failure to add stays an error.
	snap.Services = append(snap.Services, &servicecache.Service{Key: svcKey("d"), ClusterIPs: ips("10.96.0.4"),
		Ports: []servicecache.ServicePort{{Name: "p", Protocol: v1.ProtocolTCP, Port: 80}}})
	snap.Changed = []servicecache.ServiceKey{svcKey("d")}
	ipset.Fail["add KUBE-CLUSTER-IP"] = errors.New("injected")
	if ch, err := a.Apply(pl.Plan(snap, cfg)); err == nil || len(ch.Refused) != 0 {
		t.Fatalf("a failing add: %+v, err %v; want an error", ch, err)
	}
}
