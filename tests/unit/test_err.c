#include "test.h"
#include "err.h"

#include <errno.h>

TEST(err_set_and_exit_codes)
{
    dsr1_err e;
    dsr1_err_clear(&e);
    CHECK_EQ_INT(dsr1_err_set(&e, DSR1_E_IO, 7, ENOSPC, "writing %s", "x.safetensors"), DSR1_E_IO);
    CHECK_CONTAINS(e.msg, "writing x.safetensors: ");
    CHECK_CONTAINS(e.msg, "No space");
    CHECK_EQ_INT(dsr1_err_exit_code(&e), 3);
    dsr1_err_prefix(&e, "shard %d", 3);
    CHECK_CONTAINS(e.msg, "shard 3: writing");
    e.status = DSR1_E_MISMATCH;
    CHECK_EQ_INT(dsr1_err_exit_code(&e), 1);
    e.status = DSR1_E_USAGE;
    CHECK_EQ_INT(dsr1_err_exit_code(&e), 2);
    CHECK_EQ_INT(dsr1_err_set(NULL, DSR1_E_INVALID, 0, 0, "x"), DSR1_E_INVALID);
}
