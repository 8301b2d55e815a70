/*
 * kd_math.h - dense linear algebra entry points.
 *
 * All matrices are row-major float arrays. ld* is the distance, in elements,
 * between the starts of two consecutive rows of the matrix as stored.
 */
#ifndef KD_MATH_H
#define KD_MATH_H

#include "kd_core.h"

#ifdef __cplusplus
extern "C" {
#endif

/** @defgroup math Math: GEMM
 *  @{ */

typedef enum kd_transpose {
    KD_NO_TRANS = 0,
    KD_TRANS = 1
} kd_transpose;

/**
 * C = alpha * op(A) * op(B) + beta * C, row-major.
 *
 * op(A) is m x k: A is stored m x k (lda >= k) or, with KD_TRANS, k x m
 * (lda >= m). op(B) is k x n: B is stored k x n (ldb >= n) or, with
 * KD_TRANS, n x k (ldb >= k). C is m x n with ldc >= n.
 *
 * As in BLAS, beta == 0 overwrites C without reading it (NaN in C does not
 * propagate) and k == 0 scales C by beta. Any of m, n, k may be 0; pointers
 * may be NULL only when the matrix they describe has no elements.
 * Uses the context's backend and thread count. Borrows all arrays.
 *
 * Errors: KD_E_INVALID (NULL ctx or array, bad leading dimension, bad
 * transpose flag), KD_E_OVERFLOW (element counts beyond size_t or BLIS's
 * index type).
 */
KD_API kd_status kd_gemm(kd_context *ctx, kd_transpose transa, kd_transpose transb,
                         size_t m, size_t n, size_t k, float alpha,
                         const float *a, size_t lda, const float *b, size_t ldb,
                         float beta, float *c, size_t ldc);

/** The backend ctx uses for GEMM: KD_GEMM_BLIS or KD_GEMM_REFERENCE. */
KD_API kd_gemm_backend kd_context_gemm_backend(const kd_context *ctx);

/**
 * Name of the BLIS sub-configuration GEMM runs on in this process (e.g.
 * "skx", "haswell"), or "" when ctx does not use BLIS. BLIS fixes the
 * sub-configuration the first time it initialises in a process; if the host
 * application initialised BLIS before libkd, its choice stands and a
 * KD_LOG_WARN message says so.
 */
KD_API const char *kd_context_blis_arch(const kd_context *ctx);

/** @} */

#ifdef __cplusplus
}
#endif

#endif /* KD_MATH_H */
