/*
 * kd_gemm_small.c - GEMM with few rows of C (batch-1 and tiny-batch inference).
 *
 * BLIS packs both operands for every call, which pays off when the packed
 * panels are reused, not when C has one to four rows: then the product is
 * matrix-vector-like and should read B once, straight from memory. These
 * kernels keep C's partial sums in vector registers (GCC/Clang vector
 * extensions: 16 floats, i.e. one AVX-512 register, two AVX2 or four SSE
 * registers) and stream B. On x86-64 with GCC they are compiled for the
 * x86-64-v4 (AVX-512), x86-64-v3 (AVX2+FMA) and baseline levels and chosen at
 * load time (target_clones). Feature levels, not "arch=<cpu>" clones: those
 * dispatch on the CPU model and would leave an AMD Zen 4 on baseline SSE2. Sums are reduced in a fixed order, so a given machine
 * always produces the same bits.
 */
#include "kd_internal.h"
#include "kd_simd.h"

#define KD_CLONES KD_SIMD_CLONES
#define KD_INLINE KD_SIMD_INLINE
typedef kd_v16 v16;
#define ld(p) kd_ld(p)
#define st(p, v) kd_st(p, v)
#define splat(x) kd_splat(x)
#define hsum(v) kd_hsum(v)

KD_INLINE float finish(float alpha, float acc, float beta, float old)
{
    return beta == 0.0f ? alpha * acc : alpha * acc + beta * old;
}

/* C[M x n] = alpha * A[M x k] * B[k x n] + beta * C: 64 columns of C per
 * block (4 vector accumulators per row), broadcasting A's elements. */
KD_INLINE void small_nn_rows(const size_t M, size_t n, size_t k, float alpha, const float *a,
                             size_t lda, const float *b, size_t ldb, float beta, float *c,
                             size_t ldc)
{
    size_t j0 = 0;
    for (; j0 + 64 <= n; j0 += 64) {
        v16 acc[KD_GEMM_SMALL_M][4];
        for (size_t i = 0; i < M; i++) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = splat(0);
        for (size_t p = 0; p < k; p++) {
            const float *bp = b + p * ldb + j0;
            v16 b0 = ld(bp), b1 = ld(bp + 16), b2 = ld(bp + 32), b3 = ld(bp + 48);
            for (size_t i = 0; i < M; i++) {
                v16 av = splat(a[i * lda + p]);
                acc[i][0] += av * b0;
                acc[i][1] += av * b1;
                acc[i][2] += av * b2;
                acc[i][3] += av * b3;
            }
        }
        for (size_t i = 0; i < M; i++) {
            float tmp[64];
            for (int q = 0; q < 4; q++) st(tmp + 16 * q, acc[i][q]);
            float *ci = c + i * ldc + j0;
            for (int jj = 0; jj < 64; jj++) ci[jj] = finish(alpha, tmp[jj], beta, ci[jj]);
        }
    }
    for (; j0 + 16 <= n; j0 += 16) {
        /* One column block: four accumulators over p hide the FMA latency. */
        v16 acc[KD_GEMM_SMALL_M][4];
        for (size_t i = 0; i < M; i++) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = splat(0);
        size_t p = 0;
        for (; p + 4 <= k; p += 4) {
            const float *bp = b + p * ldb + j0;
            v16 b0 = ld(bp), b1 = ld(bp + ldb), b2 = ld(bp + 2 * ldb), b3 = ld(bp + 3 * ldb);
            for (size_t i = 0; i < M; i++) {
                const float *ai = a + i * lda + p;
                acc[i][0] += splat(ai[0]) * b0;
                acc[i][1] += splat(ai[1]) * b1;
                acc[i][2] += splat(ai[2]) * b2;
                acc[i][3] += splat(ai[3]) * b3;
            }
        }
        for (; p < k; p++) {
            v16 bv = ld(b + p * ldb + j0);
            for (size_t i = 0; i < M; i++) acc[i][0] += splat(a[i * lda + p]) * bv;
        }
        for (size_t i = 0; i < M; i++) {
            float tmp[16];
            st(tmp, (acc[i][0] + acc[i][1]) + (acc[i][2] + acc[i][3]));
            float *ci = c + i * ldc + j0;
            for (int jj = 0; jj < 16; jj++) ci[jj] = finish(alpha, tmp[jj], beta, ci[jj]);
        }
    }
    for (; j0 < n; j0++)
        for (size_t i = 0; i < M; i++) {
            float s = 0.0f;
            for (size_t p = 0; p < k; p++) s += a[i * lda + p] * b[p * ldb + j0];
            c[i * ldc + j0] = finish(alpha, s, beta, c[i * ldc + j0]);
        }
}

/* C[M x JB] block at column j of C = alpha * A[M x k] * B^T + beta * C, with
 * B stored n x k (a linear layer's weight): dot products of contiguous rows.
 * Two accumulators per (row, column) pair and JB columns at a time keep
 * 4-8 FMA chains in flight (one row: 4 columns, so that each load of A
 * serves four FMAs). */
KD_INLINE void nt_block(const size_t M, const size_t JB, size_t j, size_t k, float alpha,
                        const float *a, size_t lda, const float *b, size_t ldb, float beta,
                        float *c, size_t ldc)
{
    v16 acc[KD_GEMM_SMALL_M][4][2];
    for (size_t i = 0; i < M; i++)
        for (size_t jj = 0; jj < JB; jj++) acc[i][jj][0] = acc[i][jj][1] = splat(0);
    size_t p = 0;
    for (; p + 32 <= k; p += 32)
        for (size_t jj = 0; jj < JB; jj++) {
            const float *bj = b + (j + jj) * ldb + p;
            v16 b0 = ld(bj), b1 = ld(bj + 16);
            for (size_t i = 0; i < M; i++) {
                acc[i][jj][0] += ld(a + i * lda + p) * b0;
                acc[i][jj][1] += ld(a + i * lda + p + 16) * b1;
            }
        }
    for (; p + 16 <= k; p += 16)
        for (size_t jj = 0; jj < JB; jj++) {
            v16 b0 = ld(b + (j + jj) * ldb + p);
            for (size_t i = 0; i < M; i++) acc[i][jj][0] += ld(a + i * lda + p) * b0;
        }
    for (size_t i = 0; i < M; i++)
        for (size_t jj = 0; jj < JB; jj++) {
            float s = hsum(acc[i][jj][0] + acc[i][jj][1]);
            for (size_t q = p; q < k; q++) s += a[i * lda + q] * b[(j + jj) * ldb + q];
            c[i * ldc + j + jj] = finish(alpha, s, beta, c[i * ldc + j + jj]);
        }
}

KD_INLINE void small_nt_rows(const size_t M, const size_t JB, size_t n, size_t k, float alpha,
                             const float *a, size_t lda, const float *b, size_t ldb, float beta,
                             float *c, size_t ldc)
{
    size_t j = 0;
    for (; j + JB <= n; j += JB) nt_block(M, JB, j, k, alpha, a, lda, b, ldb, beta, c, ldc);
    for (; j < n; j++) nt_block(M, 1, j, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

KD_CLONES
static void small_nn(size_t m, size_t n, size_t k, float alpha, const float *a, size_t lda,
                     const float *b, size_t ldb, float beta, float *c, size_t ldc)
{
    switch (m) {
    case 1: small_nn_rows(1, n, k, alpha, a, lda, b, ldb, beta, c, ldc); break;
    case 2: small_nn_rows(2, n, k, alpha, a, lda, b, ldb, beta, c, ldc); break;
    case 3: small_nn_rows(3, n, k, alpha, a, lda, b, ldb, beta, c, ldc); break;
    default: small_nn_rows(4, n, k, alpha, a, lda, b, ldb, beta, c, ldc); break;
    }
}

KD_CLONES
static void small_nt(size_t m, size_t n, size_t k, float alpha, const float *a, size_t lda,
                     const float *b, size_t ldb, float beta, float *c, size_t ldc)
{
    switch (m) {
    case 1: small_nt_rows(1, 4, n, k, alpha, a, lda, b, ldb, beta, c, ldc); break;
    case 2: small_nt_rows(2, 2, n, k, alpha, a, lda, b, ldb, beta, c, ldc); break;
    case 3: small_nt_rows(3, 1, n, k, alpha, a, lda, b, ldb, beta, c, ldc); break;
    default: small_nt_rows(4, 1, n, k, alpha, a, lda, b, ldb, beta, c, ldc); break;
    }
}

int kd__gemm_small(int transa, int transb, size_t m, size_t n, size_t k, float alpha,
                   const float *a, size_t lda, const float *b, size_t ldb, float beta, float *c,
                   size_t ldc)
{
    if (transa || m == 0 || m > KD_GEMM_SMALL_M || k == 0) return 0;
    if (transb)
        small_nt(m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    else
        small_nn(m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    return 1;
}
