#!/usr/bin/env bash
# Builds the upstream Kubernetes v1.37.2 commands the lab runs (kube-apiserver,
# kube-controller-manager, kubectl, and kube-proxy as the reference proxy) from
# the tools module into the cache. Rebuilt only when the module changes.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
tools="$here/../tools"
cache=${LAB_CACHE:-/var/cache/kube-ipvs-proxy-lab}
out="$cache/bin"
sum=$(cat "$tools/go.mod" "$tools/go.sum" | sha256sum | cut -c1-16)
if [ -f "$out/.stamp" ] && [ "$(cat "$out/.stamp")" = "$sum" ]; then
  exit 0
fi
printf '[%s] building kube-apiserver, kube-controller-manager, kube-proxy, kubectl v1.37.2 (first time: ~10 min)\n' "$(date +%H:%M:%S)"
mkdir -p "$out"
start=$(date +%s)
(cd "$tools" && go build -ldflags=-s -o "$out/" \
  k8s.io/kubernetes/cmd/kube-apiserver \
  k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-proxy \
  k8s.io/kubernetes/cmd/kubectl)
echo "$sum" >"$out/.stamp"
printf '[%s] upstream tools built in %ss\n' "$(date +%H:%M:%S)" "$(( $(date +%s) - start ))"
