/* rt_backend: DSR1_TEST_FAULT picks exactly one rank and one fault. */
#include <stdlib.h>

#include "backend.h"
#include "test.h"

TEST(backend_test_fault_matches_rank_and_fault_only)
{
    setenv("DSR1_TEST_FAULT", "1:exit-decode", 1);
    CHECK_EQ_INT(rt_test_fault(1, "exit-decode"), 1);
    CHECK_EQ_INT(rt_test_fault(0, "exit-decode"), 0);
    CHECK_EQ_INT(rt_test_fault(1, "stall-setup"), 0);
    CHECK_EQ_INT(rt_test_fault(1, "exit"), 0);
    setenv("DSR1_TEST_FAULT", "12:stall-setup", 1);
    CHECK_EQ_INT(rt_test_fault(12, "stall-setup"), 1);
    CHECK_EQ_INT(rt_test_fault(1, "stall-setup"), 0);
    const char *bad[] = {"", "exit-decode", "1", "1:", "x:exit-decode", ":exit-decode"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        setenv("DSR1_TEST_FAULT", bad[i], 1);
        CHECK_MSG(rt_test_fault(1, "exit-decode") == 0, "'%s' matched", bad[i]);
    }
    unsetenv("DSR1_TEST_FAULT");
    CHECK_EQ_INT(rt_test_fault(1, "exit-decode"), 0);
}
