/*
 * kd_loss_feature.c - feature losses: FitNets hints (MSE or cosine through a
 * trainable linear projection) and RKD's distance- and angle-wise relational
 * losses.
 */
#include "kd_loss_internal.h"

/* ---- FitNets: MSE / cosine with a projection -------------------------------- */

typedef struct {
    kd_loss_feature_config cfg;
    int cosine;
    size_t ds, dt;
    float *w, *bias, *gw, *gb; /* Dt x Ds, Dt, and their gradients (one block) */
    double *r, *dr;            /* per-row scratch, Dt each (same block) */
} feat_state;

void kd_loss_feature_config_default_sized(kd_loss_feature_config *out, size_t size)
{
    kd_loss_feature_config d, *cfg = &d;
    memset(cfg, 0, sizeof *cfg);
    cfg->struct_size = (uint32_t)sizeof *cfg;
    cfg->reduction = KD_REDUCE_MEAN;
    cfg->projection = 1;
    cfg->cosine_eps = 1e-8f;
    kd__default_out(out, size, cfg, sizeof *cfg);
}

static kd_status feat_create(kd_loss *loss, feat_state *s, const void *config, int cosine)
{
    kd_loss_feature_config_default(&s->cfg);
    kd_status st =
        kd__loss_config(loss, &s->cfg, sizeof s->cfg, config, sizeof s->cfg, kd_loss_name(loss));
    if (st) return st;
    const kd_loss_feature_config *c = &s->cfg;
    if (c->reduction != KD_REDUCE_MEAN && c->reduction != KD_REDUCE_SUM)
        return kd_loss_fail(loss, KD_E_INVALID, "unknown reduction");
    if (c->student_dim == 0 || c->teacher_dim == 0)
        return kd_loss_fail(loss, KD_E_INVALID, "student_dim and teacher_dim must be > 0");
    if (c->projection != 0 && c->projection != 1)
        return kd_loss_fail(loss, KD_E_INVALID, "projection must be 0 or 1");
    if (!c->projection && c->student_dim != c->teacher_dim)
        return kd__fail(loss->ctx, KD_E_SHAPE,
                        "%s: without projection student_dim (%zu) must equal teacher_dim (%zu)",
                        kd_loss_name(loss), c->student_dim, c->teacher_dim);
    if (!(c->cosine_eps > 0) || !isfinite(c->cosine_eps))
        return kd_loss_fail(loss, KD_E_INVALID, "cosine_eps must be finite and > 0");
    s->cosine = cosine;
    s->ds = c->student_dim;
    s->dt = c->teacher_dim;
    /* One block: [w gw] (2 Dt Ds floats), [bias gb] (2 Dt floats), then r, dr. */
    size_t np = 0, floats, bytes, scratch;
    if (c->projection && (kd__mul_overflow(s->dt, s->ds, &np) || kd__add_overflow(np, s->dt, &np)))
        return kd_loss_fail(loss, KD_E_OVERFLOW, "projection size beyond size_t");
    if (kd__mul_overflow(np, 2 * sizeof(float), &floats) ||
        kd__mul_overflow(s->dt, 2 * sizeof(double), &scratch) ||
        kd__add_overflow(floats + (sizeof(double) - floats % sizeof(double)) % sizeof(double),
                         scratch, &bytes))
        return kd_loss_fail(loss, KD_E_OVERFLOW, "projection size beyond size_t");
    unsigned char *blk = (unsigned char *)kd__calloc(loss->ctx, 1, bytes);
    if (!blk) return kd_loss_fail(loss, KD_E_NOMEM, "out of memory for the projection");
    size_t fpad = floats + (sizeof(double) - floats % sizeof(double)) % sizeof(double);
    s->r = (double *)(void *)(blk + fpad);
    s->dr = s->r + s->dt;
    if (c->projection) {
        float *f = (float *)(void *)blk;
        s->w = f;
        s->gw = f + s->dt * s->ds;
        s->bias = s->gw + s->dt * s->ds;
        s->gb = s->bias + s->dt;
        /* PyTorch nn.Linear's range: uniform in +-1/sqrt(fan_in). */
        kd_rng *rng = kd_context_rng(loss->ctx);
        float bound = 1.0f / sqrtf((float)s->ds);
        for (size_t i = 0; i < s->dt * s->ds; i++)
            s->w[i] = bound * (2.0f * kd_rng_uniform(rng) - 1.0f);
    }
    return KD_OK;
}

static void feat_destroy(kd_loss *loss, void *state)
{
    feat_state *s = (feat_state *)state;
    kd__free(loss->ctx, s->w ? (void *)s->w : (void *)s->r);
}

static kd_status mse_create(kd_loss *l, void *s, const void *c) { return feat_create(l, s, c, 0); }
static kd_status cos_create(kd_loss *l, void *s, const void *c) { return feat_create(l, s, c, 1); }

/* r = W x + b (or x), in double. */
static void project(const feat_state *s, const float *x, double *r)
{
    for (size_t d = 0; d < s->dt; d++) {
        if (!s->w) {
            r[d] = x[d];
            continue;
        }
        const float *wr = s->w + d * s->ds;
        double acc = s->bias[d];
        for (size_t k = 0; k < s->ds; k++) acc += (double)wr[k] * x[k];
        r[d] = acc;
    }
}

/* Row value; with want_dr fills s->dr = dl/dr. */
static double feat_row(feat_state *s, const float *x, const float *t, int want_dr)
{
    double *r = s->r, *dr = s->dr;
    const size_t dt = s->dt;
    project(s, x, r);
    if (!s->cosine) {
        double acc = 0;
        for (size_t d = 0; d < dt; d++) {
            double e = r[d] - t[d];
            acc += e * e;
            if (want_dr) dr[d] = 2.0 * e / (double)dt;
        }
        return acc / (double)dt;
    }
    double w12 = 0, w1 = 0, w2 = 0, eps = s->cfg.cosine_eps;
    for (size_t d = 0; d < dt; d++) {
        w12 += r[d] * t[d];
        w1 += r[d] * r[d];
        w2 += (double)t[d] * t[d];
    }
    int clamped = !(w1 * w2 > eps * eps);
    double den = clamped ? eps : sqrt(w1 * w2);
    if (want_dr)
        for (size_t d = 0; d < dt; d++)
            dr[d] = -(t[d] / den - (clamped ? 0.0 : w12 * r[d] / (w1 * den)));
    return 1.0 - w12 / den;
}

static kd_status feat_compute(kd_loss *loss, void *state, const kd_loss_batch *b, double *value,
                              const kd_loss_grad *grad)
{
    feat_state *s = (feat_state *)state;
    if (b->student_dim != s->ds || b->teacher_dim != s->dt)
        return kd__fail(loss->ctx, KD_E_SHAPE,
                        "%s: batch has Ds = %zu, Dt = %zu; the loss was created for %zu, %zu",
                        kd_loss_name(loss), b->student_dim, b->teacher_dim, s->ds, s->dt);
    double norm = kd__reduce_norm(b, s->cfg.reduction, NULL), total = 0;
    int want = grad && norm > 0 && (grad->student_features || s->w);
    for (size_t i = 0; i < b->rows; i++) {
        if (!kd__row_on(b, i)) continue;
        const float *x = b->student_features + i * s->ds;
        double l = feat_row(s, x, b->teacher_features + i * s->dt, want);
        total += kd__row_w(b, i) * l;
        if (!want) continue;
        double coef = grad->scale * norm * kd__row_w(b, i);
        if (grad->student_features) {
            float *gx = grad->student_features + i * s->ds;
            if (!s->w)
                for (size_t d = 0; d < s->dt; d++) gx[d] += (float)(coef * s->dr[d]);
            else
                for (size_t k = 0; k < s->ds; k++) {
                    double acc = 0;
                    for (size_t d = 0; d < s->dt; d++) acc += (double)s->w[d * s->ds + k] * s->dr[d];
                    gx[k] += (float)(coef * acc);
                }
        }
        if (s->w)
            for (size_t d = 0; d < s->dt; d++) {
                double e = coef * s->dr[d];
                float *gw = s->gw + d * s->ds;
                for (size_t k = 0; k < s->ds; k++) gw[k] += (float)(e * x[k]);
                s->gb[d] += (float)e;
            }
    }
    *value = total * norm;
    return KD_OK;
}

static size_t feat_param_count(const kd_loss *loss, const void *state)
{
    (void)loss;
    return ((const feat_state *)state)->w ? 2 : 0;
}

static kd_status feat_param(kd_loss *loss, void *state, size_t index, kd_loss_param *out)
{
    (void)loss;
    feat_state *s = (feat_state *)state;
    if (index == 0) {
        *out = (kd_loss_param){"proj.weight", s->w, s->gw, s->dt * s->ds, s->dt, s->ds};
    } else {
        *out = (kd_loss_param){"proj.bias", s->bias, s->gb, s->dt, 1, s->dt};
    }
    return KD_OK;
}

#define FEAT_IN (KD_LOSS_IN_STUDENT_FEATURES | KD_LOSS_IN_TEACHER_FEATURES)
static const kd_loss_vtable mse_vtable = {
    1, "feature_mse", FEAT_IN, KD_LOSS_IN_LABELS, sizeof(feat_state), mse_create,
    feat_destroy, feat_compute, NULL, feat_param_count, feat_param};
static const kd_loss_vtable cos_vtable = {
    1, "feature_cosine", FEAT_IN, KD_LOSS_IN_LABELS, sizeof(feat_state), cos_create,
    feat_destroy, feat_compute, NULL, feat_param_count, feat_param};

const kd_loss_vtable *kd_loss_feature_mse(void) { return &mse_vtable; }
const kd_loss_vtable *kd_loss_feature_cosine(void) { return &cos_vtable; }

/* ---- RKD ------------------------------------------------------------------- */

typedef struct {
    kd_loss_rkd_config cfg;
    int angle;
} rkd_state;

void kd_loss_rkd_config_default_sized(kd_loss_rkd_config *out, size_t size)
{
    kd_loss_rkd_config d, *cfg = &d;
    memset(cfg, 0, sizeof *cfg);
    cfg->struct_size = (uint32_t)sizeof *cfg;
    cfg->huber_delta = 1.0f;
    kd__default_out(out, size, cfg, sizeof *cfg);
}

static kd_status rkd_create(kd_loss *loss, rkd_state *s, const void *config, int angle)
{
    kd_loss_rkd_config_default(&s->cfg);
    kd_status st =
        kd__loss_config(loss, &s->cfg, sizeof s->cfg, config, sizeof s->cfg, kd_loss_name(loss));
    if (st) return st;
    if (!(s->cfg.huber_delta > 0) || !isfinite(s->cfg.huber_delta))
        return kd_loss_fail(loss, KD_E_INVALID, "huber_delta must be finite and > 0");
    s->angle = angle;
    return KD_OK;
}
static kd_status rkdd_create(kd_loss *l, void *s, const void *c) { return rkd_create(l, s, c, 0); }
static kd_status rkda_create(kd_loss *l, void *s, const void *c) { return rkd_create(l, s, c, 1); }

/* Huber / smooth-L1 with threshold delta, and its derivative. */
static double huber(double x, double delta)
{
    double a = fabs(x);
    return a < delta ? 0.5 * x * x / delta : a - 0.5 * delta;
}
static double huber_d(double x, double delta)
{
    return fabs(x) < delta ? x / delta : (x > 0 ? 1.0 : -1.0);
}

static double dist(const float *a, const float *b, size_t d)
{
    double acc = 0;
    for (size_t k = 0; k < d; k++) {
        double e = (double)a[k] - b[k];
        acc += e * e;
    }
    return sqrt(acc);
}

/* Pairwise distances of the n rows idx of x (row length d) into m (n x n);
 * returns their mean over i != j. */
static double pair_dists(const float *x, size_t d, const size_t *idx, size_t n, double *m)
{
    double sum = 0;
    for (size_t i = 0; i < n; i++) {
        m[i * n + i] = 0;
        for (size_t j = i + 1; j < n; j++) {
            double v = dist(x + idx[i] * d, x + idx[j] * d, d);
            m[i * n + j] = m[j * n + i] = v;
            sum += 2 * v;
        }
    }
    return sum / ((double)n * (double)(n - 1));
}

static kd_status rkd_distance(kd_loss *loss, const rkd_state *s, const kd_loss_batch *b,
                              const size_t *idx, size_t n, double *scratch, double *value,
                              const kd_loss_grad *grad)
{
    const size_t ds = b->student_dim, dt = b->teacher_dim;
    const double delta = s->cfg.huber_delta;
    double *ms = scratch, *mt = scratch + n * n;
    double mu_s = pair_dists(b->student_features, ds, idx, n, ms);
    double mu_t = pair_dists(b->teacher_features, dt, idx, n, mt);
    if (!(mu_s > 0) || !(mu_t > 0) || !isfinite(mu_s) || !isfinite(mu_t))
        return kd__fail(loss->ctx, KD_E_NUMERIC,
                        "%s: the mean pairwise distance of the %s features is %g",
                        kd_loss_name(loss), !(mu_s > 0) || !isfinite(mu_s) ? "student" : "teacher",
                        !(mu_s > 0) || !isfinite(mu_s) ? mu_s : mu_t);
    const double nn = (double)n * (double)n, pairs = (double)n * (double)(n - 1);
    double total = 0, sgd = 0;
    for (size_t i = 0; i < n * n; i++) {
        double x = ms[i] / mu_s - mt[i] / mu_t;
        total += huber(x, delta);
        mt[i] = huber_d(x, delta) / nn; /* g_ij, reusing mt */
        sgd += mt[i] * ms[i];
    }
    *value = total / nn;
    if (!grad || !grad->student_features) return KD_OK;
    for (size_t a = 0; a < n; a++) {
        const float *xa = b->student_features + idx[a] * ds;
        float *ga = grad->student_features + idx[a] * ds;
        for (size_t c = 0; c < n; c++) {
            double d = ms[a * n + c];
            if (c == a || !(d > 0)) continue;
            double gab = mt[a * n + c] / mu_s - sgd / (mu_s * mu_s * pairs);
            double gba = mt[c * n + a] / mu_s - sgd / (mu_s * mu_s * pairs);
            double coef = grad->scale * (gab + gba) / d;
            const float *xc = b->student_features + idx[c] * ds;
            for (size_t k = 0; k < ds; k++) ga[k] += (float)(coef * ((double)xa[k] - xc[k]));
        }
    }
    return KD_OK;
}

/* Unit vectors from anchor a to every row (zero for the anchor itself and
 * for coincident rows) into e (n x d); lengths into len. */
static void unit_vectors(const float *x, size_t d, const size_t *idx, size_t n, size_t a,
                         double *e, double *len)
{
    const float *xa = x + idx[a] * d;
    for (size_t j = 0; j < n; j++) {
        const float *xj = x + idx[j] * d;
        double l = j == a ? 0 : dist(xj, xa, d);
        len[j] = l;
        for (size_t k = 0; k < d; k++)
            e[j * d + k] = l > 0 ? ((double)xj[k] - xa[k]) / l : 0.0;
    }
}

static kd_status rkd_angle(const rkd_state *s, const kd_loss_batch *b, const size_t *idx,
                           size_t n, double *scratch, double *value, const kd_loss_grad *grad)
{
    const size_t ds = b->student_dim, dt = b->teacher_dim;
    const double delta = s->cfg.huber_delta, n3 = (double)n * (double)n * (double)n;
    double *es = scratch, *et = es + n * ds, *ls = et + n * dt, *lt = ls + n, *g = lt + n;
    double *u = g + n * n; /* ds */
    double total = 0;
    int want = grad && grad->student_features;
    for (size_t a = 0; a < n; a++) {
        unit_vectors(b->student_features, ds, idx, n, a, es, ls);
        unit_vectors(b->teacher_features, dt, idx, n, a, et, lt);
        for (size_t j = 0; j < n; j++)
            for (size_t k = j; k < n; k++) {
                double as = 0, at = 0;
                for (size_t q = 0; q < ds; q++) as += es[j * ds + q] * es[k * ds + q];
                for (size_t q = 0; q < dt; q++) at += et[j * dt + q] * et[k * dt + q];
                double x = as - at;
                double h = huber(x, delta);
                total += j == k ? h : 2 * h;
                g[j * n + k] = g[k * n + j] = huber_d(x, delta) / n3;
            }
        if (!want) continue;
        float *ga = grad->student_features + idx[a] * ds;
        for (size_t j = 0; j < n; j++) {
            if (!(ls[j] > 0)) continue;
            /* dL/de_aj = 2 sum_k g_jk e_ak; project out e_aj, divide by |v|. */
            double dot = 0;
            for (size_t q = 0; q < ds; q++) {
                double acc = 0;
                for (size_t k = 0; k < n; k++) acc += g[j * n + k] * es[k * ds + q];
                u[q] = 2 * acc;
                dot += u[q] * es[j * ds + q];
            }
            float *gj = grad->student_features + idx[j] * ds;
            for (size_t q = 0; q < ds; q++) {
                double v = grad->scale * (u[q] - es[j * ds + q] * dot) / ls[j];
                gj[q] += (float)v;
                ga[q] -= (float)v;
            }
        }
    }
    *value = total / n3;
    return KD_OK;
}

static kd_status rkd_compute(kd_loss *loss, void *state, const kd_loss_batch *b, double *value,
                             const kd_loss_grad *grad)
{
    const rkd_state *s = (const rkd_state *)state;
    if (b->weights)
        return kd_loss_fail(loss, KD_E_UNSUPPORTED,
                            "per-row weights have no meaning for a relational loss");
    size_t n = 0;
    for (size_t i = 0; i < b->rows; i++) n += kd__row_on(b, i);
    if (n < (s->angle ? 3u : 2u)) {
        *value = 0;
        return KD_OK;
    }
    /* Scratch: idx (n) then doubles: distance 2 n^2; angle n (Ds + Dt) + 2n + n^2 + Ds. */
    size_t nn, dsum, need, bytes;
    int ovf = kd__mul_overflow(n, n, &nn) || kd__add_overflow(b->student_dim, b->teacher_dim, &dsum);
    if (!ovf && !s->angle) ovf = kd__mul_overflow(nn, 2, &need);
    if (!ovf && s->angle)
        ovf = kd__mul_overflow(n, dsum, &need) || kd__add_overflow(need, nn, &need) ||
              kd__add_overflow(need, 2 * n, &need) || kd__add_overflow(need, b->student_dim, &need);
    if (!ovf) ovf = kd__mul_overflow(need, sizeof(double), &bytes) ||
                    kd__add_overflow(bytes, n * sizeof(size_t) + sizeof(double), &bytes);
    if (ovf) return kd_loss_fail(loss, KD_E_OVERFLOW, "scratch size beyond size_t");
    unsigned char *blk = (unsigned char *)kd__alloc(loss->ctx, bytes);
    if (!blk) return kd_loss_fail(loss, KD_E_NOMEM, "out of memory for scratch");
    size_t *idx = (size_t *)(void *)blk;
    size_t off = n * sizeof(size_t);
    off += (sizeof(double) - off % sizeof(double)) % sizeof(double);
    double *scratch = (double *)(void *)(blk + off);
    for (size_t i = 0, k = 0; i < b->rows; i++)
        if (kd__row_on(b, i)) idx[k++] = i;
    kd_status st = s->angle ? rkd_angle(s, b, idx, n, scratch, value, grad)
                            : rkd_distance(loss, s, b, idx, n, scratch, value, grad);
    kd__free(loss->ctx, blk);
    return st;
}

static const kd_loss_vtable rkdd_vtable = {
    1, "rkd_distance", FEAT_IN, KD_LOSS_IN_LABELS, sizeof(rkd_state), rkdd_create, NULL,
    rkd_compute, NULL, NULL, NULL};
static const kd_loss_vtable rkda_vtable = {
    1, "rkd_angle", FEAT_IN, KD_LOSS_IN_LABELS, sizeof(rkd_state), rkda_create, NULL,
    rkd_compute, NULL, NULL, NULL};

const kd_loss_vtable *kd_loss_rkd_distance(void) { return &rkdd_vtable; }
const kd_loss_vtable *kd_loss_rkd_angle(void) { return &rkda_vtable; }
