/*
 * kd_gemm_reference.c - portable row-major SGEMM.
 *
 * The backend of firmware builds and the oracle BLIS is tested against.
 * No allocation: the loops are ordered so the innermost one runs over
 * contiguous memory (the compiler vectorises it), and four rows of C share
 * every load of B.
 */
#include "kd_internal.h"

/* C[m x n] = beta * C, with beta == 0 overwriting (NaN does not survive). */
static void scale_c(size_t m, size_t n, float beta, float *c, size_t ldc)
{
    if (beta == 1.0f) return;
    for (size_t i = 0; i < m; i++) {
        float *ci = c + i * ldc;
        if (beta == 0.0f) {
            for (size_t j = 0; j < n; j++) ci[j] = 0.0f;
        } else {
            for (size_t j = 0; j < n; j++) ci[j] *= beta;
        }
    }
}

/* Element (i, p) of op(A), op(A) being m x k. */
static inline float opa(int ta, const float *a, size_t lda, size_t i, size_t p)
{
    return ta ? a[p * lda + i] : a[i * lda + p];
}

/* op(B) = B stored k x n: C[i, :] += sum_p alpha * op(A)[i, p] * B[p, :]. */
static void gemm_bn(int ta, size_t m, size_t n, size_t k, float alpha, const float *a,
                    size_t lda, const float *b, size_t ldb, float *c, size_t ldc)
{
    size_t i = 0;
    for (; i + 4 <= m; i += 4) {
        float *c0 = c + i * ldc, *c1 = c0 + ldc, *c2 = c1 + ldc, *c3 = c2 + ldc;
        for (size_t p = 0; p < k; p++) {
            const float *bp = b + p * ldb;
            float a0 = alpha * opa(ta, a, lda, i, p), a1 = alpha * opa(ta, a, lda, i + 1, p);
            float a2 = alpha * opa(ta, a, lda, i + 2, p), a3 = alpha * opa(ta, a, lda, i + 3, p);
            for (size_t j = 0; j < n; j++) {
                float bv = bp[j];
                c0[j] += a0 * bv;
                c1[j] += a1 * bv;
                c2[j] += a2 * bv;
                c3[j] += a3 * bv;
            }
        }
    }
    for (; i < m; i++) {
        float *ci = c + i * ldc;
        for (size_t p = 0; p < k; p++) {
            const float *bp = b + p * ldb;
            float av = alpha * opa(ta, a, lda, i, p);
            for (size_t j = 0; j < n; j++) ci[j] += av * bp[j];
        }
    }
}

/* Dot product with eight partial sums (the order is fixed, so results are
 * reproducible run to run). */
static float dot_contig(const float *x, const float *y, size_t k)
{
    float s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    size_t p = 0;
    for (; p + 8 <= k; p += 8)
        for (int t = 0; t < 8; t++) s[t] += x[p + t] * y[p + t];
    float r = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]));
    for (; p < k; p++) r += x[p] * y[p];
    return r;
}

/* op(B) = B^T, B stored n x k: C[i, j] += alpha * op(A)[i, :] . B[j, :]. */
static void gemm_bt(int ta, size_t m, size_t n, size_t k, float alpha, const float *a,
                    size_t lda, const float *b, size_t ldb, float *c, size_t ldc)
{
    for (size_t i = 0; i < m; i++) {
        float *ci = c + i * ldc;
        for (size_t j = 0; j < n; j++) {
            const float *bj = b + j * ldb;
            float s;
            if (!ta) {
                s = dot_contig(a + i * lda, bj, k);
            } else {
                s = 0.0f;
                for (size_t p = 0; p < k; p++) s += a[p * lda + i] * bj[p];
            }
            ci[j] += alpha * s;
        }
    }
}

void kd__gemm_reference(int transa, int transb, size_t m, size_t n, size_t k, float alpha,
                        const float *a, size_t lda, const float *b, size_t ldb, float beta,
                        float *c, size_t ldc)
{
    if (m == 0 || n == 0) return;
    scale_c(m, n, beta, c, ldc);
    if (k == 0 || alpha == 0.0f) return;
    if (transb)
        gemm_bt(transa, m, n, k, alpha, a, lda, b, ldb, c, ldc);
    else
        gemm_bn(transa, m, n, k, alpha, a, lda, b, ldb, c, ldc);
}
