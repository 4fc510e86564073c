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

$(BUILD)/bin/test-kernels-gpu: $(BUILD)/obj/tests/gpu/test_kernels.cu.o $(KCU_OBJ) $(LIBRT) $(LIBFMT)
	@mkdir -p $(dir $@)
	$(CXX) -fopenmp -pthread -Wl,--as-needed -o $@ $(filter %.o,$^) $(LIBRT) $(LIBFMT) \
	  $(CUDA_LIBS) -ljansson -lxxhash -lcrypto -lm
$(BUILD)/obj/tests/gpu/%.cu.o: tests/gpu/%.cu $(CUDA_HDRS)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVFLAGS) -c $< -o $@

GPU_BINS := $(BUILD)/bin/test-kernels-gpu
gpu-build: $(GPU_BINS)

.PHONY: test-gpu gpu-build
test-gpu: $(GPU_BINS)
	@NCCL_NVLS_ENABLE=0 $(BUILD)/bin/test-kernels-gpu
else
test-gpu gpu-build:
	@echo "nvcc not found: the CUDA targets need the CUDA toolkit (nvcc, cuBLASLt, NCCL)"; exit 2
endif
