/* dsr1-shard: plan a TP/EP/PP/DP layout for DeepSeek-V3/R1 and write per-rank shard
 * files with a topology manifest. Thin main over formats/plan.c and formats/shard.c.
 * Manual: docs/tools/dsr1-shard.md. */
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "ck.h"
#include "cli.h"
#include "err.h"
#include "plan.h"
#include "shard.h"

static const char *usage_text =
    "usage: dsr1-shard plan CKPT [plan options] [--json]\n"
    "       dsr1-shard run CKPT --out DIR [plan options] [--resume] [--threads N] [--batch SIZE]\n"
    "                  [--progress auto|bar|plain|none] [--quiet] [--force]\n"
    "plan options: --tp N --ep N --pp N --dp N --nodes N --gpus-per-node N --dtype fp8|bf16 --mtp\n"
    "              --gpu-mem SIZE|KIND --reserve SIZE --min-kv-tokens N --kv-dtype fp32|bf16\n"
    "GPU kinds: h100-80g h200-141g h20-96g a100-80g b200-180g mi300x-192g\n"
    "exit: 0 ok / fits, 1 does not fit or bad source, 2 usage or impossible plan, 3 I/O\n";

static void usage_err(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void usage_err(const char *fmt, ...)
{
    va_list ap;
    fputs("dsr1-shard: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    fputs(usage_text, stderr);
    exit(2);
}

typedef struct args {
    const char *cmd, *ckpt, *out;
    plan_req req;
    int json, resume, quiet, force, gpu_mem_given;
    int threads;
    uint64_t batch;
    cli_progress_mode progress;
} args;

static uint32_t arg_u32(const char *opt, const char *v, uint64_t min, uint64_t max)
{
    uint64_t x;
    int rc = cli_parse_u64(v, min, max, &x);
    if (rc)
        usage_err("%s %s: %s (expected an integer in [%" PRIu64 ", %" PRIu64 "])", opt, v, cli_strerror(rc), min,
                  max);
    return (uint32_t)x;
}

static uint64_t arg_size(const char *opt, const char *v)
{
    uint64_t x;
    int rc = cli_parse_size(v, &x);
    if (rc)
        usage_err("%s %s: %s (expected bytes, e.g. 80GB or 79.6GiB)", opt, v, cli_strerror(rc));
    return x;
}

static void parse_args(int argc, char **argv, args *a)
{
    memset(a, 0, sizeof *a);
    a->progress = CLI_PROGRESS_AUTO;
    if (argc < 2)
        usage_err("missing subcommand (plan or run)");
    if (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0) {
        fputs(usage_text, stdout);
        exit(0);
    }
    a->cmd = argv[1];
    if (strcmp(a->cmd, "plan") != 0 && strcmp(a->cmd, "run") != 0)
        usage_err("unknown subcommand '%s' (plan or run)", a->cmd);
    int is_run = strcmp(a->cmd, "run") == 0;
    const char *seen[64], *seen_val[64];
    int nseen = 0;
    for (int i = 2; i < argc; i++) {
        const char *o = argv[i];
        if (strcmp(o, "-h") == 0 || strcmp(o, "--help") == 0) {
            fputs(usage_text, stdout);
            exit(0);
        }
        static const char *const valued[] = {"--tp", "--ep", "--pp", "--dp", "--nodes", "--gpus-per-node",
                                             "--dtype", "--gpu-mem", "--reserve", "--min-kv-tokens", "--kv-dtype", "--out",
                                             "--threads", "--batch", "--progress"};
        int is_valued = 0;
        for (size_t k = 0; k < sizeof valued / sizeof valued[0]; k++)
            is_valued |= strcmp(o, valued[k]) == 0;
        if (is_valued) {
            /* a repeated option is almost always a copy-paste slip in a deployment
             * script; silently taking the last one could shard the wrong plan */
            for (int k = 0; k < nseen; k++)
                if (strcmp(seen[k], o) == 0)
                    usage_err("%s given twice (%s and %s)", o, seen_val[k], i + 1 < argc ? argv[i + 1] : "");
            if (nseen < (int)(sizeof seen / sizeof seen[0])) {
                seen_val[nseen] = i + 1 < argc ? argv[i + 1] : "";
                seen[nseen++] = o;
            }
        }
        if (o[0] != '-') {
            if (a->ckpt)
                usage_err("unexpected argument '%s' (one checkpoint directory)", o);
            a->ckpt = o;
            continue;
        }
#define NEEDV()                                                                                        \
    do {                                                                                               \
        if (i + 1 >= argc)                                                                             \
            usage_err("%s needs a value", o);                                                          \
    } while (0)
        if (strcmp(o, "--tp") == 0) { NEEDV(); a->req.tp = arg_u32(o, argv[++i], 1, 4096); }
        else if (strcmp(o, "--ep") == 0) { NEEDV(); a->req.ep = arg_u32(o, argv[++i], 1, 4096); }
        else if (strcmp(o, "--pp") == 0) { NEEDV(); a->req.pp = arg_u32(o, argv[++i], 1, 4096); }
        else if (strcmp(o, "--dp") == 0) { NEEDV(); a->req.dp = arg_u32(o, argv[++i], 1, 65536); }
        else if (strcmp(o, "--nodes") == 0) { NEEDV(); a->req.nodes = arg_u32(o, argv[++i], 1, 65536); }
        else if (strcmp(o, "--gpus-per-node") == 0) { NEEDV(); a->req.gpus_per_node = arg_u32(o, argv[++i], 1, 1024); }
        else if (strcmp(o, "--dtype") == 0) {
            NEEDV();
            if (plan_dtype_parse(argv[++i], &a->req.dtype))
                usage_err("--dtype %s: expected fp8 or bf16", argv[i]);
        } else if (strcmp(o, "--mtp") == 0) a->req.mtp = 1;
        else if (strcmp(o, "--gpu-mem") == 0) {
            NEEDV();
            const char *v = argv[++i];
            const plan_gpu_kind *k = plan_gpu_kind_find(v);
            if (k) {
                snprintf(a->req.gpu_kind, sizeof a->req.gpu_kind, "%s", k->name);
                a->req.gpu_mem = k->bytes;
            } else {
                uint64_t x;
                if (cli_parse_size(v, &x) || x == 0)
                    usage_err("--gpu-mem %s: not a GPU kind (h100-80g h200-141g h20-96g a100-80g b200-180g "
                              "mi300x-192g) or a size like 80GB", v);
                a->req.gpu_mem = x;
            }
            a->gpu_mem_given = 1;
        } else if (strcmp(o, "--reserve") == 0) {
            NEEDV();
            uint64_t r = arg_size(o, argv[++i]);
            a->req.reserve = r ? r : UINT64_MAX;
        } else if (strcmp(o, "--min-kv-tokens") == 0) {
            NEEDV();
            uint64_t r = arg_u32(o, argv[++i], 0, UINT32_MAX);
            a->req.min_kv_tokens = r ? r : UINT64_MAX;
        } else if (strcmp(o, "--kv-dtype") == 0) {
            NEEDV();
            const char *v = argv[++i];
            if (strcmp(v, "fp32") && strcmp(v, "bf16"))
                usage_err("--kv-dtype %s: expected fp32 (dsr1-serve's latent cache) or bf16", v);
            a->req.kv_bytes = strcmp(v, "fp32") == 0 ? 4 : 2;
        } else if (strcmp(o, "--json") == 0 && !is_run) a->json = 1;
        else if (strcmp(o, "--out") == 0 && is_run) { NEEDV(); a->out = argv[++i]; }
        else if (strcmp(o, "--resume") == 0 && is_run) a->resume = 1;
        else if (strcmp(o, "--force") == 0 && is_run) a->force = 1;
        else if (strcmp(o, "--quiet") == 0 && is_run) a->quiet = 1;
        else if (strcmp(o, "--threads") == 0 && is_run) { NEEDV(); a->threads = (int)arg_u32(o, argv[++i], 1, 1024); }
        else if (strcmp(o, "--batch") == 0 && is_run) {
            NEEDV();
            a->batch = arg_size(o, argv[++i]);
            if (a->batch < 4096 || a->batch > (16ULL << 30))
                usage_err("--batch: between 4 KiB and 16 GiB");
        } else if (strcmp(o, "--progress") == 0 && is_run) {
            NEEDV();
            const char *v = argv[++i];
            if (strcmp(v, "auto") == 0) a->progress = CLI_PROGRESS_AUTO;
            else if (strcmp(v, "bar") == 0) a->progress = CLI_PROGRESS_BAR;
            else if (strcmp(v, "plain") == 0) a->progress = CLI_PROGRESS_PLAIN;
            else if (strcmp(v, "none") == 0) a->progress = CLI_PROGRESS_QUIET;
            else usage_err("--progress %s: expected auto, bar, plain or none", v);
        } else
            usage_err("unknown option '%s' for '%s'", o, a->cmd);
#undef NEEDV
    }
    if (!a->ckpt)
        usage_err("missing checkpoint directory");
    if (is_run && !a->out)
        usage_err("run needs --out DIR");
    if (a->quiet)
        a->progress = CLI_PROGRESS_QUIET;
    /* plan always checks the fit; h100-80g unless told otherwise */
    if (!is_run && !a->gpu_mem_given) {
        const plan_gpu_kind *k = plan_gpu_kind_find("h100-80g");
        snprintf(a->req.gpu_kind, sizeof a->req.gpu_kind, "%s", k->name);
        a->req.gpu_mem = k->bytes;
    }
}

static const char *gb(uint64_t b, char *buf) { return cli_format_bytes(b, 0, buf, CLI_BYTES_LEN); }

static void layers_str(const plan_stage *s, char *buf, size_t cap)
{
    snprintf(buf, cap, "%d-%d", s->layer_first, s->layer_last);
}

static void experts_str(const plan *p, const plan_shard *s, char *buf, size_t cap)
{
    if (s->expert_parts > 1)
        snprintf(buf, cap, "%u-%u /%u", s->expert_first, s->expert_first + s->expert_count - 1, s->expert_parts);
    else
        snprintf(buf, cap, "%u-%u", s->expert_first, s->expert_first + s->expert_count - 1);
    (void)p;
}

static void gpu_name(const plan_req *r, char *buf, size_t cap)
{
    char b[CLI_BYTES_LEN];
    if (r->gpu_kind[0])
        snprintf(buf, cap, "%s (%s)", r->gpu_kind, gb(r->gpu_mem, b));
    else
        snprintf(buf, cap, "%s GPUs", gb(r->gpu_mem, b));
}

static void suggestion_cmd(const args *a, const plan_suggestion *s, char *buf, size_t cap)
{
    char mem[48];
    if (s->req.gpu_kind[0])
        snprintf(mem, sizeof mem, "%s", s->req.gpu_kind);
    else
        snprintf(mem, sizeof mem, "%" PRIu64, s->req.gpu_mem);
    snprintf(buf, cap, "--tp %u --ep %u --pp %u --dp %u --nodes %u --gpus-per-node %u --dtype %s%s --gpu-mem %s",
             s->req.tp, s->req.ep, s->req.pp, s->req.dp, s->req.nodes, s->req.gpus_per_node,
             plan_dtype_name(s->req.dtype), s->req.mtp ? " --mtp" : "", mem);
    (void)a;
}

static void warn_spans(const plan *p)
{
    if (!p->tp_spans_nodes)
        return;
    fprintf(stderr,
            "dsr1-shard: warning: tensor-parallel groups of %u ranks span nodes (%u GPUs per node): every layer's "
            "all-reduce crosses the network; prefer tp <= gpus-per-node and pp or dp across nodes\n",
            p->req.tp, p->req.gpus_per_node);
}

static void print_plan_text(const args *a, const plan *p, const plan_suggestion *sg, size_t nsg)
{
    char g[64], b1[CLI_BYTES_LEN], b2[CLI_BYTES_LEN], b3[CLI_BYTES_LEN];
    const ck_config *c = &p->cfg;
    gpu_name(&p->req, g, sizeof g);
    printf("model: %u layers%s, %u routed experts, hidden %u, vocab %u\n", c->num_hidden_layers,
           p->req.mtp ? " + MTP" : "", c->n_routed_experts, c->hidden_size, c->vocab_size);
    printf("plan: tp=%u ep=%u pp=%u dp=%u -> %u ranks on %u node%s x %u GPUs; dtype %s; %s; reserve %s; "
           "KV cache %" PRIu64 " B/token/layer, min %" PRIu64 " tokens\n",
           p->req.tp, p->req.ep, p->req.pp, p->req.dp, p->world, p->req.nodes, p->req.nodes == 1 ? "" : "s",
           p->req.gpus_per_node, plan_dtype_name(p->req.dtype), g, gb(p->reserve, b1),
           plan_kv_bytes_per_token_layer(c, &p->req), p->min_kv_tokens);
    printf("%5s %4s %5s %3s %3s %3s %-7s %-11s %10s %10s %12s  %s\n", "rank", "node", "local", "dp", "pp", "tp",
           "layers", "experts", "weights", "free", "KV tokens", "shard");
    for (uint32_t r = 0; r < p->world; r++) {
        const plan_rank *pr = &p->ranks[r];
        const plan_shard *s = &p->shards[pr->shard];
        char lay[32], ex[32], file[128], fr[CLI_BYTES_LEN + 2];
        layers_str(&p->stages[pr->pp], lay, sizeof lay);
        experts_str(p, s, ex, sizeof ex);
        plan_shard_file(p, pr->shard, file, sizeof file);
        if (s->free_bytes < 0)
            snprintf(fr, sizeof fr, "-%s", gb((uint64_t)-s->free_bytes, b2));
        else
            snprintf(fr, sizeof fr, "%s", gb((uint64_t)s->free_bytes, b2));
        printf("%5u %4u %5u %3u %3u %3u %-7s %-11s %10s %10s %12" PRIu64 "  %s\n", r, pr->node, pr->local_rank, pr->dp,
               pr->pp, pr->tp, lay, ex, gb(s->weight_bytes, b1), fr, s->kv_tokens, file);
    }
    uint64_t maxw = 0, minkv = UINT64_MAX;
    for (size_t i = 0; i < p->n_shards; i++) {
        if (p->shards[i].weight_bytes > maxw)
            maxw = p->shards[i].weight_bytes;
        if (p->shards[i].kv_tokens < minkv)
            minkv = p->shards[i].kv_tokens;
    }
    printf("totals: %zu unique shard files, %s of weights (dp replicas share files), %s on the fullest GPU, "
           "%s in all %u GPUs, KV cache for at least %" PRIu64 " tokens per rank\n",
           p->n_shards, gb(p->total_unique_bytes, b1), gb(maxw, b2), gb(p->total_unique_bytes * p->req.dp, b3),
           p->world, minkv);
    if (plan_shared_replicated(p))
        printf("note: the shared expert (%u rows) cannot split %u ways on 128-blocks; every tp rank holds it "
               "whole and adds its output after the all-reduce\n",
               c->moe_intermediate_size * c->n_shared_experts, p->req.tp);
    if (p->fits) {
        printf("fits: yes\n");
        return;
    }
    const plan_shard *w = &p->shards[p->worst_shard];
    char b4[CLI_BYTES_LEN], b5[CLI_BYTES_LEN], b6[CLI_BYTES_LEN];
    printf("fits: NO\n");
    fprintf(stderr,
            "dsr1-shard: does not fit: shard pp %u tp %u needs %s of weights + %s reserve + %s for %" PRIu64
            " KV tokens = %s, but %s%s: short by %s (%s)\n",
            w->pp_stage, w->tp_rank, gb(w->weight_bytes, b1), gb(p->reserve, b2),
            gb(p->min_kv_tokens * w->kv_bytes_per_token, b3),
            p->min_kv_tokens, gb(w->weight_bytes + p->reserve + p->min_kv_tokens * w->kv_bytes_per_token, b4), g,
            p->req.gpu_kind[0] ? " per GPU" : "", /* "80 GB GPUs" already says it */
            gb((uint64_t)p->shortfall, b6), cli_format_bytes((uint64_t)p->shortfall, 1, b5, sizeof b5));
    if (!nsg) {
        fprintf(stderr, "dsr1-shard: no plan up to 512 GPUs fits these GPUs\n");
        return;
    }
    fprintf(stderr, "dsr1-shard: nearest plans that fit:\n");
    static const char *cat[] = {"same GPU kind", "other GPU kind", "other dtype"};
    for (size_t i = 0; i < nsg; i++) {
        char cmd[256];
        suggestion_cmd(a, &sg[i], cmd, sizeof cmd);
        fprintf(stderr, "  %-14s %3u GPUs: %s  (%s weights/GPU, KV >= %" PRIu64 " tokens%s)\n", cat[sg[i].category],
                sg[i].world, cmd, gb(sg[i].max_weight_bytes, b1), sg[i].min_kv_tokens,
                sg[i].tp_spans_nodes ? ", tp spans nodes" : "");
    }
}

static json_t *req_json(const plan_req *r, uint32_t world)
{
    return json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:s, s:b, s:s, s:I}", "tp", (json_int_t)r->tp, "ep",
                     (json_int_t)r->ep, "pp", (json_int_t)r->pp, "dp", (json_int_t)r->dp, "world_size",
                     (json_int_t)world, "nodes", (json_int_t)r->nodes, "gpus_per_node", (json_int_t)r->gpus_per_node,
                     "dtype", plan_dtype_name(r->dtype), "mtp", r->mtp, "gpu_kind", r->gpu_kind, "gpu_mem",
                     (json_int_t)r->gpu_mem);
}

static void print_plan_json(const plan *p, const plan_suggestion *sg, size_t nsg)
{
    json_t *o = json_object();
    json_object_set_new(o, "plan", req_json(&p->req, p->world));
    json_object_set_new(o, "reserve", json_integer((json_int_t)p->reserve));
    json_object_set_new(o, "min_kv_tokens", json_integer((json_int_t)p->min_kv_tokens));
    json_object_set_new(o, "kv_bytes_per_token_layer", json_integer((json_int_t)plan_kv_bytes_per_token_layer(&p->cfg, &p->req)));
    json_object_set_new(o, "fits", json_boolean(p->fits));
    json_object_set_new(o, "shortfall_bytes", json_integer(p->shortfall));
    json_object_set_new(o, "tp_spans_nodes", json_boolean(p->tp_spans_nodes));
    json_object_set_new(o, "total_unique_bytes", json_integer((json_int_t)p->total_unique_bytes));
    json_t *st = json_array();
    for (uint32_t k = 0; k < p->req.pp; k++)
        json_array_append_new(st, json_pack("{s:i, s:i, s:I, s:b, s:b}", "layer_first", p->stages[k].layer_first,
                                            "layer_last", p->stages[k].layer_last, "n_layers",
                                            (json_int_t)p->stages[k].n_layers, "embed", p->stages[k].has_embed, "head",
                                            p->stages[k].has_head));
    json_object_set_new(o, "stages", st);
    json_t *sh = json_array();
    for (size_t i = 0; i < p->n_shards; i++) {
        const plan_shard *s = &p->shards[i];
        char file[128];
        plan_shard_file(p, i, file, sizeof file);
        json_array_append_new(
            sh, json_pack("{s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "file", file, "pp_stage",
                          (json_int_t)s->pp_stage, "tp_rank", (json_int_t)s->tp_rank, "expert_first",
                          (json_int_t)s->expert_first, "expert_count", (json_int_t)s->expert_count, "expert_parts",
                          (json_int_t)s->expert_parts, "tensors", (json_int_t)s->n_tensors, "weight_bytes",
                          (json_int_t)s->weight_bytes, "kv_bytes_per_token", (json_int_t)s->kv_bytes_per_token,
                          "free_bytes", (json_int_t)s->free_bytes, "kv_tokens", (json_int_t)s->kv_tokens));
    }
    json_object_set_new(o, "shards", sh);
    json_t *rk = json_array();
    for (uint32_t r = 0; r < p->world; r++) {
        const plan_rank *x = &p->ranks[r];
        json_array_append_new(rk, json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "rank", (json_int_t)x->rank, "node",
                                            (json_int_t)x->node, "local_rank", (json_int_t)x->local_rank, "dp",
                                            (json_int_t)x->dp, "pp", (json_int_t)x->pp, "tp", (json_int_t)x->tp,
                                            "shard", (json_int_t)x->shard));
    }
    json_object_set_new(o, "ranks", rk);
    json_t *sj = json_array();
    for (size_t i = 0; i < nsg; i++) {
        json_t *x = req_json(&sg[i].req, sg[i].world);
        json_object_set_new(x, "category", json_integer(sg[i].category));
        json_object_set_new(x, "max_weight_bytes", json_integer((json_int_t)sg[i].max_weight_bytes));
        json_object_set_new(x, "min_kv_tokens", json_integer((json_int_t)sg[i].min_kv_tokens));
        json_object_set_new(x, "tp_spans_nodes", json_boolean(sg[i].tp_spans_nodes));
        json_array_append_new(sj, x);
    }
    json_object_set_new(o, "suggestions", sj);
    char *s = json_dumps(o, JSON_INDENT(1) | JSON_PRESERVE_ORDER);
    if (s)
        puts(s);
    free(s);
    json_decref(o);
}

static void fail_err(const dsr1_err *e, int code)
{
    fprintf(stderr, "dsr1-shard: %s\n", e->msg);
    exit(code);
}

/* Specific messages for the common wrong CKPT arguments, before ck_open's generic
 * "cannot open .../config.json". Missing or unreadable: exit 3; not a checkpoint: 2. */
static void check_ckpt_dir(const char *dir)
{
    struct stat sb;
    if (stat(dir, &sb) != 0) {
        fprintf(stderr, "dsr1-shard: %s: %s\n", dir, strerror(errno));
        exit(3);
    }
    if (!S_ISDIR(sb.st_mode)) {
        fprintf(stderr, "dsr1-shard: %s is not a directory: CKPT is a HuggingFace checkpoint directory "
                        "(config.json, model.safetensors.index.json, model-*.safetensors)\n", dir);
        exit(2);
    }
    char p[4096];
    snprintf(p, sizeof p, "%s/config.json", dir);
    if (access(p, F_OK) == 0) {
        snprintf(p, sizeof p, "%s/model.safetensors.index.json", dir);
        if (access(p, F_OK) == 0)
            return;
        fprintf(stderr, "dsr1-shard: %s is not a sharded HuggingFace checkpoint: no model.safetensors.index.json "
                        "next to config.json\n", dir);
        exit(2);
    }
    snprintf(p, sizeof p, "%s/manifest.json", dir);
    if (access(p, F_OK) == 0)
        fprintf(stderr, "dsr1-shard: %s has no config.json: it looks like a dsr1-shard output directory "
                        "(manifest.json); pass the HuggingFace checkpoint it was made from\n", dir);
    else
        fprintf(stderr, "dsr1-shard: %s is not a checkpoint directory: no config.json (expected config.json, "
                        "model.safetensors.index.json, model-*.safetensors)\n", dir);
    exit(2);
}

/* Opens the checkpoint and builds the plan; exits on any error. */
static void open_and_plan(const args *a, ck_ckpt **c, plan **p)
{
    dsr1_err e;
    check_ckpt_dir(a->ckpt);
    if (ck_open(c, a->ckpt, &e))
        fail_err(&e, e.status == DSR1_E_USAGE ? 2 : e.status == DSR1_E_IO || e.status == DSR1_E_NOMEM ? 3 : 1);
    if (a->req.mtp && !ck_index_has_mtp(*c)) {
        fprintf(stderr, "dsr1-shard: --mtp: %s has no MTP layer (layer %u) in its index\n", a->ckpt,
                ck_cfg(*c)->num_hidden_layers);
        exit(1);
    }
    int problems = ck_check_index(*c, ck_index_has_mtp(*c), NULL, NULL, &e);
    if (problems) {
        fprintf(stderr, "dsr1-shard: %s%s\n", e.msg, problems > 1 ? " (and more problems; dsr1-inspect lists them)" : "");
        exit(problems < 0 ? 3 : 1);
    }
    if (plan_make(p, ck_cfg(*c), &a->req, &e))
        fail_err(&e, dsr1_err_exit_code(&e));
}

static int cmd_plan(const args *a)
{
    ck_ckpt *c;
    plan *p;
    open_and_plan(a, &c, &p);
    plan_suggestion sg[6];
    size_t nsg = p->fits ? 0 : plan_suggest(ck_cfg(c), &a->req, sg, 6);
    warn_spans(p);
    if (a->json)
        print_plan_json(p, sg, nsg);
    else
        print_plan_text(a, p, sg, nsg);
    if (a->json && !p->fits)
        fprintf(stderr, "dsr1-shard: does not fit (short by %" PRId64 " bytes)\n", p->shortfall);
    int rc = p->fits ? 0 : 1;
    plan_free(p);
    ck_close(c);
    return rc;
}

/* progress and temp-file hooks. DSR1_SHARD_TEST_STALL_BATCHES=N (tests only) stops the
 * run after N batches, mid-write with temp files open, so tests can kill it there. */
static uint64_t stall_at, batches_seen;
static void on_progress(void *ctx, uint64_t b)
{
    cli_progress_add(ctx, b);
    if (stall_at && ++batches_seen >= stall_at) {
        fprintf(stderr, "dsr1-shard: test stall after %" PRIu64 " batches\n", batches_seen);
        for (int i = 0; i < 120; i++) /* bounded: a broken test must not hang */
            sleep(1);
        fprintf(stderr, "dsr1-shard: test stall expired\n");
        exit(3);
    }
}
static void on_item(void *ctx, const char *n) { cli_progress_set_item(ctx, n); }
static void on_total(void *ctx, uint64_t t) { cli_progress_set_total(ctx, t); }
static void on_temp(void *ctx, const char *path, int active)
{
    (void)ctx;
    if (active)
        cli_cleanup_register(path);
    else
        cli_cleanup_unregister(path);
}

static int cmd_run(const args *a)
{
    ck_ckpt *c;
    plan *p;
    open_and_plan(a, &c, &p);
    warn_spans(p);
    if (a->gpu_mem_given && !p->fits && !a->force) {
        char b[CLI_BYTES_LEN];
        fprintf(stderr,
                "dsr1-shard: this plan does not fit the GPUs (short by %s per GPU); `dsr1-shard plan` lists plans that "
                "do; --force writes it anyway\n",
                gb((uint64_t)p->shortfall, b));
        return 1;
    }
    cli_progress *pr = cli_progress_start(0, "dsr1-shard", a->progress);
    sh_opts o;
    memset(&o, 0, sizeof o);
    o.out_dir = a->out;
    o.resume = a->resume;
    o.threads = a->threads;
    o.batch_bytes = a->batch;
    o.progress = on_progress;
    o.progress_item = on_item;
    o.progress_total = on_total;
    o.progress_ctx = pr;
    o.temp_file = on_temp;
    sh_stats st;
    dsr1_err e;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int rc = sh_run(c, p, &o, &st, &e);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    if (rc) {
        cli_progress_abort(pr);
        fprintf(stderr, "dsr1-shard: %s\n", e.msg);
        if (rc == DSR1_E_IO && e.code != SH_ERR_OUT_DIR)
            fprintf(stderr, "dsr1-shard: nothing was completed: %s has no manifest.json; rerun with --resume after "
                            "fixing the cause\n", a->out);
        plan_free(p);
        ck_close(c);
        return dsr1_err_exit_code(&e);
    }
    cli_progress_finish(pr);
    double secs = (double)(t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9;
    if (!a->quiet) {
        char b1[CLI_BYTES_LEN], b2[CLI_BYTES_LEN];
        printf("%s: %zu shard files written (%s), %zu kept, from %s of source in %.1f s (%.2f GB/s; convert %.1f s, "
               "file hashes %.1f s, fsync %.1f s)\n",
               a->out, st.files_written, gb(st.written_bytes, b1), st.files_kept, gb(st.source_bytes, b2), secs,
               secs > 0 ? st.source_bytes / secs / 1e9 : 0.0, st.seconds_convert, st.seconds_hash, st.seconds_sync);
    }
    plan_free(p);
    ck_close(c);
    return 0;
}

int main(int argc, char **argv)
{
    args a;
    parse_args(argc, argv, &a);
    if (strcmp(a.cmd, "plan") == 0)
        return cmd_plan(&a);
    const char *stall = getenv("DSR1_SHARD_TEST_STALL_BATCHES");
    if (stall && cli_parse_u64(stall, 1, UINT64_MAX, &stall_at))
        usage_err("DSR1_SHARD_TEST_STALL_BATCHES=%s: expected a positive integer", stall);
    cli_signals_install();
    signal(SIGXFSZ, SIG_IGN); /* a file-size limit must surface as EFBIG, exit 3 */
    return cmd_run(&a);
}
