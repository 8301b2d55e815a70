/*
 * kd_loss_rank.c - ranking distillation: Margin-MSE (Hofstaetter et al.,
 * "Improving Efficient Neural Ranking Models with Cross-Architecture
 * Knowledge Distillation") and listwise KL over a candidate list, both with
 * in-batch negatives as extra columns (layout in kd_loss.h).
 */
#include "kd_loss_internal.h"

typedef struct {
    kd_loss_rank_config cfg;
    int listwise;
} rank_state;

void kd_loss_rank_config_default_sized(kd_loss_rank_config *out, size_t size)
{
    kd_loss_rank_config d, *cfg = &d;
    memset(cfg, 0, sizeof *cfg);
    cfg->struct_size = (uint32_t)sizeof *cfg;
    cfg->reduction = KD_REDUCE_MEAN;
    cfg->temperature = 1.0f;
    kd__default_out(out, size, cfg, sizeof *cfg);
}

static kd_status rank_create(kd_loss *loss, rank_state *s, const void *config, int listwise)
{
    kd_loss_rank_config_default(&s->cfg);
    kd_status st =
        kd__loss_config(loss, &s->cfg, sizeof s->cfg, config, sizeof s->cfg, kd_loss_name(loss));
    if (st) return st;
    if (s->cfg.reduction != KD_REDUCE_MEAN && s->cfg.reduction != KD_REDUCE_SUM)
        return kd_loss_fail(loss, KD_E_INVALID, "unknown reduction");
    if (!(s->cfg.temperature > 0) || !isfinite(s->cfg.temperature))
        return kd_loss_fail(loss, KD_E_INVALID, "temperature must be finite and > 0");
    s->listwise = listwise;
    return KD_OK;
}
static kd_status mm_create(kd_loss *l, void *s, const void *c) { return rank_create(l, s, c, 0); }
static kd_status lw_create(kd_loss *l, void *s, const void *c) { return rank_create(l, s, c, 1); }

/* Margin-MSE of one row with positive column pos; grad += coef * dl/ds.
 * Returns 1 + column of a problem (positive unscored, student masks a
 * scored candidate), 0 when fine. */
static size_t margin_row(const float *s, const float *t, size_t n, size_t pos, double *val,
                         float *grad, double coef)
{
    if (isinf(t[pos]) || isinf(s[pos])) return pos + 1;
    size_t cnt = 0;
    for (size_t j = 0; j < n; j++) {
        if (j == pos || isinf(t[j])) continue;
        if (isinf(s[j])) return j + 1;
        cnt++;
    }
    double acc = 0;
    if (cnt == 0) {
        *val = 0;
        return 0;
    }
    for (size_t j = 0; j < n; j++) {
        if (j == pos || isinf(t[j])) continue;
        double e = ((double)s[pos] - s[j]) - ((double)t[pos] - t[j]);
        acc += e * e;
        if (grad) {
            double g = coef * 2.0 * e / (double)cnt;
            grad[pos] += (float)g;
            grad[j] -= (float)g;
        }
    }
    *val = acc / (double)cnt;
    return 0;
}

static kd_status rank_compute(kd_loss *loss, void *state, const kd_loss_batch *b, double *value,
                              const kd_loss_grad *grad)
{
    const rank_state *s = (const rank_state *)state;
    const size_t n = b->candidates;
    const double T = s->cfg.temperature, inv_t = 1.0 / T;
    double norm = kd__reduce_norm(b, s->cfg.reduction, NULL), total = 0;
    for (int pass = 0; pass < 2; pass++) {
        if (pass == 1 && !(grad && grad->student_scores && norm > 0)) break;
        for (size_t i = 0; i < b->rows; i++) {
            if (!kd__row_on(b, i)) continue;
            const float *sr = b->student_scores + i * n, *tr = b->teacher_scores + i * n;
            float *g = pass ? grad->student_scores + i * n : NULL;
            double coef = pass ? grad->scale * norm * kd__row_w(b, i) : 0, v = 0;
            size_t bad;
            if (s->listwise) {
                if (kd__row_fkl(sr, tr, n, inv_t, &v, g, coef * T, &bad))
                    return kd__fail(loss->ctx, KD_E_NUMERIC,
                                    "%s: row %zu candidate %zu: the teacher scores a candidate "
                                    "the student masks", kd_loss_name(loss), i, bad);
                v *= T * T;
            } else {
                size_t pos = b->labels ? (size_t)b->labels[i] : 0;
                bad = margin_row(sr, tr, n, pos, &v, g, coef);
                if (bad)
                    return kd__fail(loss->ctx, KD_E_NUMERIC,
                                    "%s: row %zu candidate %zu: %s", kd_loss_name(loss), i,
                                    bad - 1,
                                    bad - 1 == pos ? "the positive is masked (-inf)"
                                                   : "the student masks a candidate the teacher scores");
            }
            if (!pass) total += kd__row_w(b, i) * v;
        }
    }
    *value = total * norm;
    return KD_OK;
}

#define RANK_IN (KD_LOSS_IN_STUDENT_SCORES | KD_LOSS_IN_TEACHER_SCORES)
static const kd_loss_vtable mm_vtable = {
    1, "margin_mse", RANK_IN, KD_LOSS_IN_LABELS, sizeof(rank_state), mm_create, NULL,
    rank_compute, NULL, NULL, NULL};
static const kd_loss_vtable lw_vtable = {
    1, "listwise_kl", RANK_IN, KD_LOSS_IN_LABELS, sizeof(rank_state), lw_create, NULL,
    rank_compute, NULL, NULL, NULL};

const kd_loss_vtable *kd_loss_margin_mse(void) { return &mm_vtable; }
const kd_loss_vtable *kd_loss_listwise_kl(void) { return &lw_vtable; }
