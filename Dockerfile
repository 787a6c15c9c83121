# syntax=docker/dockerfile:1
# The kube-ipvs-proxy image: the static binary on Debian bookworm (slim) with
# iptables (nf_tables and legacy, picked per node by /usr/sbin/iptables-wrapper,
# see hack/build-image.sh) and kmod (modprobe, for the init container).
# ipset, ipvsadm and conntrack are not needed: the proxy uses netlink.
#
#   docker build -t REGISTRY/kube-ipvs-proxy:TAG .     (or `make image`)
#
# Without a container engine, `make image` builds the same image from Debian
# packages (hack/build-image.sh).

FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY cmd ./cmd
COPY pkg ./pkg
RUN CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o /out/kube-ipvs-proxy ./cmd/proxy

FROM debian:bookworm-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends iptables kmod \
 && rm -rf /var/lib/apt/lists/*
COPY hack/build-image.sh /tmp/build-image.sh
RUN bash /tmp/build-image.sh finish-rootfs / && rm /tmp/build-image.sh
COPY --from=build /out/kube-ipvs-proxy /usr/local/bin/kube-ipvs-proxy
ENTRYPOINT ["/usr/local/bin/kube-ipvs-proxy"]
