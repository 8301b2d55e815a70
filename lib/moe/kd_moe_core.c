/*
 * kd_moe_core.c - MoE forward/backward: gate, routing, capacity, grouped
 * expert GEMMs, scatter-add, auxiliary losses (formulas in kd/kd_moe.h).
 *
 * Grouping: the router's assignments are counting-sorted by expert (stable,
 * so earlier tokens come first and win capacity); row r of the grouped
 * buffers is assignment perm[r]. Expert e owns rows offs[e] .. offs[e+1]
 * and runs one GEMM per weight matrix over them:
 *   H = Xg W1_e^T (cnt x f), [U = Xg W3_e^T], A = act(H) [* U], O = A W2_e^T (cnt x d)
 * then y[token] += weight * O[row]. Backward mirrors it with the same rows.
 * Experts with more than 4 rows keep H, U, A, O and their gradients
 * transposed (H^T = W1_e Xg^T, ...: the weights are GEMM's left operand,
 * which BLIS runs faster at these shapes); see tposed().
 */
#include <math.h>

#include "kd_moe_internal.h"

/* ---- configuration and layout --------------------------------------------- */

kd_status kd__moe_config_check(kd_context *ctx, const kd_moe_config *cfg)
{
    if (cfg->d_model == 0 || cfg->d_ff == 0 || cfg->n_experts == 0)
        return kd__fail(ctx, KD_E_INVALID, "moe: d_model, d_ff and n_experts must be > 0");
    if (cfg->n_experts > ((size_t)1 << 20))
        return kd__fail(ctx, KD_E_INVALID, "moe: at most 2^20 experts");
    if (cfg->top_k == 0 || cfg->top_k > cfg->n_experts)
        return kd__fail(ctx, KD_E_INVALID, "moe: top_k %zu must be in [1, %zu]", cfg->top_k,
                        cfg->n_experts);
    if ((unsigned)cfg->activation > KD_MOE_SWIGLU)
        return kd__fail(ctx, KD_E_INVALID, "moe: unknown activation %d", (int)cfg->activation);
    if ((unsigned)cfg->gate > KD_MOE_GATE_COSINE)
        return kd__fail(ctx, KD_E_INVALID, "moe: unknown gate %d", (int)cfg->gate);
    if (cfg->gate == KD_MOE_GATE_COSINE && cfg->cosine_dim == 0)
        return kd__fail(ctx, KD_E_INVALID, "moe: cosine_dim must be > 0");
    if (!(cfg->capacity_factor >= 0.0f) || !isfinite(cfg->capacity_factor) ||
        !(cfg->balance_coef >= 0.0f) || !isfinite(cfg->balance_coef) ||
        !(cfg->z_coef >= 0.0f) || !isfinite(cfg->z_coef))
        return kd__fail(ctx, KD_E_INVALID,
                        "moe: capacity_factor, balance_coef, z_coef must be finite and >= 0");
    const kd_router_config *r = &cfg->router;
    if ((unsigned)r->kind > KD_ROUTER_TOPK_SELECT)
        return kd__fail(ctx, KD_E_INVALID, "moe: unknown router kind %d", (int)r->kind);
    if (!(r->noise_std >= 0.0f) || !isfinite(r->noise_std))
        return kd__fail(ctx, KD_E_INVALID, "moe: noise_std must be finite and >= 0");
    if (!(r->threshold > 0.0f && r->threshold <= 1.0f))
        return kd__fail(ctx, KD_E_INVALID, "moe: threshold must be in (0, 1]");
    if (r->k_max > cfg->n_experts)
        return kd__fail(ctx, KD_E_INVALID, "moe: k_max %zu exceeds n_experts", r->k_max);
    size_t sz, t;
    /* every parameter count must fit comfortably: d*f*E*3 + ... */
    if (kd__mul_overflow(cfg->d_model, cfg->d_ff, &sz) || kd__mul_overflow(sz, cfg->n_experts + cfg->n_shared, &t) ||
        kd__mul_overflow(t, 3, &t) || t > KD_NN_MAX_NUMEL * 4 ||
        (cfg->gate == KD_MOE_GATE_COSINE && (kd__mul_overflow(cfg->cosine_dim, cfg->d_model + cfg->n_experts, &t) || t > KD_NN_MAX_NUMEL)))
        return kd__fail(ctx, KD_E_OVERFLOW, "moe: parameter count too large");
    return KD_OK;
}

static void core_layout(kd__moe_core *c)
{
    size_t o = 0, E = c->E, d = c->d, f = c->f;
    int glu = c->cfg.activation == KD_MOE_SWIGLU;
    c->o_gate = c->o_proj = c->o_cemb = c->o_lscale = 0;
    if (c->cfg.gate == KD_MOE_GATE_LINEAR) {
        c->o_gate = o;
        o += E * d;
    } else {
        c->o_proj = o;
        o += c->dl * d;
        c->o_cemb = o;
        o += E * c->dl;
        c->o_lscale = o;
        o += 1;
    }
    c->o_w1 = o;
    o += E * f * d;
    c->o_w3 = o;
    if (glu) o += E * f * d;
    c->o_w2 = o;
    o += E * d * f;
    c->o_s1 = o;
    o += c->fs * d;
    c->o_s3 = o;
    if (glu) o += c->fs * d;
    c->o_s2 = o;
    o += d * c->fs;
    c->n_param = o;
}

kd_status kd__moe_core_init(kd_context *ctx, kd__moe_core *c, const kd_moe_config *cfg)
{
    kd_status st = kd__moe_config_check(ctx, cfg);
    if (st != KD_OK) return st;
    memset(c, 0, sizeof *c);
    c->cfg = *cfg;
    c->E = cfg->n_experts;
    c->d = cfg->d_model;
    c->f = cfg->d_ff;
    c->k = cfg->top_k;
    c->fs = cfg->n_shared * cfg->d_ff;
    c->dl = cfg->gate == KD_MOE_GATE_COSINE ? cfg->cosine_dim : 0;
    c->rvt = kd_router_builtin(cfg->router.kind);
    c->rstate = &c->cfg.router;
    c->E_alloc = c->E;
    core_layout(c);
    c->routed = (size_t *)kd__calloc(ctx, c->E, sizeof(size_t));
    c->dropped = c->routed ? (size_t *)kd__calloc(ctx, c->E, sizeof(size_t)) : NULL;
    c->offs = c->dropped ? (size_t *)kd__calloc(ctx, c->E + 1, sizeof(size_t)) : NULL;
    c->mean_prob = c->offs ? (float *)kd__calloc(ctx, c->E, sizeof(float)) : NULL;
    if (!c->mean_prob) {
        kd__moe_core_free(ctx, c);
        return KD_E_NOMEM;
    }
    return KD_OK;
}

void kd__moe_core_free(kd_context *ctx, kd__moe_core *c)
{
    kd__free(ctx, c->mean_prob);
    kd__free(ctx, c->offs);
    kd__free(ctx, c->dropped);
    kd__free(ctx, c->routed);
    c->mean_prob = NULL;
    c->offs = c->dropped = c->routed = NULL;
}

static void uniform(float *p, size_t n, size_t fan_in, kd_rng *rng)
{
    float b = 1.0f / sqrtf((float)fan_in);
    for (size_t i = 0; i < n; i++) p[i] = b * (2.0f * kd_rng_uniform(rng) - 1.0f);
}

void kd__moe_core_init_params(kd__moe_core *c, kd_rng *rng)
{
    float *p = c->param;
    size_t E = c->E, d = c->d, f = c->f;
    if (c->cfg.gate == KD_MOE_GATE_LINEAR) {
        uniform(p + c->o_gate, E * d, d, rng);
    } else {
        uniform(p + c->o_proj, c->dl * d, d, rng);
        for (size_t i = 0; i < E * c->dl; i++) p[c->o_cemb + i] = kd_rng_normal(rng);
        p[c->o_lscale] = logf(1.0f / 0.07f);
    }
    uniform(p + c->o_w1, E * f * d, d, rng);
    if (c->cfg.activation == KD_MOE_SWIGLU) uniform(p + c->o_w3, E * f * d, d, rng);
    uniform(p + c->o_w2, E * d * f, f, rng);
    if (c->fs) {
        uniform(p + c->o_s1, c->fs * d, d, rng);
        if (c->cfg.activation == KD_MOE_SWIGLU) uniform(p + c->o_s3, c->fs * d, d, rng);
        uniform(p + c->o_s2, d * c->fs, c->fs, rng);
    }
}

size_t kd__moe_tensor_count(const kd__moe_core *c)
{
    size_t n = c->cfg.gate == KD_MOE_GATE_LINEAR ? 1 : 3;
    int glu = c->cfg.activation == KD_MOE_SWIGLU;
    n += glu ? 3 : 2;
    if (c->fs) n += glu ? 3 : 2;
    return n;
}

void kd__moe_tensor_desc(const kd__moe_core *c, size_t i, char name[KD_TENSOR_NAME_MAX],
                         uint32_t *rank, size_t shape[KD_TENSOR_MAX_RANK], size_t *offset)
{
    const char *nm[12];
    size_t off[12], rk[12], sh[12][3], n = 0;
    int glu = c->cfg.activation == KD_MOE_SWIGLU;
#define T(NAME, OFF, R, A, B, C)                                                               \
    do {                                                                                       \
        nm[n] = NAME;                                                                          \
        off[n] = OFF;                                                                          \
        rk[n] = R;                                                                             \
        sh[n][0] = A;                                                                          \
        sh[n][1] = B;                                                                          \
        sh[n][2] = C;                                                                          \
        n++;                                                                                   \
    } while (0)
    if (c->cfg.gate == KD_MOE_GATE_LINEAR) {
        T("gate.weight", c->o_gate, 2, c->E, c->d, 0);
    } else {
        T("gate.proj", c->o_proj, 2, c->dl, c->d, 0);
        T("gate.experts", c->o_cemb, 2, c->E, c->dl, 0);
        T("gate.log_scale", c->o_lscale, 1, 1, 0, 0);
    }
    T("experts.w1", c->o_w1, 3, c->E, c->f, c->d);
    if (glu) T("experts.w3", c->o_w3, 3, c->E, c->f, c->d);
    T("experts.w2", c->o_w2, 3, c->E, c->d, c->f);
    if (c->fs) {
        T("shared.w1", c->o_s1, 2, c->fs, c->d, 0);
        if (glu) T("shared.w3", c->o_s3, 2, c->fs, c->d, 0);
        T("shared.w2", c->o_s2, 2, c->d, c->fs, 0);
    }
#undef T
    if (i >= n) i = n - 1;
    kd__fmt(name, KD_TENSOR_NAME_MAX, "%s", nm[i]);
    *rank = (uint32_t)rk[i];
    memset(shape, 0, KD_TENSOR_MAX_RANK * sizeof(size_t));
    for (size_t j = 0; j < rk[i]; j++) shape[j] = sh[i][j];
    *offset = off[i];
}

/* ---- buffers ----------------------------------------------------------------- */

static size_t capacity_of(const kd__moe_core *c, size_t n)
{
    int ec = c->rvt == kd_router_builtin(KD_ROUTER_EXPERT_CHOICE);
    double cf = c->cfg.capacity_factor;
    if (cf <= 0.0 && !ec) return 0;
    if (cf <= 0.0) cf = 1.0;
    double cap = ceil(cf * (double)n * (double)c->k / (double)c->E);
    if (cap > (double)n) cap = (double)n;
    if (cap < 1.0 && n > 0) cap = 1.0;
    return (size_t)cap;
}

typedef struct {
    float *logits, *prob, *rsaved, *xg, *h, *u, *a, *o, *sh, *su, *sa, *ph, *pn, *cn;
    kd_router_assign *asg;
    uint32_t *perm;
    /* backward */
    float *dO, *dA, *dU, *dw, *dz, *dsa, *dsu, *dph, *dcn;
} moe_bufs;

/* Lays out (base != NULL) or measures the buffers; returns floats used. */
static size_t carve(const kd__moe_core *c, size_t n, size_t M, size_t rs, float *base, int part,
                    moe_bufs *b)
{
    size_t E = c->E, d = c->d, f = c->f, fs = c->fs, dl = c->dl, off = 0;
    int glu = c->cfg.activation == KD_MOE_SWIGLU;
#define TAKE(field, count)                                                                     \
    do {                                                                                       \
        size_t cnt_ = (count);                                                                 \
        if (base) b->field = cnt_ ? (void *)(base + off) : NULL;                               \
        off += kd__align_floats(cnt_);                                                         \
    } while (0)
    if (part == 0) {
        TAKE(logits, n * E);
        TAKE(prob, n * E);
        TAKE(rsaved, rs);
        TAKE(asg, M * 3);
        TAKE(perm, M);
        TAKE(xg, M * d);
        TAKE(h, M * f);
        TAKE(u, glu ? M * f : 0);
        TAKE(a, M * f);
        TAKE(o, M * d);
        TAKE(sh, n * fs);
        TAKE(su, glu ? n * fs : 0);
        TAKE(sa, n * fs);
        TAKE(ph, n * dl);
        TAKE(pn, dl ? n : 0);
        TAKE(cn, E * dl);
    } else {
        TAKE(dO, M * d);
        TAKE(dA, M * f);
        TAKE(dU, glu ? M * f : 0);
        TAKE(dw, M);
        TAKE(dz, n * E);
        TAKE(dsa, n * fs);
        TAKE(dsu, glu ? n * fs : 0);
        TAKE(dph, n * dl);
        TAKE(dcn, E * dl);
    }
#undef TAKE
    return off;
}

static size_t max_assign(const kd__moe_core *c, size_t n)
{
    return c->rvt->max_assignments(c->rstate, n, c->E, c->k, capacity_of(c, n));
}

static size_t router_saved(const kd__moe_core *c, size_t n)
{
    return c->rvt->saved_size ? c->rvt->saved_size(c->rstate, n, c->E) : 0;
}

kd_status kd__moe_sizes(const kd__moe_core *c, size_t n, size_t *fwd, size_t *bwd)
{
    /* Bound every product: n * max(E, d, f, fs, k_max) must fit. */
    size_t lim = c->E + c->d + c->f + c->fs + c->dl, t;
    if (n > ((size_t)1 << 31) || kd__mul_overflow(n, lim, &t) || kd__mul_overflow(t, 16, &t)) {
        *fwd = *bwd = 0;
        return KD_E_OVERFLOW;
    }
    size_t M = max_assign(c, n), rs = router_saved(c, n);
    if (kd__mul_overflow(M, lim, &t) || kd__mul_overflow(t, 16, &t)) {
        *fwd = *bwd = 0;
        return KD_E_OVERFLOW;
    }
    moe_bufs b;
    *fwd = carve(c, n, M, rs, NULL, 0, &b);
    *bwd = carve(c, n, M, rs, NULL, 1, &b);
    return KD_OK;
}

/* ---- activations -------------------------------------------------------------- */

/* The element-wise loops below run over whole hidden buffers (tokens x
 * d_ff); at -O2 GCC 12 only vectorizes loops whose trip count it can prove
 * a multiple of the vector width, so ask for its usual cost model here. */
#if defined(__GNUC__) && !defined(__clang__)
#define KD_VEC __attribute__((optimize("tree-vectorize", "vect-cost-model=dynamic")))
#else
#define KD_VEC
#endif

KD_VEC static void relu_fwd(const float *restrict h, float *restrict a, size_t cnt)
{
    for (size_t i = 0; i < cnt; i++) a[i] = h[i] < 0.0f ? 0.0f : h[i]; /* NaN passes */
}

KD_VEC static void relu_bwd(const float *restrict h, float *restrict da, size_t cnt)
{
    for (size_t i = 0; i < cnt; i++) da[i] = h[i] > 0.0f ? da[i] : 0.0f;
}

/* y (cnt) += w * o; the scatter-add of one kept row */
KD_VEC static void axpy(float *restrict y, float w, const float *restrict o, size_t cnt)
{
    for (size_t j = 0; j < cnt; j++) y[j] += w * o[j];
}

/* exp for the SwiGLU gate, in operations the vectorizer handles (one
 * vector of exps per iteration instead of a libm call per element):
 * x = n ln2 + r, |r| <= ln2 / 2, e^r by its degree-6 Taylor polynomial
 * (relative error < 2e-7, about 2 ulp), 2^n through the exponent bits.
 * x is clamped to [-87.3, 88.7] (results stay normal and finite); NaN
 * passes the clamp and gives NaN. */
static inline float vexpf(float x)
{
    x = x < -87.3f ? -87.3f : x;
    x = x > 88.7f ? 88.7f : x;
    float t = x * 1.44269504f + 12582912.0f; /* 1.5 * 2^23: rounds to an integer */
    float n = t - 12582912.0f;
    float r = x - n * 0.693145752f - n * 1.42860677e-6f; /* ln2 split hi + lo */
    float p = 1.0f + r * (1.0f + r * (0.5f + r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120 + r * (1.0f / 720))))));
    int32_t bits = ((int32_t)n + 127) << 23;
    float sc;
    memcpy(&sc, &bits, sizeof sc);
    return p * sc;
}

static inline float sigm(float x)
{
    return 1.0f / (1.0f + vexpf(-x));
}

/* a = silu(h) * u */
KD_VEC KD_TARGET_CLONES static void swiglu_fwd(const float *restrict h, const float *restrict u,
                                                float *restrict a, size_t cnt)
{
    for (size_t i = 0; i < cnt; i++) a[i] = h[i] * sigm(h[i]) * u[i];
}

/* du = da * silu(h); da (in place) = da * u * silu'(h) */
KD_VEC KD_TARGET_CLONES static void swiglu_bwd(const float *restrict h, const float *restrict u,
                                                float *restrict da, float *restrict du, size_t cnt)
{
    for (size_t i = 0; i < cnt; i++) {
        float x = h[i], s = sigm(x), g = da[i];
        du[i] = g * x * s;
        da[i] = g * u[i] * s * (1.0f + x * (1.0f - s));
    }
}

/* a = act(h) [* u] over cnt elements */
static void act_forward(kd_moe_activation k, const float *h, const float *u, float *a, size_t cnt)
{
    switch (k) {
    case KD_MOE_RELU:
        relu_fwd(h, a, cnt);
        break;
    case KD_MOE_GELU:
        for (size_t i = 0; i < cnt; i++) a[i] = 0.5f * h[i] * (1.0f + erff(h[i] * 0.70710678f));
        break;
    case KD_MOE_SWIGLU:
        swiglu_fwd(h, u, a, cnt);
        break;
    }
}

/* da (in place) -> dh; du = da * silu(h) for SwiGLU (written first). */
static void act_backward(kd_moe_activation k, const float *h, const float *u, float *da, float *du,
                         size_t cnt)
{
    switch (k) {
    case KD_MOE_RELU:
        relu_bwd(h, da, cnt);
        break;
    case KD_MOE_GELU:
        for (size_t i = 0; i < cnt; i++) {
            float x = h[i];
            float cdf = 0.5f * (1.0f + erff(x * 0.70710678f));
            float pdf = 0.39894228f * expf(-0.5f * x * x);
            da[i] *= cdf + x * pdf;
        }
        break;
    case KD_MOE_SWIGLU:
        swiglu_bwd(h, u, da, du, cnt);
        break;
    }
}

/* ---- forward ------------------------------------------------------------------- */

static void shared_forward(kd__moe_core *c, kd_context *ctx, const float *x, size_t n, float *y,
                           moe_bufs *b)
{
    size_t d = c->d, fs = c->fs;
    const float *P = c->param;
    if (!fs) {
        memset(y, 0, n * d * sizeof(float));
        return;
    }
    kd__gemm(ctx, 0, 1, n, fs, d, 1.0f, x, d, P + c->o_s1, d, 0.0f, b->sh, fs);
    if (b->su) kd__gemm(ctx, 0, 1, n, fs, d, 1.0f, x, d, P + c->o_s3, d, 0.0f, b->su, fs);
    act_forward(c->cfg.activation, b->sh, b->su, b->sa, n * fs);
    kd__gemm(ctx, 0, 1, n, d, fs, 1.0f, b->sa, fs, P + c->o_s2, fs, 0.0f, y, d);
}

static void gate_forward(kd__moe_core *c, kd_context *ctx, const float *x, size_t n, moe_bufs *b)
{
    size_t E = c->E, d = c->d, dl = c->dl;
    const float *P = c->param;
    if (c->cfg.gate == KD_MOE_GATE_LINEAR) {
        kd__gemm(ctx, 0, 1, n, E, d, 1.0f, x, d, P + c->o_gate, d, 0.0f, b->logits, E);
        return;
    }
    /* ph = x P^T normalised rows (pn: norms); cn = c / |c| rows; z = g ph cn^T */
    kd__gemm(ctx, 0, 1, n, dl, d, 1.0f, x, d, P + c->o_proj, d, 0.0f, b->ph, dl);
    for (size_t t = 0; t < n; t++) {
        float *r = b->ph + t * dl, s = 0;
        for (size_t j = 0; j < dl; j++) s += r[j] * r[j];
        float nr = sqrtf(s) + 1e-6f;
        b->pn[t] = nr;
        for (size_t j = 0; j < dl; j++) r[j] /= nr;
    }
    for (size_t e = 0; e < E; e++) {
        const float *r = P + c->o_cemb + e * dl;
        float s = 0;
        for (size_t j = 0; j < dl; j++) s += r[j] * r[j];
        float nr = sqrtf(s) + 1e-6f;
        for (size_t j = 0; j < dl; j++) b->cn[e * dl + j] = r[j] / nr;
    }
    float g = expf(P[c->o_lscale]);
    kd__gemm(ctx, 0, 1, n, E, dl, g, b->ph, dl, b->cn, dl, 0.0f, b->logits, E);
}

/* prob = softmax(logits); entropy, mean prob, z-loss. */
static void router_stats(kd__moe_core *c, size_t n, moe_bufs *b)
{
    size_t E = c->E;
    double ent = 0, zl = 0;
    for (size_t e = 0; e < E; e++) c->mean_prob[e] = 0;
    for (size_t t = 0; t < n; t++) {
        const float *z = b->logits + t * E;
        float *p = b->prob + t * E, m = z[0];
        for (size_t e = 1; e < E; e++) m = z[e] > m ? z[e] : m;
        double s = 0;
        for (size_t e = 0; e < E; e++) {
            p[e] = expf(z[e] - m);
            s += p[e];
        }
        double lse = (double)m + log(s), h = 0;
        for (size_t e = 0; e < E; e++) {
            p[e] = (float)(p[e] / s);
            if (p[e] > 0) h -= (double)p[e] * log((double)p[e]);
            c->mean_prob[e] += p[e];
        }
        ent += h;
        zl += lse * lse;
    }
    for (size_t e = 0; e < E; e++) c->mean_prob[e] /= (float)n;
    c->entropy = (float)(ent / (double)n);
    c->zloss = (float)(zl / (double)n);
}

static kd_status route(kd__moe_core *c, kd_context *ctx, kd_rng *rng, int train, size_t n,
                       moe_bufs *b, size_t M)
{
    size_t E = c->E;
    kd_router_batch rb = {ctx, b->logits, n, E, c->k, c->capacity, train, rng, b->rsaved};
    size_t na = 0;
    kd_status st = c->rvt->route(c->rstate, &rb, b->asg, &na);
    if (st != KD_OK)
        return kd__fail(ctx, KD_E_CALLBACK, "moe: router '%s' failed (%s)", c->rvt->name,
                        kd_status_string(st));
    if (na > M)
        return kd__fail(ctx, KD_E_CALLBACK, "moe: router '%s' returned %zu > %zu assignments",
                        c->rvt->name, na, M);
    for (size_t i = 0; i < na; i++)
        if (b->asg[i].token >= n || b->asg[i].expert >= E)
            return kd__fail(ctx, KD_E_CALLBACK,
                            "moe: router '%s' assignment %zu is invalid (token %u, expert %u)",
                            c->rvt->name, i, (unsigned)b->asg[i].token,
                            (unsigned)b->asg[i].expert);
    c->n_assign = na;
    return KD_OK;
}

/* Stable counting sort by expert with capacity; fills perm, offs, dropped. */
static void group(kd__moe_core *c, moe_bufs *b)
{
    size_t E = c->E, na = c->n_assign, C = c->capacity;
    for (size_t e = 0; e < E; e++) c->routed[e] = c->dropped[e] = 0;
    for (size_t i = 0; i < na; i++) c->routed[b->asg[i].expert]++;
    size_t acc = 0;
    for (size_t e = 0; e < E; e++) {
        size_t keep = c->routed[e];
        if (C && keep > C) {
            c->dropped[e] = keep - C;
            keep = C;
        }
        c->offs[e] = acc;
        acc += keep;
    }
    c->offs[E] = acc;
    c->n_kept = acc;
    /* fill: reuse dropped[] as nothing; use a running cursor per expert in offs order */
    size_t *seen = c->dropped; /* temporarily: count seen per expert, restored below */
    for (size_t e = 0; e < E; e++) seen[e] = 0;
    for (size_t i = 0; i < na; i++) {
        size_t e = b->asg[i].expert, s = seen[e]++;
        if (s < c->offs[e + 1] - c->offs[e]) b->perm[c->offs[e] + s] = (uint32_t)i;
    }
    for (size_t e = 0; e < E; e++) c->dropped[e] = c->routed[e] - (c->offs[e + 1] - c->offs[e]);
}

/* Expert e's rows r0 .. r0 + cnt of the grouped buffers. An expert with at
 * most 4 rows keeps them row-major (cnt x width: kd__gemm's small-M kernels
 * serve batch-1 inference); a larger one stores its H, U, A, O, dO, dA, dU
 * blocks transposed (width x cnt), so that the expert's weights are GEMM's
 * left operand: split into 8 experts of 256 rows, X W^T ran 1.24x slower
 * than one dense GEMM of the same flops, W X^T 1.06x (BLIS, skx). */
static int tposed(size_t cnt)
{
    return cnt > 4;
}

#define KD_MOE_CHUNK 16

/* out[token] += (weighted ? routing weight : 1) * row r of blk (d wide) for
 * every row of expert e, in row order (a token listed twice gets both). */
static void scatter_block(const kd__moe_core *c, const moe_bufs *b, size_t e, int weighted,
                          float *out, const float *blk)
{
    size_t d = c->d, r0 = c->offs[e], cnt = c->offs[e + 1] - r0;
    if (!tposed(cnt)) {
        for (size_t r = r0; r < r0 + cnt; r++) {
            const kd_router_assign *as = &b->asg[b->perm[r]];
            axpy(out + (size_t)as->token * d, weighted ? as->weight : 1.0f, blk + r * d, d);
        }
        return;
    }
    const float *bt = blk + r0 * d; /* d x cnt */
    for (size_t rc = 0; rc < cnt; rc += KD_MOE_CHUNK) {
        size_t q = cnt - rc < KD_MOE_CHUNK ? cnt - rc : KD_MOE_CHUNK;
        float *row[KD_MOE_CHUNK], w[KD_MOE_CHUNK];
        for (size_t i = 0; i < q; i++) {
            const kd_router_assign *as = &b->asg[b->perm[r0 + rc + i]];
            row[i] = out + (size_t)as->token * d;
            w[i] = weighted ? as->weight : 1.0f;
        }
        for (size_t j = 0; j < d; j++) {
            const float *src = bt + j * cnt + rc;
            for (size_t i = 0; i < q; i++) row[i][j] += w[i] * src[i];
        }
    }
}

/* Backward of the weighted scatter for expert e: dO = w * dy[token] (in
 * the block's layout) and dw[assignment] += dy[token] . O row. */
static void out_grad_block(const kd__moe_core *c, moe_bufs *b, size_t e, const float *dy)
{
    size_t d = c->d, r0 = c->offs[e], cnt = c->offs[e + 1] - r0;
    if (!tposed(cnt)) {
        for (size_t r = r0; r < r0 + cnt; r++) {
            size_t ai = b->perm[r];
            const float *g = dy + (size_t)b->asg[ai].token * d, *o = b->o + r * d;
            float w = b->asg[ai].weight, s = 0, *dO = b->dO + r * d;
            for (size_t j = 0; j < d; j++) {
                s += g[j] * o[j];
                dO[j] = w * g[j];
            }
            b->dw[ai] += s;
        }
        return;
    }
    const float *ot = b->o + r0 * d;
    float *dot = b->dO + r0 * d;
    for (size_t rc = 0; rc < cnt; rc += KD_MOE_CHUNK) {
        size_t q = cnt - rc < KD_MOE_CHUNK ? cnt - rc : KD_MOE_CHUNK;
        const float *g[KD_MOE_CHUNK];
        float w[KD_MOE_CHUNK], s[KD_MOE_CHUNK];
        for (size_t i = 0; i < q; i++) {
            const kd_router_assign *as = &b->asg[b->perm[r0 + rc + i]];
            g[i] = dy + (size_t)as->token * d;
            w[i] = as->weight;
            s[i] = 0;
        }
        for (size_t j = 0; j < d; j++) {
            const float *o = ot + j * cnt + rc;
            float *t = dot + j * cnt + rc;
            for (size_t i = 0; i < q; i++) {
                s[i] += g[i][j] * o[i];
                t[i] = w[i] * g[i][j];
            }
        }
        for (size_t i = 0; i < q; i++) b->dw[b->perm[r0 + rc + i]] += s[i];
    }
}

kd_status kd__moe_forward(kd__moe_core *c, kd_context *ctx, kd_rng *rng, int train,
                          const float *x, size_t n, float *y, float *fwd)
{
    size_t E = c->E, d = c->d, f = c->f;
    c->n = n;
    c->train = train;
    c->n_assign = c->n_kept = 0;
    c->balance = c->zloss = c->entropy = 0;
    for (size_t e = 0; e < E; e++) c->routed[e] = c->dropped[e] = 0, c->mean_prob[e] = 0;
    for (size_t e = 0; e <= E; e++) c->offs[e] = 0;
    if (n == 0) return KD_OK;
    size_t M = max_assign(c, n), rs = router_saved(c, n);
    moe_bufs b;
    carve(c, n, M, rs, fwd, 0, &b);
    c->capacity = capacity_of(c, n);
    const float *P = c->param;

    gate_forward(c, ctx, x, n, &b);
    router_stats(c, n, &b);
    kd_status st = route(c, ctx, rng, train, n, &b, M);
    if (st != KD_OK) return st;
    group(c, &b);
    /* balance = E * sum_i f_i P_i, f_i over all assignments before drops */
    if (c->n_assign) {
        double bl = 0;
        for (size_t e = 0; e < E; e++)
            bl += (double)c->routed[e] / (double)c->n_assign * c->mean_prob[e];
        c->balance = (float)(bl * (double)E);
    }

    for (size_t r = 0; r < c->n_kept; r++)
        memcpy(b.xg + r * d, x + (size_t)b.asg[b.perm[r]].token * d, d * sizeof(float));
    for (size_t e = 0; e < E; e++) {
        size_t r0 = c->offs[e], cnt = c->offs[e + 1] - r0;
        if (!cnt) continue;
        const float *W1 = P + c->o_w1 + e * f * d, *W3 = P + c->o_w3 + e * f * d,
                    *W2 = P + c->o_w2 + e * d * f;
        float *h = b.h + r0 * f, *u = b.u ? b.u + r0 * f : NULL, *a = b.a + r0 * f;
        const float *xg = b.xg + r0 * d;
        if (tposed(cnt)) { /* H^T = W1 Xg^T (f x cnt), ..., O^T = W2 A^T (d x cnt) */
            kd__gemm(ctx, 0, 1, f, cnt, d, 1.0f, W1, d, xg, d, 0.0f, h, cnt);
            if (u) kd__gemm(ctx, 0, 1, f, cnt, d, 1.0f, W3, d, xg, d, 0.0f, u, cnt);
            act_forward(c->cfg.activation, h, u, a, cnt * f);
            kd__gemm(ctx, 0, 0, d, cnt, f, 1.0f, W2, f, a, cnt, 0.0f, b.o + r0 * d, cnt);
        } else {
            kd__gemm(ctx, 0, 1, cnt, f, d, 1.0f, xg, d, W1, d, 0.0f, h, f);
            if (u) kd__gemm(ctx, 0, 1, cnt, f, d, 1.0f, xg, d, W3, d, 0.0f, u, f);
            act_forward(c->cfg.activation, h, u, a, cnt * f);
            kd__gemm(ctx, 0, 1, cnt, d, f, 1.0f, a, f, W2, f, 0.0f, b.o + r0 * d, d);
        }
    }
    shared_forward(c, ctx, x, n, y, &b);
    for (size_t e = 0; e < E; e++)
        scatter_block(c, &b, e, 1, y, b.o);
    return KD_OK;
}

/* ---- backward ------------------------------------------------------------------- */

/* dz += softmax backward of dL/dp = g (per expert, same for every token: balance)
 * and of the z-loss. */
static void aux_backward(kd__moe_core *c, size_t n, moe_bufs *b)
{
    size_t E = c->E;
    float cb = c->cfg.balance_coef, cz = c->cfg.z_coef;
    if (!(cb > 0) && !(cz > 0)) return;
    for (size_t t = 0; t < n; t++) {
        const float *p = b->prob + t * E, *z = b->logits + t * E;
        float *dz = b->dz + t * E;
        if (cb > 0 && c->n_assign) {
            /* g_i = cb * E * f_i / n */
            double s = 0;
            for (size_t e = 0; e < E; e++)
                s += (double)p[e] * (double)c->routed[e];
            double sc = (double)cb * (double)E / ((double)c->n_assign * (double)n);
            for (size_t e = 0; e < E; e++)
                dz[e] += (float)(sc * (double)p[e] * ((double)c->routed[e] - s));
        }
        if (cz > 0) {
            float m = z[0];
            for (size_t e = 1; e < E; e++) m = z[e] > m ? z[e] : m;
            double s = 0;
            for (size_t e = 0; e < E; e++) s += exp((double)(z[e] - m));
            double lse = (double)m + log(s), sc = 2.0 * (double)cz * lse / (double)n;
            for (size_t e = 0; e < E; e++) dz[e] += (float)(sc * (double)p[e]);
        }
    }
}

static void gate_backward(kd__moe_core *c, kd_context *ctx, const float *x, size_t n, float *dx,
                          moe_bufs *b)
{
    size_t E = c->E, d = c->d, dl = c->dl;
    const float *P = c->param;
    float *G = c->grad;
    if (c->cfg.gate == KD_MOE_GATE_LINEAR) {
        kd__gemm(ctx, 1, 0, E, d, n, 1.0f, b->dz, E, x, d, 1.0f, G + c->o_gate, d);
        if (dx) kd__gemm(ctx, 0, 0, n, d, E, 1.0f, b->dz, E, P + c->o_gate, d, 1.0f, dx, d);
        return;
    }
    float g = expf(P[c->o_lscale]);
    double ds = 0;
    for (size_t i = 0; i < n * E; i++) ds += (double)b->dz[i] * (double)b->logits[i];
    G[c->o_lscale] += (float)ds;
    /* dphn = g dz cn (n x dl); dcn = g dz^T phn (E x dl) */
    kd__gemm(ctx, 0, 0, n, dl, E, g, b->dz, E, b->cn, dl, 0.0f, b->dph, dl);
    kd__gemm(ctx, 1, 0, E, dl, n, g, b->dz, E, b->ph, dl, 0.0f, b->dcn, dl);
    for (size_t t = 0; t < n; t++) {
        float *dr = b->dph + t * dl;
        const float *r = b->ph + t * dl;
        float s = 0;
        for (size_t j = 0; j < dl; j++) s += r[j] * dr[j];
        for (size_t j = 0; j < dl; j++) dr[j] = (dr[j] - r[j] * s) / b->pn[t];
    }
    kd__gemm(ctx, 1, 0, dl, d, n, 1.0f, b->dph, dl, x, d, 1.0f, G + c->o_proj, d);
    if (dx) kd__gemm(ctx, 0, 0, n, d, dl, 1.0f, b->dph, dl, P + c->o_proj, d, 1.0f, dx, d);
    for (size_t e = 0; e < E; e++) {
        const float *raw = P + c->o_cemb + e * dl, *cn = b->cn + e * dl;
        const float *dc = b->dcn + e * dl;
        float s = 0, nr2 = 0;
        for (size_t j = 0; j < dl; j++) s += cn[j] * dc[j], nr2 += raw[j] * raw[j];
        float nr = sqrtf(nr2) + 1e-6f;
        for (size_t j = 0; j < dl; j++) G[c->o_cemb + e * dl + j] += (dc[j] - cn[j] * s) / nr;
    }
}

kd_status kd__moe_backward(kd__moe_core *c, kd_context *ctx, const float *x, const float *dy,
                           float *dx, float *fwd, float *bwd)
{
    size_t E = c->E, d = c->d, f = c->f, n = c->n, fs = c->fs;
    if (n == 0) return KD_OK;
    size_t M = max_assign(c, n), rs = router_saved(c, n);
    moe_bufs b;
    carve(c, n, M, rs, fwd, 0, &b);
    carve(c, n, M, rs, bwd, 1, &b);
    const float *P = c->param;
    float *G = c->grad;
    kd_moe_activation act = c->cfg.activation;

    /* shared experts: dx = dsh S1 (+ dsu S3), or 0 */
    if (fs) {
        kd__gemm(ctx, 0, 0, n, fs, d, 1.0f, dy, d, P + c->o_s2, fs, 0.0f, b.dsa, fs);
        kd__gemm(ctx, 1, 0, d, fs, n, 1.0f, dy, d, b.sa, fs, 1.0f, G + c->o_s2, fs);
        act_backward(act, b.sh, b.su, b.dsa, b.dsu, n * fs);
        kd__gemm(ctx, 1, 0, fs, d, n, 1.0f, b.dsa, fs, x, d, 1.0f, G + c->o_s1, d);
        if (b.dsu) kd__gemm(ctx, 1, 0, fs, d, n, 1.0f, b.dsu, fs, x, d, 1.0f, G + c->o_s3, d);
        if (dx) {
            kd__gemm(ctx, 0, 0, n, d, fs, 1.0f, b.dsa, fs, P + c->o_s1, d, 0.0f, dx, d);
            if (b.dsu) kd__gemm(ctx, 0, 0, n, d, fs, 1.0f, b.dsu, fs, P + c->o_s3, d, 1.0f, dx, d);
        }
    } else if (dx) {
        memset(dx, 0, n * d * sizeof(float));
    }

    /* routing-weight gradients and weighted output gradients */
    for (size_t i = 0; i < c->n_assign; i++) b.dw[i] = 0;
    for (size_t e = 0; e < E; e++) out_grad_block(c, &b, e, dy);
    for (size_t e = 0; e < E; e++) {
        size_t r0 = c->offs[e], cnt = c->offs[e + 1] - r0;
        if (!cnt) continue;
        const float *W1 = P + c->o_w1 + e * f * d, *W3 = P + c->o_w3 + e * f * d,
                    *W2 = P + c->o_w2 + e * d * f;
        float *dW1 = G + c->o_w1 + e * f * d, *dW3 = G + c->o_w3 + e * f * d,
              *dW2 = G + c->o_w2 + e * d * f;
        float *dO = b.dO + r0 * d, *dA = b.dA + r0 * f, *dU = b.dU ? b.dU + r0 * f : NULL;
        const float *xg = b.xg + r0 * d, *a = b.a + r0 * f;
        if (tposed(cnt)) { /* blocks are transposed: dO^T d x cnt, A^T, dA^T f x cnt */
            kd__gemm(ctx, 1, 0, f, cnt, d, 1.0f, W2, f, dO, cnt, 0.0f, dA, cnt);
            kd__gemm(ctx, 0, 1, d, f, cnt, 1.0f, dO, cnt, a, cnt, 1.0f, dW2, f);
            act_backward(act, b.h + r0 * f, b.u ? b.u + r0 * f : NULL, dA, dU, cnt * f);
            kd__gemm(ctx, 0, 0, f, d, cnt, 1.0f, dA, cnt, xg, d, 1.0f, dW1, d);
            if (dU) kd__gemm(ctx, 0, 0, f, d, cnt, 1.0f, dU, cnt, xg, d, 1.0f, dW3, d);
            if (dx) { /* dXg^T = W1^T dA^T (+ W3^T dU^T) into dO (free now) */
                kd__gemm(ctx, 1, 0, d, cnt, f, 1.0f, W1, d, dA, cnt, 0.0f, dO, cnt);
                if (dU) kd__gemm(ctx, 1, 0, d, cnt, f, 1.0f, W3, d, dU, cnt, 1.0f, dO, cnt);
            }
        } else {
            kd__gemm(ctx, 0, 0, cnt, f, d, 1.0f, dO, d, W2, f, 0.0f, dA, f);
            kd__gemm(ctx, 1, 0, d, f, cnt, 1.0f, dO, d, a, f, 1.0f, dW2, f);
            act_backward(act, b.h + r0 * f, b.u ? b.u + r0 * f : NULL, dA, dU, cnt * f);
            kd__gemm(ctx, 1, 0, f, d, cnt, 1.0f, dA, f, xg, d, 1.0f, dW1, d);
            if (dU) kd__gemm(ctx, 1, 0, f, d, cnt, 1.0f, dU, f, xg, d, 1.0f, dW3, d);
            if (dx) { /* dXg into dO (free now) */
                kd__gemm(ctx, 0, 0, cnt, d, f, 1.0f, dA, f, W1, d, 0.0f, dO, d);
                if (dU) kd__gemm(ctx, 0, 0, cnt, d, f, 1.0f, dU, f, W3, d, 1.0f, dO, d);
            }
        }
    }
    if (dx)
        for (size_t e = 0; e < E; e++) scatter_block(c, &b, e, 0, dx, b.dO);

    /* router and auxiliary losses -> gate logits -> gate parameters, dx */
    memset(b.dz, 0, n * E * sizeof(float));
    if (c->rvt->backward) {
        kd_router_batch rb = {ctx, b.logits, n, E, c->k, c->capacity, 1, NULL, b.rsaved};
        kd_status st = c->rvt->backward(c->rstate, &rb, b.asg, c->n_assign, b.dw, b.dz);
        if (st != KD_OK)
            return kd__fail(ctx, KD_E_CALLBACK, "moe: router '%s' backward failed (%s)",
                            c->rvt->name, kd_status_string(st));
    }
    aux_backward(c, n, &b);
    gate_backward(c, ctx, x, n, dx, &b);
    return KD_OK;
}
