/* test_moe_layer.c - the MoE layer: finite-difference gradients (whole layer,
 * every router, both gates, shared experts, aux losses), the grouped
 * implementation against a straightforward per-token reference, capacity
 * and routing edge cases, custom routers, hostile input, allocation
 * failures, and the 'moe' model layer (spec, gradients through a model). */
#include <string.h>

#include "kd_test.h"

/* ---- helpers ---------------------------------------------------------------- */

static kd_moe_config base_cfg(size_t E, size_t k, size_t d, size_t f)
{
    kd_moe_config c;
    kd_moe_config_default(&c);
    c.n_experts = E;
    c.top_k = k;
    c.d_model = d;
    c.d_ff = f;
    return c;
}

static kd_moe *make(kd_context *ctx, const kd_moe_config *c)
{
    kd_moe *m = NULL;
    ck_assert_msg(kd_moe_create(ctx, c, &m) == KD_OK, "%s", kd_context_last_error(ctx));
    return m;
}

static float *tensor(kd_moe *m, const char *name)
{
    for (size_t i = 0; i < kd_moe_tensor_count(m); i++) {
        const char *nm;
        float *d;
        ck_assert_int_eq(kd_moe_tensor(m, i, &nm, &d, NULL, NULL, NULL), KD_OK);
        if (strcmp(nm, name) == 0) return d;
    }
    return NULL;
}

static float act1(kd_moe_activation a, float h, float u)
{
    if (a == KD_MOE_RELU) return h > 0 ? h : 0;
    if (a == KD_MOE_GELU) return 0.5f * h * (1.0f + erff(h / sqrtf(2.0f)));
    return h / (1.0f + expf(-h)) * u;
}

/* One expert (or the shared FFN with hidden fh) on one token, plain loops. */
static void ffn1(const kd_moe_config *c, const float *W1, const float *W3, const float *W2,
                 size_t fh, const float *x, float wt, float *y)
{
    size_t d = c->d_model;
    float *a = malloc(fh * sizeof(float));
    for (size_t i = 0; i < fh; i++) {
        float h = 0, u = 0;
        for (size_t j = 0; j < d; j++) {
            h += W1[i * d + j] * x[j];
            if (W3) u += W3[i * d + j] * x[j];
        }
        a[i] = act1(c->activation, h, u);
    }
    for (size_t j = 0; j < d; j++) {
        float s = 0;
        for (size_t i = 0; i < fh; i++) s += W2[j * fh + i] * a[i];
        y[j] += wt * s;
    }
    free(a);
}

/* Per-token reference of a linear-gate layer with router (vt, st). */
static void reference(kd_moe *m, const kd_moe_config *c, const kd_router_vtable *vt,
                      const void *st, const float *x, size_t n, float *y)
{
    size_t E = c->n_experts, d = c->d_model, f = c->d_ff, k = c->top_k;
    const float *Wg = tensor(m, "gate.weight"), *W1 = tensor(m, "experts.w1"),
                *W3 = tensor(m, "experts.w3"), *W2 = tensor(m, "experts.w2");
    float *z = malloc((n * E + 1) * sizeof(float));
    for (size_t t = 0; t < n; t++)
        for (size_t e = 0; e < E; e++) {
            float s = 0;
            for (size_t j = 0; j < d; j++) s += Wg[e * d + j] * x[t * d + j];
            z[t * E + e] = s;
        }
    size_t C = 0;
    if (c->capacity_factor > 0 || vt == kd_router_builtin(KD_ROUTER_EXPERT_CHOICE)) {
        double cf = c->capacity_factor > 0 ? c->capacity_factor : 1.0;
        C = (size_t)ceil(cf * (double)n * (double)k / (double)E);
        if (C > n) C = n;
    }
    size_t M = vt->max_assignments(st, n, E, k, C), rs = vt->saved_size ? vt->saved_size(st, n, E) : 0;
    kd_router_assign *a = malloc((M + 1) * sizeof *a);
    float *saved = malloc((rs + 1) * sizeof(float));
    kd_rng rng;
    kd_rng_seed(&rng, 1, 1);
    kd_router_batch b = {NULL, z, n, E, k, C, 0, &rng, saved};
    size_t na = 0;
    ck_assert_int_eq(vt->route(st, &b, a, &na), KD_OK);
    memset(y, 0, n * d * sizeof(float));
    if (c->n_shared)
        for (size_t t = 0; t < n; t++)
            ffn1(c, tensor(m, "shared.w1"), tensor(m, "shared.w3"), tensor(m, "shared.w2"),
                 c->n_shared * f, x + t * d, 1.0f, y + t * d);
    size_t *seen = calloc(E, sizeof(size_t));
    for (size_t i = 0; i < na; i++) {
        size_t e = a[i].expert, t = a[i].token;
        if (C && ++seen[e] > C) continue;
        ffn1(c, W1 + e * f * d, W3 ? W3 + e * f * d : NULL, W2 + e * d * f, f, x + t * d,
             a[i].weight, y + t * d);
    }
    free(seen);
    free(saved);
    free(a);
    free(z);
}

/* L = sum(y * w) + cb * balance + cz * z_loss, in double. The context RNG is
 * reset before every forward so noisy routing draws the same noise. */
typedef struct {
    kd_context *ctx;
    kd_moe *m;
    kd_rng rng0;
    const float *x;
    size_t n, d;
    const float *w;
    float *y;
    float cb, cz;
} lossctx;

static double eval(lossctx *L)
{
    *kd_context_rng(L->ctx) = L->rng0;
    ck_assert_int_eq(kd_moe_forward(L->m, KD_MODE_TRAIN, L->x, L->n, L->y), KD_OK);
    double s = 0;
    for (size_t i = 0; i < L->n * L->d; i++) s += (double)L->y[i] * L->w[i];
    float bal, zl;
    kd_moe_aux_losses(L->m, &bal, &zl);
    return s + (double)L->cb * bal + (double)L->cz * zl;
}

/* 1 ok, 0 mismatch, 2 discontinuity (routing flip or ReLU kink) near v. */
static int coord(lossctx *L, float *v, double l0, double a)
{
    static const float hs[2] = {1e-2f, 2.5e-3f};
    double lp = 0, lm = 0, lim = 2e-3 + 2e-2 * fabs(a);
    for (int i = 0; i < 2; i++) {
        float old = *v, h = hs[i];
        *v = old + h;
        lp = eval(L);
        *v = old - h;
        lm = eval(L);
        *v = old;
        if (fabs((lp - lm) / (2.0 * h) - a) <= lim) return 1;
    }
    return fabs((lp - l0) - (l0 - lm)) / hs[1] > lim ? 2 : 0;
}

/* Checks every parameter and input coordinate (strided above 600). */
static void gradcheck(kd_moe_config *c, size_t n, const kd_router_vtable *vt, const void *st)
{
    kd_context *ctx = kd_test_ctx();
    kd_moe *m = make(ctx, c);
    if (vt) ck_assert_int_eq(kd_moe_set_router(m, vt, st), KD_OK);
    size_t d = c->d_model, np;
    float *p, *g;
    ck_assert_int_eq(kd_moe_blocks(m, &p, &g, &np), KD_OK);
    float *x = malloc(n * d * sizeof(float)), *w = malloc(n * d * sizeof(float));
    float *y = malloc(n * d * sizeof(float)), *dx = malloc(n * d * sizeof(float));
    float *ga = malloc(np * sizeof(float));
    kd_test_fill(x, n * d, -1, 1, 21);
    kd_test_fill(w, n * d, -1, 1, 22);
    lossctx L = {ctx, m, *kd_context_rng(ctx), x, n, d, w, y, c->balance_coef, c->z_coef};
    double l0 = eval(&L);
    ck_assert_int_eq(kd_moe_zero_grad(m), KD_OK);
    ck_assert_int_eq(kd_moe_backward(m, w, dx), KD_OK);
    memcpy(ga, g, np * sizeof(float));
    size_t checked = 0, skipped = 0, stride = np > 600 ? np / 600 + 1 : 1;
    for (size_t i = 0; i < np; i += stride) {
        int r = coord(&L, &p[i], l0, ga[i]);
        ck_assert_msg(r != 0, "param %zu: analytic %g", i, ga[i]);
        checked++;
        skipped += r == 2;
    }
    float *xv = (float *)x;
    for (size_t i = 0; i < n * d; i++) {
        int r = coord(&L, &xv[i], l0, dx[i]);
        ck_assert_msg(r != 0, "x %zu: analytic %g", i, dx[i]);
        checked++;
        skipped += r == 2;
    }
    ck_assert_msg(skipped * 10 <= checked, "%zu of %zu coordinates skipped", skipped, checked);
    free(ga);
    free(dx);
    free(y);
    free(w);
    free(x);
    kd_moe_destroy(m);
    kd_context_destroy(ctx);
}

/* ---- gradient checks --------------------------------------------------------- */

START_TEST(test_grad_routers)
{
    static const kd_router_kind kinds[] = {KD_ROUTER_TOPK, KD_ROUTER_TOPK_RAW,
                                           KD_ROUTER_NOISY_TOPK, KD_ROUTER_EXPERT_CHOICE,
                                           KD_ROUTER_HASH, KD_ROUTER_THRESHOLD};
    kd_moe_config c = base_cfg(4, 2, 5, 6);
    c.activation = KD_MOE_GELU;
    c.router.kind = kinds[_i];
    c.router.noise_std = 0.5f;
    c.router.threshold = 0.6f;
    c.router.k_max = 3;
    c.balance_coef = 0.1f;
    c.z_coef = 0.01f;
    gradcheck(&c, 9, NULL, NULL);
}
END_TEST

START_TEST(test_grad_activations_shared_capacity)
{
    kd_moe_config c = base_cfg(5, 2, 6, 4);
    c.activation = (kd_moe_activation)(_i % 3);
    c.n_shared = _i >= 3 ? 2 : 0;
    c.capacity_factor = _i >= 3 ? 0.8f : 0.0f;
    gradcheck(&c, 11, NULL, NULL);
}
END_TEST

START_TEST(test_grad_cosine_gate)
{
    kd_moe_config c = base_cfg(4, 2, 6, 5);
    c.gate = KD_MOE_GATE_COSINE;
    c.cosine_dim = 3;
    c.activation = KD_MOE_SWIGLU;
    c.z_coef = 0.01f;
    c.balance_coef = 0.05f;
    gradcheck(&c, 8, NULL, NULL);
}
END_TEST

/* ---- grouped vs per-token reference ------------------------------------------- */

START_TEST(test_grouped_equals_reference)
{
    static const kd_router_kind kinds[] = {KD_ROUTER_TOPK, KD_ROUTER_TOPK_RAW,
                                           KD_ROUTER_EXPERT_CHOICE, KD_ROUTER_HASH,
                                           KD_ROUTER_THRESHOLD, KD_ROUTER_NOISY_TOPK};
    kd_context *ctx = kd_test_ctx();
    for (size_t variant = 0; variant < 4; variant++) {
        kd_moe_config c = base_cfg(8, 2, 16, 12);
        c.router.kind = kinds[_i];
        c.router.k_max = 4;
        c.activation = (kd_moe_activation)(variant % 3);
        c.n_shared = variant == 1 ? 1 : 0;
        c.capacity_factor = variant == 2 ? 0.7f : (variant == 3 ? 50.0f : 0.0f);
        kd_moe *m = make(ctx, &c);
        size_t n = 37, d = 16;
        float *x = malloc(n * d * sizeof(float)), *y = malloc(n * d * sizeof(float)),
              *yr = malloc(n * d * sizeof(float));
        kd_test_fill(x, n * d, -1, 1, 5 + variant);
        ck_assert_int_eq(kd_moe_forward(m, KD_MODE_INFER, x, n, y), KD_OK);
        reference(m, &c, kd_router_builtin(c.router.kind), &c.router, x, n, yr);
        kd_assert_close(y, yr, n * d, 1e-5, 1e-4);
        /* training forward gives the same output (no noise) except noisy */
        if (c.router.kind != KD_ROUTER_NOISY_TOPK) {
            ck_assert_int_eq(kd_moe_forward(m, KD_MODE_TRAIN, x, n, y), KD_OK);
            kd_assert_close(y, yr, n * d, 1e-5, 1e-4);
        }
        size_t routed[8], dropped[8], tot = 0, drop = 0;
        ck_assert_int_eq(kd_moe_stats(m, routed, dropped, NULL, NULL), KD_OK);
        for (size_t e = 0; e < 8; e++) tot += routed[e], drop += dropped[e];
        if (c.router.kind == KD_ROUTER_TOPK) ck_assert_uint_eq(tot, n * 2);
        if (variant == 3) ck_assert_uint_eq(drop, 0); /* capacity above the token count */
        free(x);
        free(y);
        free(yr);
        kd_moe_destroy(m);
    }
    kd_context_destroy(ctx);
}
END_TEST

/* ---- custom routers and edge cases --------------------------------------------- */

typedef struct {
    int mode; /* 0: expert (t % 2) twice, weights .3/.7; 1: nothing; 2: bad expert; 3: too many;
                 4: (t % 2) once with weight 1 */
} custom_state;

static size_t cu_max(const void *s, size_t n, size_t E, size_t k, size_t C)
{
    (void)s, (void)E, (void)k, (void)C;
    return 2 * n;
}

static kd_status cu_route(const void *s, const kd_router_batch *b, kd_router_assign *out,
                          size_t *n_out)
{
    int mode = ((const custom_state *)s)->mode;
    size_t na = 0;
    if (mode == 1) {
        *n_out = 0;
        return KD_OK;
    }
    for (size_t t = 0; t < b->n_tokens; t++) {
        uint32_t e = (uint32_t)(t % 2);
        if (mode == 2) e = (uint32_t)b->n_experts;
        if (mode == 4) {
            out[na++] = (kd_router_assign){(uint32_t)t, e, 1.0f};
            continue;
        }
        out[na++] = (kd_router_assign){(uint32_t)t, e, 0.3f};
        out[na++] = (kd_router_assign){(uint32_t)t, e, 0.7f};
    }
    *n_out = mode == 3 ? na + 1 : na;
    return KD_OK;
}

static const kd_router_vtable custom_vt = {KD_ROUTER_ABI_VERSION, "custom", cu_max, NULL,
                                           cu_route, NULL};

START_TEST(test_duplicate_expert_and_empty_experts)
{
    kd_context *ctx = kd_test_ctx();
    kd_moe_config c = base_cfg(4, 2, 6, 5);
    c.activation = KD_MOE_GELU;
    kd_moe *m = make(ctx, &c);
    size_t n = 7, d = 6, np;
    float x[42], y1[42], y2[42], dx1[42], dx2[42], w[42];
    kd_test_fill(x, n * d, -1, 1, 3);
    kd_test_fill(w, n * d, -1, 1, 4);
    float *p, *g;
    kd_moe_blocks(m, &p, &g, &np);
    float *g1 = malloc(np * sizeof(float));
    custom_state twice = {0}, once = {4};
    /* expert listed twice with .3 and .7 == once with weight 1 */
    ck_assert_int_eq(kd_moe_set_router(m, &custom_vt, &twice), KD_OK);
    ck_assert_int_eq(kd_moe_forward(m, KD_MODE_TRAIN, x, n, y1), KD_OK);
    kd_moe_zero_grad(m);
    ck_assert_int_eq(kd_moe_backward(m, w, dx1), KD_OK);
    memcpy(g1, g, np * sizeof(float));
    size_t routed[4];
    kd_moe_stats(m, routed, NULL, NULL, NULL);
    ck_assert_uint_eq(routed[0], 8);
    ck_assert_uint_eq(routed[1], 6);
    ck_assert_uint_eq(routed[2], 0); /* experts that receive nothing */
    ck_assert_uint_eq(routed[3], 0);
    ck_assert_int_eq(kd_moe_set_router(m, &custom_vt, &once), KD_OK);
    ck_assert_int_eq(kd_moe_forward(m, KD_MODE_TRAIN, x, n, y2), KD_OK);
    kd_moe_zero_grad(m);
    ck_assert_int_eq(kd_moe_backward(m, w, dx2), KD_OK);
    kd_assert_close(y1, y2, n * d, 1e-6, 1e-5);
    kd_assert_close(dx1, dx2, n * d, 1e-6, 1e-5);
    kd_assert_close(g1, g, np, 1e-6, 1e-5);
    /* unused experts get exactly zero gradient */
    float *W1 = tensor(m, "experts.w1");
    size_t off = (size_t)(W1 - p) + 2 * 5 * 6;
    for (size_t i = 0; i < 2 * 5 * 6; i++) ck_assert_float_eq(g[off + i], 0.0f);
    /* the duplicate router's layer passes a finite-difference check too */
    free(g1);
    kd_moe_destroy(m);
    kd_context_destroy(ctx);
    gradcheck(&c, 5, &custom_vt, &twice);
}
END_TEST

START_TEST(test_all_dropped_and_zero_tokens)
{
    kd_context *ctx = kd_test_ctx();
    kd_moe_config c = base_cfg(3, 1, 4, 3);
    kd_moe *m = make(ctx, &c);
    float x[12], y[12], dx[12], w[12];
    kd_test_fill(x, 12, -1, 1, 8);
    kd_test_fill(w, 12, -1, 1, 9);
    custom_state none = {1};
    ck_assert_int_eq(kd_moe_set_router(m, &custom_vt, &none), KD_OK);
    for (int i = 0; i < 12; i++) y[i] = 99.0f;
    ck_assert_int_eq(kd_moe_forward(m, KD_MODE_TRAIN, x, 3, y), KD_OK);
    for (int i = 0; i < 12; i++) ck_assert_float_eq(y[i], 0.0f); /* no shared experts */
    ck_assert_int_eq(kd_moe_backward(m, w, dx), KD_OK);
    for (int i = 0; i < 12; i++) ck_assert_float_eq(dx[i], 0.0f);
    /* zero tokens: nothing read or written, stats zero */
    ck_assert_int_eq(kd_moe_set_router(m, NULL, NULL), KD_OK);
    y[0] = 5.0f;
    ck_assert_int_eq(kd_moe_forward(m, KD_MODE_TRAIN, NULL, 0, NULL), KD_OK);
    ck_assert_int_eq(kd_moe_backward(m, NULL, NULL), KD_OK);
    size_t routed[3] = {9, 9, 9};
    float ent = 1, bal = 1, zl = 1;
    ck_assert_int_eq(kd_moe_stats(m, routed, NULL, NULL, &ent), KD_OK);
    ck_assert_int_eq(kd_moe_aux_losses(m, &bal, &zl), KD_OK);
    ck_assert_uint_eq(routed[0] + routed[1] + routed[2], 0);
    ck_assert_float_eq(ent, 0.0f);
    ck_assert_float_eq(bal, 0.0f);
    /* capacity factor so small that every expert keeps one token */
    kd_moe_destroy(m);
    c.capacity_factor = 1e-6f;
    c.top_k = 1;
    m = make(ctx, &c);
    ck_assert_int_eq(kd_moe_forward(m, KD_MODE_TRAIN, x, 3, y), KD_OK);
    size_t dropped[3];
    kd_moe_stats(m, routed, dropped, NULL, NULL);
    for (int e = 0; e < 3; e++) ck_assert_uint_eq(routed[e] - dropped[e], routed[e] ? 1 : 0);
    kd_moe_destroy(m);
    kd_context_destroy(ctx);
}
END_TEST

START_TEST(test_stats_and_aux_values)
{
    kd_context *ctx = kd_test_ctx();
    kd_moe_config c = base_cfg(4, 1, 3, 2);
    kd_moe *m = make(ctx, &c);
    /* zero gate: uniform probabilities, ties -> expert 0 for every token */
    float *Wg = tensor(m, "gate.weight");
    memset(Wg, 0, 12 * sizeof(float));
    float x[15], y[15];
    kd_test_fill(x, 15, -1, 1, 2);
    ck_assert_int_eq(kd_moe_forward(m, KD_MODE_TRAIN, x, 5, y), KD_OK);
    size_t routed[4];
    float mp[4], ent, bal, zl;
    kd_moe_stats(m, routed, NULL, mp, &ent);
    kd_moe_aux_losses(m, &bal, &zl);
    ck_assert_uint_eq(routed[0], 5);
    ck_assert_uint_eq(routed[1], 0);
    ck_assert_float_eq_tol(mp[2], 0.25f, 1e-6f);
    ck_assert_float_eq_tol(ent, logf(4.0f), 1e-5f);
    ck_assert_float_eq_tol(bal, 1.0f, 1e-5f); /* E * (1 * 1/4) */
    ck_assert_float_eq_tol(zl, logf(4.0f) * logf(4.0f), 1e-5f);
    kd_moe_destroy(m);
    kd_context_destroy(ctx);
}
END_TEST

START_TEST(test_hostile)
{
    kd_context *ctx = kd_test_ctx();
    kd_moe_config c = base_cfg(4, 2, 3, 2), bad;
    kd_moe *m = NULL;
    ck_assert_int_eq(kd_moe_create(NULL, &c, &m), KD_E_INVALID);
    ck_assert_int_eq(kd_moe_create(ctx, NULL, &m), KD_E_INVALID);
    ck_assert_int_eq(kd_moe_create(ctx, &c, NULL), KD_E_INVALID);
    bad = c, bad.n_experts = 0;
    ck_assert_int_eq(kd_moe_create(ctx, &bad, &m), KD_E_INVALID);
    bad = c, bad.top_k = 5;
    ck_assert_int_eq(kd_moe_create(ctx, &bad, &m), KD_E_INVALID);
    bad = c, bad.capacity_factor = NAN;
    ck_assert_int_eq(kd_moe_create(ctx, &bad, &m), KD_E_INVALID);
    bad = c, bad.router.threshold = 0;
    bad.router.kind = KD_ROUTER_THRESHOLD;
    ck_assert_int_eq(kd_moe_create(ctx, &bad, &m), KD_E_INVALID);
    bad = c, bad.struct_size = 3;
    ck_assert_int_eq(kd_moe_create(ctx, &bad, &m), KD_E_VERSION);
    bad = c, bad.d_model = (size_t)1 << 40, bad.d_ff = (size_t)1 << 40;
    ck_assert_int_eq(kd_moe_create(ctx, &bad, &m), KD_E_OVERFLOW);
    ck_assert_ptr_null(m);
    m = make(ctx, &c);
    float x[6] = {1, 2, NAN, 0, 0, 0}, y[6], dy[6] = {1, 1, 1, 1, 1, 1};
    ck_assert_int_eq(kd_moe_backward(m, dy, NULL), KD_E_STATE);
    ck_assert_int_eq(kd_moe_forward(m, KD_MODE_TRAIN, NULL, 2, y), KD_E_INVALID);
    ck_assert_int_eq(kd_moe_forward(m, (kd_mode)7, x, 2, y), KD_E_INVALID);
    ck_assert_int_eq(kd_moe_forward(m, KD_MODE_TRAIN, x, (size_t)1 << 40, y), KD_E_OVERFLOW);
    /* NaN propagates, nothing fails */
    ck_assert_int_eq(kd_moe_forward(m, KD_MODE_TRAIN, x, 2, y), KD_OK);
    ck_assert(isnan(y[0]));
    ck_assert_int_eq(kd_moe_backward(m, dy, NULL), KD_OK);
    ck_assert_int_eq(kd_moe_set_top_k(m, 0), KD_E_INVALID);
    ck_assert_int_eq(kd_moe_set_top_k(m, 5), KD_E_INVALID);
    ck_assert_int_eq(kd_moe_set_top_k(NULL, 1), KD_E_INVALID);
    kd_router_vtable v0 = custom_vt;
    v0.abi_version = 0;
    ck_assert_int_eq(kd_moe_set_router(m, &v0, NULL), KD_E_VERSION);
    v0 = custom_vt;
    v0.route = NULL;
    ck_assert_int_eq(kd_moe_set_router(m, &v0, NULL), KD_E_INVALID);
    custom_state badexp = {2}, toomany = {3};
    ck_assert_int_eq(kd_moe_set_router(m, &custom_vt, &badexp), KD_OK);
    ck_assert_int_eq(kd_moe_forward(m, KD_MODE_INFER, x, 2, y), KD_E_CALLBACK);
    ck_assert_int_eq(kd_moe_set_router(m, &custom_vt, &toomany), KD_OK);
    ck_assert_int_eq(kd_moe_forward(m, KD_MODE_INFER, x, 2, y), KD_E_CALLBACK);
    ck_assert_int_eq(kd_moe_backward(m, dy, NULL), KD_E_STATE);
    ck_assert_int_eq(kd_moe_tensor(m, 99, NULL, NULL, NULL, NULL, NULL), KD_E_INVALID);
    ck_assert_int_eq(kd_moe_prune_experts(m, NULL), KD_E_INVALID);
    uint8_t keep1[4] = {1, 0, 0, 0};
    ck_assert_int_eq(kd_moe_prune_experts(m, keep1), KD_E_INVALID);
    ck_assert_uint_eq(kd_moe_expert_count(NULL), 0);
    ck_assert_uint_eq(kd_moe_tensor_count(NULL), 0);
    ck_assert_ptr_null(kd_router_builtin((kd_router_kind)99));
    kd_moe_destroy(NULL);
    kd_moe_destroy(m);
    kd_context_destroy(ctx);
}
END_TEST

static kd_status alloc_body(kd_context *ctx, void *user)
{
    (void)user;
    kd_moe_config c = base_cfg(4, 2, 3, 2);
    c.n_shared = 1;
    kd_moe *m;
    kd_status st = kd_moe_create(ctx, &c, &m);
    if (st != KD_OK) return st;
    float x[15] = {0}, y[15];
    st = kd_moe_forward(m, KD_MODE_TRAIN, x, 5, y);
    if (st == KD_OK) st = kd_moe_backward(m, x, NULL);
    uint8_t keep[4] = {1, 1, 0, 1};
    if (st == KD_OK) st = kd_moe_prune_experts(m, keep);
    if (st == KD_OK) st = kd_moe_forward(m, KD_MODE_INFER, x, 5, y);
    kd_moe_destroy(m);
    return st;
}

START_TEST(test_alloc_failures)
{
    ck_assert_int_gt(kd_test_alloc_failures(alloc_body, NULL), 3);
}
END_TEST

/* ---- pruning and lowering k ---------------------------------------------------- */

START_TEST(test_prune_and_lower_k)
{
    kd_context *ctx = kd_test_ctx();
    kd_moe_config c = base_cfg(6, 2, 5, 4);
    c.activation = KD_MOE_SWIGLU;
    c.n_shared = 1;
    kd_moe *m = make(ctx, &c);
    size_t n = 20, d = 5;
    float *x = malloc(n * d * sizeof(float)), *y = malloc(n * d * sizeof(float)),
          *yr = malloc(n * d * sizeof(float));
    kd_test_fill(x, n * d, -1, 1, 77);
    ck_assert_int_eq(kd_moe_forward(m, KD_MODE_INFER, x, n, y), KD_OK);
    size_t routed[6];
    kd_moe_stats(m, routed, NULL, NULL, NULL);
    /* keep the 4 most used experts (ties: lower index) */
    uint8_t keep[6] = {0};
    for (int r = 0; r < 4; r++) {
        int best = -1;
        for (int e = 0; e < 6; e++)
            if (!keep[e] && (best < 0 || routed[e] > routed[best])) best = e;
        keep[best] = 1;
    }
    ck_assert_int_eq(kd_moe_prune_experts(m, keep), KD_OK);
    ck_assert_uint_eq(kd_moe_expert_count(m), 4);
    /* the pruned layer equals the per-token reference with the surviving experts */
    kd_moe_config c4 = c;
    c4.n_experts = 4;
    ck_assert_int_eq(kd_moe_forward(m, KD_MODE_INFER, x, n, y), KD_OK);
    reference(m, &c4, kd_router_builtin(KD_ROUTER_TOPK), &c4.router, x, n, yr);
    kd_assert_close(y, yr, n * d, 1e-5, 1e-4);
    /* lowering k: top-1 equals the reference with k = 1 */
    ck_assert_int_eq(kd_moe_set_top_k(m, 1), KD_OK);
    ck_assert_int_eq(kd_moe_forward(m, KD_MODE_INFER, x, n, y), KD_OK);
    c4.top_k = 1;
    reference(m, &c4, kd_router_builtin(KD_ROUTER_TOPK), &c4.router, x, n, yr);
    kd_assert_close(y, yr, n * d, 1e-5, 1e-4);
    free(x);
    free(y);
    free(yr);
    kd_moe_destroy(m);
    kd_context_destroy(ctx);
}
END_TEST

/* ---- the 'moe' model layer ------------------------------------------------------ */

START_TEST(test_model_spec)
{
    kd_context *ctx = kd_test_ctx();
    static const char *const good[][2] = {
        {"input 3x8; moe 4 2 6", "input 3x8; moe 4 2 6 relu"},
        {"input 8; moe 4 1 6 swiglu shared 1 router expert_choice capacity 1.5 balance 0.01 zloss 0.001; linear 2",
         "input 8; moe 4 1 6 swiglu shared 1 router expert_choice capacity 1.5 balance 0.01 zloss 0.001; linear 2"},
        {"input 8; moe 4 2 6 gelu router threshold 0.7 3", "input 8; moe 4 2 6 gelu router threshold 0.7 3"},
        {"input 8; moe 4 2 6 router cosine 3", "input 8; moe 4 2 6 relu router cosine 3"},
        {"input 8; moe 4 2 6 router noisy 0.5", "input 8; moe 4 2 6 relu router noisy 0.5"},
        {"input 8; moe 4 2 6 router hash", "input 8; moe 4 2 6 relu router hash"},
        {"input 8; moe 4 2 6 router topk_raw", "input 8; moe 4 2 6 relu router topk_raw"},
    };
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        kd_model *m;
        ck_assert_msg(kd_model_create_from_spec(ctx, good[i][0], &m) == KD_OK, "%s: %s",
                      good[i][0], kd_context_last_error(ctx));
        char buf[512];
        ck_assert_int_eq(kd_model_spec(m, buf, sizeof buf, NULL), KD_OK);
        ck_assert_str_eq(buf, good[i][1]);
        kd_model_destroy(m);
    }
    kd_model *m;
    ck_assert_int_eq(kd_model_create_from_spec(ctx, "input 8; moe 4 2 6 swiglu shared 2", &m), KD_OK);
    size_t idx;
    ck_assert_int_eq(kd_model_tensor_find(m, "0.experts.w3", &idx), KD_OK);
    size_t shape[4];
    uint32_t rank;
    ck_assert_int_eq(kd_model_tensor(m, idx, NULL, NULL, shape, &rank, NULL), KD_OK);
    ck_assert_uint_eq(rank, 3);
    ck_assert_uint_eq(shape[0], 4);
    ck_assert_uint_eq(shape[1], 6);
    ck_assert_uint_eq(shape[2], 8);
    ck_assert_int_eq(kd_model_tensor_find(m, "0.shared.w2", &idx), KD_OK);
    ck_assert_int_eq(kd_model_tensor(m, idx, NULL, NULL, shape, &rank, NULL), KD_OK);
    ck_assert_uint_eq(shape[1], 12);
    ck_assert_uint_eq(kd_model_param_count(m), 4 * 8 + 3 * 4 * 6 * 8 + 3 * 12 * 8);
    kd_model_destroy(m);
    static const char *const bad[] = {
        "input 8; moe 0 1 6",         "input 8; moe 4 5 6",          "input 8; moe 4 2 0",
        "input 8; moe 4 2 6 router bogus", "input ids 3; moe 4 2 6", "input 8; moe 4 2",
        "input 8; moe 4 2 6 capacity -1", "input 8; moe 4 2 6 router threshold 2 3",
        "input 8; moe 4 2 6 router threshold 0.5 9", "input 8; moe 4 2 6 router cosine 0",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        ck_assert_msg(kd_model_create_from_spec(ctx, bad[i], &m) == KD_E_FORMAT, "%s", bad[i]);
    kd_context_destroy(ctx);
}
END_TEST

/* Gradients through a model holding an MoE layer (tokens = rows of a 3 x 6 sample). */
START_TEST(test_model_grad)
{
    kd_context *ctx = kd_test_ctx();
    kd_model *m;
    const char *spec;
    size_t batch = 4, nx = batch * 18, ny = batch * 3 * 2, np;
    float *x = malloc(nx * sizeof(float)), *dx = malloc(nx * sizeof(float)),
          *w = malloc(ny * sizeof(float)), *ga;
    kd_test_fill(x, nx, -1, 1, 31);
    kd_test_fill(w, ny, -1, 1, 32);
    float *p, *g;
    const float *y;
    spec = "input 3x6; moe 4 2 5 gelu shared 1 capacity 2; linear 2";
    ck_assert_int_eq(kd_model_create_from_spec(ctx, spec, &m), KD_OK);
    ck_assert_int_eq(kd_model_blocks(m, &p, &g, &np), KD_OK);
    ck_assert_int_eq(kd_model_zero_grad(m), KD_OK);
    ck_assert_int_eq(kd_model_forward(m, KD_MODE_TRAIN, x, nx, batch, &y), KD_OK);
    ck_assert_int_eq(kd_model_backward(m, w, ny, dx, nx), KD_OK);
    ga = malloc(np * sizeof(float));
    memcpy(ga, g, np * sizeof(float));
    size_t skipped = 0, checked = 0;
    for (size_t i = 0; i < np + nx; i++) {
        float *v = i < np ? &p[i] : &x[i - np];
        double a = i < np ? ga[i] : dx[i - np], lp = 0, lm = 0, lim = 2e-3 + 2e-2 * fabs(a);
        int ok = 0;
        static const float hs[2] = {1e-2f, 2.5e-3f};
        for (int k = 0; k < 2 && !ok; k++) {
            float old = *v;
            *v = old + hs[k];
            ck_assert_int_eq(kd_model_forward(m, KD_MODE_TRAIN, x, nx, batch, &y), KD_OK);
            lp = 0;
            for (size_t j = 0; j < ny; j++) lp += (double)y[j] * w[j];
            *v = old - hs[k];
            ck_assert_int_eq(kd_model_forward(m, KD_MODE_TRAIN, x, nx, batch, &y), KD_OK);
            lm = 0;
            for (size_t j = 0; j < ny; j++) lm += (double)y[j] * w[j];
            *v = old;
            ok = fabs((lp - lm) / (2.0 * hs[k]) - a) <= lim;
        }
        checked++;
        if (!ok) skipped++; /* routing flips: bounded below */
    }
    ck_assert_msg(skipped * 20 <= checked, "%zu of %zu coordinates disagree", skipped, checked);
    /* inference output equals the training output (no dropout, no noise) */
    ck_assert_int_eq(kd_model_forward(m, KD_MODE_TRAIN, x, nx, batch, &y), KD_OK);
    float *yt = malloc(ny * sizeof(float));
    memcpy(yt, y, ny * sizeof(float));
    ck_assert_int_eq(kd_model_forward(m, KD_MODE_INFER, x, nx, batch, &y), KD_OK);
    kd_assert_close(y, yt, ny, 1e-6, 1e-5);
    free(yt);
    free(ga);
    free(x);
    free(dx);
    free(w);
    kd_model_destroy(m);
    kd_context_destroy(ctx);
}
END_TEST

Suite *kd_test_suite(void)
{
    Suite *s = suite_create("moe_layer");
    TCase *tc = tcase_create("grad");
    tcase_add_loop_test(tc, test_grad_routers, 0, 6);
    tcase_add_loop_test(tc, test_grad_activations_shared_capacity, 0, 6);
    tcase_add_test(tc, test_grad_cosine_gate);
    suite_add_tcase(s, tc);
    tc = tcase_create("compute");
    tcase_add_loop_test(tc, test_grouped_equals_reference, 0, 6);
    tcase_add_test(tc, test_duplicate_expert_and_empty_experts);
    tcase_add_test(tc, test_all_dropped_and_zero_tokens);
    tcase_add_test(tc, test_stats_and_aux_values);
    tcase_add_test(tc, test_prune_and_lower_k);
    suite_add_tcase(s, tc);
    tc = tcase_create("api");
    tcase_add_test(tc, test_hostile);
    tcase_add_test(tc, test_alloc_failures);
    tcase_add_test(tc, test_model_spec);
    tcase_add_test(tc, test_model_grad);
    suite_add_tcase(s, tc);
    return s;
}
