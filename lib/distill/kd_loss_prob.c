/*
 * kd_loss_prob.c - losses over class logits: cross-entropy with label
 * smoothing, Hinton KD, reverse KL, generalized JSD, skew KL / skew reverse
 * KL, TAID and DKD.
 *
 * Every row is evaluated from the logits in double with max-subtracted
 * log-sum-exp; probabilities are recomputed per pass rather than stored, so
 * no loss here allocates. Each loss runs a value pass over all rows first
 * (every failure is detected there) and only then a gradient pass, so a
 * failing call writes nothing.
 */
#include "kd_loss_internal.h"
#include "kd_vocab_internal.h"

#define NUMERIC_BAD(loss, i, j, why)                                                        \
    kd__fail((loss)->ctx, KD_E_NUMERIC, "%s: row %zu class %zu: %s", kd_loss_name(loss), (i), \
             (j), (why))

static kd_status check_reduction(kd_loss *loss, kd_loss_reduction r)
{
    if (r != KD_REDUCE_MEAN && r != KD_REDUCE_SUM)
        return kd__fail(loss->ctx, KD_E_INVALID, "%s: unknown reduction %d", kd_loss_name(loss),
                        (int)r);
    return KD_OK;
}

static kd_status check_temperature(kd_loss *loss, float t)
{
    if (!(t > 0) || !isfinite(t))
        return kd__fail(loss->ctx, KD_E_INVALID, "%s: temperature must be finite and > 0 (got %g)",
                        kd_loss_name(loss), (double)t);
    return KD_OK;
}

static kd_status check_unit(kd_loss *loss, const char *what, float v, int open_lo, int open_hi)
{
    int ok = (open_lo ? v > 0 : v >= 0) && (open_hi ? v < 1 : v <= 1);
    if (!ok)
        return kd__fail(loss->ctx, KD_E_INVALID, "%s: %s must be in %c0, 1%c (got %g)",
                        kd_loss_name(loss), what, open_lo ? '(' : '[', open_hi ? ')' : ']',
                        (double)v);
    return KD_OK;
}

/* ---- fused vocabulary-scale path (kd_loss_vocab.c) ------------------------- */

/* 1 when rows of this batch go through the fused kernels. */
static int use_fused(const kd_loss_batch *b, size_t c)
{
    return !b->teacher_logits || c >= KD__VOCAB_FUSED_MIN;
}

/* Checks that cannot wait for the sweep (a failing call writes nothing):
 * sparse ids inside the valid classes, a non-empty row, positive draws;
 * infinite divergences from -inf masks. */
static kd_status fused_precheck(kd_loss *loss, const kd__div *d, const kd_loss_batch *b,
                                size_t c)
{
    const size_t ld = b->classes;
    const kd_sparse_logits *sp = b->teacher_logits ? NULL : b->teacher_sparse;
    if (sp && sp->mode == KD_SPARSE_SAMPLED &&
        (d->kind != KD__DIV_FKL || d->inv_t != 1.0 || sp->value_kind == KD_SPARSE_LOGIT))
        return kd__fail(loss->ctx, KD_E_UNSUPPORTED,
                        "%s: sampled sparse teachers need forward KL (hinton) at temperature 1 "
                        "and LOGPROB or PROB values", kd_loss_name(loss));
    for (size_t i = 0; i < b->rows; i++) {
        if (!kd__row_on(b, i)) continue;
        const float *srow = b->student_logits + i * ld;
        if (!sp) {
            size_t bad = loss->masked ? kd__vocab_mask_bad(d, srow, b->teacher_logits + i * ld, c) : 0;
            if (bad)
                return NUMERIC_BAD(loss, i, bad - 1,
                                   "the divergence is infinite (one side masks a class the other "
                                   "gives mass)");
            continue;
        }
        if (loss->masked || d->kind == KD__DIV_RKL) { /* full value pass of the row */
            const char *why = "";
            double v;
            kd_status st = kd__vocab_sparse_row(d, srow, c, sp, i, 0, NULL, &v, &why);
            if (st) return kd__fail(loss->ctx, st, "%s: row %zu: %s", kd_loss_name(loss), i, why);
            continue;
        }
        size_t used = 0;
        double draws = 0;
        for (size_t j = 0; j < sp->k; j++) {
            int32_t id = sp->ids[i * sp->k + j];
            if (id < 0) continue;
            if ((size_t)id >= c)
                return kd__fail(loss->ctx, KD_E_INVALID,
                                "%s: row %zu: sparse id %d beyond the %zu valid classes",
                                kd_loss_name(loss), i, (int)id, c);
            used++;
            draws += sp->counts ? sp->counts[i * sp->k + j] : 1.0;
        }
        if (!used || (sp->mode == KD_SPARSE_SAMPLED && !(draws > 0)))
            return kd__fail(loss->ctx, KD_E_INVALID, "%s: row %zu: sparse row without ids or draws",
                            kd_loss_name(loss), i);
    }
    return KD_OK;
}

/* Adds sum_i w_i * factor * T^2 * D_i to *total and, with grad, the
 * gradient; dense (vectorised) or sparse teacher rows. */
static kd_status fused_sweep(kd_loss *loss, const kd__div *d, const kd_loss_batch *b, double norm,
                             double factor, const kd_loss_grad *grad, double *total)
{
    const size_t ld = b->classes, c = ld;
    const double T = 1.0 / d->inv_t;
    const kd_sparse_logits *sp = b->teacher_logits ? NULL : b->teacher_sparse;
    kd_status st = fused_precheck(loss, d, b, c);
    if (st) return st;
    const int want_g = grad && grad->student_logits && norm > 0;
    kd__div dm = *d;
    dm.nomask = !loss->masked; /* set by this batch's validation */
    double acc = 0;
    for (size_t i = 0; i < b->rows; i++) {
        if (!kd__row_on(b, i)) continue;
        const float *srow = b->student_logits + i * ld;
        float *g = want_g ? grad->student_logits + i * ld : NULL;
        /* T^2 scaling times the 1/T of dz/ds */
        double coef = want_g ? grad->scale * norm * kd__row_w(b, i) * factor * T : 0, v = 0;
        if (sp) {
            const char *why = "";
            st = kd__vocab_sparse_row(d, srow, c, sp, i, coef, g, &v, &why);
            if (st) return kd__fail(loss->ctx, st, "%s: row %zu: %s", kd_loss_name(loss), i, why);
        } else {
            kd__vocab_dense_row(&dm, srow, b->teacher_logits + i * ld, c, coef, g, &v);
        }
        acc += kd__row_w(b, i) * factor * T * T * v;
    }
    *total += acc;
    return KD_OK;
}

/* One row i of a temperature-scaled loss (div_row, taid_row, dkd_row): the
 * value into *v and, when g is not NULL, coef times its gradient w.r.t.
 * logits / T added to g. Returns 0, or 1 + the class that makes the row
 * infinite. */
typedef size_t (*scaled_row_fn)(const void *state, const kd_loss_batch *b, size_t i, double inv_t,
                                double *v, float *g, double coef);

/* The two passes over the rows of a loss scaled by T^2: pass 0 adds
 * row weight x T^2 x value to *total; pass 1 (a gradient wanted, norm > 0)
 * adds the gradients, coefficient scale x norm x row weight x T (T^2 times
 * the 1/T of dz/ds). An infinite row fails with KD_E_NUMERIC and why. */
static kd_status scaled_rows(kd_loss *loss, const void *state, const kd_loss_batch *b, double T,
                             double norm, const kd_loss_grad *grad, scaled_row_fn row,
                             const char *why, double *total)
{
    const double inv_t = 1.0 / T;
    const size_t ld = b->classes;
    for (int pass = 0; pass < 2; pass++) {
        if (pass == 1 && !(grad && grad->student_logits && norm > 0)) break;
        for (size_t i = 0; i < b->rows; i++) {
            if (!kd__row_on(b, i)) continue;
            double v = 0;
            float *g = pass ? grad->student_logits + i * ld : NULL;
            double coef = pass ? grad->scale * norm * kd__row_w(b, i) * T : 0;
            size_t bad = row(state, b, i, inv_t, &v, g, coef);
            if (bad) return NUMERIC_BAD(loss, i, bad - 1, why);
            if (!pass) *total += kd__row_w(b, i) * T * T * v;
        }
    }
    return KD_OK;
}

/* ---- cross-entropy with label smoothing (temperature 1) -------------------- */

/* Value of one row; grad (may be NULL) += coef * (q - target). Returns 1 when
 * the label's class is masked. */
static int ce_row(const float *s, size_t c, int32_t y, double eps, double *val, float *grad,
                  double coef)
{
    if (isinf(s[y])) return 1;
    double lse = kd__row_lse(s, c, 1.0, SIZE_MAX);
    size_t k = 0;
    double sum_lq = 0;
    for (size_t j = 0; j < c; j++)
        if (!isinf(s[j])) {
            k++;
            sum_lq += (double)s[j] - lse;
        }
    double u = eps / (double)k;
    *val = -(1.0 - eps) * ((double)s[y] - lse) - u * sum_lq;
    if (grad)
        for (size_t j = 0; j < c; j++) {
            if (isinf(s[j])) continue;
            double tgt = u + (j == (size_t)y ? 1.0 - eps : 0.0);
            grad[j] += (float)(coef * (exp((double)s[j] - lse) - tgt));
        }
    return 0;
}

typedef struct {
    kd_loss_ce_config cfg;
} ce_state;

void kd_loss_ce_config_default_sized(kd_loss_ce_config *out, size_t size)
{
    kd_loss_ce_config d, *cfg = &d;
    memset(cfg, 0, sizeof *cfg);
    cfg->struct_size = (uint32_t)sizeof *cfg;
    cfg->reduction = KD_REDUCE_MEAN;
    kd__default_out(out, size, cfg, sizeof *cfg);
}

static kd_status ce_create(kd_loss *loss, void *state, const void *config)
{
    ce_state *s = (ce_state *)state;
    kd_loss_ce_config_default(&s->cfg);
    kd_status st = kd__loss_config(loss, &s->cfg, sizeof s->cfg, config, sizeof s->cfg,
                                   "cross_entropy");
    if (st) return st;
    if ((st = check_reduction(loss, s->cfg.reduction))) return st;
    return check_unit(loss, "label_smoothing", s->cfg.label_smoothing, 0, 1);
}

static kd_status ce_compute(kd_loss *loss, void *state, const kd_loss_batch *b, double *value,
                            const kd_loss_grad *grad)
{
    const ce_state *s = (const ce_state *)state;
    const size_t ld = b->classes, c = ld;
    double eps = s->cfg.label_smoothing;
    double norm = kd__reduce_norm(b, s->cfg.reduction, NULL), total = 0;
    for (size_t i = 0; i < b->rows; i++) {
        if (!kd__row_on(b, i)) continue;
        double l;
        if (ce_row(b->student_logits + i * ld, c, b->labels[i], eps, &l, NULL, 0))
            return NUMERIC_BAD(loss, i, (size_t)b->labels[i], "the label's class is masked");
        total += kd__row_w(b, i) * l;
    }
    *value = total * norm;
    if (grad && grad->student_logits && norm > 0)
        for (size_t i = 0; i < b->rows; i++) {
            if (!kd__row_on(b, i)) continue;
            double l;
            ce_row(b->student_logits + i * ld, c, b->labels[i], eps, &l,
                   grad->student_logits + i * ld, grad->scale * norm * kd__row_w(b, i));
        }
    return KD_OK;
}

static const kd_loss_vtable ce_vtable = {
    1, "cross_entropy", KD_LOSS_IN_STUDENT_LOGITS | KD_LOSS_IN_LABELS, 0,
    sizeof(ce_state),
    ce_create, NULL, ce_compute, NULL, NULL, NULL};

const kd_loss_vtable *kd_loss_cross_entropy(void) { return &ce_vtable; }

/* ---- Hinton KD ----------------------------------------------------------- */

typedef struct {
    kd_loss_hinton_config cfg;
} hinton_state;

void kd_loss_hinton_config_default_sized(kd_loss_hinton_config *out, size_t size)
{
    kd_loss_hinton_config d, *cfg = &d;
    memset(cfg, 0, sizeof *cfg);
    cfg->struct_size = (uint32_t)sizeof *cfg;
    cfg->reduction = KD_REDUCE_MEAN;
    cfg->temperature = 4.0f;
    cfg->alpha = 0.9f;
    kd__default_out(out, size, cfg, sizeof *cfg);
}

static kd_status hinton_create(kd_loss *loss, void *state, const void *config)
{
    hinton_state *s = (hinton_state *)state;
    kd_loss_hinton_config_default(&s->cfg);
    kd_status st = kd__loss_config(loss, &s->cfg, sizeof s->cfg, config, sizeof s->cfg, "hinton");
    if (st) return st;
    if ((st = check_reduction(loss, s->cfg.reduction))) return st;
    if ((st = check_temperature(loss, s->cfg.temperature))) return st;
    if ((st = check_unit(loss, "alpha", s->cfg.alpha, 0, 0))) return st;
    return check_unit(loss, "label_smoothing", s->cfg.label_smoothing, 0, 1);
}

static kd_status hinton_compute(kd_loss *loss, void *state, const kd_loss_batch *b,
                                double *value, const kd_loss_grad *grad)
{
    const hinton_state *s = (const hinton_state *)state;
    const size_t ld = b->classes, c = ld;
    const double T = s->cfg.temperature, inv_t = 1.0 / T, alpha = s->cfg.alpha;
    const double eps = s->cfg.label_smoothing;
    const int hard = alpha < 1.0;
    if (hard && !b->labels)
        return kd__fail(loss->ctx, KD_E_INVALID, "hinton: alpha < 1 needs labels");
    double norm = kd__reduce_norm(b, s->cfg.reduction, NULL), total = 0;
    const int fused = alpha > 0 && use_fused(b, c);
    for (int pass = 0; pass < 2; pass++) {
        if (pass == 1 && !(grad && grad->student_logits && norm > 0)) break;
        if (pass == 1 && fused) { /* every failure is known by now */
            kd__div d = {KD__DIV_FKL, inv_t, 0, 0};
            kd_status st = fused_sweep(loss, &d, b, norm, alpha, grad, &total);
            if (st) return st;
            if (!hard) break;
        }
        for (size_t i = 0; i < b->rows; i++) {
            if (!kd__row_on(b, i)) continue;
            const float *srow = b->student_logits + i * ld;
            const float *trow = b->teacher_logits ? b->teacher_logits + i * ld : NULL;
            float *g = pass ? grad->student_logits + i * ld : NULL;
            double coef = pass ? grad->scale * norm * kd__row_w(b, i) : 0;
            double kl = 0, ce = 0;
            size_t bad;
            if (alpha > 0 && !fused &&
                kd__row_fkl(srow, trow, c, inv_t, &kl, g, coef * alpha * T, &bad))
                return NUMERIC_BAD(loss, i, bad, "teacher has mass on a class the student masks");
            if (hard && ce_row(srow, c, b->labels[i], eps, &ce, g, coef * (1.0 - alpha)))
                return NUMERIC_BAD(loss, i, (size_t)b->labels[i], "the label's class is masked");
            if (!pass) total += kd__row_w(b, i) * (alpha * T * T * kl + (1.0 - alpha) * ce);
        }
        if (pass == 0 && fused && !(grad && grad->student_logits && norm > 0)) {
            kd__div d = {KD__DIV_FKL, inv_t, 0, 0};
            kd_status st = fused_sweep(loss, &d, b, norm, alpha, NULL, &total);
            if (st) return st;
        }
    }
    *value = total * norm;
    return KD_OK;
}

static const kd_loss_vtable hinton_vtable = {
    1, "hinton", KD_LOSS_IN_STUDENT_LOGITS | KD_LOSS_IN_TEACHER_LOGITS,
    KD_LOSS_IN_LABELS | KD_LOSS_IN_TEACHER_SPARSE,
    sizeof(hinton_state), hinton_create, NULL, hinton_compute, NULL, NULL, NULL};

const kd_loss_vtable *kd_loss_hinton(void) { return &hinton_vtable; }

/* ---- reverse KL, JSD, skew KL, skew reverse KL ------------------------------ */

enum { DIV_RKL, DIV_JSD, DIV_SKL, DIV_SRKL };

typedef struct {
    kd_loss_divergence_config cfg;
    int kind;
    double c, lc, l1c; /* the mixing coefficient, log c, log(1 - c) */
} div_state;

void kd_loss_divergence_config_default_sized(kd_loss_divergence_config *out, size_t size)
{
    kd_loss_divergence_config d, *cfg = &d;
    memset(cfg, 0, sizeof *cfg);
    cfg->struct_size = (uint32_t)sizeof *cfg;
    cfg->reduction = KD_REDUCE_MEAN;
    cfg->temperature = 1.0f;
    cfg->jsd_beta = 0.5f;
    cfg->skew_alpha = 0.1f;
    kd__default_out(out, size, cfg, sizeof *cfg);
}

static kd_status div_create(kd_loss *loss, div_state *s, const void *config, int kind)
{
    kd_loss_divergence_config_default(&s->cfg);
    kd_status st =
        kd__loss_config(loss, &s->cfg, sizeof s->cfg, config, sizeof s->cfg, kd_loss_name(loss));
    if (st) return st;
    if ((st = check_reduction(loss, s->cfg.reduction))) return st;
    if ((st = check_temperature(loss, s->cfg.temperature))) return st;
    s->kind = kind;
    if (kind == DIV_JSD) {
        if ((st = check_unit(loss, "jsd_beta", s->cfg.jsd_beta, 1, 1))) return st;
        s->c = s->cfg.jsd_beta;
    } else if (kind == DIV_SKL || kind == DIV_SRKL) {
        if ((st = check_unit(loss, "skew_alpha", s->cfg.skew_alpha, 0, 1))) return st;
        s->c = s->cfg.skew_alpha;
    }
    s->lc = s->c > 0 ? log(s->c) : -INFINITY;
    s->l1c = log1p(-s->c);
    return KD_OK;
}

static kd_status rkl_create(kd_loss *l, void *st, const void *c) { return div_create(l, st, c, DIV_RKL); }
static kd_status jsd_create(kd_loss *l, void *st, const void *c) { return div_create(l, st, c, DIV_JSD); }
static kd_status skl_create(kd_loss *l, void *st, const void *c) { return div_create(l, st, c, DIV_SKL); }
static kd_status srkl_create(kd_loss *l, void *st, const void *c) { return div_create(l, st, c, DIV_SRKL); }

/* Element j of a divergence: adds its value to *val and returns G_j =
 * q_j dL/dq_j, or sets *bad when the value would be infinite. */
static double div_elem(const div_state *d, double lp, double lq, double *val, int *bad)
{
    double q = exp(lq), lm;
    switch (d->kind) {
    case DIV_RKL:
        if (lq == -INFINITY) return 0;
        if (lp == -INFINITY) {
            *bad = 1;
            return 0;
        }
        *val += q * (lq - lp);
        return q * (lq - lp + 1.0);
    case DIV_JSD:
        lm = kd__logaddexp(d->lc + lp, d->l1c + lq);
        if (lp > -INFINITY) *val += d->c * exp(lp) * (lp - lm);
        if (lq == -INFINITY) return 0;
        *val += (1.0 - d->c) * q * (lq - lm);
        return q * (1.0 - d->c) * (lq - lm);
    case DIV_SKL:
        if (lp == -INFINITY) return 0;
        lm = kd__logaddexp(d->lc + lp, d->l1c + lq);
        if (lm == -INFINITY) {
            *bad = 1;
            return 0;
        }
        *val += exp(lp) * (lp - lm);
        return lq == -INFINITY ? 0 : -(1.0 - d->c) * exp(lq + lp - lm);
    default: /* DIV_SRKL */
        if (lq == -INFINITY) return 0;
        lm = kd__logaddexp(d->l1c + lp, d->lc + lq);
        if (lm == -INFINITY) {
            *bad = 1;
            return 0;
        }
        *val += q * (lq - lm);
        return q * (lq - lm + 1.0) - d->c * exp(2.0 * lq - lm);
    }
}

/* One row: value, and grad += coef * dL/dz (z = s/T). Returns 1 + column on
 * an infinite divergence, 0 otherwise. */
static size_t div_row(const void *state, const kd_loss_batch *b, size_t i, double inv_t,
                      double *val, float *grad, double coef)
{
    const div_state *d = (const div_state *)state;
    const size_t c = b->classes;
    const float *s = b->student_logits + i * c, *t = b->teacher_logits + i * c;
    double ls = kd__row_lse(s, c, inv_t, SIZE_MAX), lt = kd__row_lse(t, c, inv_t, SIZE_MAX);
    double v = 0, sum_g = 0;
    for (size_t j = 0; j < c; j++) {
        int bad = 0;
        sum_g += div_elem(d, kd__lp(t, j, inv_t, lt), kd__lp(s, j, inv_t, ls), &v, &bad);
        if (bad) return j + 1;
    }
    *val = v;
    if (grad)
        for (size_t j = 0; j < c; j++) {
            double lq = kd__lp(s, j, inv_t, ls), dummy = 0;
            int bad = 0;
            double g = div_elem(d, kd__lp(t, j, inv_t, lt), lq, &dummy, &bad);
            grad[j] += (float)(coef * (g - exp(lq) * sum_g));
        }
    return 0;
}

static kd_status div_compute(kd_loss *loss, void *state, const kd_loss_batch *b, double *value,
                             const kd_loss_grad *grad)
{
    const div_state *d = (const div_state *)state;
    const size_t c = b->classes;
    const double T = d->cfg.temperature, inv_t = 1.0 / T;
    double norm = kd__reduce_norm(b, d->cfg.reduction, NULL), total = 0;
    if ((d->kind == DIV_RKL || d->kind == DIV_JSD) && use_fused(b, c)) {
        kd__div fd = {d->kind == DIV_RKL ? KD__DIV_RKL : KD__DIV_JSD, inv_t, d->c, 0};
        kd_status st = fused_sweep(loss, &fd, b, norm, 1.0, grad, &total);
        if (st) return st;
        *value = total * norm;
        return KD_OK;
    }
    if (!b->teacher_logits)
        return kd__fail(loss->ctx, KD_E_UNSUPPORTED, "%s: needs dense teacher logits",
                        kd_loss_name(loss));
    kd_status st = scaled_rows(loss, d, b, T, norm, grad, div_row,
                               "the divergence is infinite (one side masks a class the other "
                               "gives mass)",
                               &total);
    if (st) return st;
    *value = total * norm;
    return KD_OK;
}

#define DIV_VTABLE(var, nm, create, acc)                                                    \
    static const kd_loss_vtable var = {                                                     \
        1, nm, KD_LOSS_IN_STUDENT_LOGITS | KD_LOSS_IN_TEACHER_LOGITS,                       \
        KD_LOSS_IN_LABELS | (acc),                               \
        sizeof(div_state), create, NULL, div_compute, NULL, NULL, NULL}
DIV_VTABLE(rkl_vtable, "reverse_kl", rkl_create, KD_LOSS_IN_TEACHER_SPARSE);
DIV_VTABLE(jsd_vtable, "jsd", jsd_create, KD_LOSS_IN_TEACHER_SPARSE);
DIV_VTABLE(skl_vtable, "skew_kl", skl_create, 0);
DIV_VTABLE(srkl_vtable, "skew_reverse_kl", srkl_create, 0);

const kd_loss_vtable *kd_loss_reverse_kl(void) { return &rkl_vtable; }
const kd_loss_vtable *kd_loss_jsd(void) { return &jsd_vtable; }
const kd_loss_vtable *kd_loss_skew_kl(void) { return &skl_vtable; }
const kd_loss_vtable *kd_loss_skew_reverse_kl(void) { return &srkl_vtable; }

/* ---- TAID ------------------------------------------------------------------ */

typedef struct {
    kd_loss_taid_config cfg;
    double t;           /* current interpolation coefficient */
    double momentum;    /* m_n */
    double prev_value;  /* J_{n-1} */
    double last_value;  /* J_n, from the latest compute */
    int have_prev;
    int have_last;
} taid_state;

void kd_loss_taid_config_default_sized(kd_loss_taid_config *out, size_t size)
{
    kd_loss_taid_config d, *cfg = &d;
    memset(cfg, 0, sizeof *cfg);
    cfg->struct_size = (uint32_t)sizeof *cfg;
    cfg->reduction = KD_REDUCE_MEAN;
    cfg->temperature = 1.0f;
    cfg->t_start = 0.4f;
    cfg->t_end = 1.0f;
    cfg->alpha = 5e-4f;
    cfg->beta = 0.99f;
    cfg->adaptive = 1;
    cfg->mix = KD_TAID_MIX_LOGITS;
    kd__default_out(out, size, cfg, sizeof *cfg);
}

static kd_status taid_create(kd_loss *loss, void *state, const void *config)
{
    taid_state *s = (taid_state *)state;
    kd_loss_taid_config_default(&s->cfg);
    kd_status st = kd__loss_config(loss, &s->cfg, sizeof s->cfg, config, sizeof s->cfg, "taid");
    if (st) return st;
    if ((st = check_reduction(loss, s->cfg.reduction))) return st;
    if ((st = check_temperature(loss, s->cfg.temperature))) return st;
    if ((st = check_unit(loss, "t_start", s->cfg.t_start, 0, 1))) return st;
    if ((st = check_unit(loss, "t_end", s->cfg.t_end, 1, 0))) return st;
    if (!(s->cfg.t_end > s->cfg.t_start))
        return kd__fail(loss->ctx, KD_E_INVALID, "taid: t_end must exceed t_start");
    if ((st = check_unit(loss, "alpha", s->cfg.alpha, 0, 0))) return st;
    if ((st = check_unit(loss, "beta", s->cfg.beta, 0, 1))) return st;
    if (s->cfg.adaptive != 0 && s->cfg.adaptive != 1)
        return kd__fail(loss->ctx, KD_E_INVALID, "taid: adaptive must be 0 or 1");
    if (s->cfg.mix != KD_TAID_MIX_PROBS && s->cfg.mix != KD_TAID_MIX_LOGITS)
        return kd__fail(loss->ctx, KD_E_INVALID, "taid: unknown mix %d", (int)s->cfg.mix);
    s->t = s->cfg.t_start;
    return KD_OK;
}

/* One row of KL(P_t || Q); grad += coef * (q - p_t). Returns 1 + column when
 * the target has mass where the student has none. */
static size_t taid_row(const void *state, const kd_loss_batch *b, size_t i, double inv_t,
                       double *val, float *grad, double coef)
{
    const taid_state *st = (const taid_state *)state;
    const size_t c = b->classes;
    const float *s = b->student_logits + i * c, *z = b->teacher_logits + i * c;
    const double t = st->t, l1t = log1p(-t), lt = t > 0 ? log(t) : -INFINITY;
    const int logits = st->cfg.mix == KD_TAID_MIX_LOGITS;
    double ls = kd__row_lse(s, c, inv_t, SIZE_MAX), lz = kd__row_lse(z, c, inv_t, SIZE_MAX);
    double lmix = 0;
    if (logits) { /* log-sum-exp of the mixed logits, masked where either side is */
        double m = -INFINITY, sum = 0;
        for (int p = 0; p < 2; p++)
            for (size_t j = 0; j < c; j++) {
                if (isinf(s[j]) || isinf(z[j])) continue;
                double x = ((1.0 - t) * s[j] + t * z[j]) * inv_t;
                if (p == 0 && x > m) m = x;
                if (p == 1) sum += exp(x - m);
            }
        if (m == -INFINITY) return 1; /* no class left */
        lmix = m + log(sum);
    }
    double v = 0;
    for (int p = 0; p < 2; p++) {
        if (p == 1 && !grad) break;
        for (size_t j = 0; j < c; j++) {
            double lq = kd__lp(s, j, inv_t, ls), lpt;
            if (logits)
                lpt = (isinf(s[j]) || isinf(z[j])) ? -INFINITY
                                                   : ((1.0 - t) * s[j] + t * z[j]) * inv_t - lmix;
            else
                lpt = kd__logaddexp(l1t + lq, lt + kd__lp(z, j, inv_t, lz));
            if (p == 1) {
                grad[j] += (float)(coef * (exp(lq) - exp(lpt)));
                continue;
            }
            if (lpt == -INFINITY) continue;
            if (lq == -INFINITY) return j + 1;
            v += exp(lpt) * (lpt - lq);
        }
    }
    *val = v;
    return 0;
}

static kd_status taid_compute(kd_loss *loss, void *state, const kd_loss_batch *b, double *value,
                              const kd_loss_grad *grad)
{
    taid_state *s = (taid_state *)state;
    const size_t c = b->classes;
    const double T = s->cfg.temperature, inv_t = 1.0 / T;
    double norm = kd__reduce_norm(b, s->cfg.reduction, NULL), total = 0;
    const int mix_logits = s->cfg.mix == KD_TAID_MIX_LOGITS;
    if (mix_logits && !b->teacher_logits)
        return kd__fail(loss->ctx, KD_E_UNSUPPORTED,
                        "taid: mix LOGITS needs dense teacher logits (a sparse teacher has no "
                        "logits to mix outside its k ids); use KD_TAID_MIX_PROBS");
    const int fusedp = use_fused(b, c);
    if (fusedp) {
        kd__div fd = {mix_logits ? KD__DIV_TAIDL : KD__DIV_TAID, inv_t, s->t, 0};
        kd_status st = fused_sweep(loss, &fd, b, norm, 1.0, grad, &total);
        if (st) return st;
    }
    if (!fusedp) {
        kd_status st = scaled_rows(loss, s, b, T, norm, grad, taid_row,
                                   "the interpolated target has mass on a class the student masks",
                                   &total);
        if (st) return st;
    }
    *value = total * norm;
    s->last_value = *value;
    s->have_last = 1;
    return KD_OK;
}

static kd_status taid_step(kd_loss *loss, void *state, uint64_t step)
{
    taid_state *s = (taid_state *)state;
    if (!s->have_last)
        return kd__fail(loss->ctx, KD_E_STATE, "taid: kd_loss_step before any kd_loss_compute");
    double j = s->last_value;
    double delta = s->have_prev ? (s->prev_value - j) / (s->prev_value + 1e-8) : 0.0;
    double beta = s->cfg.beta;
    s->momentum = beta * s->momentum + (1.0 - beta) * delta;
    double t = s->t;
    if (s->cfg.adaptive) t += s->cfg.alpha * (1.0 / (1.0 + exp(-s->momentum))) * (1.0 - t);
    if (s->cfg.total_steps) {
        uint64_t n = step < s->cfg.total_steps ? step : s->cfg.total_steps;
        double lin = s->cfg.t_start + (double)(s->cfg.t_end - s->cfg.t_start) * (double)n /
                                          (double)s->cfg.total_steps;
        if (lin > t) t = lin;
    }
    if (t > s->cfg.t_end) t = s->cfg.t_end;
    if (t < s->t) t = s->t; /* never decreases (guards rounding) */
    s->t = t;
    s->prev_value = j;
    s->have_prev = 1;
    return KD_OK;
}

static const kd_loss_vtable taid_vtable = {
    1, "taid", KD_LOSS_IN_STUDENT_LOGITS | KD_LOSS_IN_TEACHER_LOGITS,
    KD_LOSS_IN_LABELS | KD_LOSS_IN_TEACHER_SPARSE,
    sizeof(taid_state), taid_create, NULL, taid_compute, taid_step, NULL, NULL};

const kd_loss_vtable *kd_loss_taid(void) { return &taid_vtable; }

kd_status kd_loss_taid_t(const kd_loss *loss, double *t)
{
    if (!loss) return KD_E_INVALID;
    if (!t || loss->vt != &taid_vtable)
        return kd__fail(loss->ctx, KD_E_INVALID, "kd_loss_taid_t: not a TAID loss, or t is NULL");
    *t = ((const taid_state *)loss->state)->t;
    return KD_OK;
}

/* ---- DKD ------------------------------------------------------------------- */

typedef struct {
    kd_loss_dkd_config cfg;
} dkd_state;

void kd_loss_dkd_config_default_sized(kd_loss_dkd_config *out, size_t size)
{
    kd_loss_dkd_config d, *cfg = &d;
    memset(cfg, 0, sizeof *cfg);
    cfg->struct_size = (uint32_t)sizeof *cfg;
    cfg->reduction = KD_REDUCE_MEAN;
    cfg->temperature = 4.0f;
    cfg->alpha = 1.0f;
    cfg->beta = 8.0f;
    kd__default_out(out, size, cfg, sizeof *cfg);
}

static kd_status dkd_create(kd_loss *loss, void *state, const void *config)
{
    dkd_state *s = (dkd_state *)state;
    kd_loss_dkd_config_default(&s->cfg);
    kd_status st = kd__loss_config(loss, &s->cfg, sizeof s->cfg, config, sizeof s->cfg, "dkd");
    if (st) return st;
    if ((st = check_reduction(loss, s->cfg.reduction))) return st;
    if ((st = check_temperature(loss, s->cfg.temperature))) return st;
    if (!(s->cfg.alpha >= 0) || !isfinite(s->cfg.alpha) || !(s->cfg.beta >= 0) ||
        !isfinite(s->cfg.beta))
        return kd__fail(loss->ctx, KD_E_INVALID, "dkd: alpha and beta must be finite and >= 0");
    return KD_OK;
}

/* One row with target g: value alpha*TCKD + beta*NCKD (without T^2); grad
 * += coef * d/dz. Returns 1 + column on an infinite term. */
static size_t dkd_row(const void *state, const kd_loss_batch *b, size_t i, double inv_t,
                      double *val, float *grad, double coef)
{
    const dkd_state *d = (const dkd_state *)state;
    const size_t c = b->classes, g = (size_t)b->labels[i];
    const float *s = b->student_logits + i * c, *t = b->teacher_logits + i * c;
    const double a = d->cfg.alpha, bw = d->cfg.beta;
    double ls = kd__row_lse(s, c, inv_t, SIZE_MAX), lt = kd__row_lse(t, c, inv_t, SIZE_MAX);
    double ls_nt = kd__row_lse(s, c, inv_t, g), lt_nt = kd__row_lse(t, c, inv_t, g);
    double lqg = kd__lp(s, g, inv_t, ls), lpg = kd__lp(t, g, inv_t, lt);
    double lq1 = ls_nt - ls, lp1 = lt_nt - lt; /* log(1 - q_g), log(1 - p_g) */
    if (ls_nt == -INFINITY) lq1 = -INFINITY;
    if (lt_nt == -INFINITY) lp1 = -INFINITY;
    double tckd = 0, nckd = 0;
    if (lpg > -INFINITY) {
        if (lqg == -INFINITY) return g + 1;
        tckd += exp(lpg) * (lpg - lqg);
    }
    if (lp1 > -INFINITY) {
        if (lq1 == -INFINITY) return g + 1;
        tckd += exp(lp1) * (lp1 - lq1);
        for (size_t j = 0; j < c; j++) { /* NCKD over non-target classes */
            if (j == g) continue;
            double lph = kd__lp(t, j, inv_t, lt_nt);
            if (lph == -INFINITY) continue;
            double lqh = kd__lp(s, j, inv_t, ls_nt);
            if (lqh == -INFINITY) return j + 1;
            nckd += exp(lph) * (lph - lqh);
        }
    }
    *val = a * tckd + bw * nckd;
    if (grad) {
        double qg = exp(lqg), pg = exp(lpg);
        grad[g] += (float)(coef * a * (qg - pg));
        if (ls_nt > -INFINITY)
            for (size_t j = 0; j < c; j++) {
                if (j == g) continue;
                double qh = exp(kd__lp(s, j, inv_t, ls_nt));
                double gj = a * qh * (pg - qg);
                if (lt_nt > -INFINITY) gj += bw * (qh - exp(kd__lp(t, j, inv_t, lt_nt)));
                grad[j] += (float)(coef * gj);
            }
    }
    return 0;
}

static kd_status dkd_compute(kd_loss *loss, void *state, const kd_loss_batch *b, double *value,
                             const kd_loss_grad *grad)
{
    const dkd_state *d = (const dkd_state *)state;
    const double T = d->cfg.temperature;
    double norm = kd__reduce_norm(b, d->cfg.reduction, NULL), total = 0;
    kd_status st = scaled_rows(loss, d, b, T, norm, grad, dkd_row,
                               "teacher has mass on a class (or bin) the student masks", &total);
    if (st) return st;
    *value = total * norm;
    return KD_OK;
}

static const kd_loss_vtable dkd_vtable = {
    1, "dkd", KD_LOSS_IN_STUDENT_LOGITS | KD_LOSS_IN_TEACHER_LOGITS | KD_LOSS_IN_LABELS, 0,
    sizeof(dkd_state), dkd_create, NULL, dkd_compute, NULL, NULL, NULL};

const kd_loss_vtable *kd_loss_dkd(void) { return &dkd_vtable; }
