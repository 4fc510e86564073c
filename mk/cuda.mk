# mk/cuda.mk: bootstrap test binary (CPU, part of `make test`) and the CUDA targets
# (built when nvcc exists; run only on the GPU machine).

# boot-probe: one rank of the TCP rendezvous, for tests/cli/test_boot*.sh. Linked from
# its own objects so a broken file elsewhere in libdsr1rt does not stop the boot tests.
BOOT_PROBE_OBJ := $(call obj,tests/boot_probe.c runtime/boot.c runtime/ident.c formats/err.c)
$(BUILD)/bin/boot-probe: $(BOOT_PROBE_OBJ)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^

all: $(BUILD)/bin/boot-probe
