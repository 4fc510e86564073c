/* ident: rank/world/master from flags, torchrun env, LeaderWorkerSet or StatefulSet. */
#include "ident.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

extern char **environ;

#define RT_IDENT_MAX_WORLD 1000000

void rt_ident_flags_init(rt_ident_flags *f)
{
    f->rank = f->world_size = f->local_rank = f->master_port = f->gpus_per_node = -1;
    f->master_addr = NULL;
}

const char *rt_ident_source_name(rt_ident_source s)
{
    switch (s) {
    case RT_IDENT_FLAGS: return "flags";
    case RT_IDENT_TORCHRUN: return "torchrun environment";
    case RT_IDENT_LWS: return "LeaderWorkerSet environment";
    case RT_IDENT_STATEFULSET: return "StatefulSet hostname";
    default: return "single process";
    }
}

int rt_ident_parse_int(const char *s, int lo, int hi, int *out)
{
    if (!s || !*s)
        return -1;
    for (const char *p = s; *p; p++)
        if (!isdigit((unsigned char)*p) && !(p == s && *p == '-'))
            return -1;
    errno = 0;
    char *end;
    long v = strtol(s, &end, 10);
    if (errno || *end || v < lo || v > hi)
        return -1;
    *out = (int)v;
    return 0;
}

/* Empty values count as unset, as shells often export VAR= by accident. */
static const char *env_get(char *const *env, const char *key)
{
    size_t kl = strlen(key);
    for (char *const *e = env; e && *e; e++)
        if (strncmp(*e, key, kl) == 0 && (*e)[kl] == '=')
            return (*e)[kl + 1] ? *e + kl + 1 : NULL;
    return NULL;
}

static int env_int(char *const *env, const char *key, int lo, int hi, int *out, int *present,
                   dsr1_err *err)
{
    const char *v = env_get(env, key);
    *present = v != NULL;
    if (!v)
        return 0;
    if (rt_ident_parse_int(v, lo, hi, out) != 0)
        return dsr1_err_set(err, DSR1_E_USAGE, 0, 0,
                            "environment %s=\"%s\" is not an integer in [%d, %d]", key, v, lo, hi);
    return 0;
}

/* StatefulSet pods are named <set>-<ordinal>; the ordinal ends the first DNS label. */
static int sts_ordinal(const char *host, int *ord, size_t *dash, size_t *label_end)
{
    size_t end = strcspn(host, ".");
    size_t i = end;
    while (i > 0 && isdigit((unsigned char)host[i - 1]))
        i--;
    if (i == end || i < 2 || host[i - 1] != '-' || end - i > 7)
        return -1;
    char num[8];
    memcpy(num, host + i, end - i);
    num[end - i] = 0;
    if (num[0] == '0' && num[1])
        return -1; /* Kubernetes never zero-pads ordinals */
    *ord = atoi(num);
    *dash = i - 1;
    *label_end = end;
    return 0;
}

int rt_ident_resolve(rt_ident *out, const rt_ident_flags *flags, char *const *env,
                     const char *hostname, int default_world, dsr1_err *err)
{
    rt_ident_flags none;
    if (!flags) {
        rt_ident_flags_init(&none);
        flags = &none;
    }
    if (!env)
        env = environ;
    char hbuf[RT_IDENT_ADDR_MAX];
    if (!hostname) {
        if (gethostname(hbuf, sizeof hbuf) != 0)
            hbuf[0] = 0;
        hbuf[sizeof hbuf - 1] = 0;
        hostname = hbuf;
    }
    memset(out, 0, sizeof *out);
    out->node = -1;
    int rc, present;

    int gpn = flags->gpus_per_node;
    if (gpn < 0) {
        int v;
        if ((rc = env_int(env, "DSR1_GPUS_PER_NODE", 1, 1024, &v, &present, err)))
            return rc;
        gpn = present ? v : 0;
    }
    int local = flags->local_rank, local_given = local >= 0;
    if (!local_given) {
        int v;
        if ((rc = env_int(env, "LOCAL_RANK", 0, 1023, &v, &present, err)))
            return rc;
        if (present) {
            local = v;
            local_given = 1;
        }
    }
    int port = flags->master_port;
    if (port < 0) {
        int v;
        if ((rc = env_int(env, "MASTER_PORT", 1, 65535, &v, &present, err)))
            return rc;
        port = present ? v : RT_IDENT_DEFAULT_PORT;
    }
    const char *addr = flags->master_addr;
    if (!addr)
        addr = env_get(env, "MASTER_ADDR");

    int world = flags->world_size, env_world;
    if ((rc = env_int(env, "WORLD_SIZE", 1, RT_IDENT_MAX_WORLD, &env_world, &present, err)))
        return rc;
    if (world < 0 && present)
        world = env_world;

    int rank = -1, env_rank = 0, lws_idx = 0, lws_group = 0;
    int has_rank, has_lws, has_group;
    if ((rc = env_int(env, "RANK", 0, RT_IDENT_MAX_WORLD - 1, &env_rank, &has_rank, err)) ||
        (rc = env_int(env, "LWS_WORKER_INDEX", 0, RT_IDENT_MAX_WORLD - 1, &lws_idx, &has_lws,
                      err)) ||
        (rc = env_int(env, "LWS_GROUP_SIZE", 1, RT_IDENT_MAX_WORLD, &lws_group, &has_group, err)))
        return rc;
    int ord = 0;
    size_t dash = 0, label_end = 0;
    int has_sts = sts_ordinal(hostname, &ord, &dash, &label_end) == 0;

    if (flags->rank >= 0) {
        out->source = RT_IDENT_FLAGS;
        rank = flags->rank;
    } else if (has_rank) {
        out->source = RT_IDENT_TORCHRUN;
        rank = env_rank;
    } else if (has_lws || (has_sts && gpn > 0)) {
        int is_lws = has_lws;
        out->source = is_lws ? RT_IDENT_LWS : RT_IDENT_STATEFULSET;
        if (gpn <= 0) {
            if (local_given && local > 0)
                return dsr1_err_set(err, DSR1_E_USAGE, 0, 0,
                                    "%s: LOCAL_RANK=%d needs --gpus-per-node (or "
                                    "DSR1_GPUS_PER_NODE) to compute the global rank",
                                    rt_ident_source_name(out->source), local);
            gpn = 1;
        }
        if (gpn > 1 && !local_given)
            return dsr1_err_set(err, DSR1_E_USAGE, 0, 0,
                                "%s with %d GPUs per node: set LOCAL_RANK (or --local-rank) for "
                                "each of the node's processes",
                                rt_ident_source_name(out->source), gpn);
        if (!local_given)
            local = 0;
        int pod = is_lws ? lws_idx : ord;
        if ((long long)pod * gpn + local >= RT_IDENT_MAX_WORLD)
            return dsr1_err_set(err, DSR1_E_USAGE, 0, 0, "%s: pod index %d is too large",
                                rt_ident_source_name(out->source), pod);
        rank = pod * gpn + local;
        if (is_lws) {
            if (!has_group)
                return dsr1_err_set(err, DSR1_E_USAGE, 0, 0,
                                    "LeaderWorkerSet environment: LWS_WORKER_INDEX is set but "
                                    "LWS_GROUP_SIZE is not");
            if (world < 0) {
                if ((long long)lws_group * gpn > RT_IDENT_MAX_WORLD)
                    return dsr1_err_set(err, DSR1_E_USAGE, 0, 0,
                                        "LWS_GROUP_SIZE=%d x %d GPUs per node is too large",
                                        lws_group, gpn);
                world = lws_group * gpn;
            }
            if (!addr)
                addr = env_get(env, "LWS_LEADER_ADDRESS");
            if (!addr)
                return dsr1_err_set(err, DSR1_E_USAGE, 0, 0,
                                    "LeaderWorkerSet environment: LWS_LEADER_ADDRESS is not set "
                                    "(or pass --master-addr)");
        } else if (!addr) {
            /* rank 0 is pod ordinal 0 of the same set, under the same service domain */
            size_t n = strlen(hostname);
            if (n + 1 >= sizeof out->master_addr)
                return dsr1_err_set(err, DSR1_E_USAGE, 0, 0, "hostname \"%s\" is too long",
                                    hostname);
            snprintf(out->master_addr, sizeof out->master_addr, "%.*s-0%s", (int)dash, hostname,
                     hostname + label_end);
        }
    } else {
        out->source = RT_IDENT_SINGLE;
        rank = 0;
    }

    if (world < 0)
        world = default_world > 0 ? default_world : -1;
    if (world < 0) {
        if (out->source == RT_IDENT_SINGLE)
            world = 1;
        else
            return dsr1_err_set(err, DSR1_E_USAGE, 0, 0,
                                "%s gives rank %d but no world size: set WORLD_SIZE or "
                                "--world-size",
                                rt_ident_source_name(out->source), rank);
    }
    if (out->source == RT_IDENT_SINGLE && world > 1)
        return dsr1_err_set(err, DSR1_E_USAGE, 0, 0,
                            "world size is %d but this process has no rank: pass --rank, set "
                            "RANK/WORLD_SIZE/MASTER_ADDR (torchrun style), or run under a "
                            "StatefulSet (with --gpus-per-node) or a LeaderWorkerSet",
                            world);
    if (rank >= world)
        return dsr1_err_set(err, DSR1_E_USAGE, 0, 0,
                            "rank %d (from %s) is out of range for world size %d", rank,
                            rt_ident_source_name(out->source), world);
    if (!local_given)
        local = gpn > 0 ? rank % gpn : 0;
    if (gpn > 0 && local >= gpn)
        return dsr1_err_set(err, DSR1_E_USAGE, 0, 0,
                            "local rank %d is out of range for %d GPUs per node", local, gpn);
    if (gpn > 0 && world % gpn != 0 && world > gpn)
        return dsr1_err_set(err, DSR1_E_USAGE, 0, 0,
                            "world size %d is not a multiple of %d GPUs per node", world, gpn);

    if (addr) {
        if (strlen(addr) >= sizeof out->master_addr)
            return dsr1_err_set(err, DSR1_E_USAGE, 0, 0, "master address \"%.40s...\" is too long",
                                addr);
        snprintf(out->master_addr, sizeof out->master_addr, "%s", addr);
    } else if (!out->master_addr[0]) {
        snprintf(out->master_addr, sizeof out->master_addr, "127.0.0.1");
    }
    out->rank = rank;
    out->world_size = world;
    out->local_rank = local;
    out->gpus_per_node = gpn;
    out->node = gpn > 0 ? rank / gpn : -1;
    out->master_port = port;
    return 0;
}
