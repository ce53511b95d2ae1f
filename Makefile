# ipvirt: per-session and per-program virtual IPs on Linux.
#
#   make demo    build, then replay the duplicate-IP scenario end to end
#   make test    build, check that git tracks no binary, vet, run every fuzz
#                target briefly (FUZZTIME_CI=1s each) and every test (root
#                runs the namespace, eBPF and audit-session tests too;
#                CI=true makes them required)
#   make bench   run the load benchmarks and print their ratios (LOAD=1 adds
#                the 2,000-session load run, about five minutes)
#   make build   binaries into bin/
#   make deb     build, then the Debian package bin/ipvirt_<version>_<arch>.deb
#                (scripts/deb.sh; README "Debian package")
#   make deps    install the Debian packages the build and tests need
#   make fuzz    every fuzz target for FUZZTIME (30s) each, a summary line
#                per target (FUZZ=regexp picks targets)
#   make farm-test  the etcd farm's fault campaign (cluster member and quorum
#                loss, the farm scenarios); root, about 8 minutes
#   make fuzz-long  every fuzz target for FUZZTIME=10m each, then the
#                allocator's rapid state machine for RAPID_CHECKS=10000
#                sequences (about 3.9 hours serially; FUZZ=regexp splits it
#                into lanes run side by side); a summary line per target

GO      ?= go
BIN     := $(CURDIR)/bin
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/ipvirt/ipvirt/internal/daemon.Version=$(VERSION)

.PHONY: all build deb deps test demo bench generate fuzz fuzz-long install clean

all: build

deps:
	@./scripts/deps.sh

build: deps
	@mkdir -p $(BIN)
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/ ./cmd/...
	@for d in lsp/preload sim/dbclient; do \
		if [ -f $$d/Makefile ]; then $(MAKE) --no-print-directory -C $$d OUT=$(BIN) || exit 1; fi; \
	done

# The package holds the binaries of build, stripped, in Debian's paths
# (/usr, not PREFIX); scripts/deb.sh prints the path of the .deb it wrote.
deb: build
	@./scripts/deb.sh $(BIN) $(BIN)

# Regenerates the eBPF objects from lsp/bpf/*.bpf.c (bpf2go). The objects are
# committed, so only someone editing the C needs clang.
generate: deps
	$(GO) generate ./lsp/bpf/...

# Tests run against the binaries in bin/ (integration tests start the real
# ipvirtd), so build first. Every package runs at once, the scenario files
# too: each scenario and each daemon test puts its sessions in a cgroup of
# its own and scopes its daemon (and kernel programs) to it, so no test
# sees another's sessions. check-tracked.sh first: a binary in git (bin/,
# a bench program) would ship in every clone.
# The fuzz step replays every target's seeds and findings, then fuzzes it
# for FUZZTIME_CI: about 80 s from a cold build cache on 2 cores, 30 s warm
# (where the cache holds a large corpus from earlier runs, replaying it may
# take the whole second).
FUZZTIME_CI ?= 1s
test: build
	@./scripts/check-tracked.sh
	$(GO) vet ./...
	@./scripts/fuzz.sh $(FUZZTIME_CI)
	IPVIRT_BIN=$(BIN) $(GO) test -count=1 -p 2 -timeout 20m ./...

demo: build
	@$(BIN)/ipvirt-sim run scenarios/duplicate-ip.yaml

bench: build
	@./bench/run.sh

fuzz: FUZZTIME ?= 30s
fuzz:
	@./scripts/fuzz.sh $(FUZZTIME)

# Each target for 10 minutes (22 targets: over three and a half hours), then 10,000
# sequences of the rapid state machine, which starts real sessions and
# processes: about 10 minutes on 2 cores (1,000 take a minute). The summary
# at the end has a line per target. Override either:
# make fuzz-long FUZZTIME=1m RAPID_CHECKS=1000.
# The etcd farm's fault campaign, too long and too CPU-hungry for make test
# on 2 cores: 3-member clusters losing a member and their quorum
# (internal/source/etcd), and the farm scenarios (3 hosts, each with its
# ipvirtd, beside a 3-member cluster). Root. About 8 minutes.
farm-test: build
	IPVIRT_ETCD_FAULTS=1 $(GO) test -count=1 -timeout 20m -run 'TestMemberDown|TestQuorumLost|TestAcquireWithMemberFrozen' ./internal/source/etcd/
	IPVIRT_SIM_FARM=1 $(GO) test -count=1 -timeout 30m -run 'TestScenarioFiles/farm' ./sim/scenario/runner/

fuzz-long: FUZZTIME ?= 10m
fuzz-long: RAPID_CHECKS ?= 10000
fuzz-long:
	@RAPID_CHECKS=$(RAPID_CHECKS) ./scripts/fuzz.sh $(FUZZTIME)

# Installs into PREFIX (default /usr/local) and DESTDIR: the daemon in sbin,
# ipvirtctl in bin, the preload library in lib/ipvirt, the systemd unit (its
# /usr/local paths made PREFIX), and an example config (never overwriting
# /etc/ipvirt/ipvirt.yaml).
PREFIX ?= /usr/local
install: build
	install -D -m 0755 $(BIN)/ipvirtd $(DESTDIR)$(PREFIX)/sbin/ipvirtd
	install -D -m 0755 $(BIN)/ipvirtctl $(DESTDIR)$(PREFIX)/bin/ipvirtctl
	@if [ -f $(BIN)/libipvirt.so ]; then install -D -m 0755 $(BIN)/libipvirt.so $(DESTDIR)$(PREFIX)/lib/ipvirt/libipvirt.so; fi
	@mkdir -p $(DESTDIR)/etc/systemd/system
	sed 's#/usr/local/#$(PREFIX)/#g' deploy/ipvirtd.service > $(DESTDIR)/etc/systemd/system/ipvirtd.service
	chmod 0644 $(DESTDIR)/etc/systemd/system/ipvirtd.service
	install -D -m 0644 deploy/ipvirt.yaml $(DESTDIR)/etc/ipvirt/ipvirt.yaml.example
	install -D -m 0644 README.md $(DESTDIR)$(PREFIX)/share/doc/ipvirt/README.md
	install -D -m 0644 deploy/prometheus/ipvirt-rules.yml $(DESTDIR)$(PREFIX)/share/ipvirt/prometheus/ipvirt-rules.yml
	install -D -m 0644 deploy/grafana/ipvirt-dashboard.json $(DESTDIR)$(PREFIX)/share/ipvirt/grafana/ipvirt-dashboard.json

clean:
	rm -rf $(BIN)
