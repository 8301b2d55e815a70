/*
 * bench_vocab.c - vocabulary-scale KD loss, one thread: dense forward KL
 * (Hinton, alpha 1) forward+backward through kd_loss_compute and through the
 * fused row kernel alone, the memory-traffic bound (B x V x 16 bytes: read
 * s and t, read and write the gradient, at the copy bandwidth measured in
 * the same run), and a top-k = 64 sparse teacher against the dense one.
 * Prints `bench=<case> key=value ...`; bench/run_vocab.sh adds PyTorch.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_util.h"
#include "kd/kd.h"
#include "../lib/distill/kd_vocab_internal.h"

typedef struct {
    kd_loss *loss;
    kd_loss_batch b;
    kd_loss_grad g;
    size_t n;
    kd__div d;
} job;

static void run_loss(void *arg)
{
    job *j = arg;
    double v;
    memset(j->g.student_logits, 0, j->n * sizeof(float));
    kd_loss_compute(j->loss, &j->b, &v, &j->g);
}

static void run_kernel(void *arg)
{
    job *j = arg;
    double v;
    size_t c = j->b.classes;
    memset(j->g.student_logits, 0, j->n * sizeof(float));
    for (size_t i = 0; i < j->b.rows; i++)
        kd__vocab_dense_row(&j->d, j->b.student_logits + i * c, j->b.teacher_logits + i * c, c,
                            1.0 / (double)j->b.rows, j->g.student_logits + i * c, &v);
}

/* the input validation kd_loss_compute runs before the kernel */
static void run_scan(void *arg)
{
    job *j = arg;
    size_t c = j->b.classes, ninf;
    for (size_t i = 0; i < j->b.rows; i++) {
        kd__vocab_scan(j->b.student_logits + i * c, c, &ninf);
        kd__vocab_scan(j->b.teacher_logits + i * c, c, &ninf);
    }
}

typedef struct {
    float *a, *b;
    size_t n;
} copy_job;
static void run_copy(void *arg)
{
    copy_job *c = arg;
    memcpy(c->b, c->a, c->n * sizeof(float));
}

int main(void)
{
    kd_context *ctx;
    if (kd_context_create(NULL, &ctx) != KD_OK) return 1;
    kd_context_set_threads(ctx, 1);
    /* copy bandwidth: 2 x 64 MiB buffers, bytes read + written */
    copy_job cj = {malloc(64u << 20), malloc(64u << 20), (64u << 20) / 4};
    for (size_t i = 0; i < cj.n; i++) cj.a[i] = (float)i, cj.b[i] = 0;
    double tc = bench_time_median(run_copy, &cj, 0.3, 5);
    double bw = 2.0 * (double)cj.n * 4 / tc;
    printf("bench=copy_bandwidth gbps=%.2f\n", bw / 1e9);
    const size_t shapes[2][2] = {{32, 32000}, {8, 152064}};
    for (int sh = 0; sh < 2; sh++) {
        size_t B = shapes[sh][0], V = shapes[sh][1], n = B * V;
        float *s = malloc(n * 4), *t = malloc(n * 4), *g = malloc(n * 4);
        srand(1);
        for (size_t i = 0; i < n; i++) {
            s[i] = (float)rand() / RAND_MAX * 8 - 4;
            t[i] = (float)rand() / RAND_MAX * 8 - 4;
        }
        kd_loss_hinton_config hc;
        kd_loss_hinton_config_default(&hc);
        hc.alpha = 1, hc.temperature = 2;
        job j;
        memset(&j, 0, sizeof j);
        kd_loss_create(ctx, kd_loss_hinton(), &hc, &j.loss);
        kd_loss_batch_default(&j.b);
        j.b.rows = B, j.b.classes = V, j.b.student_logits = s, j.b.teacher_logits = t;
        kd_loss_grad_default(&j.g);
        j.g.student_logits = g;
        j.n = n;
        j.d = (kd__div){KD__DIV_FKL, 0.5, 0, 1}; /* no -inf: what kd_loss_compute passes */
        double tl = bench_time_median(run_loss, &j, 0.3, 5);
        double tk = bench_time_median(run_kernel, &j, 0.3, 5);
        double ts = bench_time_median(run_scan, &j, 0.3, 5);
        double bound = (double)n * 16 / bw;
        printf("bench=kd_dense_%zux%zu libkd_ms=%.4f kernel_ms=%.4f scan_ms=%.4f bound_ms=%.4f "
               "api_vs_bound=%.2f kernel_vs_bound=%.2f\n",
               B, V, tl * 1e3, tk * 1e3, ts * 1e3, bound * 1e3, tl / bound, tk / bound);
        /* sparse top-64 (T = 1) against dense at T = 1 */
        const size_t k = 64;
        int32_t *ids = malloc(B * k * 4);
        float *vals = malloc(B * k * 4), *tail = malloc(B * 4);
        for (size_t i = 0; i < B; i++) {
            for (size_t q = 0; q < k; q++) {
                ids[i * k + q] = (int32_t)((q * 2654435761u + i) % V);
                vals[i * k + q] = -5.0f - 0.01f * (float)q;
            }
            tail[i] = 0.5f;
        }
        kd_sparse_logits sp;
        kd_sparse_logits_default(&sp);
        sp.k = k, sp.ids = ids, sp.values = vals, sp.tail_mass = tail;
        kd_loss_destroy(j.loss);
        hc.temperature = 1;
        kd_loss_create(ctx, kd_loss_hinton(), &hc, &j.loss);
        double td = bench_time_median(run_loss, &j, 0.3, 5);
        j.b.teacher_logits = NULL, j.b.teacher_sparse = &sp;
        double v;
        if (kd_loss_compute(j.loss, &j.b, &v, &j.g) != KD_OK) {
            fprintf(stderr, "sparse: %s\n", kd_context_last_error(ctx));
            return 1;
        }
        double tsp = bench_time_median(run_loss, &j, 0.3, 5);
        printf("bench=kd_sparse64_%zux%zu sparse_ms=%.4f dense_ms=%.4f speedup=%.2f\n", B, V,
               tsp * 1e3, td * 1e3, td / tsp);
        kd_loss_destroy(j.loss);
        free(s), free(t), free(g), free(ids), free(vals), free(tail);
    }
    free(cj.a), free(cj.b);
    kd_context_destroy(ctx);
    return 0;
}
