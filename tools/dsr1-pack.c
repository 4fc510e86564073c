/* dsr1-pack: publish a dsr1-shard output as reproducible tar archives or an OCI image
 * layout, and extract them with verification (docs/tools/dsr1-pack.md). The engines
 * are formats/pk.c (tar, staging) and formats/oci.c (OCI / CNCF ModelPack). */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "oci.h"
#include "pk.h"
#include "rank_select.h"
#include "vf.h"

static const char usage_text[] =
    "usage: dsr1-pack create DIR OUT [--per all|node|rank] [--zstd] [--zstd-level N] [--mtime S]\n"
    "       dsr1-pack oci DIR OUT [--per all|node|rank] [--name NAME] [--mtime S]\n"
    "       dsr1-pack extract ARCHIVE|LAYOUT|- DEST [--rank R|auto | --node N] [--gpus-per-node N]\n"
    "                 [--ref NAME] [--verify] [--force]\n"
    "       dsr1-pack list ARCHIVE|LAYOUT [--ref NAME] [--json]\n"
    "       (all: [-q|--quiet] [-h|--help])\n";

static void help(void)
{
    fputs(usage_text, stdout);
    fputs("\nPublish the shards of a dsr1-shard output directory, and get them back verified.\n\n"
          "create   reproducible pax tar archives in OUT: all.tar, node-NN.tar or rank-NNN.tar\n"
          "         (.tar.zst with --zstd). Each holds .dsr1-pack.json, XXH128SUMS, manifest.json\n"
          "         and the shard files of its scope; uncompressed member data is 4096-aligned.\n"
          "         Every shard is checked against the manifest while it is copied.\n"
          "oci      an OCI image layout in OUT (CNCF ModelPack: one raw layer per file), one\n"
          "         image manifest per scope tagged all / node-NN / rank-NNN; push it with\n"
          "         oras cp --from-oci-layout OUT:all REGISTRY/REPO:TAG, or skopeo copy.\n"
          "extract  stream ARCHIVE (a .tar/.tar.zst file, '-' for stdin, or an OCI layout) into\n"
          "         DEST: hashed while written, renamed into place only when everything\n"
          "         matched; hostile members (paths, links, devices, unknown names, wrong\n"
          "         sizes, duplicates) are refused and nothing is left under a final name.\n"
          "list     the members (or OCI layers) of an archive\n\n"
          "  --per all|node|rank  one archive / image manifest for everything (default), per\n"
          "                       node or per rank\n"
          "  --zstd, --zstd-level N  compress the archive (level 1..19, default 3)\n"
          "  --mtime S            member mtime / creation time, seconds since the epoch\n"
          "                       (default: SOURCE_DATE_EPOCH, else 0)\n"
          "  --name NAME          model name in the ModelPack config (default: architecture)\n"
          "  --rank R|auto        extract only what rank R (a list such as 0,3,8-15, or auto:\n"
          "                       see dsr1-verify) loads; --node N: what node N's ranks load\n"
          "  --gpus-per-node N    for --rank auto\n"
          "  --ref NAME           OCI layout: which image manifest (default: the only one, or all)\n"
          "  --verify             after extracting, check the shards through the runtime's\n"
          "                       loader and per-tensor digests (as dsr1-verify)\n"
          "  --force              extract even if DEST holds another deployment's manifest.json\n"
          "                       (it is replaced, with same-named files; others stay)\n"
          "  --json               list: JSON output\n"
          "  -q, --quiet          no progress, no summary\n\n"
          "exit: 0 ok, 1 verification failed (corrupt or hostile archive, source not matching\n"
          "its manifest, DEST holding another deployment), 2 usage, 3 I/O error (disk full, DEST locked)\n",
          stdout);
}

static int usage(const char *fmt, const char *arg)
{
    fputs("dsr1-pack: ", stderr);
    fprintf(stderr, fmt, arg);
    fputc('\n', stderr);
    fputs(usage_text, stderr);
    return 2;
}

static void p_add(void *ctx, uint64_t b) { cli_progress_add(ctx, b); }
static void p_item(void *ctx, const char *n) { cli_progress_set_item(ctx, n); }
static void p_total(void *ctx, uint64_t t) { cli_progress_set_total(ctx, t); }
static void p_temp(void *ctx, const char *path, int active)
{
    (void)ctx;
    if (active)
        cli_cleanup_register(path);
    else
        cli_cleanup_unregister(path);
}

static pk_progress make_progress(cli_progress *p)
{
    pk_progress g = {p_add, p_item, p_total, p, p_temp, NULL};
    return g;
}

static int fail(const dsr1_err *e)
{
    fprintf(stderr, "dsr1-pack: %s\n", e->msg);
    return dsr1_err_exit_code(e);
}

typedef struct select_ctx {
    const char *rank_arg;
    int64_t node, gpn;
    char desc[160];
} select_ctx;

static int select_ranks(void *ctx, const mf_manifest *m, uint32_t **ranks, size_t *n, dsr1_err *err)
{
    select_ctx *c = ctx;
    rank_list l = {0};
    int rc;
    if (c->node >= 0) {
        rc = rank_of_node(m, (uint32_t)c->node, &l, err);
        snprintf(c->desc, sizeof c->desc, "node %" PRId64, c->node);
    } else {
        rc = rank_auto(m, (int)c->gpn, &l, c->desc, sizeof c->desc, err);
    }
    if (rc) {
        free(l.v);
        return rc;
    }
    rank_normalize(&l);
    *ranks = l.v;
    *n = l.n;
    return 0;
}

static void verify_item(void *ctx, const vf_item *it)
{
    int quiet = *(int *)ctx;
    if (it->ok) {
        if (!quiet)
            printf("verify: %s: OK\n", it->file);
        return;
    }
    printf("verify: %s: FAILED (", it->file);
    for (size_t i = 0; i < it->n_reasons; i++)
        printf("%s%s", i ? "; " : "", it->reasons[i]);
    printf(")\n");
}

static int64_t default_mtime(void)
{
    const char *s = getenv("SOURCE_DATE_EPOCH");
    uint64_t v;
    if (s && cli_parse_u64(s, 0, (1ULL << 33) - 1, &v) == CLI_OK)
        return (int64_t)v;
    return 0;
}

int main(int argc, char **argv)
{
    if (argc >= 2 && (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0)) {
        help();
        return 0;
    }
    if (argc < 2)
        return usage("%s", "a command is required (create, oci, extract, list)");
    const char *cmd = argv[1];
    int is_create = strcmp(cmd, "create") == 0, is_oci = strcmp(cmd, "oci") == 0;
    int is_extract = strcmp(cmd, "extract") == 0, is_list = strcmp(cmd, "list") == 0;
    if (!is_create && !is_oci && !is_extract && !is_list)
        return usage("unknown command \"%s\" (create, oci, extract, list)", cmd);

    enum { O_PER = 256, O_ZSTD, O_ZLEVEL, O_MTIME, O_NAME, O_RANK, O_NODE, O_GPN, O_REF, O_VERIFY, O_JSON, O_FORCE };
    static const struct option lo[] = {
        {"per", required_argument, 0, O_PER},   {"zstd", no_argument, 0, O_ZSTD},
        {"zstd-level", required_argument, 0, O_ZLEVEL}, {"mtime", required_argument, 0, O_MTIME},
        {"name", required_argument, 0, O_NAME}, {"rank", required_argument, 0, O_RANK},
        {"node", required_argument, 0, O_NODE}, {"gpus-per-node", required_argument, 0, O_GPN},
        {"ref", required_argument, 0, O_REF},   {"verify", no_argument, 0, O_VERIFY},
        {"json", no_argument, 0, O_JSON},       {"quiet", no_argument, 0, 'q'},
        {"force", no_argument, 0, O_FORCE},     {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    pk_per per = PK_PER_ALL;
    int zstd = 0, zlevel = 0, verify = 0, json = 0, quiet = 0, force = 0, c, rc;
    int64_t mtime = default_mtime();
    const char *name = NULL, *ref = NULL;
    select_ctx sc = {NULL, -1, -1, ""};
    uint64_t v;
    int per_set = 0, zstd_set = 0, name_set = 0, sel_set = 0, ref_set = 0, mtime_set = 0;
    optind = 2;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":hq", lo, NULL)) != -1) {
        switch (c) {
        case 'h': help(); return 0;
        case 'q': quiet = 1; break;
        case O_PER:
            if (pk_per_parse(optarg, &per) != 0)
                return usage("--per: \"%s\" is not all, node or rank", optarg);
            per_set = 1;
            break;
        case O_ZSTD: zstd = 1; zstd_set = 1; break;
        case O_ZLEVEL:
            if ((rc = cli_parse_u64(optarg, 1, 19, &v)))
                return usage("--zstd-level: %s (1..19)", cli_strerror(rc));
            zlevel = (int)v;
            zstd = zstd_set = 1;
            break;
        case O_MTIME:
            if ((rc = cli_parse_u64(optarg, 0, (1ULL << 33) - 1, &v)))
                return usage("--mtime: %s (seconds since the epoch)", cli_strerror(rc));
            mtime = (int64_t)v;
            mtime_set = 1;
            break;
        case O_NAME: name = optarg; name_set = 1; break;
        case O_RANK: sc.rank_arg = optarg; sel_set = 1; break;
        case O_NODE:
            if ((rc = cli_parse_u64(optarg, 0, 1u << 20, &v)))
                return usage("--node: %s", cli_strerror(rc));
            sc.node = (int64_t)v;
            sel_set = 1;
            break;
        case O_GPN:
            if ((rc = cli_parse_u64(optarg, 1, 1024, &v)))
                return usage("--gpus-per-node: %s (1..1024)", cli_strerror(rc));
            sc.gpn = (int64_t)v;
            break;
        case O_REF: ref = optarg; ref_set = 1; break;
        case O_VERIFY: verify = 1; break;
        case O_JSON: json = 1; break;
        case O_FORCE: force = 1; break;
        case ':': return usage("option %s needs a value", argv[optind - 1]);
        default: return usage("unknown option %s", argv[optind - 1]);
        }
    }
    int npos = argc - optind, want = is_list ? 1 : 2;
    if (npos != want)
        return usage("%s needs exactly the arguments shown", cmd);
    if ((per_set || mtime_set) && !(is_create || is_oci))
        return usage("%s", "--per and --mtime apply to create and oci");
    if (zstd_set && !is_create)
        return usage("%s", "--zstd applies to create");
    if (name_set && !is_oci)
        return usage("%s", "--name applies to oci");
    if ((sel_set || verify || force || sc.gpn >= 0) && !is_extract)
        return usage("%s", "--rank, --node, --gpus-per-node, --verify and --force apply to extract");
    if (ref_set && !(is_extract || is_list))
        return usage("%s", "--ref applies to extract and list");
    if (json && !is_list)
        return usage("%s", "--json applies to list");
    if (sc.rank_arg && sc.node >= 0)
        return usage("%s", "--rank and --node exclude each other");

    cli_signals_install();
    /* A file size limit (ulimit -f) must surface as EFBIG, a clear error. */
    signal(SIGXFSZ, SIG_IGN);
    dsr1_err err;
    dsr1_err_clear(&err);
    cli_progress_mode pm = quiet ? CLI_PROGRESS_QUIET : CLI_PROGRESS_AUTO;
    const char *a1 = argv[optind], *a2 = npos > 1 ? argv[optind + 1] : NULL;

    if (is_create) {
        cli_progress *p = cli_progress_start(0, "dsr1-pack create", pm);
        pk_create_opts o = {per, zstd, zlevel, mtime, make_progress(p)};
        pk_archive *ar = NULL;
        size_t n = 0;
        if ((rc = pk_create(a1, a2, &o, &ar, &n, &err))) {
            cli_progress_abort(p);
            return fail(&err);
        }
        cli_progress_finish(p);
        if (!quiet)
            for (size_t i = 0; i < n; i++) {
                char b[CLI_BYTES_LEN];
                printf("%s: %zu members, %s\n", ar[i].file, ar[i].n_members,
                       cli_format_bytes(ar[i].bytes, 0, b, sizeof b));
            }
        pk_archives_free(ar, n);
        return 0;
    }
    if (is_oci) {
        cli_progress *p = cli_progress_start(0, "dsr1-pack oci", pm);
        oci_opts o = {per, mtime, name, make_progress(p)};
        oci_result res;
        if ((rc = oci_create(a1, a2, &o, &res, &err))) {
            cli_progress_abort(p);
            return fail(&err);
        }
        cli_progress_finish(p);
        if (!quiet) {
            char b[CLI_BYTES_LEN];
            printf("%s: OCI image layout, %zu image manifest%s, %zu file blobs (%s)\n", a2, res.n_manifests,
                   res.n_manifests == 1 ? "" : "s", res.n_blobs, cli_format_bytes(res.bytes, 0, b, sizeof b));
        }
        return 0;
    }
    if (is_list) {
        pk_member *m = NULL;
        size_t n = 0;
        if ((rc = pk_list(a1, ref, &m, &n, &err)))
            return fail(&err);
        if (json) {
            json_t *arr = json_array();
            for (size_t i = 0; i < n; i++) {
                char t[2] = {m[i].type, 0};
                json_t *o = json_pack("{s:s, s:I, s:s}", "name", m[i].name, "bytes", (json_int_t)m[i].bytes,
                                      "type", t);
                if (m[i].media_type)
                    json_object_set_new(o, "mediaType", json_string(m[i].media_type));
                if (m[i].digest)
                    json_object_set_new(o, "digest", json_string(m[i].digest));
                json_array_append_new(arr, o);
            }
            char *s = json_dumps(arr, JSON_INDENT(2));
            if (s)
                puts(s);
            free(s);
            json_decref(arr);
        } else {
            uint64_t total = 0;
            for (size_t i = 0; i < n; i++) {
                printf("%c %15" PRIu64 "  %s", m[i].type, m[i].bytes, m[i].name);
                if (m[i].media_type)
                    printf("  %s %s", m[i].media_type, m[i].digest);
                printf("\n");
                total += m[i].bytes;
            }
            if (!quiet) {
                char b[CLI_BYTES_LEN];
                printf("%zu members, %s\n", n, cli_format_bytes(total, 0, b, sizeof b));
            }
        }
        pk_members_free(m, n);
        return 0;
    }

    /* extract */
    rank_list rl = {0};
    pk_extract_opts o = {0};
    o.ref = ref;
    o.force = force;
    if (sc.rank_arg && strcmp(sc.rank_arg, "auto") != 0) {
        if ((rc = rank_parse_list(sc.rank_arg, &rl)))
            return usage("--rank: %s (a rank, a list such as 0,3,8-15, or auto)", cli_strerror(rc));
        o.ranks = rl.v;
        o.n_ranks = rl.n;
        snprintf(sc.desc, sizeof sc.desc, "--rank %s", sc.rank_arg);
    } else if (sel_set) {
        o.select = select_ranks;
        o.select_ctx = &sc;
    }
    cli_progress *p = cli_progress_start(0, "dsr1-pack extract", pm);
    o.progress = make_progress(p);
    pk_extract_result res;
    rc = pk_extract(a1, a2, &o, &res, &err);
    if (rc) {
        cli_progress_abort(p);
        free(rl.v);
        return fail(&err);
    }
    cli_progress_finish(p);
    if (!quiet) {
        char b[CLI_BYTES_LEN];
        printf("dsr1-pack: extracted %zu files (%s) into %s%s%s%s\n", res.n_files,
               cli_format_bytes(res.bytes, 0, b, sizeof b), a2, sc.desc[0] ? " (" : "", sc.desc,
               sc.desc[0] ? ")" : "");
    }
    int code = 0;
    if (verify) {
        /* Every rank whose shard was extracted. */
        rank_list vr = {0};
        for (size_t i = 0; i < res.m->n_ranks; i++)
            for (size_t k = 0; k < res.n_shards; k++)
                if (res.m->ranks[i].shard == res.shards[k]) {
                    rank_push(&vr, res.m->ranks[i].rank);
                    break;
                }
        rank_normalize(&vr);
        vf_opts vo = {0};
        vo.ranks = vr.v;
        vo.n_ranks = vr.n;
        vf_summary sum;
        rc = vf_run(a2, &vo, verify_item, &quiet, NULL, NULL, &sum, &err);
        if (rc) {
            fprintf(stderr, "dsr1-pack: --verify: %s\n", err.msg);
            code = dsr1_err_exit_code(&err);
        } else if (!quiet) {
            char b[CLI_BYTES_LEN];
            printf("dsr1-pack: verified %zu shards, %s in %.2f s\n", sum.shards_checked,
                   cli_format_bytes(sum.bytes_hashed, 0, b, sizeof b), sum.seconds);
        }
        free(vr.v);
    }
    pk_extract_result_free(&res);
    free(rl.v);
    return code;
}
