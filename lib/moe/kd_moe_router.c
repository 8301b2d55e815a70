/*
 * kd_moe_router.c - the built-in routers (state: a kd_router_config).
 *
 * Ties: a larger logit (or score) wins; equal ones go to the lower expert
 * index (token-choice) or the lower token index (expert choice), so routing
 * is deterministic. A NaN logit never wins a comparison, but every token
 * still gets k valid experts.
 *
 * Gradients (g = dL/dweight, summed per (token, expert)):
 *   weights w = softmax over the chosen set S (renormalised top-k, noisy,
 *   threshold):  dz_j = w_j (g_j - sum_S g w)            for j in S, else 0
 *   weights w = p = softmax over all experts (raw top-k, expert choice):
 *                dz_j = p_j (g_j - sum_i g_i p_i)          for every j
 */
#include <math.h>

#include "kd_moe_internal.h"

#define RC(state) ((const kd_router_config *)(state))

size_t kd__router_kmax(const kd_router_config *rc, size_t top_k, size_t E)
{
    size_t k = rc->kind == KD_ROUTER_THRESHOLD && rc->k_max ? rc->k_max : top_k;
    return k > E ? E : k;
}

/* The softmax normaliser of a row of E router logits: *mx = max_j z_j and
 * the return value sum_j exp(z_j - *mx), so that p_j = exp(z_j - *mx) / sum. */
static double softmax_norm(const float *z, size_t E, float *mx)
{
    float m = z[0];
    for (size_t j = 1; j < E; j++) m = z[j] > m ? z[j] : m;
    double sum = 0;
    for (size_t j = 0; j < E; j++) sum += exp((double)(z[j] - m));
    *mx = m;
    return sum;
}

/* Picks the k largest of z[0..E) into idx (descending; ties: lower index). */
static void topk_pick(const float *z, size_t E, size_t k, uint32_t *idx)
{
    for (size_t i = 0; i < k; i++) {
        size_t best = E;
        for (size_t j = 0; j < E; j++) {
            int used = 0;
            for (size_t q = 0; q < i; q++) used |= idx[q] == j;
            if (used) continue;
            if (best == E || z[j] > z[best]) best = j;
        }
        idx[i] = (uint32_t)best;
    }
}

static size_t tc_max(const void *s, size_t n, size_t E, size_t k, size_t C)
{
    (void)C;
    return n * kd__router_kmax(RC(s), k, E);
}

/* saved: n sums for backward, then (noisy) n*E noisy logits */
static size_t tc_saved(const void *s, size_t n, size_t E)
{
    return n + (RC(s)->kind == KD_ROUTER_NOISY_TOPK ? n * E : 0);
}

static const float *tc_logits(const void *s, const kd_router_batch *b)
{
    return RC(s)->kind == KD_ROUTER_NOISY_TOPK && b->train ? b->saved + b->n_tokens : b->logits;
}

static kd_status tc_route(const void *s, const kd_router_batch *b, kd_router_assign *out,
                          size_t *n_out)
{
    const kd_router_config *rc = RC(s);
    size_t E = b->n_experts, kmax = kd__router_kmax(rc, b->top_k, E), na = 0;
    uint32_t idx[64];
    if (kmax > 64) return kd__fail(b->ctx, KD_E_UNSUPPORTED, "router: k above 64");
    if (rc->kind == KD_ROUTER_NOISY_TOPK && b->train) {
        float *zn = b->saved + b->n_tokens;
        for (size_t i = 0; i < b->n_tokens * E; i++)
            zn[i] = b->logits[i] + rc->noise_std * kd_rng_normal(b->rng);
    }
    const float *Z = tc_logits(s, b);
    for (size_t t = 0; t < b->n_tokens; t++) {
        const float *z = Z + t * E;
        size_t k = kmax;
        topk_pick(z, E, kmax, idx);
        float m = z[idx[0]];
        if (!(m == m)) m = 0; /* NaN logits: weights become NaN and propagate */
        if (rc->kind == KD_ROUTER_TOPK_SELECT) {
            for (size_t i = 0; i < k; i++) out[na++] = (kd_router_assign){(uint32_t)t, idx[i], 1.0f};
            continue;
        }
        if (rc->kind == KD_ROUTER_TOPK_RAW) {
            float mm;
            double sum = softmax_norm(z, E, &mm);
            for (size_t i = 0; i < k; i++)
                out[na++] = (kd_router_assign){(uint32_t)t, idx[i],
                                               (float)(exp((double)(z[idx[i]] - mm)) / sum)};
            continue;
        }
        if (rc->kind == KD_ROUTER_THRESHOLD) {
            /* smallest prefix of the sorted probabilities reaching the threshold */
            float mm;
            double sum = softmax_norm(z, E, &mm), acc = 0;
            k = 0;
            while (k < kmax) {
                acc += exp((double)(z[idx[k]] - mm)) / sum;
                k++;
                if (acc >= (double)rc->threshold) break;
            }
        }
        double sum = 0;
        for (size_t i = 0; i < k; i++) sum += exp((double)(z[idx[i]] - m));
        for (size_t i = 0; i < k; i++)
            out[na++] = (kd_router_assign){(uint32_t)t, idx[i],
                                           (float)(exp((double)(z[idx[i]] - m)) / sum)};
    }
    *n_out = na;
    return KD_OK;
}

static kd_status tc_backward(const void *s, const kd_router_batch *b, const kd_router_assign *a,
                             size_t n_a, const float *dw, float *dz)
{
    const kd_router_config *rc = RC(s);
    size_t E = b->n_experts, n = b->n_tokens;
    float *sum = b->saved;
    for (size_t t = 0; t < n; t++) sum[t] = 0;
    for (size_t i = 0; i < n_a; i++) {
        sum[a[i].token] += dw[i] * a[i].weight;
        dz[(size_t)a[i].token * E + a[i].expert] += dw[i] * a[i].weight;
    }
    if (rc->kind == KD_ROUTER_TOPK_RAW) {
        for (size_t t = 0; t < n; t++) {
            const float *z = b->logits + t * E;
            float mm;
            double s2 = softmax_norm(z, E, &mm);
            for (size_t j = 0; j < E; j++)
                dz[t * E + j] -= (float)(exp((double)(z[j] - mm)) / s2) * sum[t];
        }
        return KD_OK;
    }
    for (size_t i = 0; i < n_a; i++)
        dz[(size_t)a[i].token * E + a[i].expert] -= a[i].weight * sum[a[i].token];
    return KD_OK;
}

/* ---- expert choice (Zhou et al. 2022) --------------------------------------- */

static size_t ec_cap(const kd_router_batch *b)
{
    size_t C = b->capacity;
    if (C == 0) C = (b->n_tokens * b->top_k + b->n_experts - 1) / b->n_experts;
    return C > b->n_tokens ? b->n_tokens : C;
}

static size_t ec_max(const void *s, size_t n, size_t E, size_t k, size_t C)
{
    (void)s;
    if (C == 0) C = (n * k + E - 1) / E;
    if (C > n) C = n;
    return E * C;
}

/* saved: probabilities n*E, per-token sums n, heap C (as uint32) */
static size_t ec_saved(const void *s, size_t n, size_t E)
{
    (void)s;
    return n * E + n + n;
}

/* a ranks before b: larger score, then lower token */
static int ec_before(const float *p, size_t E, size_t e, uint32_t a, uint32_t b)
{
    float x = p[(size_t)a * E + e], y = p[(size_t)b * E + e];
    if (x != y) return x > y || (y != y);
    return a < b;
}

static void heap_down(uint32_t *h, size_t n, size_t i, const float *p, size_t E, size_t e)
{
    /* min-heap on rank: root is the worst kept token */
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, w = i;
        if (l < n && ec_before(p, E, e, h[w], h[l])) w = l;
        if (r < n && ec_before(p, E, e, h[w], h[r])) w = r;
        if (w == i) return;
        uint32_t t = h[i];
        h[i] = h[w];
        h[w] = t;
        i = w;
    }
}

static kd_status ec_route(const void *s, const kd_router_batch *b, kd_router_assign *out,
                          size_t *n_out)
{
    (void)s;
    size_t E = b->n_experts, n = b->n_tokens, C = ec_cap(b), na = 0;
    float *p = b->saved;
    uint32_t *heap = (uint32_t *)(b->saved + n * E + n);
    for (size_t t = 0; t < n; t++) {
        const float *z = b->logits + t * E;
        float m;
        double sum = softmax_norm(z, E, &m);
        for (size_t j = 0; j < E; j++) p[t * E + j] = (float)(exp((double)(z[j] - m)) / sum);
    }
    for (size_t e = 0; e < E; e++) {
        size_t hn = 0;
        for (size_t t = 0; t < n; t++) {
            if (hn < C) {
                heap[hn++] = (uint32_t)t;
                if (hn == C)
                    for (size_t i = C / 2 + 1; i-- > 0;) heap_down(heap, hn, i, p, E, e);
            } else if (ec_before(p, E, e, (uint32_t)t, heap[0])) {
                heap[0] = (uint32_t)t;
                heap_down(heap, hn, 0, p, E, e);
            }
        }
        /* emit in token order (stable grouping keeps it) */
        for (size_t i = 1; i < hn; i++) { /* insertion sort by token: C is small-ish */
            uint32_t v = heap[i];
            size_t j = i;
            while (j > 0 && heap[j - 1] > v) heap[j] = heap[j - 1], j--;
            heap[j] = v;
        }
        for (size_t i = 0; i < hn; i++)
            out[na++] = (kd_router_assign){heap[i], (uint32_t)e, p[(size_t)heap[i] * E + e]};
    }
    *n_out = na;
    return KD_OK;
}

static kd_status ec_backward(const void *s, const kd_router_batch *b, const kd_router_assign *a,
                             size_t n_a, const float *dw, float *dz)
{
    (void)s;
    size_t E = b->n_experts, n = b->n_tokens;
    const float *p = b->saved;
    float *sum = b->saved + n * E;
    for (size_t t = 0; t < n; t++) sum[t] = 0;
    for (size_t i = 0; i < n_a; i++) {
        sum[a[i].token] += dw[i] * a[i].weight;
        dz[(size_t)a[i].token * E + a[i].expert] += dw[i] * a[i].weight;
    }
    for (size_t t = 0; t < n; t++)
        for (size_t j = 0; j < E; j++) dz[t * E + j] -= p[t * E + j] * sum[t];
    return KD_OK;
}

/* ---- hash routing (Roller et al. 2021, on the token's row) -------------------- */

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static kd_status hash_route(const void *s, const kd_router_batch *b, kd_router_assign *out,
                            size_t *n_out)
{
    size_t E = b->n_experts, k = b->top_k > E ? E : b->top_k, na = 0;
    for (size_t t = 0; t < b->n_tokens; t++) {
        size_t first = na;
        for (size_t i = 0; i < k; i++) {
            uint32_t e = (uint32_t)(mix64(RC(s)->hash_seed * 0x9e3779b97f4a7c15ull + t * 64 + i) % E);
            for (;;) { /* distinct experts: probe upwards */
                int used = 0;
                for (size_t q = first; q < na; q++) used |= out[q].expert == e;
                if (!used) break;
                e = (uint32_t)((e + 1) % E);
            }
            out[na++] = (kd_router_assign){(uint32_t)t, e, 1.0f / (float)k};
        }
    }
    *n_out = na;
    return KD_OK;
}

static const kd_router_vtable topk_vt = {KD_ROUTER_ABI_VERSION, "topk", tc_max, tc_saved,
                                         tc_route, tc_backward};
static const kd_router_vtable raw_vt = {KD_ROUTER_ABI_VERSION, "topk_raw", tc_max, tc_saved,
                                        tc_route, tc_backward};
static const kd_router_vtable noisy_vt = {KD_ROUTER_ABI_VERSION, "noisy_topk", tc_max,
                                          tc_saved, tc_route, tc_backward};
static const kd_router_vtable ec_vt = {KD_ROUTER_ABI_VERSION, "expert_choice", ec_max, ec_saved,
                                       ec_route, ec_backward};
static const kd_router_vtable hash_vt = {KD_ROUTER_ABI_VERSION, "hash", tc_max, NULL,
                                         hash_route, NULL};
static const kd_router_vtable sel_vt = {KD_ROUTER_ABI_VERSION, "select", tc_max, tc_saved,
                                        tc_route, NULL};
static const kd_router_vtable thr_vt = {KD_ROUTER_ABI_VERSION, "threshold", tc_max, tc_saved,
                                        tc_route, tc_backward};

KD_API const kd_router_vtable *kd_router_builtin(kd_router_kind kind)
{
    switch (kind) {
    case KD_ROUTER_TOPK: return &topk_vt;
    case KD_ROUTER_TOPK_RAW: return &raw_vt;
    case KD_ROUTER_NOISY_TOPK: return &noisy_vt;
    case KD_ROUTER_EXPERT_CHOICE: return &ec_vt;
    case KD_ROUTER_HASH: return &hash_vt;
    case KD_ROUTER_THRESHOLD: return &thr_vt;
    case KD_ROUTER_TOPK_SELECT: return &sel_vt;
    }
    return NULL;
}

KD_API void kd_router_config_default_sized(kd_router_config *out, size_t size)
{
    kd_router_config d, *cfg = &d;
    memset(cfg, 0, sizeof *cfg);
    cfg->struct_size = sizeof *cfg;
    cfg->kind = KD_ROUTER_TOPK;
    cfg->noise_std = 1.0f;
    cfg->threshold = 0.5f;
    kd__default_out(out, size, cfg, sizeof *cfg);
}
