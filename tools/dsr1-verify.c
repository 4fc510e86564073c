/* dsr1-verify: check a dsr1-shard output directory (or one rank's shard) against its
 * manifest (docs/tools/dsr1-verify.md). The engine is formats/vf.c; rank resolution
 * for --rank auto is the runtime's own (runtime/ident.c), so the init container and
 * the serving process agree on who they are. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "mf.h"
#include "rank_select.h"
#include "vf.h"

static const char usage_text[] =
    "usage: dsr1-verify [--quick] [--rank R|auto | --node N] [--gpus-per-node N]\n"
    "                   [--file-hashes] [--source CKPT] [--expect-plan tp=8,pp=2,...]\n"
    "                   [--json] [-q|--quiet] [--status] [--no-progress] DIR\n";

static void help(void)
{
    fputs(usage_text, stdout);
    fputs("\nCheck the shards of a dsr1-shard output directory against manifest.json and\n"
          "XXH128SUMS, through the loader the runtime uses.\n\n"
          "  --quick            structure only: manifest, XXH128SUMS, files, sizes, headers\n"
          "                     and tensor tables; no tensor data is read\n"
          "  (default)          full: also every tensor digest and the header digest, which\n"
          "                     together cover every byte of each file once\n"
          "  --file-hashes      also recompute each whole-file XXH3-128 (a second read)\n"
          "  --rank R           only the shard global rank R loads; R may be a list (0,3,8-15)\n"
          "                     or 'auto' (RANK; else LWS_WORKER_INDEX or the StatefulSet pod\n"
          "                     ordinal x GPUs per node + LOCAL_RANK, or every rank of the pod\n"
          "                     when LOCAL_RANK is unset). No other shard is opened.\n"
          "  --node N           only the shards of node N's ranks\n"
          "  --gpus-per-node N  for --rank auto (default: DSR1_GPUS_PER_NODE, else the plan's)\n"
          "  --source CKPT      rebuild check against the original checkpoint: coverage per\n"
          "                     pp stage, replicas identical, values equal to the source\n"
          "  --expect-plan KV   fail unless the plan matches, e.g. tp=8,pp=2,dtype=fp8\n"
          "                     (keys: tp ep pp dp world_size nodes gpus_per_node mtp dtype)\n"
          "  --json             one JSON object on stdout instead of lines\n"
          "  -q, --quiet        print only FAILED lines and the summary\n"
          "  --status           print nothing; the exit code tells\n"
          "  --no-progress      no progress on stderr\n"
          "  -h, --help         this help\n\n"
          "exit: 0 all OK, 1 a check failed or nothing was verified, 2 usage, 3 I/O error\n",
          stdout);
}

static int usage(const char *fmt, const char *arg)
{
    fputs("dsr1-verify: ", stderr);
    fprintf(stderr, fmt, arg);
    fputc('\n', stderr);
    fputs(usage_text, stderr);
    return 2;
}

typedef struct out_ctx {
    int json, quiet, status;
    json_t *files;
    cli_progress *prog;
    cli_progress_mode pmode;
    uint64_t last;
} out_ctx;

static void on_item(void *ctx, const vf_item *it)
{
    out_ctx *o = ctx;
    if (o->json) {
        json_t *r = json_array();
        for (size_t i = 0; i < it->n_reasons; i++)
            json_array_append_new(r, json_string(it->reasons[i]));
        json_array_append_new(o->files, json_pack("{s:s, s:b, s:I, s:o}", "file", it->file, "ok",
                                                  it->ok, "bytes_hashed", (json_int_t)it->bytes,
                                                  "reasons", r));
        return;
    }
    if (o->status || (o->quiet && it->ok))
        return;
    /* Lines go to stdout; keep them apart from a progress bar on stderr. */
    if (it->ok) {
        printf("%s: OK\n", it->file);
    } else {
        /* One line per file: the first reasons, the rest counted (--json has all). */
        size_t show = it->n_reasons < 3 ? it->n_reasons : 3;
        printf("%s: FAILED (", it->file);
        for (size_t i = 0; i < show; i++)
            printf("%s%s", i ? "; " : "", it->reasons[i]);
        if (it->n_reasons > show)
            printf("; and %zu more", it->n_reasons - show);
        printf(")\n");
    }
    fflush(stdout);
}

/* A failure before any file is checked (rank selection): a message on stderr, and
 * with --json still one object on stdout, so a pipeline reading it gets a verdict. */
static int early_fail(const out_ctx *o, const char *dir, const char *msg, int code)
{
    if (o->status)
        return code;
    fprintf(stderr, "dsr1-verify: %s\n", msg);
    if (o->json) {
        json_t *j = json_pack("{s:s, s:b, s:i, s:s, s:[], s:s}", "dir", dir, "ok", 0, "exit", code, "mode",
                              "none", "files", "error", msg);
        char *t = j ? json_dumps(j, JSON_INDENT(2)) : NULL;
        if (t)
            puts(t);
        free(t);
        json_decref(j);
    }
    return code;
}

static void on_progress(void *ctx, uint64_t done, uint64_t total, const char *file)
{
    out_ctx *o = ctx;
    if (!o->prog) {
        o->prog = cli_progress_start(total, "dsr1-verify", o->pmode);
        o->last = 0;
    }
    if (done > o->last) {
        cli_progress_add(o->prog, done - o->last);
        o->last = done;
    }
    if (file)
        cli_progress_set_item(o->prog, file);
}

static int kv_expect(const char *k, const char *v, void *ud)
{
    void **a = ud;
    return vf_expect_set(a[0], k, v, a[1]) == 0 ? 0 : -100;
}

int main(int argc, char **argv)
{
    enum { O_QUICK = 256, O_RANK, O_NODE, O_GPN, O_FILEH, O_SOURCE, O_EXPECT, O_JSON, O_STATUS, O_NOPROG };
    static const struct option lo[] = {
        {"quick", no_argument, 0, O_QUICK},          {"rank", required_argument, 0, O_RANK},
        {"node", required_argument, 0, O_NODE},      {"gpus-per-node", required_argument, 0, O_GPN},
        {"file-hashes", no_argument, 0, O_FILEH},    {"source", required_argument, 0, O_SOURCE},
        {"expect-plan", required_argument, 0, O_EXPECT}, {"json", no_argument, 0, O_JSON},
        {"quiet", no_argument, 0, 'q'},              {"status", no_argument, 0, O_STATUS},
        {"no-progress", no_argument, 0, O_NOPROG},   {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    vf_opts o = {0};
    vf_expect ex;
    vf_expect_init(&ex);
    out_ctx oc = {0};
    oc.pmode = CLI_PROGRESS_AUTO;
    const char *rank_arg = NULL;
    int64_t node = -1, gpn = -1;
    int have_expect = 0, c, rc;
    uint64_t v;
    rank_list rl = {0};
    dsr1_err err;
    dsr1_err_clear(&err);
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":hq", lo, NULL)) != -1) {
        switch (c) {
        case 'h': help(); return 0;
        case 'q': oc.quiet = 1; break;
        case O_QUICK: o.quick = 1; break;
        case O_RANK: rank_arg = optarg; break;
        case O_NODE:
            if ((rc = cli_parse_u64(optarg, 0, 1u << 20, &v)))
                return usage("--node: %s", cli_strerror(rc));
            node = (int64_t)v;
            break;
        case O_GPN:
            if ((rc = cli_parse_u64(optarg, 1, 1024, &v)))
                return usage("--gpus-per-node: %s (1..1024)", cli_strerror(rc));
            gpn = (int64_t)v;
            break;
        case O_FILEH: o.file_hashes = 1; break;
        case O_SOURCE: o.source = optarg; break;
        case O_EXPECT: {
            void *ud[2] = {&ex, &err};
            rc = cli_parse_kv_list(optarg, kv_expect, ud);
            if (rc == -100)
                return usage("--expect-plan: %s", err.msg);
            if (rc)
                return usage("--expect-plan: %s (expected k=v,k=v)", cli_strerror(rc));
            have_expect = 1;
            break;
        }
        case O_JSON: oc.json = 1; break;
        case O_STATUS: oc.status = 1; break;
        case O_NOPROG: oc.pmode = CLI_PROGRESS_QUIET; break;
        case ':': return usage("option %s needs a value", argv[optind - 1]);
        default: return usage("unknown option %s", argv[optind - 1]);
        }
    }
    if (optind + 1 != argc)
        return usage("%s", optind == argc ? "DIR is required" : "exactly one DIR");
    if (rank_arg && node >= 0)
        return usage("%s", "--rank and --node exclude each other");
    if (oc.status && oc.json)
        return usage("%s", "--status prints nothing and --json prints an object: pick one");
    if (o.quick && (o.file_hashes || o.source))
        return usage("%s", "--quick reads no tensor data: drop --file-hashes / --source");
    if (oc.quiet || oc.status || oc.json)
        oc.pmode = CLI_PROGRESS_QUIET;
    const char *dir = argv[optind];
    if (have_expect)
        o.expect = &ex;

    char sel_desc[160] = "";
    if (rank_arg || node >= 0) {
        /* Only manifest.json is read to map ranks to shards. */
        mf_manifest *m = NULL;
        char *mp = NULL;
        if (asprintf(&mp, "%s/manifest.json", dir) < 0)
            return 3;
        rc = mf_load(&m, mp, &err);
        free(mp);
        if (rc != 0)
            return early_fail(&oc, dir, err.msg, rc == DSR1_E_IO && err.sys_errno != ENOENT ? 3 : 1);
        if (node >= 0) {
            rc = rank_of_node(m, (uint32_t)node, &rl, &err);
            if (rc != 0) {
                mf_free(m);
                return early_fail(&oc, dir, err.msg, dsr1_err_exit_code(&err));
            }
            snprintf(sel_desc, sizeof sel_desc, "node %" PRId64, node);
        } else if (strcmp(rank_arg, "auto") == 0) {
            rc = rank_auto(m, (int)gpn, &rl, sel_desc, sizeof sel_desc, &err);
            if (rc != 0) {
                mf_free(m);
                return early_fail(&oc, dir, err.msg, dsr1_err_exit_code(&err));
            }
        } else if ((rc = rank_parse_list(rank_arg, &rl))) {
            mf_free(m);
            return usage("--rank: %s (a rank, a list such as 0,3,8-15, or auto)", cli_strerror(rc));
        }
        mf_free(m);
        rank_normalize(&rl);
        o.ranks = rl.v;
        o.n_ranks = rl.n;
    }
    if (oc.json)
        oc.files = json_array();
    vf_summary sum;
    rc = vf_run(dir, &o, on_item, &oc, on_progress, &oc, &sum, &err);
    if (rc == DSR1_OK || rc == DSR1_E_MISMATCH)
        cli_progress_finish(oc.prog);
    else
        cli_progress_abort(oc.prog);
    int code = rc == DSR1_OK ? 0 : dsr1_err_exit_code(&err);
    char gb[CLI_BYTES_LEN];
    cli_format_bytes(sum.bytes_hashed, 0, gb, sizeof gb);
    double gbs = sum.seconds > 0 ? (double)sum.bytes_hashed / sum.seconds / 1e9 : 0;
    const char *mode = o.quick ? "quick" : "full";
    if (oc.json) {
        json_t *j = json_pack("{s:s, s:b, s:i, s:s, s:s, s:o, s:{s:I, s:I, s:I, s:I, s:I, s:f, s:f, s:I, s:I, s:I}}",
                              "dir", dir, "ok", code == 0, "exit", code, "mode", mode, "checked",
                              sel_desc[0] ? sel_desc : sum.ranks_desc, "files", oc.files, "summary",
                              "files_ok", (json_int_t)sum.files_ok, "files_failed",
                              (json_int_t)sum.files_failed, "shards_checked",
                              (json_int_t)sum.shards_checked, "tensors_hashed",
                              (json_int_t)sum.tensors_hashed, "bytes_hashed",
                              (json_int_t)sum.bytes_hashed, "seconds", sum.seconds, "gb_per_s", gbs,
                              "source_tensors_checked", (json_int_t)sum.source_tensors_checked,
                              "source_tensors_differ", (json_int_t)sum.source_tensors_differ,
                              "source_tensors_unchecked", (json_int_t)sum.source_tensors_unchecked);
        if (code != 0)
            json_object_set_new(j, "error", json_string(err.msg));
        char *s = json_dumps(j, JSON_INDENT(2));
        if (s)
            puts(s);
        free(s);
        json_decref(j);
    } else if (rc == DSR1_E_USAGE) {
        /* a request the manifest cannot satisfy (rank out of range): no verdict line */
        if (!oc.status)
            fprintf(stderr, "dsr1-verify: %s\n", err.msg);
    } else if (!oc.status) {
        if (rc == DSR1_E_IO || rc == DSR1_E_NOMEM || rc == DSR1_E_INTERNAL)
            fprintf(stderr, "dsr1-verify: %s\n", err.msg);
        printf("dsr1-verify: %s: %zu of %zu files OK (%s check, %s), shards: %zu, %s hashed in %.2f s (%.2f "
               "GB/s)%s\n",
               code == 0 ? "OK" : "FAILED", sum.files_ok, sum.files_ok + sum.files_failed, mode,
               sel_desc[0] ? sel_desc : sum.ranks_desc, sum.shards_checked, gb, sum.seconds, gbs,
               code == 1 && sum.files_failed == 0 ? ": nothing verified" : "");
        if (o.source)
            printf("dsr1-verify: source: %zu tensors compared with the checkpoint, %zu differ, %zu with "
                   "transforms not value-checked\n",
                   sum.source_tensors_checked, sum.source_tensors_differ, sum.source_tensors_unchecked);
    }
    free(rl.v);
    return code;
}
