/*
 * kd_moe_teacher.c - MoE teachers for distillation into dense students
 * ("Every Expert Matters", Kim, Chu and Yang 2025): Knowledge Augmentation
 * (outputs averaged over routings sampled from the router distribution) and
 * the student-aware router (all experts, router trained on the student's
 * distillation objective). Semantics in kd/kd_moe.h.
 */
#include <math.h>
#include <stdlib.h>

#include "../distill/kd_distill_internal.h"
#include "kd_moe_internal.h"

#define KA_KMAX 64

/* ---- the sampling router (KA) ---------------------------------------------- */

enum { W_RENORM = 0, W_RAW = 1, W_ONES = 2 };

typedef struct ka_rstate {
    kd_rng *rng;
    float inv_temp;
    int weighting;
    size_t k;
} ka_rstate;

static size_t ka_max(const void *s, size_t n, size_t E, size_t k, size_t C)
{
    (void)E, (void)k, (void)C;
    return n * ((const ka_rstate *)s)->k;
}

static kd_status ka_route(const void *sv, const kd_router_batch *b, kd_router_assign *out,
                          size_t *n_out)
{
    const ka_rstate *s = (const ka_rstate *)sv;
    size_t E = b->n_experts, k = s->k < E ? s->k : E, na = 0;
    uint32_t idx[KA_KMAX];
    float sc[KA_KMAX];
    for (size_t t = 0; t < b->n_tokens; t++) {
        const float *z = b->logits + t * E;
        size_t m = 0;
        for (size_t e = 0; e < E; e++) {
            double u = ((double)kd_rng_u32(s->rng) + 0.5) * (1.0 / 4294967296.0);
            float g = z[e] * s->inv_temp - (float)log(-log(u));
            if (m < k || g > sc[m - 1]) { /* sorted descending; equal scores keep the lower index first */
                size_t p = m < k ? m++ : k - 1;
                while (p > 0 && g > sc[p - 1]) {
                    sc[p] = sc[p - 1];
                    idx[p] = idx[p - 1];
                    p--;
                }
                sc[p] = g;
                idx[p] = (uint32_t)e;
            }
        }
        if (s->weighting == W_ONES) {
            for (size_t i = 0; i < m; i++) out[na++] = (kd_router_assign){(uint32_t)t, idx[i], 1.0f};
            continue;
        }
        float mx = z[idx[0]];
        if (s->weighting == W_RAW)
            for (size_t j = 0; j < E; j++) mx = z[j] > mx ? z[j] : mx;
        for (size_t i = 0; i < m; i++) mx = z[idx[i]] > mx ? z[idx[i]] : mx;
        if (!(mx == mx)) mx = 0; /* NaN logits: NaN weights propagate */
        double sum = 0;
        if (s->weighting == W_RAW)
            for (size_t j = 0; j < E; j++) sum += exp((double)(z[j] - mx));
        else
            for (size_t i = 0; i < m; i++) sum += exp((double)(z[idx[i]] - mx));
        for (size_t i = 0; i < m; i++)
            out[na++] = (kd_router_assign){(uint32_t)t, idx[i],
                                           (float)(exp((double)(z[idx[i]] - mx)) / sum)};
    }
    *n_out = na;
    return KD_OK;
}

static const kd_router_vtable ka_vt = {KD_ROUTER_ABI_VERSION, "ka_sampled", ka_max, NULL,
                                       ka_route, NULL};

/* ---- the teacher ------------------------------------------------------------- */

typedef struct moe_teacher {
    kd_context *ctx;
    kd_moe_teacher_config cfg;
    kd_model *m;        /* borrowed (KA) */
    size_t in, classes;
    /* KA */
    kd_rng rng;
    size_t n_moe;
    kd__moe_core **cores;
    const kd_router_vtable **old_vt;
    const void **old_state;
    ka_rstate *rs;
    float *acc, *tmp;   /* batch x classes, grown */
    size_t acc_rows;
    /* SAR */
    kd_model *dense;    /* owned copy routing to every expert */
    float **gdata, **ggrad, *mom, *vel;
    size_t *gnum, n_gate, n_gate_floats;
    uint64_t steps;
} moe_teacher;

KD_API void kd_moe_teacher_config_default_sized(kd_moe_teacher_config *out, size_t size)
{
    kd_moe_teacher_config d;
    memset(&d, 0, sizeof d);
    d.struct_size = (uint32_t)sizeof d;
    d.mode = KD_MOE_TEACHER_KA;
    d.samples = 4;
    d.temperature = 1.0f;
    d.seed = 1;
    d.combine = KD_ENSEMBLE_LOGITS;
    d.router_lr = 1e-3f;
    d.kd_temperature = 1.0f;
    kd__default_out(out, size, &d, sizeof d);
}

static void mt_release(void *user)
{
    moe_teacher *t = (moe_teacher *)user;
    if (!t) return;
    kd_context *ctx = t->ctx;
    kd_model_destroy(t->dense);
    kd__free(ctx, t->vel);
    kd__free(ctx, t->mom);
    kd__free(ctx, t->gnum);
    kd__free(ctx, t->ggrad);
    kd__free(ctx, t->gdata);
    kd__free(ctx, t->tmp);
    kd__free(ctx, t->acc);
    kd__free(ctx, t->rs);
    kd__free(ctx, t->old_state);
    kd__free(ctx, t->old_vt);
    kd__free(ctx, t->cores);
    kd__free(ctx, t);
}

static kd_status grow_rows(moe_teacher *t, size_t batch)
{
    if (t->acc && batch <= t->acc_rows) return KD_OK;
    size_t n;
    if (kd__mul_overflow(batch, t->classes, &n))
        return kd__fail(t->ctx, KD_E_OVERFLOW, "moe teacher: batch %zu too large", batch);
    float *a = (float *)kd__calloc(t->ctx, n, sizeof(float));
    float *b = a ? (float *)kd__calloc(t->ctx, n, sizeof(float)) : NULL;
    if (!b) {
        kd__free(t->ctx, a);
        return KD_E_NOMEM;
    }
    kd__free(t->ctx, t->acc);
    kd__free(t->ctx, t->tmp);
    t->acc = a;
    t->tmp = b;
    t->acc_rows = batch;
    return KD_OK;
}

static void softmax_into(const float *z, size_t c, float inv_t, double *p)
{
    double mx = (double)z[0] * inv_t, s = 0;
    for (size_t j = 1; j < c; j++) mx = (double)z[j] * inv_t > mx ? (double)z[j] * inv_t : mx;
    for (size_t j = 0; j < c; j++) s += (p[j] = exp((double)z[j] * inv_t - mx));
    for (size_t j = 0; j < c; j++) p[j] /= s;
}

static kd_status ka_run(void *user, const float *x, size_t batch, float *logits, int train)
{
    (void)train; /* KA does not learn: the same answer in both modes */
    moe_teacher *t = (moe_teacher *)user;
    kd_context *ctx = t->ctx;
    size_t C = t->classes, ny = batch * C, S = t->cfg.samples;
    kd_status st = grow_rows(t, batch);
    if (st != KD_OK) return st;
    for (size_t i = 0; i < t->n_moe; i++) {
        kd__moe_core *c = t->cores[i];
        size_t k = kd__router_kmax(&c->cfg.router, c->k, c->E);
        if (k > KA_KMAX)
            return kd__fail(ctx, KD_E_UNSUPPORTED, "moe teacher: KA samples at most %d experts, "
                                                   "moe layer %zu has k %zu", KA_KMAX, i, k);
        t->rs[i] = (ka_rstate){&t->rng, 1.0f / t->cfg.temperature,
                               c->cfg.router.kind == KD_ROUTER_TOPK_RAW      ? W_RAW
                               : c->cfg.router.kind == KD_ROUTER_TOPK_SELECT ? W_ONES
                                                                             : W_RENORM,
                               k};
    }
    for (size_t i = 0; i < t->n_moe; i++) {
        t->old_vt[i] = t->cores[i]->rvt;
        t->old_state[i] = t->cores[i]->rstate;
        t->cores[i]->rvt = &ka_vt;
        t->cores[i]->rstate = &t->rs[i];
    }
    for (size_t j = 0; j < ny; j++) t->acc[j] = 0.0f;
    double p[256], *pp = p;
    if (t->cfg.combine == KD_ENSEMBLE_PROBS && C > 256) {
        pp = (double *)kd__calloc(ctx, C, sizeof(double));
        if (!pp) st = KD_E_NOMEM;
    }
    for (size_t s = 0; s < S && st == KD_OK; s++) {
        const float *y = NULL;
        st = kd_model_forward(t->m, KD_MODE_INFER, x, batch * t->in, batch, &y);
        if (st != KD_OK) break;
        if (t->cfg.combine == KD_ENSEMBLE_LOGITS) {
            for (size_t j = 0; j < ny; j++) t->acc[j] += y[j];
        } else {
            for (size_t b = 0; b < batch; b++) {
                softmax_into(y + b * C, C, 1.0f, pp);
                for (size_t j = 0; j < C; j++) t->acc[b * C + j] += (float)pp[j];
            }
        }
    }
    if (pp != p) kd__free(ctx, pp);
    for (size_t i = 0; i < t->n_moe; i++) {
        t->cores[i]->rvt = t->old_vt[i];
        t->cores[i]->rstate = t->old_state[i];
    }
    if (st != KD_OK) return st;
    for (size_t j = 0; j < ny; j++) {
        float v = t->acc[j] / (float)S;
        logits[j] = t->cfg.combine == KD_ENSEMBLE_LOGITS ? v : logf(v);
    }
    return KD_OK;
}

/* ---- the student-aware router objective ---------------------------------------- */

KD_API kd_status kd_model_moe_sar_loss(kd_model *m, const float *x, size_t batch,
                                       const float *student_logits, float temperature,
                                       double *loss, float *teacher_logits)
{
    if (!m) return KD_E_INVALID;
    kd_context *ctx = kd__model_context(m);
    if (!x || !student_logits || batch == 0 || !(temperature > 0.0f) || !isfinite(temperature))
        return kd__fail(ctx, KD_E_INVALID,
                        "kd_model_moe_sar_loss: NULL array, batch 0 or temperature not > 0");
    size_t in = kd__model_input_numel(m), shape[KD_TENSOR_MAX_RANK], C = 0, n_x, ny;
    uint32_t rank;
    if (in == 0) return kd__fail(ctx, KD_E_SHAPE, "kd_model_moe_sar_loss: token-id model");
    kd_status st = kd_model_output_shape(m, shape, &rank, &C);
    if (st != KD_OK) return st;
    if (kd__mul_overflow(batch, in, &n_x) || kd__mul_overflow(batch, C, &ny))
        return kd__fail(ctx, KD_E_OVERFLOW, "kd_model_moe_sar_loss: batch %zu too large", batch);
    const float *y = NULL;
    st = kd_model_forward(m, KD_MODE_TRAIN, x, n_x, batch, &y);
    if (st != KD_OK) return st;
    float *dz = (float *)kd__calloc(ctx, ny, sizeof(float));
    double *pt = dz ? (double *)kd__calloc(ctx, 2 * C, sizeof(double)) : NULL;
    if (!pt) {
        kd__free(ctx, dz);
        return KD_E_NOMEM;
    }
    double *ps = pt + C, total = 0, it = 1.0 / (double)temperature;
    for (size_t b = 0; b < batch; b++) {
        const float *tz = y + b * C, *sz = student_logits + b * C;
        softmax_into(tz, C, (float)it, pt);
        softmax_into(sz, C, (float)it, ps);
        double kl = 0;
        for (size_t j = 0; j < C; j++)
            if (pt[j] > 0) kl += pt[j] * (log(pt[j]) - log(ps[j]));
        total += kl;
        double sc = (double)temperature / (double)batch;
        for (size_t j = 0; j < C; j++)
            dz[b * C + j] = pt[j] > 0 ? (float)(sc * pt[j] * (log(pt[j]) - log(ps[j]) - kl)) : 0.0f;
    }
    total *= (double)temperature * (double)temperature / (double)batch;
    if (!isfinite(total)) {
        kd__free(ctx, pt);
        kd__free(ctx, dz);
        return kd__fail(ctx, KD_E_NUMERIC, "kd_model_moe_sar_loss: non-finite objective");
    }
    if (teacher_logits) memcpy(teacher_logits, y, ny * sizeof(float));
    st = kd_model_backward(m, dz, ny, NULL, 0);
    kd__free(ctx, pt);
    kd__free(ctx, dz);
    if (st == KD_OK && loss) *loss = total;
    return st;
}

/* A training call (train = 1) with a student answers, then takes the router
 * step; any other call is a plain inference forward of the copy, which
 * changes nothing (kd_evaluate, cache writing, a teacher without student). */
static kd_status sar_run(void *user, const float *x, size_t batch, float *logits, int train)
{
    moe_teacher *t = (moe_teacher *)user;
    kd_status st;
    const float *y = NULL;
    if (!t->cfg.student || !train) {
        st = kd_model_forward(t->dense, KD_MODE_INFER, x, batch * t->in, batch, &y);
        if (st == KD_OK) memcpy(logits, y, batch * t->classes * sizeof(float));
        return st;
    }
    if ((st = grow_rows(t, batch)) != KD_OK) return st;
    st = kd_model_forward(t->cfg.student, KD_MODE_INFER, x, batch * t->in, batch, &y);
    if (st != KD_OK) return st;
    memcpy(t->tmp, y, batch * t->classes * sizeof(float));
    if ((st = kd_model_zero_grad(t->dense)) != KD_OK) return st;
    st = kd_model_moe_sar_loss(t->dense, x, batch, t->tmp, t->cfg.kd_temperature, NULL, logits);
    if (st != KD_OK) return st;
    /* one Adam step on the gate tensors only */
    t->steps++;
    double b1 = 1.0 - pow(0.9, (double)t->steps), b2 = 1.0 - pow(0.999, (double)t->steps);
    float lr = t->cfg.router_lr;
    size_t o = 0;
    for (size_t i = 0; i < t->n_gate; i++) {
        float *p = t->gdata[i];
        const float *g = t->ggrad[i];
        for (size_t j = 0; j < t->gnum[i]; j++, o++) {
            t->mom[o] = 0.9f * t->mom[o] + 0.1f * g[j];
            t->vel[o] = 0.999f * t->vel[o] + 0.001f * g[j] * g[j];
            p[j] -= (float)(lr * (t->mom[o] / b1) / (sqrt(t->vel[o] / b2) + 1e-8));
        }
    }
    return KD_OK;
}

/* ---- creation ------------------------------------------------------------------ */

/* Rewrites every 'moe E K F ...' item of spec to route to all experts with
 * softmax weights: 'moe E E F act [shared S] [router cosine D]'. *max_e
 * receives the largest E. Returns NULL on allocation failure. */
static char *dense_spec(kd_context *ctx, const char *spec, size_t *max_e)
{
    size_t n = strlen(spec), cap = 3 * n + 16, o = 0;
    char *src = (char *)kd__alloc(ctx, cap), *dst = src ? (char *)kd__alloc(ctx, cap) : NULL;
    if (!dst) {
        kd__free(ctx, src);
        return NULL;
    }
    for (size_t i = 0; i < n; i++) { /* ';' '{' '}' become separate tokens */
        char ch = spec[i];
        if (ch == ';' || ch == '{' || ch == '}') {
            src[o++] = ' ';
            src[o++] = ch;
            src[o++] = ' ';
        } else
            src[o++] = ch;
    }
    src[o] = 0;
    const char *tok[4096];
    size_t nt = 0;
    for (char *s = src; *s && nt < 4096;) {
        while (*s == ' ') *s++ = 0;
        if (!*s) break;
        tok[nt++] = s;
        while (*s && *s != ' ') s++;
    }
    o = 0;
    dst[0] = 0;
#define EMIT(str) o += kd__fmt(dst + o, cap - o, "%s%s", o ? " " : "", (str))
    *max_e = 0;
    for (size_t i = 0; i < nt; i++) {
        if (strcmp(tok[i], "moe") != 0 || i + 3 >= nt) {
            EMIT(tok[i]);
            continue;
        }
        size_t e = (size_t)strtoull(tok[i + 1], NULL, 10);
        if (e > *max_e) *max_e = e;
        EMIT("moe");
        EMIT(tok[i + 1]);
        EMIT(tok[i + 1]);
        EMIT(tok[i + 3]);
        i += 4;
        while (i < nt) {
            const char *a = tok[i];
            if (!strcmp(a, "relu") || !strcmp(a, "gelu") || !strcmp(a, "swiglu")) {
                EMIT(a);
                i++;
            } else if (!strcmp(a, "shared") && i + 1 < nt) {
                EMIT(a);
                EMIT(tok[i + 1]);
                i += 2;
            } else if ((!strcmp(a, "capacity") || !strcmp(a, "balance") || !strcmp(a, "zloss")) &&
                       i + 1 < nt) {
                i += 2;
            } else if (!strcmp(a, "router") && i + 1 < nt) {
                const char *r = tok[i + 1];
                if (!strcmp(r, "cosine") && i + 2 < nt) {
                    EMIT(a);
                    EMIT(r);
                    EMIT(tok[i + 2]);
                    i += 3;
                } else if (!strcmp(r, "noisy")) {
                    i += 3;
                } else if (!strcmp(r, "threshold")) {
                    i += 4;
                } else {
                    i += 2;
                }
            } else
                break;
        }
        i--; /* the loop's i++ visits the token that ended the item */
    }
#undef EMIT
    kd__free(ctx, src);
    return dst;
}

static kd_status sar_setup(moe_teacher *t)
{
    kd_context *ctx = t->ctx;
    size_t need = 0, max_e = 0;
    kd_status st = kd_model_spec(t->m, NULL, 0, &need);
    if (st != KD_OK && need == 0) return st;
    char *spec = (char *)kd__alloc(ctx, need + 1);
    if (!spec) return KD_E_NOMEM;
    st = kd_model_spec(t->m, spec, need + 1, NULL);
    char *ds = st == KD_OK ? dense_spec(ctx, spec, &max_e) : NULL;
    kd__free(ctx, spec);
    if (st != KD_OK) return st;
    if (!ds) return KD_E_NOMEM;
    if (max_e > KA_KMAX) {
        kd__free(ctx, ds);
        return kd__fail(ctx, KD_E_UNSUPPORTED, "moe teacher: SAR needs at most %d experts per layer",
                        KA_KMAX);
    }
    st = kd_model_create_from_spec(ctx, ds, &t->dense);
    kd__free(ctx, ds);
    if (st != KD_OK) return st;
    size_t nt = kd_model_tensor_count(t->m);
    if (nt != kd_model_tensor_count(t->dense))
        return kd__fail(ctx, KD_E_STATE, "moe teacher: copy has other tensors");
    for (size_t i = 0; i < nt; i++) {
        float *a, *b;
        size_t na, nb;
        if ((st = kd_model_tensor(t->m, i, &a, &na, NULL, NULL, NULL)) != KD_OK ||
            (st = kd_model_tensor(t->dense, i, &b, &nb, NULL, NULL, NULL)) != KD_OK)
            return st;
        if (na != nb) return kd__fail(ctx, KD_E_STATE, "moe teacher: copy has other tensors");
        memcpy(b, a, na * sizeof(float));
        const char *name;
        if ((st = kd_model_tensor_name(t->dense, i, &name)) != KD_OK) return st;
        if (strstr(name, "gate.")) t->n_gate++;
    }
    if (!t->cfg.student) return KD_OK;
    t->gdata = (float **)kd__calloc(ctx, t->n_gate + 1, sizeof(float *));
    t->ggrad = t->gdata ? (float **)kd__calloc(ctx, t->n_gate + 1, sizeof(float *)) : NULL;
    t->gnum = t->ggrad ? (size_t *)kd__calloc(ctx, t->n_gate + 1, sizeof(size_t)) : NULL;
    if (!t->gnum) return KD_E_NOMEM;
    size_t g = 0;
    for (size_t i = 0; i < nt; i++) {
        const char *name;
        size_t nn;
        if ((st = kd_model_tensor_name(t->dense, i, &name)) != KD_OK) return st;
        if (!strstr(name, "gate.")) continue;
        if ((st = kd_model_tensor(t->dense, i, &t->gdata[g], &nn, NULL, NULL, NULL)) != KD_OK ||
            (st = kd_model_tensor_grad(t->dense, i, &t->ggrad[g], &nn)) != KD_OK)
            return st;
        t->gnum[g++] = nn;
        t->n_gate_floats += nn;
    }
    t->mom = (float *)kd__calloc(ctx, t->n_gate_floats + 1, sizeof(float));
    t->vel = t->mom ? (float *)kd__calloc(ctx, t->n_gate_floats + 1, sizeof(float)) : NULL;
    return t->vel ? KD_OK : KD_E_NOMEM;
}

KD_API kd_status kd_teacher_create_moe(kd_context *ctx, kd_model *m,
                                       const kd_moe_teacher_config *cfg_in, kd_teacher **out)
{
    if (out) *out = NULL;
    if (!ctx) return KD_E_INVALID;
    if (!m || !cfg_in || !out)
        return kd__fail(ctx, KD_E_INVALID, "kd_teacher_create_moe: NULL model, config or out");
    kd_moe_teacher_config cfg;
    kd_moe_teacher_config_default(&cfg);
    kd_status st = kd__config_copy(&cfg, sizeof cfg, cfg_in, cfg_in->struct_size, sizeof cfg);
    if (st != KD_OK) return st;
    if ((unsigned)cfg.mode > KD_MOE_TEACHER_SAR || cfg.samples == 0 ||
        !(cfg.temperature > 0.0f) || !isfinite(cfg.temperature) ||
        (unsigned)cfg.combine > KD_ENSEMBLE_PROBS || !(cfg.router_lr >= 0.0f) ||
        !isfinite(cfg.router_lr) || !(cfg.kd_temperature > 0.0f) || !isfinite(cfg.kd_temperature))
        return kd__fail(ctx, KD_E_INVALID,
                        "kd_teacher_create_moe: bad mode, samples (>= 1), temperatures (> 0), "
                        "combine or router_lr (>= 0)");
    size_t in = kd__model_input_numel(m), shape[KD_TENSOR_MAX_RANK], classes = 0;
    uint32_t rank;
    if (in == 0)
        return kd__fail(ctx, KD_E_SHAPE, "kd_teacher_create_moe: the model takes token ids");
    if ((st = kd_model_output_shape(m, shape, &rank, &classes)) != KD_OK) return st;
    if (cfg.student) {
        size_t sc = 0;
        if (kd__model_input_numel(cfg.student) != in ||
            kd_model_output_shape(cfg.student, shape, &rank, &sc) != KD_OK || sc != classes)
            return kd__fail(ctx, KD_E_INVALID,
                            "kd_teacher_create_moe: the student's input or classes differ");
    }
    size_t L = kd_model_layer_count(m), n_moe = 0;
    for (size_t i = 0; i < L; i++) n_moe += kd__moe_layer_core(m, i) != NULL;
    if (n_moe == 0)
        return kd__fail(ctx, KD_E_INVALID, "kd_teacher_create_moe: the model has no moe layer");
    moe_teacher *t = (moe_teacher *)kd__calloc(ctx, 1, sizeof *t);
    if (!t) return KD_E_NOMEM;
    t->ctx = ctx;
    t->cfg = cfg;
    t->m = m;
    t->in = in;
    t->classes = classes;
    if (cfg.mode == KD_MOE_TEACHER_KA) {
        kd_rng_seed(&t->rng, cfg.seed, 0);
        t->cores = (kd__moe_core **)kd__calloc(ctx, n_moe, sizeof *t->cores);
        t->old_vt = t->cores ? (const kd_router_vtable **)kd__calloc(ctx, n_moe, sizeof *t->old_vt) : NULL;
        t->old_state = t->old_vt ? (const void **)kd__calloc(ctx, n_moe, sizeof *t->old_state) : NULL;
        t->rs = t->old_state ? (ka_rstate *)kd__calloc(ctx, n_moe, sizeof *t->rs) : NULL;
        if (!t->rs) st = KD_E_NOMEM;
        for (size_t i = 0; st == KD_OK && i < L; i++) {
            kd__moe_core *c = kd__moe_layer_core(m, i);
            if (!c) continue;
            /* an expert-choice layer's workspace holds E * C assignments,
             * fewer than the n * k sampled ones when C = ceil(f n k / E) with f < 1 */
            if (c->cfg.router.kind == KD_ROUTER_EXPERT_CHOICE && c->cfg.capacity_factor > 0.0f &&
                c->cfg.capacity_factor < 1.0f)
                st = kd__fail(ctx, KD_E_UNSUPPORTED,
                              "kd_teacher_create_moe: KA on layer %zu (expert choice with capacity "
                              "factor below 1)", i);
            else
                t->cores[t->n_moe++] = c;
        }
    } else {
        st = sar_setup(t);
    }
    if (st == KD_OK)
        st = kd__teacher_create_owned(ctx, in, classes,
                                      cfg.mode == KD_MOE_TEACHER_KA ? ka_run : sar_run, mt_release,
                                      t, cfg.mode == KD_MOE_TEACHER_SAR && cfg.student != NULL,
                                      out);
    if (st != KD_OK) mt_release(t);
    return st;
}
