/* kd_gemm.c - the public GEMM entry: argument checks and backend dispatch. */
#include "kd_internal.h"

#if defined(KD_HAVE_BLIS)
/* BLIS indexes with a signed 64-bit dim_t/inc_t; sizes beyond it are refused. */
#define KD_GEMM_MAX_DIM ((size_t)INT64_MAX)
#else
#define KD_GEMM_MAX_DIM SIZE_MAX
#endif

void kd__gemm(kd_context *ctx, int transa, int transb, size_t m, size_t n, size_t k,
              float alpha, const float *a, size_t lda, const float *b, size_t ldb,
              float beta, float *c, size_t ldc)
{
    if (m == 0 || n == 0) return;
#if defined(KD_HAVE_BLIS)
    if (ctx->gemm == KD_GEMM_BLIS) {
        if (kd__gemm_small(transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)) return;
        kd__gemm_blis(ctx->threads, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
        return;
    }
#else
    (void)ctx;
#endif
    kd__gemm_reference(transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

/* Checks that a rows x cols matrix with leading dimension ld is addressable:
 * the last element's offset (rows-1)*ld + cols-1 fits size_t. */
static kd_status check_matrix(kd_context *ctx, const char *name, const void *p, size_t rows,
                              size_t cols, size_t ld)
{
    if (rows == 0 || cols == 0) return KD_OK;
    if (!p) return kd__fail(ctx, KD_E_INVALID, "kd_gemm: %s is NULL for a %zu x %zu matrix",
                            name, rows, cols);
    if (ld < cols)
        return kd__fail(ctx, KD_E_INVALID, "kd_gemm: leading dimension of %s is %zu < %zu columns",
                        name, ld, cols);
    size_t off;
    if (kd__mul_overflow(rows - 1, ld, &off) || kd__add_overflow(off, cols, &off) ||
        off > KD_GEMM_MAX_DIM / sizeof(float) || ld > KD_GEMM_MAX_DIM)
        return kd__fail(ctx, KD_E_OVERFLOW, "kd_gemm: %s (%zu x %zu, ld %zu) is too large",
                        name, rows, cols, ld);
    return KD_OK;
}

kd_status kd_gemm(kd_context *ctx, kd_transpose transa, kd_transpose transb, size_t m,
                  size_t n, size_t k, float alpha, const float *a, size_t lda,
                  const float *b, size_t ldb, float beta, float *c, size_t ldc)
{
    if (!ctx) return KD_E_INVALID;
    if ((unsigned)transa > KD_TRANS || (unsigned)transb > KD_TRANS)
        return kd__fail(ctx, KD_E_INVALID, "kd_gemm: transpose flags must be KD_NO_TRANS or KD_TRANS");
    kd_status st;
    if ((st = check_matrix(ctx, "A", a, transa ? k : m, transa ? m : k, lda)) != KD_OK) return st;
    if ((st = check_matrix(ctx, "B", b, transb ? n : k, transb ? k : n, ldb)) != KD_OK) return st;
    if ((st = check_matrix(ctx, "C", c, m, n, ldc)) != KD_OK) return st;
    if (m > KD_GEMM_MAX_DIM || n > KD_GEMM_MAX_DIM || k > KD_GEMM_MAX_DIM)
        return kd__fail(ctx, KD_E_OVERFLOW, "kd_gemm: dimension too large");
    kd__gemm(ctx, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    return KD_OK;
}

kd_gemm_backend kd_context_gemm_backend(const kd_context *ctx)
{
    return ctx ? ctx->gemm : KD_GEMM_AUTO;
}

const char *kd_context_blis_arch(const kd_context *ctx)
{
    return ctx ? ctx->blis_arch : "";
}
