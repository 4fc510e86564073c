/* dsr1-serve: run DeepSeek-V3/R1 from dsr1-shard output (docs/tools/dsr1-serve.md).
 * Subcommand `generate`: one prompt of token ids, greedy or sampled, on the CPU
 * backend (every rank of the plan in this process) or the CUDA backend (this process
 * is one rank). */
#include <getopt.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <sys/stat.h>

#include "backend.h"
#include "cli.h"
#include "envcheck.h"
#include "npy.h"

static const char usage_text[] =
    "usage: dsr1-serve generate --manifest DIR/manifest.json --prompt-ids ID,ID,...\n"
    "                  [--backend cpu|cuda] [--max-new-tokens N] [--logits-out FILE.npy]\n"
    "                  [--mtp-logits-out FILE.npy] [--temperature T] [--top-p P] [--top-k K] [--seed S]\n"
    "                  [--verify header|full] [--attn auto|absorb|naive] [--no-cache]\n"
    "                  [--prefill-chunk N] [--speculative]\n"
    "                  [--threads N] [--rank R --world-size W --local-rank L\n"
    "                   --gpus-per-node G --master-addr HOST --master-port PORT --timeout S]\n";

static void help(void)
{
    fputs(usage_text, stdout);
    fputs("\nGenerate tokens from a prompt of token ids and print the generated ids\n"
          "(comma-separated, one line) on stdout.\n\n"
          "  --manifest PATH      manifest.json written by dsr1-shard; shards are read from its dir\n"
          "  --prompt-ids LIST    prompt token ids, comma-separated; @FILE reads them from FILE\n"
          "                       (separated by commas or whitespace; for long prompts)\n"
          "  --backend NAME       cpu (default): all ranks of the plan as threads of this process,\n"
          "                       fp32 math; cuda: this process is one rank (CUDA builds)\n"
          "  --max-new-tokens N   tokens to generate (default 16)\n"
          "  --logits-out FILE    write float32 .npy [rows, vocab]: every prompt position, then\n"
          "                       one row per decode step (N - 1 rows for N new tokens)\n"
          "  --mtp-logits-out FILE  shards made with --mtp: the MTP module's draft logits, same\n"
          "                       rows; row i drafts position i + 2 from the hidden state at i\n"
          "                       and the token at i + 1\n"
          "  --temperature T      0 (default) = greedy; R1 recommends 0.6 with --top-p 0.95\n"
          "  --top-p P            nucleus mass in (0, 1] (default 1 = off)\n"
          "  --top-k K            keep the K most likely tokens (default 0 = off)\n"
          "  --seed S             sampling seed (default 0)\n"
          "  --verify MODE        header (default): size, header, metadata and tensor table\n"
          "                       against the manifest; full: also hash every tensor\n"
          "  --attn MODE          auto (default: naive prefill, absorbed decode), absorb, naive\n"
          "  --no-cache           recompute the whole sequence for every token (for checks)\n"
          "  --prefill-chunk N    run the prompt through the model N tokens at a time, so\n"
          "                       activation memory follows N, not the prompt (default 4096;\n"
          "                       0 = the whole prompt in one pass)\n"
          "  --speculative        shards made with --mtp: the MTP module drafts the next token,\n"
          "                       verified by the next step (1-2 tokens a step; greedy: the\n"
          "                       same tokens up to rounding; sampled: the same distribution)\n"
          "  --threads N          CPU: OpenMP threads per rank (default: cores / ranks)\n"
          "  --rank ... --timeout identity and rendezvous of the CUDA backend (default: the\n"
          "                       torchrun / Kubernetes environment; see docs/runtime.md)\n"
          "  -h, --help           this help\n\n"
          "exit: 0 ok, 1 shard verification failed or shards do not fit the model,\n"
          "      2 usage, 3 I/O or internal error (also: built without CUDA for --backend cuda)\n",
          stdout);
}

static int usage(const char *fmt, const char *arg)
{
    fputs("dsr1-serve: ", stderr);
    fprintf(stderr, fmt, arg);
    fputc('\n', stderr);
    fputs(usage_text, stderr);
    return 2;
}

/* Token ids separated by commas (and, with ws, also by whitespace: a file's lines).
 * 0, or -1 with *n = the index of the entry that is not an id in [0, 2^31). */
static int parse_ids(const char *s, int ws, int32_t **out, size_t *n)
{
    const char *sp = ws ? " \t\r\n" : "", *end = ws ? ", \t\r\n" : ",";
    size_t cap = 16, k = 0;
    int32_t *v = malloc(cap * sizeof *v);
    const char *p = s + strspn(s, sp);
    for (; v;) {
        size_t len = strcspn(p, end);
        char buf[32];
        uint64_t x;
        if (len == 0 || len >= sizeof buf)
            break;
        memcpy(buf, p, len);
        buf[len] = 0;
        if (cli_parse_u64(buf, 0, INT32_MAX, &x) != CLI_OK)
            break;
        if (k == cap) {
            int32_t *nv = realloc(v, (cap *= 2) * sizeof *v);
            if (!nv)
                break;
            v = nv;
        }
        v[k++] = (int32_t)x;
        p += len;
        size_t gap = strspn(p, sp);
        if (!p[gap]) {
            *out = v;
            *n = k;
            return 0;
        }
        if (p[gap] == ',')
            gap += 1 + strspn(p + gap + 1, sp);
        else if (!gap)
            break;
        p += gap;
    }
    free(v);
    *n = k;
    return -1;
}

/* --prompt-ids @FILE: the file's text (at most 64 MiB), NUL-terminated; NULL on error
 * with the reason in why. */
static char *read_ids_file(const char *path, char *why, size_t cap)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(why, cap, "%s: %s", path, strerror(errno));
        return NULL;
    }
    size_t max = (size_t)64 << 20, n = 0;
    char *b = malloc(max + 1);
    errno = 0;
    if (b)
        n = fread(b, 1, max + 1, f);
    int bad = !b || ferror(f) || n > max, e = errno;
    fclose(f);
    if (bad) {
        snprintf(why, cap, "%s: %s", path, !b ? "out of memory" : n > max ? "larger than 64 MiB"
                                           : e ? strerror(e) : "read failed");
        free(b);
        return NULL;
    }
    b[n] = 0;
    if (strlen(b) != n) {
        snprintf(why, cap, "%s: holds a NUL byte (not a text list of token ids)", path);
        free(b);
        return NULL;
    }
    return b;
}

static int parse_float(const char *s, double lo, double hi, double *out)
{
    char *end;
    double d = strtod(s, &end);
    if (!*s || *end || !isfinite(d) || d < lo || d > hi)
        return -1;
    *out = d;
    return 0;
}

static int cmd_generate(int argc, char **argv)
{
    enum { O_MANIFEST = 256, O_PROMPT, O_BACKEND, O_MAXNEW, O_LOGITS, O_TEMP, O_TOPP, O_TOPK, O_SEED,
           O_VERIFY, O_ATTN, O_NOCACHE, O_THREADS, O_RANK, O_WORLD, O_LOCAL, O_GPN, O_ADDR, O_PORT,
           O_TIMEOUT, O_MTP, O_CHUNK, O_SPEC };
    static const struct option opts[] = {
        {"manifest", required_argument, 0, O_MANIFEST}, {"prompt-ids", required_argument, 0, O_PROMPT},
        {"backend", required_argument, 0, O_BACKEND},   {"max-new-tokens", required_argument, 0, O_MAXNEW},
        {"logits-out", required_argument, 0, O_LOGITS}, {"temperature", required_argument, 0, O_TEMP},
        {"top-p", required_argument, 0, O_TOPP},        {"top-k", required_argument, 0, O_TOPK},
        {"seed", required_argument, 0, O_SEED},         {"verify", required_argument, 0, O_VERIFY},
        {"attn", required_argument, 0, O_ATTN},         {"no-cache", no_argument, 0, O_NOCACHE},
        {"threads", required_argument, 0, O_THREADS},   {"rank", required_argument, 0, O_RANK},
        {"world-size", required_argument, 0, O_WORLD},  {"local-rank", required_argument, 0, O_LOCAL},
        {"gpus-per-node", required_argument, 0, O_GPN}, {"master-addr", required_argument, 0, O_ADDR},
        {"master-port", required_argument, 0, O_PORT},  {"timeout", required_argument, 0, O_TIMEOUT},
        {"mtp-logits-out", required_argument, 0, O_MTP}, {"prefill-chunk", required_argument, 0, O_CHUNK},
        {"speculative", no_argument, 0, O_SPEC},
        {"help", no_argument, 0, 'h'},                  {0, 0, 0, 0}};
    rt_generate_args a;
    rt_generate_args_init(&a);
    a.max_new_tokens = 16;
    const char *backend = "cpu", *logits_out = NULL, *mtp_out = NULL, *prompt_arg = NULL;
    int32_t *ids = NULL;
    int c;
    uint64_t u;
    double d;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'h': help(); return 0;
        case O_MANIFEST: a.manifest_path = optarg; break;
        case O_PROMPT: prompt_arg = optarg; break;
        case O_BACKEND:
            if (strcmp(optarg, "cpu") && strcmp(optarg, "cuda"))
                return usage("--backend: cpu or cuda, got \"%s\"", optarg);
            backend = optarg;
            break;
        case O_MAXNEW:
            if (cli_parse_u64(optarg, 1, 1u << 20, &u) != CLI_OK)
                return usage("--max-new-tokens: an integer in [1, 1048576], got \"%s\"", optarg);
            a.max_new_tokens = (int)u;
            break;
        case O_LOGITS: logits_out = optarg; break;
        case O_MTP: mtp_out = optarg; break;
        case O_TEMP:
            if (parse_float(optarg, 0, 100, &d))
                return usage("--temperature: a number in [0, 100], got \"%s\"", optarg);
            a.sampling.temperature = (float)d;
            break;
        case O_TOPP:
            if (parse_float(optarg, 1e-9, 1, &d))
                return usage("--top-p: a number in (0, 1], got \"%s\"", optarg);
            a.sampling.top_p = (float)d;
            break;
        case O_TOPK:
            if (cli_parse_u64(optarg, 0, INT32_MAX, &u) != CLI_OK)
                return usage("--top-k: a non-negative integer, got \"%s\"", optarg);
            a.sampling.top_k = (int)u;
            break;
        case O_SEED:
            if (cli_parse_u64(optarg, 0, UINT64_MAX, &u) != CLI_OK)
                return usage("--seed: a non-negative integer, got \"%s\"", optarg);
            a.sampling.seed = u;
            break;
        case O_VERIFY:
            if (!strcmp(optarg, "full"))
                a.verify_full = 1;
            else if (strcmp(optarg, "header"))
                return usage("--verify: header or full, got \"%s\"", optarg);
            break;
        case O_ATTN:
            if (!strcmp(optarg, "auto"))
                a.attn = RT_ATTN_AUTO;
            else if (!strcmp(optarg, "absorb"))
                a.attn = RT_ATTN_ABSORB;
            else if (!strcmp(optarg, "naive"))
                a.attn = RT_ATTN_NAIVE;
            else
                return usage("--attn: auto, absorb or naive, got \"%s\"", optarg);
            break;
        case O_NOCACHE: a.no_cache = 1; break;
        case O_SPEC: a.speculative = 1; break;
        case O_CHUNK:
            if (cli_parse_u64(optarg, 0, 1u << 20, &u) != CLI_OK)
                return usage("--prefill-chunk: tokens in [0, 1048576] (0 = the whole prompt), got \"%s\"",
                             optarg);
            a.prefill_chunk = (size_t)u;
            break;
        case O_THREADS:
            if (cli_parse_u64(optarg, 1, 1024, &u) != CLI_OK)
                return usage("--threads: an integer in [1, 1024], got \"%s\"", optarg);
            a.threads = (int)u;
            break;
        case O_RANK: case O_WORLD: case O_LOCAL: case O_GPN: case O_PORT:
            if (cli_parse_u64(optarg, 0, c == O_PORT ? 65535 : 1u << 20, &u) != CLI_OK)
                return usage("%s: expected a non-negative integer", argv[optind - 1]);
            if (c == O_RANK) a.rank = (int)u;
            else if (c == O_WORLD) a.world_size = (int)u;
            else if (c == O_LOCAL) a.local_rank = (int)u;
            else if (c == O_GPN) a.gpus_per_node = (int)u;
            else a.master_port = (int)u;
            break;
        case O_ADDR: a.master_addr = optarg; break;
        case O_TIMEOUT:
            if (parse_float(optarg, 0.001, 86400, &d))
                return usage("--timeout: seconds in (0, 86400], got \"%s\"", optarg);
            a.timeout_s = d;
            break;
        default: fputs(usage_text, stderr); return 2;
        }
    }
    if (optind < argc)
        return usage("unexpected argument \"%s\"", argv[optind]);
    if (!a.manifest_path)
        return usage("%s", "--manifest is required");
    if (!prompt_arg)
        return usage("%s", "--prompt-ids is required");
    if (prompt_arg[0] == '@') { /* a file: long prompts exceed one argument's 128 KiB */
        char why[512];
        if (!prompt_arg[1])
            return usage("%s", "--prompt-ids @FILE: no file name after @");
        char *text = read_ids_file(prompt_arg + 1, why, sizeof why);
        if (!text)
            return usage("--prompt-ids @FILE: %s", why);
        int prc = parse_ids(text, 1, &ids, &a.n_prompt);
        free(text);
        if (prc) {
            snprintf(why, sizeof why, "%s: entry %zu is not a token id in [0, 2^31) (ids are separated by "
                     "commas or whitespace)", prompt_arg + 1, a.n_prompt);
            return usage("--prompt-ids @FILE: %s", why);
        }
    } else if (parse_ids(prompt_arg, 0, &ids, &a.n_prompt) != 0) {
        return usage("--prompt-ids: expected comma-separated token ids, got \"%s\"", prompt_arg);
    }
    a.prompt = ids;
    a.keep_logits = logits_out != NULL;
    a.keep_mtp_logits = mtp_out != NULL;
    if (logits_out && mtp_out && strcmp(logits_out, mtp_out) == 0) {
        free(ids);
        return usage("%s", "--logits-out and --mtp-logits-out name the same file");
    }
    /* the DSR1_* switches: a malformed value is a usage error now, not a silent default
     * deep in a kernel; an unknown DSR1_* name is warned about (runtime/envcheck.h) */
    {
        dsr1_err ee;
        dsr1_err_clear(&ee);
        if (rt_env_check(environ, "dsr1-serve", stderr, &ee)) {
            fprintf(stderr, "dsr1-serve: %s\n", ee.msg);
            free(ids);
            return 2;
        }
    }
    /* --manifest DIR means DIR/manifest.json, as dsr1-verify takes DIR */
    char *mpath = NULL;
    struct stat sb;
    if (stat(a.manifest_path, &sb) == 0 && S_ISDIR(sb.st_mode)) {
        if (asprintf(&mpath, "%s/manifest.json", a.manifest_path) < 0) {
            free(ids);
            return 3;
        }
        a.manifest_path = mpath;
    }
    rt_generate_result res;
    memset(&res, 0, sizeof res);
    dsr1_err err;
    dsr1_err_clear(&err);
    /* Output files exist as temp files before the (long) generation, so a bad path
     * fails now; they get their names only when complete. */
    cli_signals_install();
    /* a file size limit (ulimit -f) must surface as EFBIG, a clear error */
    signal(SIGXFSZ, SIG_IGN);
    rt_npy_out lo = {0}, mo = {0};
    lo.fd = mo.fd = -1;
    int rc = 0;
    if ((logits_out && (rc = rt_npy_out_open(&lo, logits_out, &err))) ||
        (mtp_out && (rc = rt_npy_out_open(&mo, mtp_out, &err)))) {
        fprintf(stderr, "dsr1-serve: %s\n", err.msg);
        rt_npy_out_abort(&lo);
        free(ids);
        free(mpath);
        return dsr1_err_exit_code(&err);
    }
    /* copies: the npy outputs free their names; the signal cleanup list needs them */
    char *ltmp = lo.tmp ? strdup(lo.tmp) : NULL, *mtmp = mo.tmp ? strdup(mo.tmp) : NULL;
    if (ltmp)
        cli_cleanup_register(ltmp);
    if (mtmp)
        cli_cleanup_register(mtmp);
    rc = strcmp(backend, "cpu") == 0 ? rt_cpu_generate(&a, &res, &err) : rt_cuda_generate(&a, &res, &err);
    int code = 0;
    if (rc != 0) {
        fprintf(stderr, "dsr1-serve: %s\n", err.msg);
        code = dsr1_err_exit_code(&err);
    } else if (res.have_output) {
        /* files first: tokens on stdout mean every requested output is complete */
        if (logits_out && rt_npy_out_commit(&lo, res.logits, res.rows, res.vocab, &err) != 0) {
            fprintf(stderr, "dsr1-serve: %s\n", err.msg);
            code = 3;
        }
        if (!code && mtp_out && rt_npy_out_commit(&mo, res.mtp_logits, res.rows, res.vocab, &err) != 0) {
            fprintf(stderr, "dsr1-serve: %s\n", err.msg);
            code = 3;
        }
        if (!code) {
            for (size_t i = 0; i < res.n_tokens; i++)
                printf("%s%" PRId32, i ? "," : "", res.tokens[i]);
            putchar('\n');
            if (fflush(stdout) != 0) {
                fprintf(stderr, "dsr1-serve: writing stdout failed\n");
                code = 3;
            }
        }
    }
    rt_npy_out_abort(&lo);
    rt_npy_out_abort(&mo);
    for (int k = 0; k < 2; k++) {
        char *t = k ? mtmp : ltmp;
        if (t)
            cli_cleanup_unregister(t);
        free(t);
    }
    free(mpath);
    free(ids);
    rt_generate_result_free(&res);
    return code;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return usage("%s", "missing subcommand (generate)");
    if (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
        help();
        return 0;
    }
    if (!strcmp(argv[1], "generate"))
        return cmd_generate(argc - 1, argv + 1);
    return usage("unknown subcommand \"%s\" (expected generate)", argv[1]);
}
