# dsr1: plain GNU make. Everything builds under $(BUILD); binaries in $(BUILD)/bin.
# Sources are discovered by wildcard: formats/*.c kernels/*.c runtime/*.c -> libraries,
# tools/dsr1-*.c -> one binary each, tests/unit/*.c -> one test runner.

BUILD    ?= build
CC       ?= gcc
NVCC     ?= nvcc
CUDA_HOME?= /usr/local/cuda
OPT      ?= -O2
SAN      ?=
CFLAGS   := -std=c11 -Wall -Wextra -Werror $(OPT) -g -fopenmp -D_GNU_SOURCE -pthread \
            -Iformats -Ikernels -Iruntime -Itools/lib $(SAN) $(EXTRA_CFLAGS)
LDFLAGS  := -fopenmp -pthread -Wl,--as-needed $(SAN)
LIBS     := -ljansson -lxxhash -larchive -lcrypto -lm
HAVE_NVCC:= $(shell command -v $(NVCC) 2>/dev/null)

FORMATS_SRC := $(sort $(wildcard formats/*.c))
KERNELS_SRC := $(sort $(wildcard kernels/*.c))
RUNTIME_SRC := $(sort $(wildcard runtime/*.c))
TOOLS_SRC   := $(sort $(wildcard tools/dsr1-*.c))
TOOLLIB_SRC := $(sort $(wildcard tools/lib/*.c))
UNIT_SRC    := $(sort $(wildcard tests/unit/*.c))
CUDA_SRC    := $(sort $(wildcard kernels/*.cu runtime/*.cu))

obj = $(patsubst %.c,$(BUILD)/obj/%.o,$(1))
FORMATS_OBJ := $(call obj,$(FORMATS_SRC))
RT_OBJ      := $(call obj,$(KERNELS_SRC) $(RUNTIME_SRC) $(TOOLLIB_SRC))
TOOLS       := $(patsubst tools/%.c,$(BUILD)/bin/%,$(TOOLS_SRC))
LIBFMT      := $(BUILD)/lib/libdsr1formats.a
LIBRT       := $(BUILD)/lib/libdsr1rt.a

.PHONY: all test demo asan fuzz help clean deps bench cuda

all: $(TOOLS) $(BUILD)/bin/unit-tests

help:
	@echo "make            build tools into $(BUILD)/bin"
	@echo "make demo       synthesize the tiny model and run the pipeline on it"
	@echo "make test       build and run every CPU test (ends with 'N passed, M failed')"
	@echo "make asan       the tests under AddressSanitizer + UBSan (build/asan)"
	@echo "make fuzz       build the libFuzzer targets; FUZZ_SECONDS=n runs each for n s"
	@echo "make bench-shard bench-verify bench-sampler   CPU benchmarks with same-run baselines"
	@echo "make bench-load bench-decode test-gpu test-nccl NGPU=n   GPU machine only"
	@echo "make clean"

deps:
	@scripts/install-deps.sh

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -MMD -MP -c $< -o $@

$(LIBFMT): $(FORMATS_OBJ)
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^

$(LIBRT): $(RT_OBJ)
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^

# The tool object comes from the generic rule, so its .d file tracks header changes;
# .SECONDARY keeps make from deleting it as an intermediate.
.SECONDARY: $(patsubst tools/%.c,$(BUILD)/obj/tools/%.o,$(TOOLS_SRC))
$(BUILD)/bin/%: $(BUILD)/obj/tools/%.o $(LIBRT) $(LIBFMT)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $< $(LIBRT) $(LIBFMT) $(LIBS)

$(BUILD)/bin/unit-tests: $(call obj,$(UNIT_SRC)) $(LIBRT) $(LIBFMT)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $(call obj,$(UNIT_SRC)) $(LIBRT) $(LIBFMT) $(LIBS)

# ---- fuzzing (clang libFuzzer) ----
FUZZ_SRC := $(sort $(wildcard tests/fuzz/fuzz_*.c))
FUZZ_BIN := $(patsubst tests/fuzz/%.c,$(BUILD)/fuzz/%,$(FUZZ_SRC))
FUZZ_SECONDS ?= 30
$(BUILD)/fuzz/%: tests/fuzz/%.c $(FORMATS_SRC)
	@mkdir -p $(dir $@)
	clang -std=c11 -g -O1 -D_GNU_SOURCE -Iformats -fsanitize=fuzzer,address,undefined \
	  -o $@ $< $(FORMATS_SRC) -ljansson -lxxhash -lcrypto -larchive -lm -fopenmp
fuzz: $(FUZZ_BIN)
	@for f in $(FUZZ_BIN); do n=$$(basename $$f); mkdir -p $(BUILD)/fuzz/corpus-$$n; \
	  $$f -max_total_time=$(FUZZ_SECONDS) -max_len=65536 $(BUILD)/fuzz/corpus-$$n tests/fuzz/seeds-$${n#fuzz_} || exit 1; done

# ---- tests ----
test: deps all $(FUZZ_BIN)
	@BUILD=$(BUILD) FUZZ_SECONDS=$(FUZZ_SECONDS) tests/run.sh

asan:
	$(MAKE) BUILD=build/asan OPT=-O1 SAN="-fsanitize=address,undefined -fno-omit-frame-pointer" \
	  EXTRA_CFLAGS=-fno-sanitize-recover=all all
	@BUILD=build/asan ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	  SKIP_FUZZ=1 SKIP_SLOW=1 tests/run.sh

demo: deps all
	@scripts/demo.sh $(BUILD)

# ---- benchmarks (not timed tests; they print ratios against same-run baselines) ----
bench: bench-shard bench-verify

# ---- CUDA (built only when nvcc is present; run only on the GPU machine) ----
ifneq ($(HAVE_NVCC),)
NVFLAGS := -O2 -g -std=c++17 -gencode=arch=compute_90a,code=sm_90a -Iformats -Ikernels -Iruntime \
           -Xcompiler -fopenmp,-Wall
CUDA_OBJ := $(patsubst %.cu,$(BUILD)/obj/%.cu.o,$(CUDA_SRC))
$(BUILD)/obj/%.cu.o: %.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(NVFLAGS) -c $< -o $@
cuda: $(CUDA_OBJ)
endif

clean:
	rm -rf $(BUILD)

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)

# Per-area additions (bench/test targets of each area) live in mk/*.mk.
-include $(sort $(wildcard mk/*.mk))
