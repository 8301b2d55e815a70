/* bench_moe.c - MoE layer forward+backward and batch-1 inference, one
 * thread. Prints `bench=<case> libkd_ms=<median>` lines (bench/run_moe.sh
 * (thread CPU time) pairs them with bench/torch_moe.py, the Hugging Face Mixtral-style
 * per-expert loop) and the in-run dense anchor:
 *   bench=moe_vs_dense_<act> moe_ms=... dense_ms=... overhead=<moe/dense>
 * where the dense FFN has the active parameters of the MoE (hidden k * d_ff):
 * for ReLU a kd_model "linear 2048 nobias; relu; linear 512 nobias", for
 * SwiGLU (no nn layer) the same GEMMs and element-wise code written out
 * here with kd_gemm. Both: forward + backward with dx. Cases:
 *   moe_e8_k2_swiglu_train_n1024   E=8 k=2 d=512 d_ff=1024, 1024 tokens, fwd+bwd (with dx)
 *   moe_e8_k2_swiglu_infer_n1      the same layer, one token, inference
 *   moe_e64_k8_swiglu_train_n1024  fine-grained: E=64 k=8 d_ff=256 (same active size)
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>

#include <time.h>

#include "bench_util.h"
#include "kd/kd.h"

/* The machine is shared: time with this thread's CPU clock (torch_moe.py
 * uses time.thread_time likewise), so other processes' load does not count.
 * One warm-up call, then calls until min_seconds; median over reps. */
static double cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double time_median(void (*fn)(void *), void *arg, double min_seconds, int reps)
{
    double t[16];
    for (int r = 0; r < reps && r < 16; r++) {
        fn(arg);
        long calls = 0;
        double start = cpu_now(), el = 0;
        while (el < min_seconds) {
            fn(arg);
            calls++;
            el = cpu_now() - start;
        }
        t[r] = el / (double)calls;
    }
    return bench_median(t, (size_t)(reps < 16 ? reps : 16));
}

typedef struct {
    kd_moe *m;
    float *x, *y, *dy, *dx;
    size_t n;
    int train;
} moe_run;

static void moe_step(void *arg)
{
    moe_run *r = (moe_run *)arg;
    kd_moe_forward(r->m, r->train ? KD_MODE_TRAIN : KD_MODE_INFER, r->x, r->n, r->y);
    if (r->train) kd_moe_backward(r->m, r->dy, r->dx);
}

static float *filled(size_t n, unsigned mul)
{
    float *v = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) v[i] = (float)((i * mul) % 1000) / 500.0f - 1.0f;
    return v;
}

static double moe_case(kd_context *ctx, const char *name, size_t E, size_t k, size_t dff,
                       kd_moe_activation act, size_t n, int train)
{
    kd_moe_config c;
    kd_moe_config_default(&c);
    c.n_experts = E;
    c.top_k = k;
    c.d_model = 512;
    c.d_ff = dff;
    c.activation = act;
    moe_run r = {0};
    if (kd_moe_create(ctx, &c, &r.m) != KD_OK) {
        fprintf(stderr, "%s: %s\n", name, kd_context_last_error(ctx));
        exit(1);
    }
    r.n = n;
    r.train = train;
    r.x = filled(n * 512, 7919);
    r.dy = filled(n * 512, 31);
    r.y = malloc(n * 512 * sizeof(float));
    r.dx = malloc(n * 512 * sizeof(float));
    double sec = time_median(moe_step, &r, 0.5, 5);
    if (name) printf("bench=%s libkd_ms=%.4f\n", name, sec * 1e3);
    fflush(stdout);
    kd_moe_destroy(r.m);
    free(r.x), free(r.dy), free(r.y), free(r.dx);
    return sec;
}

/* Dense FFN y = W2 act(W1 x) [* W3 x] through kd_gemm, forward + backward
 * (weight gradients and dx), the same work a dense layer of hidden h does. */
typedef struct {
    kd_context *ctx;
    size_t n, d, h;
    int glu;
    float *x, *W1, *W3, *W2, *H, *U, *A, *y, *dy, *dA, *dU, *dx, *gW1, *gW3, *gW2;
} dense_run;

/* The dense anchor's SwiGLU uses the same vectorizable exp as the MoE layer
 * (lib/moe/kd_moe_core.c), so the ratio measures routing and grouping, not
 * two different exp implementations. */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define BENCH_VEC __attribute__((optimize("tree-vectorize", "vect-cost-model=dynamic"), \
                                 target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define BENCH_VEC
#endif
static inline float vexpf(float x)
{
    x = x < -87.3f ? -87.3f : x;
    x = x > 88.7f ? 88.7f : x;
    float t = x * 1.44269504f + 12582912.0f;
    float n = t - 12582912.0f;
    float r = x - n * 0.693145752f - n * 1.42860677e-6f;
    float p = 1.0f + r * (1.0f + r * (0.5f + r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120 + r * (1.0f / 720))))));
    int32_t bits = ((int32_t)n + 127) << 23;
    float sc;
    memcpy(&sc, &bits, sizeof sc);
    return p * sc;
}
BENCH_VEC static void dense_swiglu_fwd(const float *restrict h, const float *restrict u,
                                       float *restrict a, size_t n)
{
    for (size_t i = 0; i < n; i++) a[i] = h[i] / (1.0f + vexpf(-h[i])) * u[i];
}
BENCH_VEC static void dense_swiglu_bwd(const float *restrict h, const float *restrict u,
                                       float *restrict da, float *restrict du, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        float v = h[i], s = 1.0f / (1.0f + vexpf(-v)), g = da[i];
        du[i] = g * v * s;
        da[i] = g * u[i] * s * (1.0f + v * (1.0f - s));
    }
}

static void dense_step(void *arg)
{
    dense_run *r = (dense_run *)arg;
    size_t n = r->n, d = r->d, h = r->h, nh = n * h;
    kd_context *ctx = r->ctx;
    kd_gemm(ctx, KD_NO_TRANS, KD_TRANS, n, h, d, 1, r->x, d, r->W1, d, 0, r->H, h);
    if (r->glu) kd_gemm(ctx, KD_NO_TRANS, KD_TRANS, n, h, d, 1, r->x, d, r->W3, d, 0, r->U, h);
    if (r->glu)
        dense_swiglu_fwd(r->H, r->U, r->A, nh);
    else
        for (size_t i = 0; i < nh; i++) r->A[i] = r->H[i] > 0 ? r->H[i] : 0;
    kd_gemm(ctx, KD_NO_TRANS, KD_TRANS, n, d, h, 1, r->A, h, r->W2, h, 0, r->y, d);
    kd_gemm(ctx, KD_NO_TRANS, KD_NO_TRANS, n, h, d, 1, r->dy, d, r->W2, h, 0, r->dA, h);
    kd_gemm(ctx, KD_TRANS, KD_NO_TRANS, d, h, n, 1, r->dy, d, r->A, h, 1, r->gW2, h);
    if (r->glu)
        dense_swiglu_bwd(r->H, r->U, r->dA, r->dU, nh);
    else
        for (size_t i = 0; i < nh; i++)
            if (r->H[i] <= 0) r->dA[i] = 0;
    kd_gemm(ctx, KD_TRANS, KD_NO_TRANS, h, d, n, 1, r->dA, h, r->x, d, 1, r->gW1, d);
    kd_gemm(ctx, KD_NO_TRANS, KD_NO_TRANS, n, d, h, 1, r->dA, h, r->W1, d, 0, r->dx, d);
    if (r->glu) {
        kd_gemm(ctx, KD_TRANS, KD_NO_TRANS, h, d, n, 1, r->dU, h, r->x, d, 1, r->gW3, d);
        kd_gemm(ctx, KD_NO_TRANS, KD_NO_TRANS, n, d, h, 1, r->dU, h, r->W3, d, 1, r->dx, d);
    }
}

/* The ReLU anchor is libkd's own model layers (linear, relu, linear). */
typedef struct {
    kd_model *m;
    float *x, *dy, *dx;
    size_t n;
} model_run;

static void model_step(void *arg)
{
    model_run *r = (model_run *)arg;
    const float *y;
    kd_model_forward(r->m, KD_MODE_TRAIN, r->x, r->n * 512, r->n, &y);
    kd_model_backward(r->m, r->dy, r->n * 512, r->dx, r->n * 512);
}

static double dense_case(kd_context *ctx, size_t n, size_t h, int glu)
{
    if (!glu) {
        model_run r;
        char spec[128];
        snprintf(spec, sizeof spec, "input 512; linear %zu nobias; relu; linear 512 nobias", h);
        if (kd_model_create_from_spec(ctx, spec, &r.m) != KD_OK) exit(1);
        r.n = n;
        r.x = filled(n * 512, 7919);
        r.dy = filled(n * 512, 31);
        r.dx = malloc(n * 512 * sizeof(float));
        double sec = time_median(model_step, &r, 0.5, 5);
        kd_model_destroy(r.m);
        free(r.x), free(r.dy), free(r.dx);
        return sec;
    }
    dense_run r;
    size_t d = 512;
    memset(&r, 0, sizeof r);
    r.ctx = ctx, r.n = n, r.d = d, r.h = h, r.glu = glu;
    r.x = filled(n * d, 7919);
    r.dy = filled(n * d, 31);
    r.W1 = filled(h * d, 13), r.W3 = filled(h * d, 17), r.W2 = filled(h * d, 19);
    r.gW1 = calloc(h * d, 4), r.gW3 = calloc(h * d, 4), r.gW2 = calloc(h * d, 4);
    r.H = malloc(n * h * 4), r.U = malloc(n * h * 4), r.A = malloc(n * h * 4);
    r.dA = malloc(n * h * 4), r.dU = malloc(n * h * 4);
    r.y = malloc(n * d * 4), r.dx = malloc(n * d * 4);
    double sec = time_median(dense_step, &r, 0.5, 5);
    free(r.x), free(r.dy), free(r.W1), free(r.W3), free(r.W2), free(r.gW1), free(r.gW3);
    free(r.gW2), free(r.H), free(r.U), free(r.A), free(r.dA), free(r.dU), free(r.y), free(r.dx);
    return sec;
}

int main(int argc, char **argv)
{
    int only_dense = argc > 1 && strcmp(argv[1], "--dense") == 0;
    kd_context *ctx;
    kd_context_config cc;
    kd_context_config_default(&cc);
    cc.threads = 1;
    if (kd_context_create(&cc, &ctx) != KD_OK) return 1;
    fprintf(stderr, "bench_moe: BLIS sub-configuration '%s', 1 thread\n", kd_context_blis_arch(ctx));
    if (!only_dense) {
        moe_case(ctx, "moe_e8_k2_swiglu_train_n1024", 8, 2, 1024, KD_MOE_SWIGLU, 1024, 1);
        moe_case(ctx, "moe_e8_k2_swiglu_infer_n1", 8, 2, 1024, KD_MOE_SWIGLU, 1, 0);
        moe_case(ctx, "moe_e64_k8_swiglu_train_n1024", 64, 8, 256, KD_MOE_SWIGLU, 1024, 1);
    }
    /* MoE vs dense with the same active parameters, interleaved, medians of 3 */
    static const struct { const char *name; kd_moe_activation act; int glu; } v[] = {
        {"moe_vs_dense_swiglu", KD_MOE_SWIGLU, 1}, {"moe_vs_dense_relu", KD_MOE_RELU, 0}};
    for (int i = 0; i < 2; i++) {
        double tm[3], td[3];
        for (int rep = 0; rep < 3; rep++) {
            tm[rep] = moe_case(ctx, NULL, 8, 2, 1024, v[i].act, 1024, 1);
            td[rep] = dense_case(ctx, 1024, 2048, v[i].glu);
        }
        double m = bench_median(tm, 3), d = bench_median(td, 3);
        printf("bench=%s moe_ms=%.4f dense_ms=%.4f overhead=%.3f\n", v[i].name, m * 1e3,
               d * 1e3, m / d);
        fflush(stdout);
    }
    kd_context_destroy(ctx);
    return 0;
}
