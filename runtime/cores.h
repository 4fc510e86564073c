/* cores.h: host threads of a rank's load (upload copy threads, full-hash threads) when
 * several ranks share one host. Each rank takes an equal share of the cores it may run
 * on; without --verify full the upload takes up to 16 of them (upload.cu: more do not
 * add bandwidth), with it the share is split between the hash and the upload. Before
 * this every rank took up to 16 copy threads and (cores - 16) hash threads, so 8 ranks
 * on a 128-core node ran ~900 hash threads on 128 cores. Pure functions (tested in CI);
 * the caller supplies the core count and the environment's facts. */
#ifndef DSR1_RT_CORES_H
#define DSR1_RT_CORES_H

#ifdef __cplusplus
extern "C" {
#endif

/* Ranks on this host: gpus_per_node when known (> 0), else LOCAL_WORLD_SIZE (torchrun;
 * NULL or not a positive number: unknown), else the smaller of world_size and the GPUs
 * this process sees (each rank drives one), else 1. */
int rt_local_ranks(int gpus_per_node, const char *local_world_size, int world_size,
                   int visible_gpus);

/* ncores / local_ranks, at least 1 */
int rt_core_share(int ncores, int local_ranks);

/* Threads for a share of cores: *upload = min(16, share) and *hash = 0 without full
 * verification; with it *upload = min(16, half the share) and *hash = the rest, each at
 * least 2. A launcher that already pins each rank to its own cores makes the share too
 * small (the cores are divided twice): DSR1_UPLOAD_THREADS / DSR1_HASH_THREADS then. */
void rt_load_threads(int share, int verify_full, int *upload, int *hash);

#ifdef __cplusplus
}
#endif

#endif
