#!/usr/bin/env bash
# Builds the kube-ipvs-proxy container image (`make image`).
#
#   hack/build-image.sh                     the image, with the first builder that works
#   hack/build-image.sh finish-rootfs DIR   the image's own files on a Debian root
#                                           filesystem with iptables installed (the
#                                           Dockerfile runs this on /)
#
# IMAGE_BUILDER picks the builder (default auto: the first that works):
#   docker, podman  `build` with the Dockerfile, tagged $IMAGE
#   rootfs          no base image and no registry: a minimal Debian bookworm
#                   bootstrapped from the Debian mirror apt uses (debootstrap
#                   --variant=minbase, MIRROR and SECURITY_MIRROR override),
#                   upgraded from bookworm-updates and bookworm-security,
#                   with iptables and kmod (cached for a week under
#                   $LAB_CACHE/image-rootfs), the static binary in
#                   /usr/local/bin and the iptables wrapper. It writes
#     _output/image/rootfs/                  the root filesystem
#     _output/image/rootfs.tar               the same as one tarball (one layer)
#     _output/image/kube-ipvs-proxy.oci.tar  an OCI image archive (umoci), tag
#                                            "latest", entrypoint the proxy
#   The archive goes to a registry with
#     skopeo copy oci-archive:_output/image/kube-ipvs-proxy.oci.tar:latest docker://REGISTRY/kube-ipvs-proxy:TAG
#   or into a node's containerd with `ctr -n k8s.io images import`, `podman load`
#   or `docker load` (Docker 25 or later).
#
# The image's iptables: the proxy runs `iptables`, `iptables-restore` and
# their IPv6 twins from PATH, and they must drive the same backend (nf_tables
# or legacy) as the rest of the node (kubelet, the CNI plugin). As in
# kube-proxy's image, those commands first go to /usr/sbin/iptables-wrapper,
# which picks the backend the node uses, points the Debian alternatives at it
# and runs the real command; later calls go straight to it. The node's choice
# is read from kubelet's KUBE-IPTABLES-HINT or KUBE-KUBELET-CANARY chain, or
# else from which backend holds more rules; nf_tables (the default of current
# distributions) when neither holds any. IPTABLES_MODE=nft or legacy in the
# container's environment skips the detection.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
IMAGE=${IMAGE:-ghcr.io/kube-ipvs-proxy/kube-ipvs-proxy:latest}
IMAGE_BUILDER=${IMAGE_BUILDER:-auto}
LAB_CACHE=${LAB_CACHE:-/var/cache/kube-ipvs-proxy-lab}
SUITE=bookworm
# Packages on top of minbase: iptables (both backends), kmod (modprobe, for the
# init container and for the IPVS library's own `modprobe ip_vs`).
PACKAGES=iptables,kmod
out=$repo/_output/image
PATH_ENV=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

log() { echo "build-image: $*" >&2; }

# The wrapper installed as /usr/sbin/iptables-wrapper.
write_wrapper() {
  cat >"$1" <<'EOF'
#!/bin/sh
# iptables-wrapper: runs the iptables command it was called as with the
# backend (nft or legacy) the node uses, after pointing the alternatives at it
# so that later calls skip this script. IPTABLES_MODE=nft|legacy skips the
# detection. Installed by kube-ipvs-proxy's hack/build-image.sh.
set -eu
sbin=/usr/sbin
mode=${IPTABLES_MODE:-}
case "$mode" in
nft | legacy) ;;
"")
  # Dump only tables that exist: listing a missing legacy table would load
  # its module and create it.
  nft_rules=$( (timeout 10 $sbin/iptables-nft-save; timeout 10 $sbin/ip6tables-nft-save) 2>/dev/null || true)
  legacy_rules=$( ($sbin/iptables-legacy-save; $sbin/ip6tables-legacy-save) 2>/dev/null || true)
  hint='^:(KUBE-IPTABLES-HINT|KUBE-KUBELET-CANARY) '
  if printf '%s\n' "$nft_rules" | grep -Eq "$hint"; then
    mode=nft
  elif printf '%s\n' "$legacy_rules" | grep -Eq "$hint"; then
    mode=legacy
  else
    nft_n=$(printf '%s\n' "$nft_rules" | grep -c '^-' || true)
    legacy_n=$(printf '%s\n' "$legacy_rules" | grep -c '^-' || true)
    if [ "$legacy_n" -gt "$nft_n" ]; then mode=legacy; else mode=nft; fi
  fi
  ;;
*)
  echo "iptables-wrapper: IPTABLES_MODE=$mode: want nft or legacy" >&2
  exit 2
  ;;
esac
if update-alternatives --set iptables "$sbin/iptables-$mode" >/dev/null 2>&1 &&
  update-alternatives --set ip6tables "$sbin/ip6tables-$mode" >/dev/null 2>&1; then
  exec "$0" "$@"
fi
# A read-only filesystem: run the backend's binary directly, every time.
echo "iptables-wrapper: cannot switch the iptables alternatives to $mode (read-only filesystem?); detecting on every call" >&2
exec "$sbin/xtables-$mode-multi" "$(basename "$0")" "$@"
EOF
  chmod 0755 "$1"
}

# finish_rootfs DIR: the image's own files on a Debian root with iptables:
# the wrapper as the highest-priority iptables alternative, no host files,
# no documentation or package caches.
finish_rootfs() {
  local root=$1
  [ -x "$root/usr/sbin/iptables-nft" ] && [ -x "$root/usr/sbin/iptables-legacy" ] || {
    log "$root has no iptables-nft and iptables-legacy (install Debian's iptables first)"
    exit 1
  }
  write_wrapper "$root/usr/sbin/iptables-wrapper"
  local run=()
  [ "$root" = / ] || run=(chroot "$root")
  for fam in iptables ip6tables; do
    "${run[@]}" update-alternatives --install "/usr/sbin/$fam" "$fam" /usr/sbin/iptables-wrapper 100 \
      --slave "/usr/sbin/$fam-restore" "$fam-restore" /usr/sbin/iptables-wrapper \
      --slave "/usr/sbin/$fam-save" "$fam-save" /usr/sbin/iptables-wrapper >/dev/null
    "${run[@]}" update-alternatives --auto "$fam" >/dev/null
  done
  # As debian:*-slim: no documentation, locales or package lists.
  rm -rf "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
    "$root"/usr/share/locale/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
    "$root"/var/lib/apt/lists/* "$root"/var/log/*.log "$root"/var/log/apt/* 2>/dev/null || true
  # debootstrap copies the build host's; container runtimes provide their
  # own. (Under `docker build`, / is the base image's, and these are mounts.)
  if [ "$root" != / ]; then
    : >"$root/etc/resolv.conf"
    : >"$root/etc/hostname"
    : >"$root/etc/machine-id"
  fi
}

# apt_uri security|main: the URI of Debian's security archive or of its
# main one, from apt's sources (deb822 or one-line).
apt_uri() {
  local want=$1 m
  m=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null |
    awk -v want="$want" '/^URIs:/ { for (i = 2; i <= NF; i++) if (($i ~ /security/) == (want == "security")) { print $i; exit } }')
  if [ -z "$m" ]; then
    m=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
      awk -v want="$want" '$1 == "deb" { u = ($2 ~ /^\[/ ? $3 : $2); if ((u ~ /security/) == (want == "security")) { print u; exit } }')
  fi
  echo "$m"
}

need() { # need COMMAND PACKAGE: install a Debian package for a missing command
  command -v "$1" >/dev/null && return
  log "installing $2"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null ||
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null; }
}

# base_rootfs: debootstrap's output with the suite's updates and security
# updates, cached: rebuilt when the suite, packages or architecture change,
# when it is a week old (to pick up new security updates), or when the cache
# is removed.
base_rootfs() {
  local base=$LAB_CACHE/image-rootfs key
  key="$SUITE $PACKAGES $(dpkg --print-architecture) minbase"
  if [ -f "$base.key" ] && [ "$(cat "$base.key")" = "$key" ] && [ -x "$base/usr/sbin/iptables-nft" ] &&
    [ -n "$(find "$base.key" -mtime -7)" ]; then
    log "reusing $base"
    return
  fi
  [ "$(id -u)" = 0 ] || { log "debootstrap needs root"; exit 1; }
  need debootstrap debootstrap
  local mirror security tmp logf=$LAB_CACHE/image-rootfs.log
  mirror=${MIRROR:-$(apt_uri main)}
  mirror=${mirror:-http://deb.debian.org/debian}
  security=${SECURITY_MIRROR:-$(apt_uri security)}
  security=${security:-http://deb.debian.org/debian-security}
  tmp=$base.tmp
  rm -rf "$tmp" "$base" "$base.key"
  mkdir -p "$LAB_CACHE"
  log "debootstrap --variant=minbase --include=$PACKAGES $SUITE from $mirror (a minute or two, once a week)"
  {
    debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$tmp" "$mirror" &&
      printf 'deb %s %s main\ndeb %s %s-updates main\ndeb %s %s-security main\n' \
        "$mirror" "$SUITE" "$mirror" "$SUITE" "$security" "$SUITE" >"$tmp/etc/apt/sources.list" &&
      unshare -m --propagation private sh -ec 'mount -t proc proc "$1/proc"
        chroot "$1" apt-get update -qq
        DEBIAN_FRONTEND=noninteractive chroot "$1" apt-get upgrade -y -qq
        chroot "$1" apt-get clean' sh "$tmp"
  } >"$logf" 2>&1 || {
    tail -n 30 "$logf" >&2
    log "building the base root filesystem failed; its log is $logf"
    exit 1
  }
  mv "$tmp" "$base"
  echo "$key" >"$base.key"
}

build_binary() {
  mkdir -p "$out"
  log "building the static binary"
  (cd "$repo" && CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o "$out/kube-ipvs-proxy" ./cmd/proxy)
}

build_rootfs() {
  build_binary
  base_rootfs
  log "assembling $out/rootfs"
  rm -rf "$out/rootfs" "$out/rootfs.tar" "$out/oci" "$out/kube-ipvs-proxy.oci.tar"
  cp -a "$LAB_CACHE/image-rootfs" "$out/rootfs"
  install -m 0755 "$out/kube-ipvs-proxy" "$out/rootfs/usr/local/bin/kube-ipvs-proxy"
  finish_rootfs "$out/rootfs"
  # /dev, /proc and /sys come from the container runtime.
  tar --numeric-owner -C "$out/rootfs" --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' \
    -cf "$out/rootfs.tar" .
  need umoci umoci
  local oci=$out/oci
  umoci init --layout "$oci"
  umoci new --image "$oci:latest"
  umoci raw add-layer --image "$oci:latest" "$out/rootfs.tar"
  umoci config --image "$oci:latest" --os linux --architecture "$(dpkg --print-architecture)" \
    --config.entrypoint /usr/local/bin/kube-ipvs-proxy --config.env "PATH=$PATH_ENV" \
    --config.label org.opencontainers.image.title=kube-ipvs-proxy \
    --config.label "org.opencontainers.image.description=IPVS Service proxy for Kubernetes, a drop-in replacement for kube-proxy in IPVS mode"
  umoci gc --layout "$oci"
  tar -C "$oci" -cf "$out/kube-ipvs-proxy.oci.tar" .
  rm -rf "$oci"
  log "done: $out/rootfs, $out/rootfs.tar, $out/kube-ipvs-proxy.oci.tar ($(du -sh "$out/kube-ipvs-proxy.oci.tar" | cut -f1))"
  log "push: skopeo copy oci-archive:$out/kube-ipvs-proxy.oci.tar:latest docker://${IMAGE%:*}:TAG"
}

build_with() { # build_with docker|podman
  log "$1 build -t $IMAGE"
  "$1" build -t "$IMAGE" -f "$repo/Dockerfile" "$repo"
}

works() { command -v "$1" >/dev/null && "$1" info >/dev/null 2>&1; }

case "${1:-}" in
finish-rootfs)
  finish_rootfs "${2:?usage: $0 finish-rootfs DIR}"
  exit 0
  ;;
"") ;;
*)
  echo "usage: $0 [finish-rootfs DIR]" >&2
  exit 2
  ;;
esac

case "$IMAGE_BUILDER" in
auto)
  if works docker; then
    build_with docker
  elif works podman; then
    build_with podman
  else
    log "no docker or podman daemon answers: building the image from Debian packages"
    build_rootfs
  fi
  ;;
docker | podman) build_with "$IMAGE_BUILDER" ;;
rootfs) build_rootfs ;;
*)
  log "IMAGE_BUILDER=$IMAGE_BUILDER: want auto, docker, podman or rootfs"
  exit 2
  ;;
esac
