/* boot-probe: one runtime rank's identity + rendezvous + fences, without a model.
 * Used by tests/cli/test_boot*.sh to run several ranks as separate processes (and
 * in separate network namespaces). Exit: 0 ok, 1 mismatch / another rank failed,
 * 2 usage, 3 timeout / dead peer / I/O. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "boot.h"
#include "err.h"
#include "ident.h"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: boot-probe [--rank R] [--world-size W] [--local-rank L] [--master-addr A]\n"
            "                  [--master-port P] [--gpus-per-node G] [--hostname H]\n"
            "                  [--digest HEX32] [--plan TEXT] [--shard TEXT]\n"
            "                  [--expect-shards S0,S1,...] [--timeout-ms N] [--linger-ms N]\n"
            "                  [--fence-fail REASON] [--fence-delay-ms N] [--exit-after-join]\n"
            "                  [--ident-only]\n");
}

static int hexval(int c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

int main(int argc, char **argv)
{
    rt_ident_flags fl;
    rt_ident_flags_init(&fl);
    rt_boot_self self;
    memset(&self, 0, sizeof self);
    snprintf(self.plan, sizeof self.plan, "tp=1 ep=1 pp=1 dp=1");
    snprintf(self.shard, sizeof self.shard, "shard-0");
    const char *hostname = NULL, *expect = NULL, *fence_fail = NULL;
    int timeout = 10000, linger = -1, exit_after_join = 0, ident_only = 0, fence_delay = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int *ip = NULL, lo = 0, hi = 1000000;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--exit-after-join")) {
            exit_after_join = 1;
            continue;
        } else if (!strcmp(a, "--ident-only")) {
            ident_only = 1;
            continue;
        }
        if (!v) {
            usage(stderr);
            return 2;
        }
        i++;
        if (!strcmp(a, "--rank"))
            ip = &fl.rank, hi = 999999;
        else if (!strcmp(a, "--world-size"))
            ip = &fl.world_size, lo = 1;
        else if (!strcmp(a, "--local-rank"))
            ip = &fl.local_rank, hi = 1023;
        else if (!strcmp(a, "--master-port"))
            ip = &fl.master_port, lo = 1, hi = 65535;
        else if (!strcmp(a, "--gpus-per-node"))
            ip = &fl.gpus_per_node, lo = 1, hi = 1024;
        else if (!strcmp(a, "--timeout-ms"))
            ip = &timeout, lo = 1;
        else if (!strcmp(a, "--linger-ms"))
            ip = &linger;
        else if (!strcmp(a, "--fence-delay-ms"))
            ip = &fence_delay;
        else if (!strcmp(a, "--master-addr"))
            fl.master_addr = v;
        else if (!strcmp(a, "--hostname"))
            hostname = v;
        else if (!strcmp(a, "--plan"))
            snprintf(self.plan, sizeof self.plan, "%s", v);
        else if (!strcmp(a, "--shard"))
            snprintf(self.shard, sizeof self.shard, "%s", v);
        else if (!strcmp(a, "--expect-shards"))
            expect = v;
        else if (!strcmp(a, "--fence-fail"))
            fence_fail = v;
        else if (!strcmp(a, "--digest")) {
            if (strlen(v) != 32) {
                fprintf(stderr, "boot-probe: --digest needs 32 hex digits\n");
                return 2;
            }
            for (int k = 0; k < 16; k++) {
                int h = hexval(v[2 * k]), l = hexval(v[2 * k + 1]);
                if (h < 0 || l < 0) {
                    fprintf(stderr, "boot-probe: --digest needs 32 lowercase hex digits\n");
                    return 2;
                }
                self.digest[k] = (uint8_t)(h << 4 | l);
            }
        } else {
            fprintf(stderr, "boot-probe: unknown option %s\n", a);
            usage(stderr);
            return 2;
        }
        if (ip && rt_ident_parse_int(v, lo, hi, ip) != 0) {
            fprintf(stderr, "boot-probe: %s needs an integer in [%d, %d]\n", a, lo, hi);
            return 2;
        }
    }

    dsr1_err err;
    dsr1_err_clear(&err);
    rt_ident id;
    if (rt_ident_resolve(&id, &fl, NULL, hostname, 0, &err) != 0) {
        fprintf(stderr, "boot-probe: %s\n", err.msg);
        return dsr1_err_exit_code(&err);
    }
    if (ident_only) {
        printf("rank=%d world=%d local=%d node=%d gpus_per_node=%d master=%s:%d source=%s\n",
               id.rank, id.world_size, id.local_rank, id.node, id.gpus_per_node, id.master_addr,
               id.master_port, rt_ident_source_name(id.source));
        return 0;
    }
    self.rank = id.rank;
    self.world_size = id.world_size;
    if (hostname)
        snprintf(self.host, sizeof self.host, "%s", hostname);

    char *shards[1024] = {0}, *ebuf = NULL;
    rt_boot_opts o = {0};
    o.addr = id.master_addr;
    o.port = id.master_port;
    o.timeout_ms = timeout;
    o.linger_ms = linger;
    uint8_t uid[RT_BOOT_ID_BYTES];
    if (id.rank == 0) {
        FILE *f = fopen("/dev/urandom", "rb");
        if (!f || fread(uid, 1, sizeof uid, f) != sizeof uid) {
            fprintf(stderr, "boot-probe: cannot read /dev/urandom\n");
            return 3;
        }
        fclose(f);
        o.unique_id = uid;
        if (expect) {
            if (id.world_size > 1024) {
                fprintf(stderr, "boot-probe: --expect-shards supports 1024 ranks\n");
                return 2;
            }
            ebuf = strdup(expect);
            int n = 0;
            for (char *s = strtok(ebuf, ","); s && n < id.world_size; s = strtok(NULL, ","))
                shards[n++] = s;
            if (n != id.world_size) {
                fprintf(stderr, "boot-probe: --expect-shards needs %d entries\n", id.world_size);
                return 2;
            }
            o.expect_shard = (const char *const *)shards;
        }
    }
    rt_boot *b;
    uint8_t got[RT_BOOT_ID_BYTES];
    if (rt_boot_join(&b, &self, &o, got, &err) != 0) {
        fprintf(stderr, "boot-probe rank %d: %s\n", id.rank, err.msg);
        free(ebuf);
        return dsr1_err_exit_code(&err);
    }
    printf("rank %d/%d joined (%s) id=", id.rank, id.world_size, rt_ident_source_name(id.source));
    for (int k = 0; k < 8; k++)
        printf("%02x", got[k]);
    printf("\n");
    fflush(stdout);
    if (exit_after_join)
        _exit(0); /* a rank that dies between phases */
    if (fence_delay > 0) /* stands in for loading; lets a test cut the network meanwhile */
        usleep((useconds_t)fence_delay * 1000);
    int rc = rt_boot_fence(b, "loaded", fence_fail == NULL, fence_fail, timeout, &err);
    if (rc == 0)
        printf("rank %d fence loaded ok\n", id.rank);
    else
        fprintf(stderr, "boot-probe rank %d: %s\n", id.rank, err.msg);
    rt_boot_close(b);
    free(ebuf);
    return rc == 0 ? 0 : dsr1_err_exit_code(&err);
}
