/*
 * kd_splade.c - SPLADE head (forward/backward), sparsity regularisers with
 * gradients, top-k pruning and dense-to-sparse conversion.
 *
 * SPLADE: Formal et al. 2021 ("SPLADE: Sparse Lexical and Expansion Model
 * for First Stage Ranking", sum pooling) and SPLADE v2 (max pooling).
 * FLOPS: Paria et al. 2020. IDF-aware FLOPS: Geng et al. 2024.
 */
#include <math.h>
#include <stdlib.h>

#include "kd_internal.h"
#include "kd/kd_retrieval.h"

static kd_status check_dims(kd_context *ctx, const char *fn, size_t a, size_t b, size_t c,
                            size_t *total)
{
    size_t ab;
    if (kd__mul_overflow(a, b, &ab) || kd__mul_overflow(ab, c, total) ||
        *total > SIZE_MAX / sizeof(float))
        return kd__fail(ctx, KD_E_OVERFLOW, "%s: %zu x %zu x %zu elements overflow", fn, a, b, c);
    return KD_OK;
}

kd_status kd_splade_forward(kd_context *ctx, const float *logits, const uint8_t *mask,
                            size_t batch, size_t tokens, size_t vocab, kd_splade_agg agg,
                            float *out)
{
    size_t total = 0;
    if (!logits || !out) return kd__fail(ctx, KD_E_INVALID, "kd_splade_forward: NULL array");
    if (agg != KD_SPLADE_MAX && agg != KD_SPLADE_SUM)
        return kd__fail(ctx, KD_E_INVALID, "kd_splade_forward: unknown aggregation %d", (int)agg);
    kd_status st = check_dims(ctx, "kd_splade_forward", batch, tokens, vocab, &total);
    if (st != KD_OK) return st;
    for (size_t i = 0; i < total; i++)
        if (!isfinite(logits[i]))
            return kd__fail(ctx, KD_E_NUMERIC, "kd_splade_forward: non-finite logit at %zu", i);
    for (size_t bi = 0; bi < batch; bi++) {
        float *o = out + bi * vocab;
        for (size_t j = 0; j < vocab; j++) o[j] = 0.0f;
        if (agg == KD_SPLADE_MAX) {
            /* log(1 + relu(.)) is monotone: take the max logit first; the
             * zero start is the relu floor. */
            for (size_t t = 0; t < tokens; t++) {
                if (mask && !mask[bi * tokens + t]) continue;
                const float *x = logits + (bi * tokens + t) * vocab;
                for (size_t j = 0; j < vocab; j++)
                    if (x[j] > o[j]) o[j] = x[j];
            }
            for (size_t j = 0; j < vocab; j++) o[j] = log1pf(o[j]);
        } else {
            for (size_t t = 0; t < tokens; t++) {
                if (mask && !mask[bi * tokens + t]) continue;
                const float *x = logits + (bi * tokens + t) * vocab;
                for (size_t j = 0; j < vocab; j++)
                    if (x[j] > 0.0f) o[j] += log1pf(x[j]);
            }
        }
    }
    return KD_OK;
}

kd_status kd_splade_backward(kd_context *ctx, const float *logits, const uint8_t *mask,
                             size_t batch, size_t tokens, size_t vocab, kd_splade_agg agg,
                             const float *dout, float *dlogits)
{
    size_t total = 0;
    if (!logits || !dout || !dlogits)
        return kd__fail(ctx, KD_E_INVALID, "kd_splade_backward: NULL array");
    if (agg != KD_SPLADE_MAX && agg != KD_SPLADE_SUM)
        return kd__fail(ctx, KD_E_INVALID, "kd_splade_backward: unknown aggregation %d", (int)agg);
    kd_status st = check_dims(ctx, "kd_splade_backward", batch, tokens, vocab, &total);
    if (st != KD_OK) return st;
    for (size_t bi = 0; bi < batch; bi++) {
        const float *g = dout + bi * vocab;
        if (agg == KD_SPLADE_SUM) {
            for (size_t t = 0; t < tokens; t++) {
                if (mask && !mask[bi * tokens + t]) continue;
                const float *x = logits + (bi * tokens + t) * vocab;
                float *dx = dlogits + (bi * tokens + t) * vocab;
                for (size_t j = 0; j < vocab; j++)
                    if (x[j] > 0.0f) dx[j] += g[j] / (1.0f + x[j]);
            }
        } else {
            for (size_t j = 0; j < vocab; j++) {
                size_t arg = tokens;
                float best = 0.0f;
                for (size_t t = 0; t < tokens; t++) {
                    if (mask && !mask[bi * tokens + t]) continue;
                    float x = logits[(bi * tokens + t) * vocab + j];
                    if (x > best) {
                        best = x;
                        arg = t;
                    }
                }
                if (arg < tokens) dlogits[(bi * tokens + arg) * vocab + j] += g[j] / (1.0f + best);
            }
        }
    }
    return KD_OK;
}

/* Shared FLOPS core: L = weight * sum_j c_j (mean_i |w_ij|)^2. cw == NULL:
 * c_j = 1; square == 0: c_j = cw_j; square != 0: c_j = cw_j^2 (IDF-aware:
 * sum_j (idf_j mean_i |w_ij|)^2). */
static kd_status flops_core(kd_context *ctx, const char *fn, const float *w, size_t batch,
                            size_t vocab, const float *cw, int square, float weight,
                            float *loss, float *grad)
{
    size_t total = 0;
    if (!w || !loss) return kd__fail(ctx, KD_E_INVALID, "%s: NULL array", fn);
    if (batch == 0) return kd__fail(ctx, KD_E_INVALID, "%s: empty batch", fn);
    if (!isfinite(weight)) return kd__fail(ctx, KD_E_INVALID, "%s: weight is not finite", fn);
    kd_status st = check_dims(ctx, fn, batch, vocab, 1, &total);
    if (st != KD_OK) return st;
    if (cw)
        for (size_t j = 0; j < vocab; j++)
            if (!isfinite(cw[j]) || cw[j] < 0.0f)
                return kd__fail(ctx, KD_E_INVALID, "%s: per-term weight %zu is %g", fn, j,
                                (double)cw[j]);
    for (size_t i = 0; i < total; i++)
        if (!isfinite(w[i])) return kd__fail(ctx, KD_E_NUMERIC, "%s: non-finite w at %zu", fn, i);
    double L = 0.0;
    double inv_b = 1.0 / (double)batch;
    for (size_t j = 0; j < vocab; j++) {
        double m = 0.0;
        for (size_t i = 0; i < batch; i++) m += fabs((double)w[i * vocab + j]);
        m *= inv_b;
        double c = 1.0;
        if (cw) c = square ? (double)cw[j] * (double)cw[j] : (double)cw[j];
        L += c * m * m;
        if (grad && m != 0.0) {
            /* d/dw_ij [c m^2] = 2 c m sign(w_ij) / B */
            float gs = (float)(2.0 * weight * c * m * inv_b);
            for (size_t i = 0; i < batch; i++) {
                float x = w[i * vocab + j];
                if (x > 0.0f) grad[i * vocab + j] += gs;
                else if (x < 0.0f) grad[i * vocab + j] -= gs;
            }
        }
    }
    *loss = (float)(weight * L);
    return KD_OK;
}

kd_status kd_sparse_flops(kd_context *ctx, const float *w, size_t batch, size_t vocab,
                          float weight, float *loss, float *grad)
{
    return flops_core(ctx, "kd_sparse_flops", w, batch, vocab, NULL, 0, weight, loss, grad);
}

kd_status kd_sparse_flops_weighted(kd_context *ctx, const float *w, size_t batch, size_t vocab,
                                   const float *term_weight, float weight, float *loss,
                                   float *grad)
{
    if (!term_weight) return kd__fail(ctx, KD_E_INVALID, "kd_sparse_flops_weighted: NULL weights");
    return flops_core(ctx, "kd_sparse_flops_weighted", w, batch, vocab, term_weight, 0, weight,
                      loss, grad);
}

kd_status kd_sparse_flops_idf(kd_context *ctx, const float *w, size_t batch, size_t vocab,
                              const float *idf, float weight, float *loss, float *grad)
{
    if (!idf) return kd__fail(ctx, KD_E_INVALID, "kd_sparse_flops_idf: NULL idf");
    return flops_core(ctx, "kd_sparse_flops_idf", w, batch, vocab, idf, 1, weight, loss, grad);
}

kd_status kd_sparse_l1(kd_context *ctx, const float *w, size_t batch, size_t vocab, float weight,
                       float *loss, float *grad)
{
    size_t total = 0;
    if (!w || !loss) return kd__fail(ctx, KD_E_INVALID, "kd_sparse_l1: NULL array");
    if (batch == 0) return kd__fail(ctx, KD_E_INVALID, "kd_sparse_l1: empty batch");
    if (!isfinite(weight)) return kd__fail(ctx, KD_E_INVALID, "kd_sparse_l1: weight is not finite");
    kd_status st = check_dims(ctx, "kd_sparse_l1", batch, vocab, 1, &total);
    if (st != KD_OK) return st;
    double L = 0.0;
    for (size_t i = 0; i < total; i++) {
        if (!isfinite(w[i])) return kd__fail(ctx, KD_E_NUMERIC, "kd_sparse_l1: non-finite w at %zu", i);
        L += fabs((double)w[i]);
    }
    float gs = (float)((double)weight / (double)batch);
    if (grad)
        for (size_t i = 0; i < total; i++) {
            if (w[i] > 0.0f) grad[i] += gs;
            else if (w[i] < 0.0f) grad[i] -= gs;
        }
    *loss = (float)(weight * L / (double)batch);
    return KD_OK;
}

float kd_sparse_reg_schedule(float lambda_max, uint64_t step, uint64_t warmup_steps)
{
    if (warmup_steps == 0 || step >= warmup_steps) return lambda_max;
    double r = (double)step / (double)warmup_steps;
    return (float)((double)lambda_max * r * r);
}

typedef struct {
    uint32_t id;
    float w;
} id_weight;

static int by_weight_desc(const void *a, const void *b)
{
    const id_weight *x = (const id_weight *)a, *y = (const id_weight *)b;
    if (x->w > y->w) return -1;
    if (x->w < y->w) return 1;
    return (x->id > y->id) - (x->id < y->id);
}

static int by_id(const void *a, const void *b)
{
    const id_weight *x = (const id_weight *)a, *y = (const id_weight *)b;
    return (x->id > y->id) - (x->id < y->id);
}

/* Restores the heap property below i: each parent is no better (in the
 * by_weight_desc order) than its children, so the root is the worst. */
static void sift_worst(id_weight *h, size_t n, size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && by_weight_desc(&h[l], &h[m]) > 0) m = l;
        if (r < n && by_weight_desc(&h[r], &h[m]) > 0) m = r;
        if (m == i) return;
        id_weight t = h[i];
        h[i] = h[m];
        h[m] = t;
        i = m;
    }
}

kd_status kd_sparse_topk_prune(kd_context *ctx, uint32_t *term_ids, float *weights, size_t nnz,
                               size_t k, size_t *out_nnz)
{
    if (!out_nnz || (nnz && (!term_ids || !weights)))
        return kd__fail(ctx, KD_E_INVALID, "kd_sparse_topk_prune: NULL argument");
    for (size_t i = 0; i < nnz; i++)
        if (isnan(weights[i]))
            return kd__fail(ctx, KD_E_NUMERIC, "kd_sparse_topk_prune: NaN weight at %zu", i);
    size_t keep = k < nnz ? k : nnz;
    if (nnz == 0) {
        *out_nnz = 0;
        return KD_OK;
    }
    id_weight *tmp = (id_weight *)kd__calloc(ctx, nnz, sizeof *tmp);
    if (!tmp) return KD_E_NOMEM;
    for (size_t i = 0; i < nnz; i++) {
        tmp[i].id = term_ids[i];
        tmp[i].w = weights[i];
    }
    if (keep < nnz) {
        /* select: tmp[0..keep) is a heap whose root is the worst kept entry
         * (order of by_weight_desc), O(nnz log keep) */
        for (size_t i = keep / 2; i-- > 0;) sift_worst(tmp, keep, i);
        for (size_t i = keep; i < nnz; i++) {
            if (keep && by_weight_desc(&tmp[i], &tmp[0]) < 0) {
                tmp[0] = tmp[i];
                sift_worst(tmp, keep, 0);
            }
        }
    }
    qsort(tmp, keep, sizeof *tmp, by_id);
    for (size_t i = 0; i < keep; i++) {
        term_ids[i] = tmp[i].id;
        weights[i] = tmp[i].w;
    }
    kd__free(ctx, tmp);
    *out_nnz = keep;
    return KD_OK;
}

kd_status kd_sparse_from_dense(kd_context *ctx, const float *dense, size_t vocab, float threshold,
                               uint32_t *term_ids, float *weights, size_t cap, size_t *out_nnz)
{
    if (!dense || !out_nnz || (cap && (!term_ids || !weights)))
        return kd__fail(ctx, KD_E_INVALID, "kd_sparse_from_dense: NULL argument");
    if (vocab > (size_t)UINT32_MAX + 1u)
        return kd__fail(ctx, KD_E_INVALID, "kd_sparse_from_dense: vocab exceeds 2^32");
    size_t n = 0;
    for (size_t j = 0; j < vocab; j++) {
        if (dense[j] > threshold) {
            if (n < cap) {
                term_ids[n] = (uint32_t)j;
                weights[n] = dense[j];
            }
            n++;
        }
    }
    *out_nnz = n;
    if (n > cap)
        return kd__fail(ctx, KD_E_SHAPE, "kd_sparse_from_dense: %zu entries exceed capacity %zu", n,
                        cap);
    return KD_OK;
}
