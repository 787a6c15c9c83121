#!/usr/bin/env bash
# Installs what the lab needs on a fresh Debian 12 machine: Debian packages,
# a Debian kernel with IPVS (unpacked, not installed) and its initramfs.
# Idempotent: a second run only checks. Run as root.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache=${LAB_CACHE:-/var/cache/kube-ipvs-proxy-lab}
mkdir -p "$cache"

step() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*"; }

packages=(qemu-system-x86 busybox-static kmod cpio iproute2 ipvsadm ipset
  iptables conntrack curl etcd-server ca-certificates)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  step "installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian starts etcd as a service when installed with an init system; the lab
# runs its own etcd on loopback, so a packaged one must not hold the port.
if command -v systemctl >/dev/null && systemctl is-active --quiet etcd 2>/dev/null; then
  systemctl disable --now etcd >/dev/null 2>&1 || true
fi

# The kernel: the version Debian's linux-image-amd64 points at, unpacked into
# the cache. The VM boots it; the host never installs it.
if [ ! -e "$cache/kernel/current" ]; then
  [ -n "$(apt-cache depends linux-image-amd64 2>/dev/null)" ] || apt-get update -qq
  pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/{print $2; exit}')
  [ -n "$pkg" ] || { echo "cannot resolve the Debian kernel package (apt-cache depends linux-image-amd64)" >&2; exit 1; }
  step "fetching kernel $pkg"
  tmp=$(mktemp -d "$cache/kernel-dl.XXXXXX")
  (cd "$tmp" && apt-get download -qq "$pkg" 2>/dev/null && dpkg -x ./*.deb root && rm -f ./*.deb)
  ver=$(ls "$tmp/root/lib/modules")
  depmod -b "$tmp/root" "$ver"
  rm -rf "$cache/kernel/$ver"
  mkdir -p "$cache/kernel"
  mv "$tmp/root" "$cache/kernel/$ver"
  rmdir "$tmp"
  ln -sfn "$ver" "$cache/kernel/current"
fi
ver=$(readlink "$cache/kernel/current")

# The initramfs is rebuilt whenever its sources change.
sum=$(cat "$here/vm/build-initramfs.sh" "$here/vm/initramfs-init" | sha256sum | cut -c1-12)
initrd="$cache/kernel/initramfs-$ver-$sum.cpio.gz"
if [ ! -e "$initrd" ]; then
  step "building the VM's initramfs"
  rm -f "$cache/kernel/initramfs-$ver"-*.cpio.gz
  "$here/vm/build-initramfs.sh" "$cache/kernel/$ver" "$initrd"
fi
ln -sfn "$(basename "$initrd")" "$cache/kernel/initramfs"
step "lab dependencies ready (kernel $ver, cache $cache)"
