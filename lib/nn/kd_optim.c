/*
 * kd_optim.c - SGD and AdamW over a model's parameter block, learning-rate
 * schedules. The update formulas follow the torch.optim documentation
 * (SGD with momentum/dampening/Nesterov and L2 weight decay; AdamW with
 * decoupled weight decay and bias correction).
 */
#include <math.h>

#include "kd_layer.h"

struct kd_optimizer {
    kd_context *ctx;
    kd_model *model;
    kd_optimizer_config cfg;
    float *m, *v;  /* SGD: m = momentum buffer; AdamW: first and second moments */
    size_t n;
    uint64_t steps;
};

void kd_optimizer_config_default_sized(kd_optimizer_config *out, kd_optimizer_kind kind, size_t size)
{
    kd_optimizer_config d, *cfg = &d;
    memset(cfg, 0, sizeof *cfg);
    cfg->struct_size = sizeof *cfg;
    cfg->kind = kind == KD_OPTIM_SGD ? KD_OPTIM_SGD : KD_OPTIM_ADAMW;
    cfg->lr = 1e-3f;
    cfg->weight_decay = kind == KD_OPTIM_SGD ? 0.0f : 0.01f;
    cfg->beta1 = 0.9f;
    cfg->beta2 = 0.999f;
    cfg->eps = 1e-8f;
    kd__default_out(out, size, cfg, sizeof *cfg);
}

static int finite_nonneg(float x)
{
    return isfinite(x) && x >= 0.0f;
}

static kd_status check_config(kd_context *ctx, const kd_optimizer_config *c)
{
    if (c->kind != KD_OPTIM_SGD && c->kind != KD_OPTIM_ADAMW)
        return kd__fail(ctx, KD_E_INVALID, "optimizer: unknown kind %d", (int)c->kind);
    if (!finite_nonneg(c->lr) || !finite_nonneg(c->weight_decay))
        return kd__fail(ctx, KD_E_INVALID, "optimizer: lr and weight_decay must be finite and >= 0");
    if (c->kind == KD_OPTIM_SGD) {
        if (!finite_nonneg(c->momentum) || !finite_nonneg(c->dampening))
            return kd__fail(ctx, KD_E_INVALID, "SGD: momentum and dampening must be finite and >= 0");
        if (c->nesterov && (c->momentum <= 0.0f || c->dampening != 0.0f))
            return kd__fail(ctx, KD_E_INVALID, "SGD: Nesterov needs momentum > 0 and dampening 0");
    } else {
        if (!(c->beta1 >= 0.0f && c->beta1 < 1.0f) || !(c->beta2 >= 0.0f && c->beta2 < 1.0f))
            return kd__fail(ctx, KD_E_INVALID, "AdamW: betas must lie in [0, 1)");
        if (!(c->eps > 0.0f) || !isfinite(c->eps))
            return kd__fail(ctx, KD_E_INVALID, "AdamW: eps must be finite and > 0");
    }
    return KD_OK;
}

kd_status kd_optimizer_create(kd_model *m, const kd_optimizer_config *cfg, kd_optimizer **out)
{
    if (!m) return KD_E_INVALID;
    float *params, *grads;
    size_t n;
    kd_status st = kd_model_blocks(m, &params, &grads, &n);
    if (st != KD_OK) return st;
    kd_context *ctx = kd__model_context(m);
    if (!cfg || !out) return kd__fail(ctx, KD_E_INVALID, "kd_optimizer_create: NULL argument");
    kd_optimizer_config c;
    kd_optimizer_config_default(&c, KD_OPTIM_ADAMW);
    st = kd__config_copy(&c, sizeof c, cfg, cfg->struct_size, sizeof c);
    if (st != KD_OK) return st;
    if ((st = check_config(ctx, &c)) != KD_OK) return st;
    kd_optimizer *o = (kd_optimizer *)kd__calloc(ctx, 1, sizeof *o);
    if (!o) return KD_E_NOMEM;
    o->ctx = ctx;
    o->model = m;
    o->cfg = c;
    o->n = n;
    size_t per = n ? n : 1;
    if (c.kind == KD_OPTIM_ADAMW || c.momentum > 0.0f) {
        o->m = (float *)kd__calloc(ctx, per, sizeof(float));
        if (!o->m) {
            kd__free(ctx, o);
            return KD_E_NOMEM;
        }
    }
    if (c.kind == KD_OPTIM_ADAMW) {
        o->v = (float *)kd__calloc(ctx, per, sizeof(float));
        if (!o->v) {
            kd__free(ctx, o->m);
            kd__free(ctx, o);
            return KD_E_NOMEM;
        }
    }
    *out = o;
    return KD_OK;
}

void kd_optimizer_destroy(kd_optimizer *o)
{
    if (!o) return;
    kd__free(o->ctx, o->v);
    kd__free(o->ctx, o->m);
    kd__free(o->ctx, o);
}

kd_status kd_optimizer_set_lr(kd_optimizer *o, float lr)
{
    if (!o) return KD_E_INVALID;
    if (!finite_nonneg(lr)) return kd__fail(o->ctx, KD_E_INVALID, "kd_optimizer_set_lr: lr must be finite and >= 0");
    o->cfg.lr = lr;
    return KD_OK;
}

uint64_t kd_optimizer_steps(const kd_optimizer *o)
{
    return o ? o->steps : 0;
}

/* The update loops, vectorised (KD_NN_CLONES; the library is built with
 * -fno-math-errno, without which sqrtf stays scalar). */
#define KD_OPT_LOOP KD_NN_CLONES

/* g' = g + wd p; buf = g' (first step) or mu buf + (1 - damp) g';
 * step = nesterov ? g' + mu buf : buf; p -= lr step */
KD_OPT_LOOP
static void sgd_update(float *restrict p, const float *restrict g, float *restrict buf, size_t n,
                       float lr, float wd, float mu, float damp, int nesterov, int first)
{
    if (mu <= 0.0f) {
        for (size_t i = 0; i < n; i++) p[i] -= lr * (g[i] + wd * p[i]);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        float d = g[i] + wd * p[i];
        float b = first ? d : mu * buf[i] + (1.0f - damp) * d;
        buf[i] = b;
        p[i] -= lr * (nesterov ? d + mu * b : b);
    }
}

/* p *= decay; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
 * p -= step_size m / (sqrt(v) / bc2_sqrt + eps) */
KD_OPT_LOOP
static void adamw_update(float *restrict p, const float *restrict g, float *restrict m,
                         float *restrict v, size_t n, float decay, float b1, float b2,
                         float step_size, float bc2_sqrt, float eps)
{
    for (size_t i = 0; i < n; i++) {
        float gi = g[i];
        float mi = b1 * m[i] + (1.0f - b1) * gi;
        float vi = b2 * v[i] + (1.0f - b2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        p[i] = p[i] * decay - step_size * mi / (sqrtf(vi) / bc2_sqrt + eps);
    }
}

kd_status kd_optimizer_step(kd_optimizer *o)
{
    if (!o) return KD_E_INVALID;
    float *p, *g;
    size_t n;
    kd_status st = kd_model_blocks(o->model, &p, &g, &n);
    if (st != KD_OK) return st;
    if (n != o->n)
        return kd__fail(o->ctx, KD_E_STATE, "optimizer: the model's parameters changed (folded?); recreate the optimizer");
    const kd_optimizer_config *c = &o->cfg;
    o->steps++;
    float lr = c->lr, wd = c->weight_decay;
    if (c->kind == KD_OPTIM_SGD) {
        sgd_update(p, g, o->m, n, lr, wd, c->momentum, c->dampening, c->nesterov, o->steps == 1);
        return KD_OK;
    }
    /* AdamW: p *= 1 - lr wd; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
     * p -= (lr / (1 - b1^t)) m / (sqrt(v) / sqrt(1 - b2^t) + eps) */
    float b1 = c->beta1, b2 = c->beta2;
    double t = (double)o->steps;
    float bc1 = (float)(1.0 - pow((double)b1, t)), bc2 = (float)(1.0 - pow((double)b2, t));
    float step_size = lr / bc1, bc2_sqrt = sqrtf(bc2), decay = 1.0f - lr * wd, eps = c->eps;
    adamw_update(p, g, o->m, o->v, n, decay, b1, b2, step_size, bc2_sqrt, eps);
    return KD_OK;
}

/* ---- schedules ------------------------------------------------------------- */

void kd_schedule_config_default_sized(kd_schedule_config *out, size_t size)
{
    kd_schedule_config d, *cfg = &d;
    memset(cfg, 0, sizeof *cfg);
    cfg->struct_size = sizeof *cfg;
    cfg->kind = KD_SCHEDULE_CONSTANT;
    cfg->base_lr = 1e-3f;
    cfg->min_lr = 0.0f;
    cfg->warmup_steps = 0;
    cfg->total_steps = 1000;
    cfg->step_size = 100;
    cfg->gamma = 0.1f;
    kd__default_out(out, size, cfg, sizeof *cfg);
}

static kd_status sched_fail(kd_context *ctx, const char *why)
{
    return ctx ? kd__fail(ctx, KD_E_INVALID, "kd_schedule_lr: %s", why) : KD_E_INVALID;
}

kd_status kd_schedule_lr(kd_context *ctx, const kd_schedule_config *cfg, uint64_t step, float *lr)
{
    if (!cfg || !lr) return sched_fail(ctx, "NULL argument");
    kd_schedule_config c;
    kd_schedule_config_default(&c);
    if (cfg->struct_size != sizeof c)
        return ctx ? kd__fail(ctx, KD_E_VERSION, "kd_schedule_lr: struct_size %u not supported",
                              (unsigned)cfg->struct_size)
                   : KD_E_VERSION;
    c = *cfg;
    if (!finite_nonneg(c.base_lr) || !finite_nonneg(c.min_lr)) return sched_fail(ctx, "rates must be finite and >= 0");
    double base = c.base_lr, out;
    if (step < c.warmup_steps) {
        *lr = (float)(base * (double)(step + 1) / (double)c.warmup_steps);
        if (c.kind > KD_SCHEDULE_COSINE) return sched_fail(ctx, "unknown kind");
        return KD_OK;
    }
    uint64_t s = step - c.warmup_steps;
    switch (c.kind) {
    case KD_SCHEDULE_CONSTANT:
        out = base;
        break;
    case KD_SCHEDULE_STEP:
        if (c.step_size == 0) return sched_fail(ctx, "step_size is 0");
        if (!finite_nonneg(c.gamma)) return sched_fail(ctx, "gamma must be finite and >= 0");
        out = base * pow((double)c.gamma, (double)(s / c.step_size));
        break;
    case KD_SCHEDULE_COSINE: {
        if (c.total_steps <= c.warmup_steps) return sched_fail(ctx, "total_steps must exceed warmup_steps");
        double t = (double)s / (double)(c.total_steps - c.warmup_steps);
        if (t > 1.0) t = 1.0;
        out = c.min_lr + (base - c.min_lr) * 0.5 * (1.0 + cos(3.14159265358979323846 * t));
        break;
    }
    default:
        return sched_fail(ctx, "unknown kind");
    }
    *lr = (float)out;
    return KD_OK;
}
