# The lab VM's own init, run by busybox init from the host's filesystem.
#   setup: modules, loopback and the uplink to the host's API server
#   agent: the guest agent (respawned by init if it exits)
# Settings come from the kernel command line (lab.kroot=, lab.bin=).
set -u
bb=/run/busybox
for arg in $($bb cat /proc/cmdline); do
  case "$arg" in
    lab.kroot=*) kroot=${arg#lab.kroot=} ;;
    lab.bin=*) bin=${arg#lab.bin=} ;;
  esac
done

case "${1:-}" in
setup)
  export PATH=/usr/sbin:/usr/bin:/sbin:/bin
  $bb mount -t tmpfs tmpfs /var/log
  $bb mkdir -p /var/log/lab /run/lab/bin /run/xtables-lock
  # The unpacked Debian kernel's modules, so that modprobe (and the kernel's
  # own module autoloading) work inside the VM.
  $bb mkdir -p /lib/modules
  $bb mount --bind "$kroot/lib/modules" /lib/modules
  for m in ip_vs ip_vs_rr ip_vs_wrr ip_vs_lc ip_vs_wlc ip_vs_sh ip_vs_mh ip_vs_sed \
    ip_vs_nq ip_vs_dh ip_vs_lblc ip_vs_lblcr ip_vs_fo ip_vs_ovf nf_conntrack \
    dummy veth bridge sctp xt_set ip_set ip_set_hash_ip ip_set_hash_ipport \
    ip_set_hash_ipportip ip_set_hash_ipportnet ip_set_hash_net ip_set_bitmap_port \
    nf_tables nft_compat nft_chain_nat iptable_nat iptable_filter ip6table_nat \
    ip6table_filter xt_MASQUERADE xt_mark xt_comment xt_addrtype xt_conntrack \
    xt_multiport xt_tcpudp ipt_REJECT ip6t_REJECT nf_conntrack_netlink; do
    modprobe "$m" 2>/dev/null || echo "lab: modprobe $m failed"
  done
  $bb hostname lab-vm
  ip link set lo up
  ip link set eth0 up
  ip addr add 10.0.2.15/24 dev eth0
  sysctl -qw net.ipv4.ip_forward=1
  # Hot binaries are copied into the guest's tmpfs: starting a process from
  # the 9p mount is slow under emulation.
  $bb cp "$bin/labagent" /run/lab/bin/labagent
  echo "lab: setup done"
  ;;
agent)
  export PATH=/run/lab/bin:/usr/sbin:/usr/bin:/sbin:/bin
  exec /run/lab/bin/labagent --listen 10.0.2.15:7000 >>/var/log/lab/agent.log 2>&1
  ;;
esac
