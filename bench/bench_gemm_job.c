/* bench_gemm_job.c - see bench_gemm_job.h. */
#include "bench_gemm_job.h"

#include <blis.h>

void bench_gemm_run(void *p)
{
    const bench_gemm_job *j = (const bench_gemm_job *)p;
    size_t lda = j->ta ? j->m : j->k, ldb = j->tb ? j->k : j->n;
    float alpha = 1.0f, beta = j->beta;
    if (j->use_kd) {
        kd_gemm(j->ctx, j->ta ? KD_TRANS : KD_NO_TRANS, j->tb ? KD_TRANS : KD_NO_TRANS, j->m, j->n,
                j->k, alpha, j->a, lda, j->b, ldb, beta, j->c, j->n);
    } else {
        rntm_t rntm = BLIS_RNTM_INITIALIZER;
        bli_rntm_set_num_threads(1, &rntm);
        bli_sgemm_ex(j->ta ? BLIS_TRANSPOSE : BLIS_NO_TRANSPOSE, j->tb ? BLIS_TRANSPOSE : BLIS_NO_TRANSPOSE,
                     (dim_t)j->m, (dim_t)j->n, (dim_t)j->k, &alpha, (float *)j->a, (inc_t)lda, 1,
                     (float *)j->b, (inc_t)ldb, 1, &beta, j->c, (inc_t)j->n, 1, NULL, &rntm);
    }
}
