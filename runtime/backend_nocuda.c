/* The weak default of rt_cuda_generate for builds without nvcc (see backend.h). */
#include "backend.h"

__attribute__((weak)) int rt_cuda_generate(const rt_generate_args *a, rt_generate_result *res,
                                           dsr1_err *err)
{
    (void)a;
    (void)res;
    return dsr1_err_set(err, DSR1_E_INTERNAL, RT_ERR_NO_CUDA, 0,
                        "built without CUDA support (rebuild with nvcc present)");
}
