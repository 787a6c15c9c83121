// Package iptables programs the ipsets and iptables chains that go with
// IPVS, exactly as upstream kube-proxy's IPVS mode names and fills them, so
// `ipset list` and `iptables-save | grep KUBE` read the same.
//
// The work is split three ways:
//
//   - Plan (pure) turns a servicecache.Snapshot and a Config into a Desired
//     state: the full content of every ipset and every chain we own, per IP
//     family. The fixed parts (set names and types, chains, jumps, which set
//     feeds which rule) are declared as data in skeleton.go.
//   - IPSet and Tables are small kernel interfaces: NetlinkIPSet speaks
//     netlink (no `ipset` process), IptablesTables runs iptables,
//     iptables-save and iptables-restore --noflush, each with a bounded
//     wait for the xtables lock and a timeout. FakeIPSet and FakeTables
//     record operations for tests.
//   - Applier diffs Desired against what the kernel has and changes only
//     the difference.
//
// What the caller must do:
//
//   - Run as root (CAP_NET_ADMIN) in the host network namespace, with the
//     ipset (ip_set and its hash:ip, hash:ip,port, hash:ip,port,ip,
//     hash:ip,port,net, bitmap:port types) and iptables (nat and filter
//     tables; xt_set, xt_mark, xt_MARK, xt_comment, xt_addrtype,
//     xt_conntrack, xt_physdev, xt_MASQUERADE, xt_REJECT, and xt_ipvs when
//     load balancers have source ranges that exclude the node) kernel
//     support loaded, and the iptables binaries of the node's backend.
//   - Set the sysctls upstream's IPVS mode sets: net.ipv4.ip_forward=1,
//     net.ipv4.vs.conntrack=1 (IPVS must keep conntrack entries or the
//     MASQUERADE rules never see the traffic), net.ipv4.vs.expire_nodest_conn=1,
//     net.ipv4.vs.expire_quiescent_template=1, and with strict ARP
//     net.ipv4.conf.all.arp_ignore=1 / arp_announce=2. This package sets none.
//   - Each sync, follow upstream's order: create/update the IPVS virtual
//     servers and bind new addresses to kube-ipvs0, then Apply, then unbind
//     stale addresses and delete stale virtual servers. New VIPs thus get
//     their set entries (and KUBE-IPVS-FILTER exemptions) as they appear,
//     and old ones keep theirs until IPVS no longer serves them.
//   - Pass Config.LocalAddresses (host addresses except kube-ipvs0's) fresh
//     each sync; they decide NodePort addresses and KUBE-IPVS-IPS.
//   - On shutdown with cleanup, call Applier.Cleanup after deleting the IPVS
//     services.
package iptables
