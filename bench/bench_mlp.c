/*
 * bench_mlp.c - libkd nn train steps and batch-1 inference, one thread.
 *
 * Modes (bench/run_nn.sh drives them and pairs the output with
 * bench/torch_mlp.py, interleaving rounds; this program builds nothing):
 *   bench_mlp [--min-seconds S] [--reps R] [--cpu] [case ...]
 *       times each case (all when none named): median over R batches of at
 *       least S seconds each; prints `bench=<case> libkd_ms=<ms>` and, for
 *       cases with a GEMM count, `gemm_mflop=<MFLOP per step>`. --cpu times
 *       with the thread's CPU clock instead of the wall clock (on a shared,
 *       oversubscribed machine it leaves out time the thread was not running).
 *   bench_mlp --list
 *       prints the case names.
 *   bench_mlp --blis [--min-seconds S]
 *       BLIS sgemm called directly (no libkd) on the GEMM shapes of the
 *       784-1200-1200-10 train step (same transposes) and on a large square
 *       product; prints `blis arch=<sub-config> shape=MxNxK/tatb gflops=<x>`
 *       per shape. BLIS fixes its sub-configuration per process from
 *       BLIS_ARCH_TYPE, so run_nn.sh calls this once per sub-configuration.
 */
#include <blis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_util.h"
#include "kd/kd.h"

typedef struct {
    const char *name;
    const char *spec;
    size_t batch;
    int train;
    size_t dims[4]; /* MLP widths for the GEMM count, 0-terminated; none: no count */
} bench_case;

static const bench_case cases[] = {
    {"mlp_784_1200_1200_10_train_b128", "input 784; linear 1200; relu; linear 1200; relu; linear 10", 128, 1,
     {784, 1200, 1200, 10}},
    {"mlp_784_128_10_train_b128", "input 784; linear 128; relu; linear 10", 128, 1, {784, 128, 10, 0}},
    {"mlp_784_32_10_infer_b1", "input 784; linear 32; relu; linear 10", 1, 0, {0}},
    {"cnn_train_b128",
     "input 1x28x28; conv 32 3 stride 1 pad 1; relu; maxpool 2; conv 64 3 stride 1 pad 1; relu; maxpool 2; "
     "flatten; linear 10",
     128, 1, {0}},
};
#define N_CASES (sizeof cases / sizeof cases[0])

/* One GEMM of a train step: C (m x n) += op(A) (m x k) op(B) (k x n). */
typedef struct {
    size_t m, n, k;
    int ta, tb;
} gemm_shape;

/* The GEMMs of one train step of an MLP with widths dims[0..nl] (as libkd's
 * linear layer issues them): forward y = x W^T, dW = dy^T x, dx = dy W
 * (no dx for the first layer). Returns the count. */
static size_t mlp_gemms(const size_t *dims, size_t batch, gemm_shape *out)
{
    size_t nl = 0, g = 0;
    while (nl < 3 && dims[nl + 1]) nl++;
    for (size_t l = 0; l < nl; l++) {
        size_t in = dims[l], o = dims[l + 1];
        out[g++] = (gemm_shape){batch, o, in, 0, 1};
        out[g++] = (gemm_shape){o, in, batch, 1, 0};
        if (l > 0) out[g++] = (gemm_shape){batch, in, o, 0, 0};
    }
    return g;
}

static double gemm_flops(const gemm_shape *s, size_t n)
{
    double f = 0;
    for (size_t i = 0; i < n; i++) f += 2.0 * (double)s[i].m * (double)s[i].n * (double)s[i].k;
    return f;
}

static int use_cpu_clock;

static double now(void)
{
    if (!use_cpu_clock) return bench_now();
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Seconds per call of fn: one warm-up call, then doubling batches until
 * min_seconds; median over reps. */
static double time_median(void (*fn)(void *), void *arg, double min_seconds, int reps)
{
    double t[64];
    if (reps > 64) reps = 64;
    if (reps < 1) reps = 1;
    for (int r = 0; r < reps; r++) {
        fn(arg);
        long iters = 1, total = 0;
        double start = now(), elapsed = 0.0;
        while (elapsed < min_seconds) {
            for (long i = 0; i < iters; i++) fn(arg);
            total += iters;
            elapsed = now() - start;
            if (iters < (1L << 20)) iters *= 2;
        }
        t[r] = elapsed / (double)total;
    }
    return bench_median(t, (size_t)reps);
}

typedef struct {
    kd_model *m;
    kd_optimizer *opt;
    float *x, *dy;
    size_t batch, nx, ny;
    int train;
} run_t;

static void step(void *arg)
{
    run_t *r = (run_t *)arg;
    const float *y;
    if (!r->train) {
        kd_model_forward(r->m, KD_MODE_INFER, r->x, r->nx, r->batch, &y);
        return;
    }
    kd_model_zero_grad(r->m);
    kd_model_forward(r->m, KD_MODE_TRAIN, r->x, r->nx, r->batch, &y);
    kd_model_backward(r->m, r->dy, r->ny, NULL, 0);
    kd_optimizer_step(r->opt);
}

static int bench(kd_context *ctx, const bench_case *c, double min_seconds, int reps)
{
    run_t r = {0};
    r.batch = c->batch;
    r.train = c->train;
    if (kd_model_create_from_spec(ctx, c->spec, &r.m) != KD_OK) {
        fprintf(stderr, "%s: %s\n", c->name, kd_context_last_error(ctx));
        return 1;
    }
    size_t s[4], n = 1, no;
    uint32_t rank;
    kd_model_input_shape(r.m, s, &rank, NULL);
    for (uint32_t i = 0; i < rank; i++) n *= s[i];
    kd_model_output_shape(r.m, NULL, NULL, &no);
    r.nx = n * c->batch;
    r.ny = no * c->batch;
    r.x = calloc(r.nx, sizeof(float));
    r.dy = calloc(r.ny, sizeof(float));
    if (!r.x || !r.dy) return 1;
    for (size_t i = 0; i < r.nx; i++) r.x[i] = (float)((i * 7919) % 1000) / 1000.0f;
    for (size_t i = 0; i < r.ny; i++) r.dy[i] = (float)((i * 31) % 100) / 1000.0f - 0.05f;
    kd_optimizer_config oc;
    kd_optimizer_config_default(&oc, KD_OPTIM_ADAMW);
    if (c->train && kd_optimizer_create(r.m, &oc, &r.opt) != KD_OK) {
        fprintf(stderr, "%s: %s\n", c->name, kd_context_last_error(ctx));
        return 1;
    }
    double sec = time_median(step, &r, min_seconds, reps);
    printf("bench=%s libkd_ms=%.5f", c->name, sec * 1e3);
    if (c->dims[0]) {
        gemm_shape g[16];
        size_t ng = mlp_gemms(c->dims, c->batch, g);
        printf(" gemm_mflop=%.3f", gemm_flops(g, ng) * 1e-6);
    }
    printf("\n");
    fflush(stdout);
    kd_optimizer_destroy(r.opt);
    kd_model_destroy(r.m);
    free(r.x);
    free(r.dy);
    return 0;
}

/* ---- BLIS alone ----------------------------------------------------------- */

typedef struct {
    gemm_shape s;
    float *a, *b, *c;
} blis_job;

static void blis_run(void *p)
{
    blis_job *j = (blis_job *)p;
    const gemm_shape *s = &j->s;
    float one = 1.0f, zero = 0.0f;
    rntm_t rntm = BLIS_RNTM_INITIALIZER;
    bli_rntm_set_num_threads(1, &rntm);
    /* Row-major operands as stored: op(A) m x k, op(B) k x n. */
    inc_t lda = (inc_t)(s->ta ? s->m : s->k), ldb = (inc_t)(s->tb ? s->k : s->n);
    bli_sgemm_ex(s->ta ? BLIS_TRANSPOSE : BLIS_NO_TRANSPOSE, s->tb ? BLIS_TRANSPOSE : BLIS_NO_TRANSPOSE,
                 (dim_t)s->m, (dim_t)s->n, (dim_t)s->k, &one, j->a, lda, 1, j->b, ldb, 1, &zero, j->c,
                 (inc_t)s->n, 1, NULL, &rntm);
}

static int blis_mode(double min_seconds)
{
    bli_init();
    const char *arch = bli_arch_string(bli_arch_query_id());
    gemm_shape g[17];
    size_t ng = mlp_gemms(cases[0].dims, cases[0].batch, g);
    g[ng++] = (gemm_shape){1024, 1024, 512, 0, 0};
    for (size_t i = 0; i < ng; i++) {
        blis_job j = {g[i], NULL, NULL, NULL};
        size_t na = g[i].m * g[i].k, nb = g[i].k * g[i].n, nc = g[i].m * g[i].n;
        j.a = malloc(na * sizeof(float));
        j.b = malloc(nb * sizeof(float));
        j.c = malloc(nc * sizeof(float));
        if (!j.a || !j.b || !j.c) return 1;
        for (size_t t = 0; t < na; t++) j.a[t] = (float)((t * 7) % 13) * 0.1f - 0.6f;
        for (size_t t = 0; t < nb; t++) j.b[t] = (float)((t * 5) % 11) * 0.1f - 0.5f;
        double sec = time_median(blis_run, &j, min_seconds, 3);
        printf("blis arch=%s shape=%zux%zux%zu/%c%c gflops=%.3f\n", arch, g[i].m, g[i].n, g[i].k,
               g[i].ta ? 't' : 'n', g[i].tb ? 't' : 'n',
               2.0 * (double)g[i].m * (double)g[i].n * (double)g[i].k / sec * 1e-9);
        free(j.a);
        free(j.b);
        free(j.c);
    }
    return 0;
}

int main(int argc, char **argv)
{
    double min_seconds = 0.3;
    int reps = 5, blis = 0, first_case = argc;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--min-seconds") == 0 && i + 1 < argc) {
            min_seconds = atof(argv[++i]);
        } else if (strcmp(argv[i], "--reps") == 0 && i + 1 < argc) {
            reps = atoi(argv[++i]);
        } else if (strcmp(argv[i], "--cpu") == 0) {
            use_cpu_clock = 1;
        } else if (strcmp(argv[i], "--blis") == 0) {
            blis = 1;
        } else if (strcmp(argv[i], "--list") == 0) {
            for (size_t c = 0; c < N_CASES; c++) printf("%s\n", cases[c].name);
            return 0;
        } else if (argv[i][0] == '-') {
            fprintf(stderr, "usage: bench_mlp [--min-seconds S] [--reps R] [--cpu] [--list | --blis | case...]\n");
            return 2;
        } else {
            first_case = i;
            break;
        }
    }
    if (blis) return blis_mode(min_seconds);
    kd_context *ctx;
    if (kd_context_create(NULL, &ctx) != KD_OK) return 1;
    int rc = 0;
    for (size_t c = 0; c < N_CASES && rc == 0; c++) {
        int want = first_case >= argc;
        for (int i = first_case; i < argc; i++)
            if (strcmp(argv[i], cases[c].name) == 0) want = 1;
        if (want) rc = bench(ctx, &cases[c], min_seconds, reps);
    }
    kd_context_destroy(ctx);
    return rc;
}
