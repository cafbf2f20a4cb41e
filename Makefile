# celld — Cloud Foundry Diego cell daemon.
#
#   make deps         install the Debian packages celld needs (root; apt only if something is missing)
#   make rootfs       build the tiny test rootfs into rootfs/out/tiny (seconds)
#   make rootfs-full  build a debootstrapped bookworm rootfs into rootfs/out/bookworm (minutes, network)
#   make build        cargo build --release --bins
#   make run          run celld --local in the foreground and push examples/hello (RUN_ARGS="..." appends arguments)
#   make test         cargo test --release --workspace, serially, with CELLD_ROOTFS_DIR set
#   make bench        run the celld-bench binary (BENCH_ARGS="..." appends arguments)
#   make lint         cargo fmt --check + clippy -D warnings
#   make fuzz         bounded libFuzzer run of every fuzz/ target (FUZZ_SECONDS per target, 60 by default)
#   make clean        remove rootfs/out and target

SHELL := /bin/bash
.DEFAULT_GOAL := build

# Find cargo: on PATH, else rustup's default location.
export PATH := $(PATH):$(HOME)/.cargo/bin
CARGO ?= $(or $(shell command -v cargo 2>/dev/null),$(wildcard $(HOME)/.cargo/bin/cargo),cargo)

ROOTFS_SCRIPT := scripts/build-rootfs.sh
ROOTFS_OUT    := rootfs/out
ROOTFS_DIR    := $(CURDIR)/$(ROOTFS_OUT)
STAMP         := .celld-rootfs-stamp
TINY_STAMP    := $(ROOTFS_OUT)/tiny/$(STAMP)
BOOKWORM_STAMP := $(ROOTFS_OUT)/bookworm/$(STAMP)

RUN_ARGS   ?=
TEST_ARGS  ?=
BENCH_ARGS ?=

DEB_PACKAGES := libseccomp-dev libnftables-dev busybox-static bash-static protobuf-compiler gcc libc6-dev \
                iptables nftables runc iproute2 pkg-config debootstrap \
                tar procps python3-venv libsqlite3-dev \
                openssh-client openssh-server gcc libc6-dev openssl \
                btrfs-progs docker-registry skopeo umoci curl chromium chromium-driver \
                nginx-light wrk

# Use sudo only when not already root.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: all deps rootfs rootfs-full build lifecycle run test bench lint fuzz clean

all: build

# Fast and offline when everything is installed: apt is touched only if
# dpkg reports a package missing.
deps:
	@missing=""; \
	for p in $(DEB_PACKAGES); do \
	  dpkg -s "$$p" 2>/dev/null | grep -q '^Status: install ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "deps: installing:$$missing"; \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -q && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi
	@# moto_server: the local S3 server of the blobstore tests, in a venv of
	@# Debian's python3 (not whatever python3 comes first on PATH).
	@if [ ! -x /opt/celld-venv/bin/moto_server ]; then \
	  echo "deps: installing moto (local S3 server for tests) into /opt/celld-venv"; \
	  $(SUDO) /usr/bin/python3 -m venv /opt/celld-venv && \
	  $(SUDO) /opt/celld-venv/bin/pip install -q 'moto[server]>=5,<6'; \
	fi
	@# cloudfoundry-client: a real third-party CC v3 client for the CF API's
	@# tests (tests/cf_api/cf_client.py).
	@if ! /opt/celld-venv/bin/python -c 'import cloudfoundry_client' 2>/dev/null; then \
	  echo "deps: installing cloudfoundry-client (CC v3 client for tests) into /opt/celld-venv"; \
	  $(SUDO) /opt/celld-venv/bin/pip install -q 'cloudfoundry-client==1.40.4'; \
	fi
	@# prometheus_client: its OpenMetrics parser reads /metrics in tests/metrics.rs.
	@if ! /opt/celld-venv/bin/python -c 'import prometheus_client.openmetrics.parser' 2>/dev/null; then \
	  echo "deps: installing prometheus_client (OpenMetrics parser for tests) into /opt/celld-venv"; \
	  $(SUDO) /opt/celld-venv/bin/pip install -q 'prometheus_client>=0.20,<1'; \
	fi

rootfs: deps $(TINY_STAMP)

$(TINY_STAMP): $(ROOTFS_SCRIPT) rootfs/tiny/adduser rootfs/tiny/addgroup | deps
	$(SUDO) bash $(ROOTFS_SCRIPT) tiny $(ROOTFS_OUT)/tiny

rootfs-full: deps $(BOOKWORM_STAMP)

$(BOOKWORM_STAMP): $(ROOTFS_SCRIPT) | deps
	$(SUDO) bash $(ROOTFS_SCRIPT) bookworm $(ROOTFS_OUT)/bookworm

# The in-container lifecycle binary and the container init are static (the tiny
# rootfs has no libc): they are built for the host triple named explicitly, so
# crt-static reaches them but not build scripts or proc macros; their own crates
# (crates/celld-lifecycle, crates/celld-init) carry only the few crates they need.
HOST_TRIPLE := $(shell $(CARGO) -vV 2>/dev/null | sed -n 's/^host: //p')
TRIPLE_ENV  := $(shell echo '$(HOST_TRIPLE)' | tr 'a-z-' 'A-Z_')
LIFECYCLE   := target/release/celld-lifecycle
INIT        := target/release/celld-init

build: deps
	$(CARGO) build --release --bins
	$(MAKE) --no-print-directory lifecycle

lifecycle: deps
	CARGO_TARGET_$(TRIPLE_ENV)_RUSTFLAGS="-C target-feature=+crt-static" \
	  $(CARGO) build --release --target $(HOST_TRIPLE) -p celld-lifecycle --bin celld-lifecycle -p celld-init --bin celld-init
	install -D -m 0755 target/$(HOST_TRIPLE)/release/celld-lifecycle $(LIFECYCLE)
	install -D -m 0755 target/$(HOST_TRIPLE)/release/celld-init $(INIT)

# celld --local in the foreground, then pushes examples/hello (scripts/run-local.sh).
run: build rootfs lifecycle
	ROOTFS_DIR=$(ROOTFS_DIR) bash scripts/run-local.sh $(RUN_ARGS)

# Tests touch the host (namespaces, cgroups, iptables): run them serially.
test: export CELLD_ROOTFS_DIR := $(ROOTFS_DIR)
test: deps rootfs lifecycle
	$(CARGO) test --release --workspace $(TEST_ARGS) -- --test-threads=1

# The router phase's app is pushed into the tiny rootfs (no libc): its
# backend is built static like the lifecycle and put beside celld-bench.
bench: build rootfs
	CARGO_TARGET_$(TRIPLE_ENV)_RUSTFLAGS="-C target-feature=+crt-static" \
	  $(CARGO) build --release --target $(HOST_TRIPLE) -p celld-bench-backend
	install -D -m 0755 target/$(HOST_TRIPLE)/release/celld-bench-backend target/release/celld-bench-backend
	$(CARGO) run --release --bin celld-bench -- --rootfs-dir $(ROOTFS_DIR) $(BENCH_ARGS)

lint: deps
	$(CARGO) fmt --all --check
	$(CARGO) fmt --check --manifest-path fuzz/Cargo.toml
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings

# Not part of `make test`: ~10 minutes (9 targets x FUZZ_SECONDS) after one
# instrumented build of the daemon crate. Installs cargo-fuzz if missing; fails
# on any crash. The seeds in fuzz/corpus are in the repository; what a run finds
# stays in fuzz/target/work.
FUZZ_SECONDS ?= 60
fuzz: deps
	CARGO=$(CARGO) FUZZ_SECONDS=$(FUZZ_SECONDS) bash scripts/fuzz.sh

clean:
	rm -rf --one-file-system $(ROOTFS_OUT) target
