# sockhop — build, test and try it. Everything that touches the kernel runs as root.
SHELL := /bin/bash
GO ?= go
BIN := bin
# The version both binaries report (sockhop version, sockhop_build_info).
VERSION ?= $(shell hack/version.sh)
LDFLAGS := -X main.version=$(VERSION)

.PHONY: all deps generate check-generate build test test-go test-unit bench bench-sockperf bench-http lint envtest-assets images e2e-cluster e2e-down e2e e2e-test soak demo test-kernels clean

all: build

## deps: install what a fresh Debian machine lacks (clang for BPF, iproute2, iptables...)
deps:
	hack/deps.sh

## generate: compile bpf/*.c with clang and regenerate the committed bpf2go output
generate:
	$(GO) generate ./pkg/datapath

## check-generate: fail when the committed BPF objects differ from what the sources produce
check-generate: generate
	@git diff --exit-code -- pkg/datapath/sockhop_bpfel.go pkg/datapath/sockhop_bpfel.o pkg/datapath/abort_bpfel.go pkg/datapath/abort_bpfel.o \
		pkg/datapath/fguard_bpfel.go pkg/datapath/fguard_bpfel.o \
		|| { echo "committed BPF objects are stale: run 'make generate' and commit" >&2; exit 1; }

## build: the agent and the CLI into bin/
build:
	CGO_ENABLED=0 $(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/ ./cmd/...

lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed" >&2; exit 1; }
	$(GO) vet ./...

## envtest-assets: kube-apiserver and etcd for the controller tests (built once, cached)
envtest-assets:
	e2e/cluster/build.sh envtest >/dev/null

## test: the whole suite — unit, kernel (root), controllers against a real API server,
## then end to end on a single-node cluster started (and removed) for it
test: test-go e2e

## test-go: every Go test but the cluster ones (packages one at a time: they share the kernel)
test-go: deps envtest-assets
	KUBEBUILDER_ASSETS="$$(e2e/cluster/build.sh envtest)" $(GO) test -p 1 -count=1 -timeout 60m ./...

## test-unit: only what needs neither root nor a cluster
test-unit:
	$(GO) test -count=1 -short ./...

## bench: the side-by-side datapath benchmarks (accelerated vs plain TCP), as in docs/benchmarks.md
bench: deps
	$(GO) test -run '^$$' -bench BenchmarkDatapath -benchtime 1x -timeout 30m ./pkg/bench

## bench-sockperf: a third-party cross-check: Debian's sockperf ping-pong, app uid ↔ sidecar
## uid on one CPU, plain TCP and sockhop's default options alternately (ROUNDS pairs, default 5)
ROUNDS ?= 5
bench-sockperf: deps build
	hack/deps.sh sockperf
	hack/bench-sockperf.sh $(ROUNDS)

## bench-http: HTTP through a real proxy sidecar, third-party parts only: wrk -> HAProxy
## (uid 1337) -> HAProxy as the app, one CPU, plain TCP and default options alternately
bench-http: deps build
	hack/deps.sh haproxy wrk
	hack/bench-http.sh $(ROUNDS)

## demo: local single-node cluster + Helm install + a mesh workload measured before/after opting in
demo: deps
	e2e/demo.sh

## test-kernels: boot Debian's 6.1 and 6.12 LTS kernels under qemu and run doctor and the
## kernel tests in each (SOCKHOP_KERNELS and the other knobs: e2e/kernels/matrix.sh)
test-kernels:
	e2e/kernels/matrix.sh

## images: the agent and mesh-workload images, built without a Docker engine (OCI archives)
images:
	VERSION=$(VERSION) e2e/images.sh

## e2e: build the cluster and images, start the cluster, run ./e2e, tear it all down
e2e: deps
	e2e/run.sh

## soak: the fault-injection soak alone on a fresh cluster, for SOAK (default 10m):
## pod churn, agent kills and restarts, label toggles, a helm upgrade, checked streams
SOAK ?= 10m
soak: deps
	SOCKHOP_SOAK=$(SOAK) e2e/run.sh -run TestSoak -v

## e2e-test: run ./e2e against the cluster that is up
e2e-test:
	SOCKHOP_E2E=1 e2e/cluster/exec.sh $(GO) test -count=1 -timeout 30m ./e2e/...

e2e-cluster:
	e2e/cluster/build.sh
	e2e/cluster/up.sh

## e2e-down: uninstall sockhop from the local cluster, stop it and remove everything it made
e2e-down:
	e2e/down.sh

clean:
	rm -rf $(BIN)
