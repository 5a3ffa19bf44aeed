# Spoke's build, test and demo entry points. Every target installs what it
# needs (Debian packages, Go tools pinned in go.mod) on a fresh machine.

SHELL := /bin/bash
GO ?= go
BIN := $(CURDIR)/bin
GOLANGCI_LINT_VERSION := v2.15.0
GOLANGCI_LINT := $(BIN)/tools/golangci-lint-$(GOLANGCI_LINT_VERSION)
DEBIAN_PACKAGES := clang llvm libbpf-dev bpftool iproute2 qemu-system-x86 busybox-static kmod cpio mmdebstrap
FUZZTIME ?= 10s
TEST_TIMEOUT ?= 30m

.PHONY: all build images generate lint test test-unit test-vm test-fuzz fuzz chaos local local-check cluster cluster-check e2e sim deps tools clean

all: build

## deps: install the Debian packages the datapath and VM tests need.
deps:
	@missing=$$(for p in $(DEBIAN_PACKAGES); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

## build: build every binary into bin/.
build:
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/ ./controlplane/cmd/... ./nodeagent/cmd/...

# Images are tagged with the version from git and stamped with the commit's
# time, so one commit gives one digest.
IMAGE_VERSION ?= $(shell git describe --tags --always --dirty)
IMAGE_REPOSITORY ?= ghcr.io/spoke-proxy
IMAGE_ARCH ?= $(shell $(GO) env GOARCH)
IMAGE_BIN := $(BIN)/images/linux-$(IMAGE_ARCH)

## images: build the control plane's and the agent's images from static
## binaries into bin/images/spoke-{controlplane,agent}.tar (no daemon, no
## registry); prints each image's name and digest.
images:
	@mkdir -p $(IMAGE_BIN)
	CGO_ENABLED=0 GOOS=linux GOARCH=$(IMAGE_ARCH) $(GO) build -trimpath -o $(IMAGE_BIN)/ ./controlplane/cmd/spoke-controlplane ./nodeagent/cmd/spoke-agent
	$(GO) run ./hack/images -bin $(IMAGE_BIN) -out $(BIN)/images -arch $(IMAGE_ARCH) \
		-repository $(IMAGE_REPOSITORY) -version $(IMAGE_VERSION) \
		-revision $$(git rev-parse HEAD) -created $$(git log -1 --format=%ct)

## generate: regenerate the wire API (and BPF objects) from their sources.
generate:
	$(GO) tool buf generate
	$(GO) generate ./...

$(GOLANGCI_LINT):
	@mkdir -p $(BIN)/tools
	GOBIN=$(BIN)/tools $(GO) install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION)
	mv $(BIN)/tools/golangci-lint $@

## lint: buf lint, gofmt, go vet and golangci-lint.
lint: $(GOLANGCI_LINT)
	$(GO) tool buf lint
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GOLANGCI_LINT) run ./...

## test: everything CI runs: generated code is current, lint, unit,
## integration and privileged tests with the race detector, short fuzzing.
test: deps
	@echo "== generated code is up to date"
	$(MAKE) generate
	git diff --exit-code -- proto datapath
	@echo "== lint"
	$(MAKE) lint
	@echo "== tests (real kube-apiserver, network namespaces, eBPF; privileged tests fail, not skip)"
	@mkdir -p $(BIN) && rm -f $(BIN)/conformance.txt
	CI=1 SPOKE_CONFORMANCE_SUMMARY=$(BIN)/conformance.txt $(GO) test -race -timeout $(TEST_TIMEOUT) ./...
	@cat $(BIN)/conformance.txt
	@echo "== a 200 MiB view held back (1 GiB of heap: without the race detector)"
	$(GO) test -count=1 -run '^TestViewOf200MiBIsHeldBack$$' ./controlplane/server
	@echo "== every benchmark once, at its -short size, so that none rots"
	$(GO) test -run '^$$' -bench . -benchtime 1x -short ./...
	@echo "== Spoke against kube-proxy, smoke size"
	$(MAKE) bench-kube-proxy BENCH_FLAGS=-quick
	@echo "== the kernel datapath tests again, on Debian's 6.1 kernel under qemu"
	$(MAKE) test-vm
	@echo "== the local cluster: traffic from every node and from outside to every demo service"
	$(MAKE) local-check
	@echo "== fuzz ($(FUZZTIME) each)"
	$(MAKE) test-fuzz

## test-unit: the tests that need no root and no API server build.
test-unit:
	$(GO) test -short ./...

## test-vm: the eBPF datapath and agent-restart tests in a qemu guest
## running Debian's 6.1 kernel (the kernel package is cached).
VM_PACKAGES := ./datapath/ebpf ./datapath/ipvs ./nodeagent/cmd/spoke-agent
test-vm: deps
	hack/vm/run-tests.sh $(VM_PACKAGES)

FUZZ_TARGETS := $(shell grep -rl --include='*_test.go' '^func Fuzz' . | xargs -r dirname | sort -u)

## test-fuzz: run every fuzz target for FUZZTIME.
test-fuzz:
	@set -e; for dir in $(FUZZ_TARGETS); do \
		for target in $$(grep -ho '^func Fuzz[A-Za-z0-9_]*' $$dir/*_test.go | sed 's/^func //'); do \
			echo "fuzz $$dir $$target"; \
			hack/fuzz/run.sh $(GO) $$dir $$target $(FUZZTIME); \
		done; \
	done

## fuzz: fuzz longer (FUZZTIME=10m make fuzz).
fuzz: FUZZTIME = 5m
fuzz: test-fuzz

## chaos: the fault scenarios (test/chaos, one test per
## scenario, TestScenarioN...) at full length: real processes, the real API
## server, eBPF in network namespaces; make test runs their short forms.
## Prints each scenario's result and ends with "chaos: N of M scenarios
## held"; exits non-zero unless all held. A scenario not built counts as not
## held. The log is in bin/chaos.log.
CHAOS_SCENARIOS := 9
CHAOS_TIMEOUT ?= 90m
chaos: deps
	@mkdir -p $(BIN)
	@CI=1 $(GO) test -count=1 -timeout $(CHAOS_TIMEOUT) -v -run '^TestScenario[0-9]' ./test/chaos -args -chaos.long > $(BIN)/chaos.log 2>&1; \
	grep -E '^--- (PASS|FAIL|SKIP): TestScenario[0-9]|^    [a-z_]+_test\.go:[0-9]+: ' $(BIN)/chaos.log; \
	held=$$(grep -cE '^--- PASS: TestScenario[0-9]' $(BIN)/chaos.log); \
	echo "chaos: $$held of $(CHAOS_SCENARIOS) scenarios held"; \
	test "$$held" -eq $(CHAOS_SCENARIOS)

## local: a real API server, the control plane, and three nodes (network
## namespaces, each with its agent on the eBPF datapath and its pods), with
## demo services of every kind; runs until interrupted.
# The local cluster uses fixed interface names and addresses: one at a time
# on a machine (flock waits for another to finish).
LOCAL_LOCK ?= /tmp/spoke-local.lock
local: deps build
	flock $(LOCAL_LOCK) $(GO) run ./hack/local -bin $(BIN)

## local-check: the same cluster, then a connection from every node and from
## outside to every demo service; prints a summary, cleans up, exits 0 or 1.
local-check: deps build
	flock $(LOCAL_LOCK) $(GO) run ./hack/local -bin $(BIN) -check

## cluster: a real Kubernetes cluster with Spoke as its only service proxy:
## kube-apiserver, etcd, kube-controller-manager and kube-scheduler on the
## host, two nodes (network namespaces, each with its own containerd and
## kubelet, zones zone-a and zone-b; CLUSTER_FLAGS="-nodes=6 -zones=3" for
## more), Spoke deployed from deploy/ with
## kustomize (its images built by make images first), CoreDNS behind kube-dns.
## Prints "READY kubeconfig=PATH nodes=N"; Ctrl-C or SIGTERM (to the
## spoke-cluster process) removes everything. Everything is built from Go
## modules into ~/.cache/spoke (about half an hour on 2 cores the first time).
# One cluster at a time on a machine: its names and addresses are fixed. The
# shell holds the lock and is replaced by the cluster, so signals reach it.
CLUSTER_LOCK ?= /tmp/spoke-cluster.lock
CLUSTER_FLAGS ?=
cluster: images build-cluster
	@exec 9>$(CLUSTER_LOCK); flock 9; exec $(BIN)/spoke-cluster $(CLUSTER_FLAGS)

## cluster-check: the same cluster, then a pod on node-1 reaches by DNS name a
## service whose only backend is on node-2, and its NodePort answers from the
## host; cleans up and exits 0 or 1.
cluster-check: images build-cluster
	@exec 9>$(CLUSTER_LOCK); flock 9; exec $(BIN)/spoke-cluster -check $(CLUSTER_FLAGS)

.PHONY: build-cluster
build-cluster:
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/spoke-cluster ./hack/cluster

## e2e: Kubernetes' own [sig-network] service-proxy tests (e2e.test v1.36.3:
## Services, Conntrack, EndpointSlice, Endpoints, Networking Granular Checks:
## Services, Traffic Distribution, Topology Hints) against make cluster, or
## against the cluster KUBECONFIG names; skips only hack/e2e/skip.txt. JUnit in
## bin/e2e-report; the last line is "e2e: P passed, F failed, S skipped, T
## total". E2E_FLAGS="-dry-run" lists the selected tests without a cluster.
E2E_FLAGS ?=
e2e: deps images
	$(GO) run ./hack/e2e -report-dir $(BIN)/e2e-report $(E2E_FLAGS)

## sim: the scale simulator (SIM_FLAGS="--scenario churn --nodes 5000 ...";
## go run ./scale-sim -h lists them).
SIM_FLAGS ?= --scenario churn --nodes 1000
sim:
	$(GO) run ./scale-sim $(SIM_FLAGS)

## bench-kube-proxy: Spoke's agent (eBPF) against real kube-proxy v1.36.3 in
## its nftables and iptables modes, side by side on network-namespace nodes
## against one real API server; the last line is a JSON object of ratios
## (BENCH_FLAGS=-quick for a smoke test; go run ./hack/bench-kube-proxy -h).
.PHONY: bench-kube-proxy
BENCH_PACKAGES := nftables iptables
BENCH_FLAGS ?=
bench-kube-proxy: build
	$(MAKE) deps DEBIAN_PACKAGES="$(BENCH_PACKAGES)"
	$(GO) run ./hack/bench-kube-proxy -bin $(BIN) $(BENCH_FLAGS)

clean:
	rm -rf $(BIN)
