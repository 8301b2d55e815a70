/* bench_gemm_job.h - one single-precision GEMM, C = op(A) x op(B) + beta C
 * with alpha 1 and row-major A, B, C, run through libkd (kd_gemm) or BLIS
 * called directly on one thread (bli_sgemm_ex): the unit that bench_gemm and
 * bench_gemm_edge time with bench_time. Needs BLIS (blis_dep). */
#ifndef KD_BENCH_GEMM_JOB_H
#define KD_BENCH_GEMM_JOB_H

#include <stddef.h>

#include "kd/kd.h"

typedef struct {
    int use_kd;      /* 1: kd_gemm on ctx; 0: bli_sgemm_ex, one thread */
    kd_context *ctx; /* for kd_gemm */
    size_t m, k, n;
    int ta, tb;      /* A stored k x m / B stored n x k (transposed) */
    float beta;
    const float *a, *b;
    float *c;        /* m x n */
} bench_gemm_job;

/* Runs the job once; p is a bench_gemm_job (a bench_time callback). */
void bench_gemm_run(void *p);

#endif
