/*
 * kd_phis.c - PHI-S standardisation of teacher features: Hadamard rotation
 * of the PCA basis, then one scalar scale (see kd_loss.h).
 */
#include <math.h>

#include "kd/kd_loss.h"
#include "kd_internal.h"

struct kd_phis {
    kd_context *ctx;
    size_t dim;
    float sigma;
    float *mean;     /* dim */
    float *rotation; /* dim x dim, R = H U^T */
};

static int is_pow2(size_t v) { return v && !(v & (v - 1)); }

/* Cyclic Jacobi: diagonalises the symmetric a (n x n, destroyed) and
 * accumulates the eigenvectors as the columns of v. */
static void jacobi_eigen(double *a, double *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        for (size_t j = 0; j < n; j++) v[i * n + j] = i == j;
    double total = 0;
    for (size_t i = 0; i < n * n; i++) total += a[i] * a[i];
    for (int sweep = 0; sweep < 60; sweep++) {
        double off = 0;
        for (size_t p = 0; p < n; p++)
            for (size_t q = p + 1; q < n; q++) off += a[p * n + q] * a[p * n + q];
        if (off <= 1e-30 * total || off == 0) return;
        for (size_t p = 0; p < n; p++)
            for (size_t q = p + 1; q < n; q++) {
                double apq = a[p * n + q];
                if (fabs(apq) <= 1e-300) continue;
                double theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                double t = (theta >= 0 ? 1.0 : -1.0) / (fabs(theta) + sqrt(theta * theta + 1.0));
                double c = 1.0 / sqrt(t * t + 1.0), s = t * c;
                for (size_t k = 0; k < n; k++) { /* A P */
                    double akp = a[k * n + p], akq = a[k * n + q];
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for (size_t k = 0; k < n; k++) { /* P^T (A P) */
                    double apk = a[p * n + k], aqk = a[q * n + k];
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
                for (size_t k = 0; k < n; k++) { /* V P */
                    double vkp = v[k * n + p], vkq = v[k * n + q];
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
    }
}

void kd_phis_destroy(kd_phis *phis)
{
    if (!phis) return;
    kd_context *ctx = phis->ctx;
    kd__free(ctx, phis->rotation);
    kd__free(ctx, phis->mean);
    kd__free(ctx, phis);
}

kd_status kd_phis_fit(kd_context *ctx, const float *x, size_t n, size_t dim, kd_phis **out)
{
    if (!ctx) return KD_E_INVALID;
    if (!out) return kd__fail(ctx, KD_E_INVALID, "kd_phis_fit: out is NULL");
    *out = NULL;
    if (!x) return kd__fail(ctx, KD_E_INVALID, "kd_phis_fit: x is NULL");
    if (n < 2) return kd__fail(ctx, KD_E_INVALID, "kd_phis_fit: need at least 2 rows (got %zu)", n);
    if (!is_pow2(dim))
        return kd__fail(ctx, KD_E_UNSUPPORTED,
                        "kd_phis_fit: dim %zu is not a power of two (Hadamard matrix)", dim);
    size_t count, dd, bytes;
    if (kd__mul_overflow(n, dim, &count) || count > SIZE_MAX / sizeof(float) ||
        kd__mul_overflow(dim, dim, &dd) || kd__mul_overflow(dd, 2 * sizeof(double), &bytes))
        return kd__fail(ctx, KD_E_OVERFLOW, "kd_phis_fit: %zu x %zu beyond size_t", n, dim);
    for (size_t i = 0; i < count; i++)
        if (!isfinite(x[i]))
            return kd__fail(ctx, KD_E_NUMERIC, "kd_phis_fit: x[%zu][%zu] is not finite", i / dim,
                            i % dim);

    kd_phis *p = (kd_phis *)kd__calloc(ctx, 1, sizeof *p);
    if (!p) return kd__fail(ctx, KD_E_NOMEM, "kd_phis_fit: out of memory");
    p->ctx = ctx;
    p->dim = dim;
    p->mean = (float *)kd__calloc(ctx, dim, sizeof(float));
    p->rotation = p->mean ? (float *)kd__calloc(ctx, dd, sizeof(float)) : NULL;
    double *work = p->rotation ? (double *)kd__calloc(ctx, 2 * dd + dim, sizeof(double)) : NULL;
    if (!work) {
        kd_phis_destroy(p);
        return kd__fail(ctx, KD_E_NOMEM, "kd_phis_fit: out of memory");
    }
    double *cov = work, *vec = work + dd, *mu = work + 2 * dd;
    for (size_t i = 0; i < n; i++)
        for (size_t k = 0; k < dim; k++) mu[k] += x[i * dim + k];
    for (size_t k = 0; k < dim; k++) mu[k] /= (double)n;
    for (size_t i = 0; i < n; i++) {
        const float *row = x + i * dim;
        for (size_t a = 0; a < dim; a++) {
            double ea = row[a] - mu[a];
            for (size_t b = a; b < dim; b++) cov[a * dim + b] += ea * (row[b] - mu[b]);
        }
    }
    double trace = 0;
    for (size_t a = 0; a < dim; a++)
        for (size_t b = a; b < dim; b++) {
            cov[a * dim + b] /= (double)n;
            cov[b * dim + a] = cov[a * dim + b];
            if (a == b) trace += cov[a * dim + a];
        }
    if (!(trace > 0) || !isfinite(trace)) {
        kd__free(ctx, work);
        kd_phis_destroy(p);
        return kd__fail(ctx, KD_E_NUMERIC, "kd_phis_fit: the features have zero total variance");
    }
    jacobi_eigen(cov, vec, dim);
    /* R[i][k] = sum_j H[i][j] U[k][j], H[i][j] = (-1)^popcount(i & j) / sqrt(dim). */
    double hs = 1.0 / sqrt((double)dim);
    for (size_t i = 0; i < dim; i++)
        for (size_t k = 0; k < dim; k++) {
            double acc = 0;
            for (size_t j = 0; j < dim; j++) {
                size_t bits = i & j;
                int odd = 0;
                while (bits) {
                    odd ^= 1;
                    bits &= bits - 1;
                }
                acc += odd ? -vec[k * dim + j] : vec[k * dim + j];
            }
            p->rotation[i * dim + k] = (float)(acc * hs);
        }
    for (size_t k = 0; k < dim; k++) p->mean[k] = (float)mu[k];
    p->sigma = (float)sqrt(trace / (double)dim);
    kd__free(ctx, work);
    *out = p;
    return KD_OK;
}

static kd_status map_check(const kd_phis *p, const float *in, size_t n, const float *out,
                           const char *fn)
{
    if (!p) return KD_E_INVALID;
    if (!in || !out) return kd__fail(p->ctx, KD_E_INVALID, "%s: NULL array", fn);
    size_t count;
    if (kd__mul_overflow(n, p->dim, &count) || count > SIZE_MAX / sizeof(float))
        return kd__fail(p->ctx, KD_E_OVERFLOW, "%s: %zu rows beyond size_t", fn, n);
    if (in < out + count && out < in + count)
        return kd__fail(p->ctx, KD_E_INVALID, "%s: input and output overlap", fn);
    return KD_OK;
}

kd_status kd_phis_apply(const kd_phis *p, const float *x, size_t n, float *y)
{
    kd_status st = map_check(p, x, n, y, "kd_phis_apply");
    if (st) return st;
    const size_t d = p->dim;
    const double inv = 1.0 / p->sigma;
    for (size_t r = 0; r < n; r++)
        for (size_t i = 0; i < d; i++) {
            double acc = 0;
            for (size_t k = 0; k < d; k++)
                acc += (double)p->rotation[i * d + k] * ((double)x[r * d + k] - p->mean[k]);
            y[r * d + i] = (float)(acc * inv);
        }
    return KD_OK;
}

kd_status kd_phis_invert(const kd_phis *p, const float *y, size_t n, float *x)
{
    kd_status st = map_check(p, y, n, x, "kd_phis_invert");
    if (st) return st;
    const size_t d = p->dim;
    for (size_t r = 0; r < n; r++)
        for (size_t k = 0; k < d; k++) {
            double acc = 0;
            for (size_t i = 0; i < d; i++) acc += (double)p->rotation[i * d + k] * y[r * d + i];
            x[r * d + k] = (float)(acc * p->sigma + p->mean[k]);
        }
    return KD_OK;
}

kd_status kd_phis_get(const kd_phis *p, const float **mean, const float **rotation, float *sigma,
                      size_t *dim)
{
    if (!p) return KD_E_INVALID;
    if (mean) *mean = p->mean;
    if (rotation) *rotation = p->rotation;
    if (sigma) *sigma = p->sigma;
    if (dim) *dim = p->dim;
    return KD_OK;
}
