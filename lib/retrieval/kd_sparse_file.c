/*
 * kd_sparse_file.c - saving (atomic) and mapping sparse index files, and
 * batch search over worker threads. Hosted builds only.
 */
#include <pthread.h>
#include <stdlib.h>

#include "kd_sparse_format.h"

kd_status kd_sparse_index_save(const kd_sparse_index *idx, const char *path)
{
    if (!idx) return KD_E_INVALID;
    kd_context *ctx = idx->ctx;
    kd_atomic_file f;
    kd_status st = kd__atomic_open(ctx, &f, path);
    if (st != KD_OK) return st;
    st = kd__atomic_write(&f, idx->image, idx->size);
    if (st == KD_OK) st = kd__atomic_commit(&f);
    if (st != KD_OK) kd__atomic_abort(&f);
    return st;
}

kd_status kd_sparse_index_load(kd_context *ctx, const char *path, kd_sparse_index **out)
{
    if (!out) return kd__fail(ctx, KD_E_INVALID, "kd_sparse_index_load: out is NULL");
    *out = NULL;
    kd_sparse_index *idx = (kd_sparse_index *)kd__calloc(ctx, 1, sizeof *idx);
    if (!idx) return KD_E_NOMEM;
    idx->ctx = ctx;
    kd_status st = kd__map_file(ctx, path, &idx->map);
    if (st != KD_OK) {
        kd__free(ctx, idx);
        return st;
    }
    idx->mapped = 1;
    idx->image = idx->map.data;
    idx->size = idx->map.size;
    st = kd__spx_open_image(ctx, idx);
    if (st != KD_OK) {
        char reason[KD_ERRMSG_SIZE];
        memcpy(reason, kd_context_last_error(ctx), KD_ERRMSG_SIZE);
        reason[KD_ERRMSG_SIZE - 1] = '\0';
        kd_sparse_index_destroy(idx);
        return kd__fail(ctx, st, "'%s': %s", path, reason);
    }
    *out = idx;
    return KD_OK;
}

/* ---- batch search ----------------------------------------------------- */

typedef struct worker {
    const kd_sparse_index *idx;
    const kd_sparse_search_config *cfg;
    kd__spx_scratch *s;
    size_t first, step, n, k;
    const size_t *q_off, *t_off;
    const uint32_t *ids, *tokens;
    const float *w;
    uint32_t *out_ids;
    float *out_scores;
    size_t *out_counts;
    kd_status st;
    const char *why;
    size_t bad;
} worker;

static void *work(void *arg)
{
    worker *wk = (worker *)arg;
    for (size_t q = wk->first; q < wk->n; q += wk->step) {
        size_t a = wk->q_off ? wk->q_off[q] : 0, na = wk->q_off ? wk->q_off[q + 1] - a : 0;
        size_t b = wk->t_off ? wk->t_off[q] : 0, nb = wk->t_off ? wk->t_off[q + 1] - b : 0;
        kd_status st = kd__spx_search_core(
            wk->idx, wk->cfg, wk->s, wk->ids ? wk->ids + a : NULL, wk->w ? wk->w + a : NULL, na,
            wk->tokens ? wk->tokens + b : NULL, nb, wk->k, wk->out_ids + q * wk->k,
            wk->out_scores ? wk->out_scores + q * wk->k : NULL, &wk->out_counts[q], &wk->why);
        if (st != KD_OK) {
            wk->st = st;
            wk->bad = q;
            break;
        }
    }
    return NULL;
}

kd_status kd_sparse_index_search_batch(kd_context *ctx, const kd_sparse_index *idx,
                                       const kd_sparse_search_config *cfg, size_t n,
                                       const size_t *q_offsets, const uint32_t *term_ids,
                                       const float *weights, const size_t *t_offsets,
                                       const uint32_t *tokens, size_t k, uint32_t *out_ids,
                                       float *out_scores, size_t *out_counts)
{
    if (!idx) return kd__fail(ctx, KD_E_INVALID, "kd_sparse_index_search_batch: index is NULL");
    if (!ctx) ctx = idx->ctx;
    kd_sparse_search_config c;
    kd_status st = kd__spx_search_config(ctx, cfg, &c);
    if (st != KD_OK) return st;
    if (n == 0) return KD_OK;
    if (!out_counts || (k && !out_ids))
        return kd__fail(ctx, KD_E_INVALID, "kd_sparse_index_search_batch: NULL output array");
    size_t nk;
    if (kd__mul_overflow(n, k, &nk))
        return kd__fail(ctx, KD_E_OVERFLOW, "kd_sparse_index_search_batch: n x k overflows");
    /* validate the CSR offsets and find the largest query */
    size_t maxq = 0;
    for (size_t q = 0; q < n; q++) {
        size_t na = 0, nb = 0;
        if (q_offsets) {
            if (q_offsets[q + 1] < q_offsets[q])
                return kd__fail(ctx, KD_E_INVALID, "batch: q_offsets decrease at query %zu", q);
            na = q_offsets[q + 1] - q_offsets[q];
        }
        if (t_offsets) {
            if (t_offsets[q + 1] < t_offsets[q])
                return kd__fail(ctx, KD_E_INVALID, "batch: t_offsets decrease at query %zu", q);
            nb = t_offsets[q + 1] - t_offsets[q];
        }
        if (na > SIZE_MAX / 2 || nb > SIZE_MAX / 2)
            return kd__fail(ctx, KD_E_OVERFLOW, "batch: query %zu too long", q);
        if (na + nb > maxq) maxq = na + nb;
    }
    if (q_offsets && q_offsets[n] > q_offsets[0] && (!term_ids || !weights))
        return kd__fail(ctx, KD_E_INVALID, "batch: NULL term ids or weights");
    if (t_offsets && t_offsets[n] > t_offsets[0] && !tokens)
        return kd__fail(ctx, KD_E_INVALID, "batch: NULL tokens");
    int nt = c.threads > 0 ? c.threads : kd_context_threads(ctx);
    if (nt < 1) nt = 1;
    if ((size_t)nt > n) nt = (int)n;
    worker *wk = (worker *)kd__calloc(ctx, (size_t)nt, sizeof *wk);
    pthread_t *th = (pthread_t *)kd__calloc(ctx, (size_t)nt, sizeof *th);
    if (!wk || !th) {
        kd__free(ctx, th);
        kd__free(ctx, wk);
        return KD_E_NOMEM;
    }
    for (int i = 0; i < nt && st == KD_OK; i++) {
        worker *w = &wk[i];
        w->idx = idx;
        w->cfg = &c;
        w->first = (size_t)i;
        w->step = (size_t)nt;
        w->n = n;
        w->k = k;
        w->q_off = q_offsets;
        w->t_off = t_offsets;
        w->ids = term_ids;
        w->w = weights;
        w->tokens = tokens;
        w->out_ids = out_ids;
        w->out_scores = out_scores;
        w->out_counts = out_counts;
        w->why = "";
        st = kd__spx_scratch_create(ctx, idx, maxq, k, c.algo == KD_SPARSE_EXHAUSTIVE, &w->s);
    }
    int started = 0;
    if (st == KD_OK) {
        for (; started < nt - 1; started++)
            if (pthread_create(&th[started], NULL, work, &wk[started + 1]) != 0) break;
        work(&wk[0]); /* the calling thread is worker 0 */
        for (int i = started; i < nt - 1; i++) work(&wk[i + 1]); /* threads that failed to start */
        for (int i = 0; i < started; i++) pthread_join(th[i], NULL);
        for (int i = 0; i < nt; i++)
            if (wk[i].st != KD_OK && st == KD_OK)
                st = kd__fail(ctx, wk[i].st, "kd_sparse_index_search_batch: query %zu: %s", wk[i].bad,
                              wk[i].why);
    }
    for (int i = 0; i < nt; i++) kd__spx_scratch_destroy(ctx, wk[i].s);
    kd__free(ctx, th);
    kd__free(ctx, wk);
    return st;
}
