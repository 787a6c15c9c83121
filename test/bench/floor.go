package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/test/bench/probe"
	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/test/lab/agent"
	"github.com/kube-ipvs-proxy/kube-ipvs-proxy/test/lab/labctl"
)

func jsonInto(raw json.RawMessage, v any) error { return json.Unmarshal(raw, v) }

const (
	floorNetns = "benchfloor"
	floorDir   = "/run/lab/bench"
)

// floorInput is the kernel state of size n as the standard tools take it:
// `ip -batch` lines adding the Service addresses to kube-ipvs0, an
// `ipvsadm -R` table and an `ipset restore` file with the sets that grow
// with the Services.
type floorInput struct {
	batch, ipvs, ipset string
}

func (b *bench) floorInput(n int) floorInput {
	var batch, ipvs, sets strings.Builder
	nodeAddr := labctl.NodeAddr(1)
	apiRS := fmt.Sprintf("%s:%d", labctl.APIServerGuestAddr, b.lab.APIPort)
	fmt.Fprintln(&sets, "create KUBE-CLUSTER-IP hash:ip,port family inet hashsize 1024 maxelem 65536")
	fmt.Fprintln(&sets, "create KUBE-IPVS-IPS hash:ip family inet hashsize 1024 maxelem 65536")
	fmt.Fprintln(&sets, "create KUBE-NODE-PORT-TCP bitmap:port range 0-65535")
	add := func(vip, proto string, port int, rs []string, clusterIP bool) {
		vs := fmt.Sprintf("%s:%d", vip, port)
		fmt.Fprintf(&ipvs, "-A -t %s -s rr\n", vs)
		for _, r := range rs {
			fmt.Fprintf(&ipvs, "-a -t %s -r %s -m -w 1\n", vs, r)
		}
		if clusterIP {
			fmt.Fprintf(&batch, "address add %s/32 dev kube-ipvs0\n", vip)
			fmt.Fprintf(&sets, "add KUBE-CLUSTER-IP %s,%s:%d\n", vip, proto, port)
			fmt.Fprintf(&sets, "add KUBE-IPVS-IPS %s\n", vip)
		}
	}
	add("10.96.0.1", "tcp", 443, []string{apiRS}, true)
	for i := 0; i < n; i++ {
		s := b.pop.get(i)
		var rs []string
		for _, a := range b.pop.currentAddrs(s) {
			rs = append(rs, fmt.Sprintf("%s:%d", a, targetPort))
		}
		add(s.IP.String(), "tcp", servicePort, rs, true)
		if s.NodePort != 0 {
			add(nodeAddr.String(), "tcp", int(s.NodePort), rs, false)
			fmt.Fprintf(&sets, "add KUBE-NODE-PORT-TCP %d\n", s.NodePort)
		}
	}
	return floorInput{batch: batch.String(), ipvs: ipvs.String(), ipset: sets.String()}
}

// floor programs the same objects with ip -batch, ipvsadm -R and ipset
// restore in a fresh namespace, timing each.
func (b *bench) floor(ctx context.Context, n int) error {
	in := b.floorInput(n)
	files := map[string]string{"vips.batch": in.batch, "ipvs.rules": in.ipvs, "ipsets.restore": in.ipset}
	for name, content := range files {
		if _, err := b.ag.Output(ctx, agent.ExecRequest{Argv: []string{"sh", "-c", "mkdir -p " + floorDir + " && cat > " + floorDir + "/" + name},
			Stdin: []byte(content)}); err != nil {
			return fmt.Errorf("writing %s into the VM: %w", name, err)
		}
	}
	setup := strings.Join([]string{
		"ip netns del " + floorNetns + " 2>/dev/null || true",
		"ip netns add " + floorNetns,
		"ip -n " + floorNetns + " link set lo up",
		"ip -n " + floorNetns + " link add kube-ipvs0 type dummy",
		"ip -n " + floorNetns + " link add eth0 type dummy",
		"ip -n " + floorNetns + " addr add " + labctl.NodeAddr(1).String() + "/24 dev eth0",
		"ip -n " + floorNetns + " link set eth0 up",
	}, "\n")
	if _, err := b.ag.Output(ctx, agent.ExecRequest{Argv: []string{"sh", "-ec", setup}}); err != nil {
		return fmt.Errorf("kernel floor namespace: %w", err)
	}
	defer func() {
		b.ag.Output(context.Background(), agent.ExecRequest{Argv: []string{"sh", "-c", "ip netns del " + floorNetns + "; rm -f " + floorDir + "/*"}})
		b.quiet(ctx)
	}()
	b.quiet(ctx)
	b.logf("kernel floor, N=%d", n)
	timeIt := func(script string) (float64, error) {
		var r probe.TimeResult
		err := call(ctx, b.ag, floorNetns, "time", probe.TimeSpec{Script: script}, &r, b.opts.Timeout)
		return r.Wall, err
	}
	batch, err := timeIt("ip -batch " + floorDir + "/vips.batch")
	if err != nil {
		return err
	}
	ipvs, err := timeIt("ipvsadm -R < " + floorDir + "/ipvs.rules")
	if err != nil {
		return err
	}
	sets, err := timeIt("ipset restore < " + floorDir + "/ipsets.restore")
	if err != nil {
		return err
	}
	// What a proxy had to do for the same: the counts must match.
	var check probe.WaitResult
	exp := b.expected(n)
	if err := call(ctx, b.ag, floorNetns, "wait", probe.WaitSpec{Pid: 1, VS: exp.vs, RS: exp.rs, Sets: exp.sets, TimeoutS: 1}, &check, b.opts.Timeout); err != nil {
		return err
	}
	if !check.Done {
		return fmt.Errorf("kernel floor: the restored state has %d virtual and %d real servers, sets %v; want %d, %d, %v",
			check.Last.VS, check.Last.RS, check.SetCounts, exp.vs, exp.rs, exp.sets)
	}
	b.setFloor(rowFloorBatch, n, unitS, val(batch))
	b.setFloor(rowFloorIPVS, n, unitS, val(ipvs))
	b.setFloor(rowFloorIPSet, n, unitS, val(sets))
	b.setFloor(rowColdIPVS, n, unitS, val(batch+ipvs))
	b.setFloor(rowColdAll, n, unitS, val(batch+ipvs+sets))
	b.logf("kernel floor, N=%d: ip -batch %.2fs, ipvsadm -R %.2fs, ipset restore %.2fs", n, batch, ipvs, sets)
	return nil
}
