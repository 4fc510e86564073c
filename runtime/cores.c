/* cores.c: see cores.h */
#include "cores.h"

#include <stdlib.h>

int rt_local_ranks(int gpus_per_node, const char *local_world_size, int world_size,
                   int visible_gpus)
{
    if (gpus_per_node > 0)
        return gpus_per_node;
    if (local_world_size && *local_world_size) {
        char *end;
        long v = strtol(local_world_size, &end, 10);
        if (*end == '\0' && v > 0 && v < 1 << 20)
            return (int)v;
    }
    if (world_size > 0 && visible_gpus > 0)
        return world_size < visible_gpus ? world_size : visible_gpus;
    return 1;
}

int rt_core_share(int ncores, int local_ranks)
{
    int s = local_ranks > 0 ? ncores / local_ranks : ncores;
    return s > 0 ? s : 1;
}

void rt_load_threads(int share, int verify_full, int *upload, int *hash)
{
    if (!verify_full) {
        *upload = share < 16 ? (share > 0 ? share : 1) : 16;
        *hash = 0;
        return;
    }
    int u = share - share / 2;
    u = u > 16 ? 16 : u < 2 ? 2 : u;
    int h = share - u; /* the upload capped at 16: the rest hashes */
    *upload = u;
    *hash = h < 2 ? 2 : h;
}
