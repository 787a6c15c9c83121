#!/usr/bin/env bash
# Builds the lab VM's initramfs: busybox plus the few modules needed to mount
# the host's root filesystem over 9p (virtio) and put a tmpfs overlay on it.
# Usage: build-initramfs.sh KERNEL_ROOT OUTPUT.cpio.gz
set -euo pipefail
kroot=$1 out=$2
here=$(cd "$(dirname "$0")" && pwd)
ver=$(ls "$kroot/lib/modules")
mods="$kroot/lib/modules/$ver"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work"/{bin,mods,proc,sys,dev,lower,upper,newroot}
cp /bin/busybox "$work/bin/busybox"
# Load order matters: each module after the ones it depends on.
for m in virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci \
  netfs fscache 9pnet 9pnet_virtio 9p overlay failover net_failover virtio_net; do
  f=$(find "$mods/kernel" -name "$m.ko" | head -n1)
  if [ -n "$f" ]; then
    cp "$f" "$work/mods/"
    echo "$m" >>"$work/mods/order"
  fi
done
cp "$here/initramfs-init" "$work/init"
chmod +x "$work/init"
(cd "$work" && find . | cpio -o -H newc --quiet | gzip -1) >"$out.tmp"
mv "$out.tmp" "$out"
