/* kd_vocab.c - explicit teacher -> student vocabulary maps (kd_vocab.h). */
#include <math.h>

#include "kd/kd_vocab.h"
#include "kd_internal.h"

struct kd_vocab_map {
    kd_context *ctx;
    size_t tc, sc;
    int32_t *map; /* tc entries: student class or -1 */
};

static kd_status make(kd_context *ctx, size_t tc, size_t sc, kd_vocab_map **out, const char *fn)
{
    if (!out) return kd__fail(ctx, KD_E_INVALID, "%s: out is NULL", fn);
    *out = NULL;
    if (tc == 0 || sc == 0) return kd__fail(ctx, KD_E_INVALID, "%s: vocabulary size 0", fn);
    if (tc > INT32_MAX || sc > INT32_MAX)
        return kd__fail(ctx, KD_E_OVERFLOW, "%s: vocabulary beyond int32 ids", fn);
    kd_vocab_map *m = (kd_vocab_map *)kd__calloc(ctx, 1, sizeof *m);
    if (!m) return kd_context_last_status(ctx);
    m->map = (int32_t *)kd__calloc(ctx, tc, sizeof *m->map);
    if (!m->map) {
        kd__free(ctx, m);
        return kd_context_last_status(ctx);
    }
    m->ctx = ctx, m->tc = tc, m->sc = sc;
    *out = m;
    return KD_OK;
}

kd_status kd_vocab_map_identity(kd_context *ctx, size_t tc, size_t sc, size_t shared,
                                kd_vocab_map **out)
{
    if (!ctx) return KD_E_INVALID;
    if (shared == 0 || shared > tc || shared > sc) {
        if (out) *out = NULL;
        return kd__fail(ctx, tc && sc && shared ? KD_E_SHAPE : KD_E_INVALID,
                        "kd_vocab_map_identity: shared %zu must be in [1, min(%zu, %zu)]", shared,
                        tc, sc);
    }
    kd_status st = make(ctx, tc, sc, out, "kd_vocab_map_identity");
    if (st) return st;
    for (size_t i = 0; i < tc; i++) (*out)->map[i] = i < shared ? (int32_t)i : -1;
    return KD_OK;
}

kd_status kd_vocab_map_from_ids(kd_context *ctx, size_t tc, size_t sc, const int32_t *t2s,
                                kd_vocab_map **out)
{
    if (!ctx) return KD_E_INVALID;
    if (!t2s) {
        if (out) *out = NULL;
        return kd__fail(ctx, KD_E_INVALID, "kd_vocab_map_from_ids: map is NULL");
    }
    size_t kept = 0;
    for (size_t i = 0; i < tc; i++) {
        if (t2s[i] < -1 || (t2s[i] >= 0 && (size_t)t2s[i] >= sc)) {
            if (out) *out = NULL;
            return kd__fail(ctx, KD_E_INVALID,
                            "kd_vocab_map_from_ids: entry %zu = %d outside [-1, %zu)", i,
                            (int)t2s[i], sc);
        }
        kept += t2s[i] >= 0;
    }
    if (tc && !kept) {
        if (out) *out = NULL;
        return kd__fail(ctx, KD_E_INVALID, "kd_vocab_map_from_ids: every teacher class dropped");
    }
    kd_status st = make(ctx, tc, sc, out, "kd_vocab_map_from_ids");
    if (st) return st;
    memcpy((*out)->map, t2s, tc * sizeof *t2s);
    return KD_OK;
}

void kd_vocab_map_destroy(kd_vocab_map *m)
{
    if (!m) return;
    kd__free(m->ctx, m->map);
    kd__free(m->ctx, m);
}

size_t kd_vocab_map_teacher_classes(const kd_vocab_map *m) { return m ? m->tc : 0; }
size_t kd_vocab_map_student_classes(const kd_vocab_map *m) { return m ? m->sc : 0; }

kd_status kd_vocab_map_logits(const kd_vocab_map *m, const float *t, size_t rows, float *out)
{
    if (!m) return KD_E_INVALID;
    if (!t || !out) return kd__fail(m->ctx, KD_E_INVALID, "kd_vocab_map_logits: NULL array");
    size_t cells;
    if (kd__mul_overflow(rows, m->tc, &cells) || kd__mul_overflow(rows, m->sc, &cells))
        return kd__fail(m->ctx, KD_E_OVERFLOW, "kd_vocab_map_logits: %zu rows too many", rows);
    for (size_t i = 0; i < rows * m->tc; i++)
        if (isnan(t[i]) || (isinf(t[i]) && t[i] > 0))
            return kd__fail(m->ctx, KD_E_NUMERIC, "kd_vocab_map_logits: teacher[%zu][%zu] is %s",
                            i / m->tc, i % m->tc, isnan(t[i]) ? "NaN" : "+inf");
    for (size_t r = 0; r < rows; r++) {
        const float *tr = t + r * m->tc;
        float *o = out + r * m->sc;
        for (size_t j = 0; j < m->sc; j++) o[j] = -INFINITY;
        for (size_t i = 0; i < m->tc; i++) {
            int32_t j = m->map[i];
            if (j < 0 || isinf(tr[i])) continue;
            float a = o[j], b = tr[i];
            if (a == -INFINITY) o[j] = b;
            else o[j] = (float)(fmax(a, b) + log1p(exp(-fabs((double)a - (double)b))));
        }
    }
    return KD_OK;
}

kd_status kd_vocab_map_ids(const kd_vocab_map *m, int32_t *ids, size_t n)
{
    if (!m) return KD_E_INVALID;
    if (!ids && n) return kd__fail(m->ctx, KD_E_INVALID, "kd_vocab_map_ids: ids is NULL");
    for (size_t i = 0; i < n; i++)
        if (ids[i] < -1 || (ids[i] >= 0 && (size_t)ids[i] >= m->tc))
            return kd__fail(m->ctx, KD_E_INVALID, "kd_vocab_map_ids: id %d at %zu outside [-1, %zu)",
                            (int)ids[i], i, m->tc);
    for (size_t i = 0; i < n; i++)
        if (ids[i] >= 0) ids[i] = m->map[ids[i]];
    return KD_OK;
}
