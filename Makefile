# kube-ipvs-proxy. `make test` is what CI runs (.ci/run); `make lab` is the demo.
SHELL := /bin/bash
export LAB_CACHE ?= /var/cache/kube-ipvs-proxy-lab
BIN := _output/bin
PROXY ?= ours
export PROXY
LAB_CMDS := ./test/lab/cmd/lab ./test/lab/cmd/labagent ./test/lab/cmd/labkubelet ./test/lab/cmd/labecho

.PHONY: build lab-deps lab-tools lab-bins lab lab-down unit e2e test lint image bench fuzz diff-upstream

build:
	@mkdir -p $(BIN)
	go build -o $(BIN)/kube-ipvs-proxy ./cmd/proxy

# The container image: `docker build` (or podman) when a daemon answers,
# otherwise a root filesystem and an OCI archive built from Debian packages
# in _output/image (hack/build-image.sh). IMAGE=REGISTRY/NAME:TAG names it.
image:
	@bash hack/build-image.sh

# Debian packages, the lab kernel and its initramfs (idempotent).
lab-deps:
	@bash test/lab/install-deps.sh

# Upstream kube-apiserver, kube-controller-manager, kube-proxy and kubectl (cached).
lab-tools:
	@bash test/lab/build-tools.sh

lab-bins: build
	@go build -o $(BIN)/ $(LAB_CMDS)

# The demo: bring the lab up, deploy a sample app, show IPVS and answers.
lab: lab-deps lab-tools lab-bins
	@$(BIN)/lab demo

lab-down:
	@$(BIN)/lab down

unit:
	go test -race ./...

e2e: lab-deps lab-tools lab-bins
	go test -tags e2e -count=1 -v -timeout 80m ./test/e2e/...

# Ours against upstream kube-proxy in IPVS mode in the lab VM, and the
# kernel's floor: _output/bench/results.md and results.csv. Takes over an
# hour with the defaults; BENCH_* settings in docs/benchmarks.md.
bench: lab-deps lab-tools lab-bins
	@go build -o $(BIN)/ ./test/lab/cmd/labbench ./test/bench/cmd/bench
	@$(BIN)/bench

# Differential test against upstream kube-proxy (IPVS mode) in the lab:
# ROUNDS generated cluster states (default 3, about two minutes each) from
# SEED (default: the clock); every difference is printed with the SEED that
# reproduces it, those docs/fidelity-allowlist.yaml explains as allowed.
diff-upstream: lab-deps lab-tools lab-bins
	go test -tags diff -count=1 -v -timeout 120m -run '^TestDiffUpstream$$' ./test/diff/

# Everything: unit tests (with real ipsets/iptables in fresh network
# namespaces), then the end-to-end suite in the lab.
test: lab-deps lab-tools lab-bins
	go test -race -count=1 ./...
	go test -tags e2e -count=1 -v -timeout 80m ./test/e2e/...

# Fuzz the service cache and both planners (FUZZTIME each; the seed
# corpora also run as plain unit tests in `make unit`).
FUZZTIME ?= 3m
fuzz:
	go test -run='^$$' -fuzz='^FuzzConvertAndMerge$$' -fuzztime=$(FUZZTIME) -parallel=1 ./pkg/servicecache/
	go test -run='^$$' -fuzz='^FuzzIPVSPlan$$' -fuzztime=$(FUZZTIME) -parallel=1 ./pkg/ipvs/
	go test -run='^$$' -fuzz='^FuzzIptablesPlan$$' -fuzztime=$(FUZZTIME) -parallel=1 ./pkg/iptables/

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	go vet ./...
