# mk/verify.mk: dsr1-verify / dsr1-pack area targets.

# CPU benchmark: dsr1-verify GB/s with same-run ratios to cat and xxh128sum
# (scripts/bench_verify.sh documents BENCH_* knobs).
.PHONY: bench-verify
bench-verify: $(BUILD)/bin/dsr1-synth $(BUILD)/bin/dsr1-shard $(BUILD)/bin/dsr1-verify
	@scripts/bench_verify.sh $(BUILD)
