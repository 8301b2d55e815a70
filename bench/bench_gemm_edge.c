/*
 * bench_gemm_edge.c - the cost of keeping BLIS inside C.
 *
 * For n % 4 in {2, 3}, kd__gemm_blis hands BLIS every row of C but the last
 * and computes the last row itself, because BLIS 0.9.0's haswell-family
 * kernels read up to 8 bytes past the end of a row of C (flame/blis#635; see
 * lib/math/kd_gemm_blis.c). This compares, in one process (so on the same
 * BLIS sub-configuration), kd_gemm against bli_sgemm_ex on the whole matrix
 * (the anchor: what libkd did before), interleaved, medians of the rounds:
 *   bench=gemm_edge shape=MxKxN[(Bt)|(At)] beta=B libkd=<GFLOP/s> blis=<GFLOP/s> speedup=<libkd/blis>
 * Shapes with n % 4 < 2 go through unchanged and are listed as a control.
 * Usage: bench_gemm_edge [rounds]   (default 7)
 */
#include <stdio.h>
#include <stdlib.h>

#include "bench_gemm_job.h"
#include "bench_util.h"
#include "kd/kd.h"

typedef struct {
    size_t m, k, n;
    int ta, tb;
    float beta;
} shape;

/* Linear-layer shapes: forward to 10 or 2 classes (B transposed), backward
 * weight gradients (A transposed, beta 1), a wide odd layer, and controls. */
static const shape shapes[] = {
    {128, 784, 10, 0, 1, 0.0f}, {128, 128, 10, 0, 0, 0.0f}, {10, 784, 128, 1, 0, 1.0f},
    {128, 256, 2, 0, 1, 0.0f},  {64, 512, 130, 0, 1, 0.0f}, {256, 256, 258, 1, 0, 1.0f},
    {128, 784, 12, 0, 1, 0.0f}, {64, 512, 128, 0, 1, 0.0f},
};
#define N_SHAPES (sizeof shapes / sizeof shapes[0])

int main(int argc, char **argv)
{
    int rounds = argc > 1 ? atoi(argv[1]) : 7;
    if (rounds < 1 || rounds > 1000) rounds = 7;
    kd_context *ctx = NULL;
    if (kd_context_create(NULL, &ctx) != KD_OK) return 1;
    printf("# bench_gemm_edge: GFLOP/s, one thread, medians of %d interleaved rounds; BLIS '%s'\n", rounds,
           kd_context_blis_arch(ctx));
    for (size_t i = 0; i < N_SHAPES; i++) {
        const shape *s = &shapes[i];
        float *a = malloc(s->m * s->k * sizeof(float)), *b = malloc(s->k * s->n * sizeof(float));
        float *c = calloc(s->m * s->n, sizeof(float));
        if (!a || !b || !c) return 1;
        for (size_t q = 0; q < s->m * s->k; q++) a[q] = (float)(q % 13) * 0.01f;
        for (size_t q = 0; q < s->k * s->n; q++) b[q] = (float)(q % 7) * 0.01f;
        double t[2][1000];
        for (int r = 0; r < rounds; r++)
            for (int w = 0; w < 2; w++) {
                bench_gemm_job j = {w == 0, ctx, s->m, s->k, s->n, s->ta, s->tb, s->beta, a, b, c};
                t[w][r] = bench_time(bench_gemm_run, &j, 0.05);
            }
        double flops = 2.0 * (double)s->m * (double)s->n * (double)s->k;
        double kd = flops / bench_median(t[0], (size_t)rounds) * 1e-9;
        double bl = flops / bench_median(t[1], (size_t)rounds) * 1e-9;
        printf("bench=gemm_edge shape=%zux%zux%zu%s beta=%g split=%s libkd=%.1f blis=%.1f speedup=%.2f\n",
               s->m, s->k, s->n, s->ta ? "(At)" : s->tb ? "(Bt)" : "", (double)s->beta,
               s->n % 4 >= 2 ? "yes" : "no", kd, bl, kd / bl);
        free(a), free(b), free(c);
    }
    kd_context_destroy(ctx);
    return 0;
}
