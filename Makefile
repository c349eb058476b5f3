# ovfs — see README.md. `make test` is what CI runs (.ci/run).
CARGO ?= cargo

.PHONY: all build release demo test deps lint fmt clippy unit package fuzz fuzz-smoke clean bench bench-quick bench-deps

all: build

build:
	$(CARGO) build

release:
	$(CARGO) build --release

# The main job on the embedded default: a real guest mounts ovfs and shows files.
demo:
	scripts/demo.sh

# Everything CI checks: dependencies, formatting, lints, and every test (unit,
# host /dev/fuse mount, pjdfstest, real guests under QEMU, S3 on SeaweedFS), and
# the packages (tests/packaging.rs installs the deb built by `package`).
test: deps lint package
	tests/tools/with-s3.sh $(CARGO) test --all-targets -- --test-threads=2

deps:
	tests/tools/install-deps.sh
	tests/tools/trixie-kernel.sh >/dev/null

lint: fmt clippy

fmt:
	$(CARGO) fmt --check

clippy:
	$(CARGO) clippy --all-targets -- -D warnings

unit:
	$(CARGO) test --lib

# deb + rpm into target/package (packaging/build.sh; PACKAGE_PROFILE=debug for a quick one).
PACKAGE_PROFILE ?= release
package:
	packaging/build.sh --profile $(PACKAGE_PROFILE)

# Fuzz one target (FUZZ_TARGET: fuse_dispatch, vring_chains, kata_volumes, config_parse) from its
# corpus in fuzz/corpus/. RUSTC_BOOTSTRAP lets the stable toolchain take cargo-fuzz's -Z flags.
# FUZZ_BUILD="-O -s none" is the fast form used for the long campaigns (docs/SECURITY.md).
FUZZ_RUNS ?= 1000000
FUZZ_TARGET ?= fuse_dispatch
FUZZ_BUILD ?=
fuzz:
	tests/tools/install-deps.sh --fuzz --no-apt --no-s3
	cd fuzz && RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run $(FUZZ_BUILD) $(FUZZ_TARGET) corpus/$(FUZZ_TARGET) -- -runs=$(FUZZ_RUNS) -max_len=4096

fuzz-smoke:
	$(MAKE) fuzz FUZZ_RUNS=20000

# Benchmarks (not part of `make test`): daemon alone, guest (TCG) and S3 suites; results in
# bench/results/*.jsonl, tables and plots in docs/perf/ and docs/PERFORMANCE.md (bench/run.sh).
bench-deps:
	bench/deps.sh

bench: bench-deps
	bench/run.sh

# Small sizes, results in bench/results/quick/ (docs untouched).
bench-quick: bench-deps
	BENCH_QUICK=1 bench/run.sh

clean:
	$(CARGO) clean
	rm -rf .work
