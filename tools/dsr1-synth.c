/* dsr1-synth: write a synthetic DeepSeek-V3-architecture checkpoint in the exact HF R1
 * layout (docs/tools/dsr1-synth.md). The engine is formats/synth.c. */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "synth.h"

static const char usage_text[] =
    "usage: dsr1-synth --preset tiny|small|r1 --out DIR [--layers N] [--metadata-only]\n"
    "                  [--mtp|--no-mtp] [--seed S] [--shard-size BYTES] [--force] [--quiet]\n";

static void help(void)
{
    fputs(usage_text, stdout);
    fputs("\nWrite a DeepSeek-V3/R1-layout checkpoint (config.json, generation_config.json,\n"
          "model.safetensors.index.json, model-NNNNN-of-NNNNNN.safetensors) with FP8 block-scaled\n"
          "projections and realistic random values.\n\n"
          "  --preset NAME      tiny (a few MB, every tensor class), small, r1 (real dimensions)\n"
          "  --out DIR          output directory (created if missing)\n"
          "  --layers N         decoder layers (default: the preset's; r1 needs it unless\n"
          "                     --metadata-only); first_k_dense_replace becomes min(preset, N)\n"
          "  --metadata-only    write config.json + index only (no weight files)\n"
          "  --mtp, --no-mtp    include the MTP layer (default: on for tiny/small and\n"
          "                     r1 --metadata-only without --layers, off for r1 --layers N)\n"
          "  --seed S           value seed (default 0); output is a pure function of the options\n"
          "  --shard-size BYTES target file size (suffixes kB MB GB KiB MiB GiB; default tiny 4MB,\n"
          "                     small 100MB, r1 4.25GB = 163 files for the full model)\n"
          "  --force            overwrite a checkpoint already in DIR\n"
          "  --quiet            no progress and no summary\n"
          "  -h, --help         this help\n\n"
          "exit: 0 ok, 2 usage, 3 I/O or internal error\n",
          stdout);
}

static int usage(const char *fmt, const char *arg)
{
    fputs("dsr1-synth: ", stderr);
    fprintf(stderr, fmt, arg);
    fputc('\n', stderr);
    fputs(usage_text, stderr);
    return 2;
}

static void on_progress(void *ctx, uint64_t bytes) { cli_progress_add(ctx, bytes); }
static void on_item(void *ctx, const char *name) { cli_progress_set_item(ctx, name); }
static void on_temp(void *ctx, const char *path, int active)
{
    (void)ctx;
    if (active)
        cli_cleanup_register(path);
    else
        cli_cleanup_unregister(path);
}

static void commas(uint64_t v, char *buf, size_t n)
{
    char t[32];
    int len = snprintf(t, sizeof t, "%" PRIu64, v), k = 0;
    for (int i = 0; i < len && (size_t)k + 2 < n; i++) {
        if (i && (len - i) % 3 == 0)
            buf[k++] = ',';
        buf[k++] = t[i];
    }
    buf[k] = 0;
}

int main(int argc, char **argv)
{
    enum { O_PRESET = 256, O_OUT, O_LAYERS, O_META, O_MTP, O_NO_MTP, O_SEED, O_SHARD, O_FORCE, O_QUIET };
    static const struct option lo[] = {
        {"preset", required_argument, 0, O_PRESET}, {"out", required_argument, 0, O_OUT},
        {"layers", required_argument, 0, O_LAYERS}, {"metadata-only", no_argument, 0, O_META},
        {"mtp", no_argument, 0, O_MTP},             {"no-mtp", no_argument, 0, O_NO_MTP},
        {"seed", required_argument, 0, O_SEED},     {"shard-size", required_argument, 0, O_SHARD},
        {"force", no_argument, 0, O_FORCE},         {"quiet", no_argument, 0, O_QUIET},
        {"help", no_argument, 0, 'h'},              {0, 0, 0, 0},
    };
    const char *preset = NULL, *out = NULL;
    uint64_t layers = 0, seed = 0, shard = 0;
    int meta = 0, mtp = -1, force = 0, quiet = 0, c, rc;
    opterr = 0;
    /* times each option was given: a repeated valued option or both --mtp and --no-mtp
     * is a slip in a script, not something to resolve silently */
    int given[O_QUIET + 1] = {0};
    while ((c = getopt_long(argc, argv, ":h", lo, NULL)) != -1) {
        if (c >= O_PRESET && c <= O_QUIET && given[c]++ &&
            (c == O_PRESET || c == O_OUT || c == O_LAYERS || c == O_SEED || c == O_SHARD))
            for (const struct option *q = lo; q->name; q++)
                if (q->val == c)
                    return usage("--%s given twice", q->name);
        switch (c) {
        case 'h': help(); return 0;
        case O_PRESET: preset = optarg; break;
        case O_OUT: out = optarg; break;
        case O_LAYERS:
            if ((rc = cli_parse_u64(optarg, 1, 1024, &layers)))
                return usage("--layers: %s (1..1024)", cli_strerror(rc));
            break;
        case O_META: meta = 1; break;
        case O_MTP: mtp = 1; break;
        case O_NO_MTP: mtp = 0; break;
        case O_SEED:
            if ((rc = cli_parse_u64(optarg, 0, UINT64_MAX, &seed)))
                return usage("--seed: %s", cli_strerror(rc));
            break;
        case O_SHARD:
            if ((rc = cli_parse_size(optarg, &shard)))
                return usage("--shard-size: %s", cli_strerror(rc));
            if (shard == 0)
                return usage("--shard-size: %s", "must be at least 1 byte");
            break;
        case O_FORCE: force = 1; break;
        case O_QUIET: quiet = 1; break;
        case ':': return usage("option %s needs a value", argv[optind - 1]);
        default: return usage("unknown option %s", argv[optind - 1]);
        }
    }
    if (optind < argc)
        return usage("unexpected argument \"%s\"", argv[optind]);
    if (given[O_MTP] && given[O_NO_MTP])
        return usage("%s", "--mtp and --no-mtp contradict each other");
    if (!preset)
        return usage("%s", "--preset is required");
    if (!out || !*out)
        return usage("%s", "--out DIR is required");

    dsr1_err err;
    dsr1_err_clear(&err);
    ck_config cfg;
    sy_preset_info info;
    if (sy_preset(preset, (uint32_t)layers, &cfg, &info, &err))
        return usage("%s", err.msg);
    int is_r1 = strcmp(preset, "r1") == 0;
    if (is_r1 && !layers && !meta)
        return usage("%s", "--preset r1 writes 642 GiB of weights: pass --layers N (e.g. 4) or "
                           "--metadata-only");
    if (mtp < 0)
        mtp = is_r1 ? (meta && !layers) : info.mtp;
    if (!shard)
        shard = info.shard_size;

    {
        /* a dsr1-shard output holds manifest.json; a checkpoint written into it would make
         * the directory read as both (and --force does not make that better) */
        char mp[4096];
        snprintf(mp, sizeof mp, "%s/manifest.json", out);
        if (access(mp, F_OK) == 0) {
            fprintf(stderr, "dsr1-synth: %s holds manifest.json (a dsr1-shard output directory?): choose another "
                            "--out\n", out);
            return 2;
        }
    }
    cli_signals_install();
    sy_plan plan;
    if ((rc = sy_plan_make(&plan, &cfg, mtp, shard, &err))) {
        fprintf(stderr, "dsr1-synth: %s\n", err.msg);
        return rc == DSR1_E_USAGE ? 2 : dsr1_err_exit_code(&err);
    }
    cli_progress *pr = NULL;
    if (!meta)
        pr = cli_progress_start(plan.total_bytes, "dsr1-synth",
                                quiet ? CLI_PROGRESS_QUIET : CLI_PROGRESS_AUTO);
    sy_opts o = {
        .out_dir = out, .seed = seed, .metadata_only = meta, .force = force,
        .progress = on_progress, .progress_item = on_item, .progress_ctx = pr,
        .temp_file = on_temp, .temp_ctx = NULL,
    };
    rc = sy_write(&plan, &o, &err);
    if (rc) {
        cli_progress_abort(pr);
        fprintf(stderr, "dsr1-synth: %s\n", err.msg);
        sy_plan_free(&plan);
        return dsr1_err_exit_code(&err);
    }
    cli_progress_finish(pr);
    if (!quiet) {
        char nt[32], nb[32], hb[CLI_BYTES_LEN];
        commas(plan.n, nt, sizeof nt);
        commas(plan.total_bytes, nb, sizeof nb);
        printf("%s: preset %s, %u layer%s%s, %s tensors, %s bytes (%s) in %u file%s%s\n", out, preset,
               plan.cfg.num_hidden_layers, plan.cfg.num_hidden_layers == 1 ? "" : "s",
               plan.mtp ? " + MTP" : "", nt, nb,
               cli_format_bytes(plan.total_bytes, 1, hb, sizeof hb), plan.n_files,
               plan.n_files == 1 ? "" : "s", meta ? " (metadata only, no weights)" : "");
    }
    sy_plan_free(&plan);
    return 0;
}
