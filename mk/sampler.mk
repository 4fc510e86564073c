# mk/sampler.mk: the host sampler's benchmark.

# CPU benchmark: ms to sample one token of R1's vocabulary, against the full-sort
# sampler measured in the same run (tests/bench/bench_sampler.c).
.PHONY: bench-sampler
$(BUILD)/bin/bench-sampler: tests/bench/bench_sampler.c $(LIBRT) $(LIBFMT)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -o $@ $< $(LIBRT) $(LIBFMT) $(LIBS)
bench-sampler: deps $(BUILD)/bin/bench-sampler
	@$(BUILD)/bin/bench-sampler
bench: bench-sampler
