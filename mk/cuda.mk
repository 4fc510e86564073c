# mk/cuda.mk: bootstrap test binary (CPU, part of `make test`) and the CUDA targets
# (built when nvcc exists; run only on the GPU machine).

# boot-probe: one rank of the TCP rendezvous, for tests/cli/test_boot*.sh. Linked from
# its own objects so a broken file elsewhere in libdsr1rt does not stop the boot tests.
BOOT_PROBE_OBJ := $(call obj,tests/boot_probe.c runtime/boot.c runtime/ident.c formats/err.c)
$(BUILD)/bin/boot-probe: $(BOOT_PROBE_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^

all: $(BUILD)/bin/boot-probe

# ---- CUDA (nvcc present): kernels, runtime, GPU tests and benchmarks ----
ifneq ($(HAVE_NVCC),)
CUDA_LIBS   := -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcublasLt -lnccl \
               -lcudart_static -ldl -lrt
KCU_SRC     := $(sort $(wildcard kernels/*.cu))
KCU_OBJ     := $(patsubst %.cu,$(BUILD)/obj/%.cu.o,$(KCU_SRC))
# CUDA host code of the runtime that is not in runtime/*.cu lives in runtime/cuda/.
RCU_SRC     := $(sort $(wildcard runtime/*.cu runtime/cuda/*.cu))
RCU_OBJ     := $(patsubst %.cu,$(BUILD)/obj/%.cu.o,$(RCU_SRC))
CUDA_HDRS   := $(wildcard kernels/*.h kernels/*.cuh runtime/*.h runtime/cuda/*.h formats/*.h)

$(BUILD)/obj/runtime/cuda/%.cu.o: runtime/cuda/%.cu $(CUDA_HDRS)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVFLAGS) -Iruntime/cuda -c $< -o $@
$(KCU_OBJ) $(RCU_OBJ): $(CUDA_HDRS)

GPU_LINK = $(CXX) -fopenmp -pthread -Wl,--as-needed -o $@ $^ $(LIBRT) $(LIBFMT) $(CUDA_LIBS) \
           -ljansson -lxxhash -lcrypto -lm

$(BUILD)/bin/test-kernels-gpu: $(BUILD)/obj/tests/gpu/test_kernels.cu.o $(KCU_OBJ) \
                               $(BUILD)/obj/runtime/upload.cu.o $(LIBRT) $(LIBFMT)
	@mkdir -p $(dir $@)
	$(CXX) -fopenmp -pthread -Wl,--as-needed -o $@ $(filter %.o,$^) $(LIBRT) $(LIBFMT) \
	  $(CUDA_LIBS) -ljansson -lxxhash -lcrypto -lm
$(BUILD)/obj/tests/gpu/%.cu.o: tests/gpu/%.cu $(CUDA_HDRS)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVFLAGS) -c $< -o $@

# The CUDA backend of dsr1-serve: its strong rt_cuda_generate is linked before
# libdsr1rt.a, so the weak stub in runtime/backend_nocuda.c is not pulled in.
CUDA_RT_OBJ := $(BUILD)/obj/runtime/cuda/cuda_generate.cu.o $(BUILD)/obj/runtime/cuda/cuda_model.cu.o \
               $(BUILD)/obj/runtime/comm_nccl.cu.o $(BUILD)/obj/runtime/upload.cu.o $(KCU_OBJ)
ifneq ($(wildcard tools/dsr1-serve.c),)
$(BUILD)/bin/dsr1-serve: $(BUILD)/obj/tools/dsr1-serve.o $(CUDA_RT_OBJ) $(LIBRT) $(LIBFMT)
	@mkdir -p $(dir $@)
	$(CXX) $(LDFLAGS) -o $@ $(BUILD)/obj/tools/dsr1-serve.o $(CUDA_RT_OBJ) $(LIBRT) $(LIBFMT) \
	  $(CUDA_LIBS) $(LIBS)
endif

# GPU benchmarks
$(BUILD)/bin/bench-load-gpu: $(BUILD)/obj/tests/gpu/bench_load.cu.o $(CUDA_RT_OBJ) $(LIBRT) $(LIBFMT)
	@mkdir -p $(dir $@)
	$(CXX) -fopenmp -pthread -Wl,--as-needed -o $@ $(filter %.o,$^) $(LIBRT) $(LIBFMT) \
	  $(CUDA_LIBS) -ljansson -lxxhash -lcrypto -lm
$(BUILD)/bin/bench-decode-gpu: $(BUILD)/obj/tests/gpu/bench_decode.cu.o $(CUDA_RT_OBJ) $(LIBRT) $(LIBFMT)
	@mkdir -p $(dir $@)
	$(CXX) -fopenmp -pthread -Wl,--as-needed -o $@ $(filter %.o,$^) $(LIBRT) $(LIBFMT) \
	  $(CUDA_LIBS) -ljansson -lxxhash -lcrypto -lm
$(BUILD)/obj/tests/gpu/%.cu.o: NVFLAGS += -Iruntime/cuda

GPU_BINS := $(BUILD)/bin/test-kernels-gpu $(BUILD)/bin/bench-load-gpu $(BUILD)/bin/bench-decode-gpu
gpu-build: $(GPU_BINS) $(BUILD)/bin/dsr1-serve

NGPU ?= 2
.PHONY: test-gpu gpu-build test-nccl bench-load bench-decode
test-gpu: $(GPU_BINS)
	@NCCL_NVLS_ENABLE=0 $(BUILD)/bin/test-kernels-gpu
test-nccl: all $(GPU_BINS)
	@BIN=$(BUILD)/bin NCCL_NVLS_ENABLE=0 tests/gpu/test_nccl.sh $(NGPU)
bench-load: all $(GPU_BINS)
	@BIN=$(BUILD)/bin scripts/bench_load.sh
bench-decode: all $(GPU_BINS)
	@BIN=$(BUILD)/bin scripts/bench_decode.sh
else
test-gpu gpu-build test-nccl bench-load bench-decode:
	@echo "nvcc not found: the CUDA targets need the CUDA toolkit (nvcc, cuBLASLt, NCCL)"; exit 2
endif
