# dsr1-shard: benchmark against cp -r and cat of the same files (scripts/bench_shard.sh).
# BENCH_LAYERS=n sizes the synthesized R1 checkpoint (default 4 layers, about 17 GB).
.PHONY: bench-shard
bench-shard: all
	@scripts/bench_shard.sh $(BUILD)
