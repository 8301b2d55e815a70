/*
 * kd_loss.c - the kd_loss handle: creation from a vtable, input validation
 * shared by every loss, dispatch to the vtable's slots.
 */
#include "kd_loss_internal.h"
#include "kd_vocab_internal.h"

/* Slots of abi_version 1 end after `param`. */
#define KD_LOSS_V1_SLOTS 1u

void kd_sparse_logits_default_sized(kd_sparse_logits *out, size_t size)
{
    kd_sparse_logits d, *s = &d;
    memset(s, 0, sizeof *s);
    s->struct_size = (uint32_t)sizeof *s;
    kd__default_out(out, size, s, sizeof *s);
}

void kd_loss_batch_default_sized(kd_loss_batch *out, size_t size)
{
    kd_loss_batch d, *b = &d;
    memset(b, 0, sizeof *b);
    b->struct_size = (uint32_t)sizeof *b;
    b->ignore_index = KD_LOSS_IGNORE_INDEX;
    kd__default_out(out, size, b, sizeof *b);
}

void kd_loss_grad_default_sized(kd_loss_grad *out, size_t size)
{
    kd_loss_grad d, *g = &d;
    memset(g, 0, sizeof *g);
    g->struct_size = (uint32_t)sizeof *g;
    g->scale = 1.0f;
    kd__default_out(out, size, g, sizeof *g);
}

kd_status kd__loss_config(kd_loss *loss, void *dst, size_t dst_size, const void *src,
                          size_t min_size, const char *what)
{
    if (!src) return KD_OK;
    uint32_t size;
    memcpy(&size, src, sizeof size);
    if (kd__config_copy(dst, dst_size, src, size, min_size) != KD_OK)
        return kd__fail(loss->ctx, KD_E_VERSION,
                        "%s: config struct_size %u not supported (this library: %zu)", what,
                        (unsigned)size, dst_size);
    return KD_OK;
}

double kd__reduce_norm(const kd_loss_batch *b, kd_loss_reduction red, double *den_out)
{
    double den = 0;
    for (size_t i = 0; i < b->rows; i++)
        if (kd__row_on(b, i)) den += kd__row_w(b, i);
    if (den_out) *den_out = den;
    if (!(den > 0)) return 0.0;
    return red == KD_REDUCE_SUM ? 1.0 : 1.0 / den;
}

double kd__row_lse(const float *x, size_t n, double inv_t, size_t skip)
{
    double m = -INFINITY;
    for (size_t j = 0; j < n; j++) {
        if (j == skip || isinf(x[j])) continue;
        double v = (double)x[j] * inv_t;
        if (v > m) m = v;
    }
    if (m == -INFINITY) return -INFINITY;
    double s = 0;
    for (size_t j = 0; j < n; j++) {
        if (j == skip || isinf(x[j])) continue;
        s += exp((double)x[j] * inv_t - m);
    }
    return m + log(s);
}

int kd__row_fkl(const float *s, const float *t, size_t n, double inv_t, double *kl,
                float *grad, double coef, size_t *bad_col)
{
    double ls = kd__row_lse(s, n, inv_t, SIZE_MAX), lt = kd__row_lse(t, n, inv_t, SIZE_MAX);
    double acc = 0;
    for (size_t j = 0; j < n; j++) {
        double lp = kd__lp(t, j, inv_t, lt);
        if (lp == -INFINITY) continue;
        double lq = kd__lp(s, j, inv_t, ls);
        if (lq == -INFINITY) {
            *bad_col = j;
            return 1;
        }
        acc += exp(lp) * (lp - lq);
    }
    *kl = acc;
    if (grad)
        for (size_t j = 0; j < n; j++) {
            double q = exp(kd__lp(s, j, inv_t, ls)), p = exp(kd__lp(t, j, inv_t, lt));
            grad[j] += (float)(coef * (q - p));
        }
    return 0;
}

/* ---- handle ---------------------------------------------------------------- */

kd_status kd_loss_create(kd_context *ctx, const kd_loss_vtable *vt, const void *config,
                         kd_loss **out)
{
    if (!ctx) return KD_E_INVALID;
    if (!out) return kd__fail(ctx, KD_E_INVALID, "kd_loss_create: out is NULL");
    *out = NULL;
    if (!vt) return kd__fail(ctx, KD_E_INVALID, "kd_loss_create: vtable is NULL");
    if (vt->abi_version < KD_LOSS_V1_SLOTS)
        return kd__fail(ctx, KD_E_VERSION, "kd_loss_create: vtable abi_version %u (need >= 1)",
                        (unsigned)vt->abi_version);
    if (!vt->compute)
        return kd__fail(ctx, KD_E_INVALID, "kd_loss_create: vtable '%s' has no compute slot",
                        vt->name ? vt->name : "?");
    kd_loss *loss = (kd_loss *)kd__calloc(ctx, 1, sizeof *loss);
    if (!loss) return kd__fail(ctx, KD_E_NOMEM, "kd_loss_create: out of memory");
    loss->ctx = ctx;
    loss->vt = vt;
    if (vt->state_size) {
        loss->state = kd__calloc(ctx, 1, vt->state_size);
        if (!loss->state) {
            kd__free(ctx, loss);
            return kd__fail(ctx, KD_E_NOMEM, "kd_loss_create: out of memory for state");
        }
    }
    if (vt->create) {
        kd_status st = vt->create(loss, loss->state, config);
        if (st != KD_OK) {
            kd__free(ctx, loss->state);
            kd__free(ctx, loss);
            return st;
        }
    }
    *out = loss;
    return KD_OK;
}

void kd_loss_destroy(kd_loss *loss)
{
    if (!loss) return;
    if (loss->vt->destroy) loss->vt->destroy(loss, loss->state);
    kd_context *ctx = loss->ctx;
    kd__free(ctx, loss->state);
    kd__free(ctx, loss);
}

const char *kd_loss_name(const kd_loss *loss)
{
    return loss && loss->vt->name ? loss->vt->name : "";
}

kd_context *kd_loss_context(const kd_loss *loss) { return loss ? loss->ctx : NULL; }

kd_status kd_loss_fail(kd_loss *loss, kd_status status, const char *reason)
{
    if (!loss) return status;
    return kd__fail(loss->ctx, status, "%s: %s", kd_loss_name(loss), reason ? reason : "");
}

size_t kd_loss_param_count(const kd_loss *loss)
{
    if (!loss || !loss->vt->param_count) return 0;
    return loss->vt->param_count(loss, loss->state);
}

kd_status kd_loss_get_param(kd_loss *loss, size_t index, kd_loss_param *out)
{
    if (!loss) return KD_E_INVALID;
    if (!out) return kd__fail(loss->ctx, KD_E_INVALID, "kd_loss_get_param: out is NULL");
    if (index >= kd_loss_param_count(loss) || !loss->vt->param)
        return kd__fail(loss->ctx, KD_E_NOT_FOUND, "kd_loss_get_param: %s has no parameter %zu",
                        kd_loss_name(loss), index);
    return loss->vt->param(loss, loss->state, index, out);
}

kd_status kd_loss_zero_grad(kd_loss *loss)
{
    if (!loss) return KD_E_INVALID;
    size_t n = kd_loss_param_count(loss);
    for (size_t i = 0; i < n; i++) {
        kd_loss_param p;
        kd_status st = kd_loss_get_param(loss, i, &p);
        if (st != KD_OK) return st;
        if (p.grad && p.count) memset(p.grad, 0, p.count * sizeof *p.grad);
    }
    return KD_OK;
}

kd_status kd_loss_step(kd_loss *loss, uint64_t step)
{
    if (!loss) return KD_E_INVALID;
    if (!loss->vt->step) return KD_OK;
    return loss->vt->step(loss, loss->state, step);
}

/* ---- validation -------------------------------------------------------------- */

/* Checks an n x m float array: count fits size_t; NaN / +inf (and -inf
 * unless allow_mask) are KD_E_NUMERIC; with allow_mask, a row of -inf only
 * is KD_E_INVALID. */
static kd_status check_array(kd_loss *loss, const char *what, const float *x, size_t n,
                             size_t m, int allow_mask)
{
    size_t count;
    if (kd__mul_overflow(n, m, &count) || count > SIZE_MAX / sizeof(float))
        return kd__fail(loss->ctx, KD_E_OVERFLOW, "%s: %s has %zu x %zu elements, beyond size_t",
                        kd_loss_name(loss), what, n, m);
    for (size_t i = 0; i < n; i++) {
        const float *row = x + i * m;
        size_t ninf = 0;
        /* Vectorised fast path; the loop below only runs to name a fault. */
        if (!kd__vocab_scan(row, m, &ninf) && (allow_mask ? ninf < m : ninf == 0)) {
            if (ninf) loss->masked = 1;
            continue;
        }
        size_t finite = 0;
        for (size_t j = 0; j < m; j++) {
            float v = row[j];
            if (isnan(v) || (isinf(v) && (v > 0 || !allow_mask)))
                return kd__fail(loss->ctx, KD_E_NUMERIC, "%s: %s[%zu][%zu] is %s",
                                kd_loss_name(loss), what, i, j,
                                isnan(v) ? "NaN" : (v > 0 ? "+inf" : "-inf"));
            finite += !isinf(v);
        }
        if (allow_mask && finite == 0)
            return kd__fail(loss->ctx, KD_E_INVALID, "%s: every entry of %s row %zu is masked (-inf)",
                            kd_loss_name(loss), what, i);
    }
    return KD_OK;
}

static kd_status check_sparse(kd_loss *loss, const kd_loss_batch *b)
{
    const kd_sparse_logits *sp = b->teacher_sparse;
    if (sp->struct_size < sizeof *sp)
        return kd__fail(loss->ctx, KD_E_VERSION, "%s: teacher_sparse struct_size %u unknown",
                        kd_loss_name(loss), (unsigned)sp->struct_size);
    if (sp->k == 0 || !sp->ids || !sp->values)
        return kd__fail(loss->ctx, KD_E_INVALID, "%s: teacher_sparse needs k > 0, ids and values",
                        kd_loss_name(loss));
    if ((unsigned)sp->mode > KD_SPARSE_SAMPLED || (unsigned)sp->value_kind > KD_SPARSE_LOGIT)
        return kd__fail(loss->ctx, KD_E_INVALID, "%s: teacher_sparse mode or value_kind unknown",
                        kd_loss_name(loss));
    size_t count;
    if (kd__mul_overflow(b->rows, sp->k, &count) || count > SIZE_MAX / sizeof(float))
        return kd__fail(loss->ctx, KD_E_OVERFLOW, "%s: teacher_sparse B x k beyond size_t",
                        kd_loss_name(loss));
    for (size_t i = 0; i < count; i++) {
        if (sp->ids[i] < -1 || (sp->ids[i] >= 0 && (size_t)sp->ids[i] >= b->classes))
            return kd__fail(loss->ctx, KD_E_INVALID, "%s: teacher_sparse id %d outside [-1, %zu)",
                            kd_loss_name(loss), (int)sp->ids[i], b->classes);
        float v = sp->values[i];
        if (isnan(v) || (isinf(v) && (v > 0 || sp->value_kind != KD_SPARSE_LOGPROB)))
            return kd__fail(loss->ctx, KD_E_NUMERIC, "%s: teacher_sparse value %zu not finite",
                            kd_loss_name(loss), i);
        if (sp->counts && !(sp->counts[i] >= 0 && isfinite(sp->counts[i])))
            return kd__fail(loss->ctx, KD_E_INVALID, "%s: teacher_sparse count %zu invalid",
                            kd_loss_name(loss), i);
        if (sp->proposal && !(sp->proposal[i] > 0 && sp->proposal[i] <= 1))
            return kd__fail(loss->ctx, KD_E_INVALID, "%s: teacher_sparse proposal %zu outside (0, 1]",
                            kd_loss_name(loss), i);
    }
    if (sp->tail_mass)
        for (size_t i = 0; i < b->rows; i++)
            if (!(sp->tail_mass[i] >= 0 && sp->tail_mass[i] <= 1))
                return kd__fail(loss->ctx, KD_E_INVALID, "%s: tail_mass[%zu] outside [0, 1]",
                                kd_loss_name(loss), i);
    return KD_OK;
}

static kd_status check_batch(kd_loss *loss, const kd_loss_batch *b)
{
    const kd_loss_vtable *vt = loss->vt;
    uint32_t req = vt->requires, use = vt->requires | vt->accepts;
    const char *nm = kd_loss_name(loss);
    kd_context *ctx = loss->ctx;

    int sparse_ok = (vt->accepts & KD_LOSS_IN_TEACHER_SPARSE) && b->teacher_sparse;
    if ((req & KD_LOSS_IN_STUDENT_LOGITS) && !b->student_logits)
        return kd__fail(ctx, KD_E_INVALID, "%s: student_logits is NULL", nm);
    if ((req & KD_LOSS_IN_TEACHER_LOGITS) && !b->teacher_logits && !sparse_ok) {
        if (b->teacher_sparse)
            return kd__fail(ctx, KD_E_UNSUPPORTED,
                            "%s: sparse teacher logits not supported by this loss; give dense "
                            "teacher_logits", nm);
        return kd__fail(ctx, KD_E_INVALID, "%s: teacher_logits is NULL", nm);
    }
    if ((req & KD_LOSS_IN_STUDENT_FEATURES) && !b->student_features)
        return kd__fail(ctx, KD_E_INVALID, "%s: student_features is NULL", nm);
    if ((req & KD_LOSS_IN_TEACHER_FEATURES) && !b->teacher_features)
        return kd__fail(ctx, KD_E_INVALID, "%s: teacher_features is NULL", nm);
    if ((req & KD_LOSS_IN_STUDENT_SCORES) && !b->student_scores)
        return kd__fail(ctx, KD_E_INVALID, "%s: student_scores is NULL", nm);
    if ((req & KD_LOSS_IN_TEACHER_SCORES) && !b->teacher_scores)
        return kd__fail(ctx, KD_E_INVALID, "%s: teacher_scores is NULL", nm);
    if ((req & KD_LOSS_IN_LABELS) && !b->labels)
        return kd__fail(ctx, KD_E_INVALID, "%s: labels is NULL", nm);

    kd_status st;
    int logits = (use & (KD_LOSS_IN_STUDENT_LOGITS | KD_LOSS_IN_TEACHER_LOGITS)) &&
                 (b->student_logits || b->teacher_logits);
    loss->masked = 0;
    if (logits) {
        if (b->classes == 0) return kd__fail(ctx, KD_E_SHAPE, "%s: classes is 0", nm);
        if (b->teacher_logits && b->teacher_classes && b->teacher_classes != b->classes)
            return kd__fail(ctx, KD_E_SHAPE,
                            "%s: teacher has %zu classes, student %zu: map the vocabularies "
                            "explicitly first", nm, b->teacher_classes, b->classes);
    }
    if ((use & KD_LOSS_IN_STUDENT_LOGITS) && b->student_logits &&
        (st = check_array(loss, "student_logits", b->student_logits, b->rows, b->classes, 1)))
        return st;
    if ((use & KD_LOSS_IN_TEACHER_LOGITS) && b->teacher_logits &&
        (st = check_array(loss, "teacher_logits", b->teacher_logits, b->rows, b->classes, 1)))
        return st;
    if ((use & KD_LOSS_IN_TEACHER_SPARSE) && b->teacher_sparse && !b->teacher_logits &&
        (st = check_sparse(loss, b)))
        return st;
    if ((use & KD_LOSS_IN_STUDENT_FEATURES) && b->student_features) {
        if (b->student_dim == 0) return kd__fail(ctx, KD_E_SHAPE, "%s: student_dim is 0", nm);
        if ((st = check_array(loss, "student_features", b->student_features, b->rows,
                              b->student_dim, 0)))
            return st;
    }
    if ((use & KD_LOSS_IN_TEACHER_FEATURES) && b->teacher_features) {
        if (b->teacher_dim == 0) return kd__fail(ctx, KD_E_SHAPE, "%s: teacher_dim is 0", nm);
        if ((st = check_array(loss, "teacher_features", b->teacher_features, b->rows,
                              b->teacher_dim, 0)))
            return st;
    }
    int scores = (use & (KD_LOSS_IN_STUDENT_SCORES | KD_LOSS_IN_TEACHER_SCORES)) &&
                 (b->student_scores || b->teacher_scores);
    if (scores && b->candidates == 0)
        return kd__fail(ctx, KD_E_SHAPE, "%s: candidates is 0", nm);
    if ((use & KD_LOSS_IN_STUDENT_SCORES) && b->student_scores &&
        (st = check_array(loss, "student_scores", b->student_scores, b->rows, b->candidates, 1)))
        return st;
    if ((use & KD_LOSS_IN_TEACHER_SCORES) && b->teacher_scores &&
        (st = check_array(loss, "teacher_scores", b->teacher_scores, b->rows, b->candidates, 1)))
        return st;

    if (b->labels) {
        size_t bound = logits ? b->classes : scores ? b->candidates : SIZE_MAX;
        for (size_t i = 0; i < b->rows; i++) {
            int32_t y = b->labels[i];
            if (y == b->ignore_index) continue;
            if (y < 0 || (size_t)y >= bound) {
                if (bound == SIZE_MAX)
                    return kd__fail(ctx, KD_E_INVALID, "%s: labels[%zu] = %d is negative", nm, i,
                                    (int)y);
                return kd__fail(ctx, KD_E_INVALID, "%s: labels[%zu] = %d outside [0, %zu)", nm, i,
                                (int)y, bound);
            }
        }
    }
    if (b->weights)
        for (size_t i = 0; i < b->rows; i++) {
            float w = b->weights[i];
            if (!isfinite(w))
                return kd__fail(ctx, KD_E_NUMERIC, "%s: weights[%zu] is not finite", nm, i);
            if (w < 0) return kd__fail(ctx, KD_E_INVALID, "%s: weights[%zu] < 0", nm, i);
        }
    return KD_OK;
}

kd_status kd_loss_compute(kd_loss *loss, const kd_loss_batch *batch_in, double *value,
                          const kd_loss_grad *grad_in)
{
    if (!loss) return KD_E_INVALID;
    kd_context *ctx = loss->ctx;
    const char *nm = kd_loss_name(loss);
    if (!batch_in) return kd__fail(ctx, KD_E_INVALID, "%s: batch is NULL", nm);
    if (!value) return kd__fail(ctx, KD_E_INVALID, "%s: value is NULL", nm);
    kd_loss_batch b;
    kd_loss_batch_default(&b);
    if (kd__config_copy(&b, sizeof b, batch_in, batch_in->struct_size,
                        offsetof(kd_loss_batch, weights) + sizeof b.weights) != KD_OK)
        return kd__fail(ctx, KD_E_VERSION, "%s: kd_loss_batch struct_size %u not supported", nm,
                        (unsigned)batch_in->struct_size);
    kd_loss_grad g, *gp = NULL;
    if (grad_in) {
        kd_loss_grad_default(&g);
        if (kd__config_copy(&g, sizeof g, grad_in, grad_in->struct_size, sizeof g) != KD_OK)
            return kd__fail(ctx, KD_E_VERSION, "%s: kd_loss_grad struct_size %u not supported", nm,
                            (unsigned)grad_in->struct_size);
        if (!isfinite(g.scale))
            return kd__fail(ctx, KD_E_NUMERIC, "%s: grad scale is not finite", nm);
        gp = &g;
    }
    if (b.rows == 0) {
        *value = 0.0;
        return KD_OK;
    }
    kd_status st = check_batch(loss, &b);
    if (st != KD_OK) return st;
    double v = 0;
    st = loss->vt->compute(loss, loss->state, &b, &v, gp);
    if (st != KD_OK) return st;
    if (!isfinite(v))
        return kd__fail(ctx, KD_E_NUMERIC, "%s: the loss value is not finite", nm);
    *value = v;
    return KD_OK;
}
