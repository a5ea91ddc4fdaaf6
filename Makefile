# cookbook: run `make help` for the targets.
SHELL := /bin/bash
GO ?= go
BIN := bin
# The lab's control-plane binaries are cached per version set (see lab/bins/).
LAB_CACHE ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/cookbook/lab
# Packages tested with the race detector (needs cgo, so gcc): the engine (cookbooks/pipeline,
# cookbooks/state) and the cookbooks, and the packages at the boundaries they drive at once.
RACE_PKGS := ./cookbooks/... ./k8sops/... ./openstack/... ./ssh/... ./hooks/... ./silences/...

.PHONY: help build test lint lab-bins lab demo bench deb

help: ## show this help
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "}{printf "  %-12s %s\n", $$1, $$2}'

build: ## build cookbook and cookbook-lab into bin/
	$(GO) build -o $(BIN)/ ./cmd/...

lint: ## gofmt and go vet
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '^lab/bins/')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

lab-bins: ## build the lab's etcd, kube-* and kwok binaries into the cache (once per version set)
	@bash lab/bins/build.sh

test: lint lab-bins ## run all tests (builds the lab binaries first); RACE_PKGS with -race
	CGO_ENABLED=1 $(GO) test -race -count=1 -timeout 45m $(RACE_PKGS)
	$(GO) test -count=1 -timeout 40m $$(comm -23 <($(GO) list ./... | sort) <($(GO) list $(RACE_PKGS) | sort))

# The package version is the top entry of packaging/changelog; the commit is stamped too.
VERSION ?= $(shell awk -F'[()]' 'NR == 1 { print $$2 }' packaging/changelog)
COMMIT ?= $(shell git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
DEB_BUILD := build/deb# packaging/nfpm.yaml names these paths

deb: ## build build/cookbook_VERSION_amd64.deb (stripped binary, man page, completions, example config) with nfpm
	rm -rf $(DEB_BUILD) && mkdir -p $(DEB_BUILD)
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w -X main.version=$(VERSION) -X main.commit=$(COMMIT)" -o $(DEB_BUILD)/cookbook ./cmd/cookbook
	$(DEB_BUILD)/cookbook man | gzip -9n > $(DEB_BUILD)/cookbook.1.gz
	$(DEB_BUILD)/cookbook completion bash > $(DEB_BUILD)/cookbook.bash
	$(DEB_BUILD)/cookbook completion zsh > $(DEB_BUILD)/cookbook.zsh
	$(DEB_BUILD)/cookbook completion fish > $(DEB_BUILD)/cookbook.fish
	cp testdata/config.yaml $(DEB_BUILD)/config.yaml
	gzip -9n < packaging/changelog > $(DEB_BUILD)/changelog.gz
	COOKBOOK_VERSION=$(VERSION) $(GO) tool -modfile=packaging/tools/go.mod nfpm package --config packaging/nfpm.yaml --packager deb --target build/
	@ls -l build/cookbook_$(VERSION)_amd64.deb

lab: build lab-bins ## run the lab in the foreground (Ctrl-C stops it); prints the export line for cookbook
	bin/cookbook-lab up

demo: build ## bring up the lab and run add-k8s-node, roll-reboot and remove-k8s-node against it
	@bash scripts/demo.sh

# BENCH_WORKERS: the number of workers of the list-nodes benchmark's lab (200 if unset).
# BENCH_ROLL_WORKERS, BENCH_PODS, BENCH_REBOOT_SECONDS: the roll-reboot benchmark's lab (500
# workers, 20,000 pods, VMs down 20 s per reboot if unset; about 40 minutes on 2 cores).
# BENCH_HEAPPROFILE=FILE: the roll's cookbook process writes its heap profile at its peak there.
bench: lab-bins ## drain benchmarks against the lab: vs kubectl drain on identical 100-pod nodes; peak RSS in a 10,000-pod lab; the cookbook binary's drain vs kubectl drain on identical nodes of 1,000 PDB-bound pods; list-nodes in a lab of BENCH_WORKERS workers; roll-reboot of BENCH_ROLL_WORKERS workers 25 at a time vs its lower bound (prints tables)
	@$(GO) test -run '^$$' -bench BenchmarkDrain -benchtime 1x -timeout 40m ./k8sops/ > bench.out 2>&1 || { cat bench.out; exit 1; }
	@$(GO) test -run '^$$' -bench BenchmarkDrainMemory -benchtime 1x -timeout 40m ./cmd/cookbook/ >> bench.out 2>&1 || { cat bench.out; exit 1; }
	@$(GO) test -run '^$$' -bench BenchmarkDrainPDB1000 -benchtime 1x -timeout 60m ./cmd/cookbook/ >> bench.out 2>&1 || { cat bench.out; exit 1; }
	@awk 'BEGIN {printf "%-52s %10s %10s %7s %10s %10s %11s %13s\n", "benchmark", "cookbook", "kubectl", "ratio", "peak RSS", "of it anon", "kubectl RSS", "429s cb/kctl"} \
	  /^BenchmarkDrain/ { delete v; for (i = 2; i <= NF; i++) v[$$i] = $$(i-1); \
	    k = ("kubectl-s/drain" in v) ? sprintf("%9.1fs", v["kubectl-s/drain"]) : "-"; \
	    r = ("ratio" in v) ? sprintf("%.2f", v["ratio"]) : "-"; \
	    m = ("peak-RSS-MB" in v) ? sprintf("%7.0f MB", v["peak-RSS-MB"]) : "-"; \
	    a = ("peak-anon-MB" in v) ? sprintf("%7.0f MB", v["peak-anon-MB"]) : "-"; \
	    kr = ("kubectl-peak-RSS-MB" in v) ? sprintf("%8.0f MB", v["kubectl-peak-RSS-MB"]) : "-"; \
	    e = ("cookbook-429s/drain" in v) ? sprintf("%d/%d", v["cookbook-429s/drain"], v["kubectl-429s/drain"]) : "-"; \
	    printf "%-52s %9.1fs %10s %7s %10s %10s %11s %13s\n", $$1, v["cookbook-s/drain"], k, r, m, a, kr, e; \
	    if ("cookbook-react-s" in v) printf "  from a PDB'"'"'s status update by the disruption controller to the next eviction: cookbook %.2fs, kubectl %.2fs on average\n", v["cookbook-react-s"], v["kubectl-react-s"] }' bench.out
	@$(GO) test -run '^$$' -bench BenchmarkListNodes -benchtime 1x -timeout 40m ./lab/stack/ >> bench.out 2>&1 || { cat bench.out; exit 1; }
	@echo
	@awk 'BEGIN {printf "%-36s %8s %10s %10s %10s %10s\n", "benchmark", "workers", "lab up", "cookbook", "peak RSS", "of it anon"} \
	  /^BenchmarkListNodes/ { delete v; for (i = 2; i <= NF; i++) v[$$i] = $$(i-1); \
	    printf "%-36s %8d %9.1fs %9.2fs %7.0f MB %7.0f MB\n", $$1, v["workers"], v["lab-up-s"], v["cookbook-s/list-nodes"], v["peak-RSS-MB"], v["peak-anon-MB"] }' bench.out
	@$(GO) test -run '^$$' -bench BenchmarkRollReboot -benchtime 1x -timeout 120m ./lab/stack/ >> bench.out 2>&1 || { cat bench.out; exit 1; }
	@echo
	@awk 'BEGIN {printf "%-22s %7s %6s %7s %8s %8s %8s %6s %10s %9s %9s\n", "benchmark", "workers", "pods", "lab up", "pods up", "wall", "bound", "ratio", "over/batch", "peak RSS", "req/node"} \
	  /^BenchmarkRollReboot/ { delete v; for (i = 2; i <= NF; i++) v[$$i] = $$(i-1); \
	    printf "%-22s %7d %6d %6.0fs %7.0fs %7.0fs %7.0fs %6.3f %9.2fs %6.0f MB %9.1f\n", $$1, v["workers"], v["pods"], v["lab-up-s"], v["workload-up-s"], v["wall-s"], v["lower-bound-s"], v["ratio"], v["overhead-s/batch"], v["peak-RSS-MB"], v["requests/node"]; \
	    printf "  overhead per batch: waiting for the batch'"'"'s slowest node %.2fs, health gate beyond its window %.2fs, other steps %.2fs, between steps %.2fs, start and end %.2fs; cluster-wide lists and watches: %d\n", \
	      v["barrier-s/batch"], v["gate-over-window-s/batch"], v["other-steps-s/batch"], v["between-steps-s/batch"], v["start-end-s/batch"], v["cluster-wide-lists"]; \
	    printf "  API requests per node by type:"; \
	    for (i = 3; i <= NF; i++) if ($$i ~ /-req\/node$$/) { k = $$i; sub(/-req\/node$$/, "", k); printf " %s %s", k, $$(i-1) }; printf "\n" }' bench.out
