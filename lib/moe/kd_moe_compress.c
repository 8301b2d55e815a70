/*
 * kd_moe_compress.c - MoE compression and distillation on the stand-alone
 * handle: expert pruning, HC-SMoE expert merging, MoE-fication of a dense
 * FFN with layer-wise (LaDiMo-style) recovery, and Knowledge Augmentation.
 *
 * All of these rebuild or drive a kd_moe through the same core as the layer;
 * they allocate (hosted use: compression is an offline step).
 */
#include <math.h>

#include "kd_moe_internal.h"

/* ---- rebuilding with fewer experts ----------------------------------------- */

/* New expert j = sum over old e with cl[e] == j of coef[e] * expert e (gate
 * rows likewise); cl[e] == UINT32_MAX drops e. Shared experts are kept. */
static kd_status rebuild(kd_moe *m, size_t newE, const uint32_t *cl, const float *coef)
{
    kd__moe_core *c = &m->core;
    kd_moe_config cfg = c->cfg;
    cfg.n_experts = newE;
    cfg.top_k = c->k;
    if (cfg.router.kind == KD_ROUTER_THRESHOLD && cfg.router.k_max > newE) cfg.router.k_max = newE;
    kd__moe_core tmp;
    kd_status st = kd__moe_core_init(m->ctx, &tmp, &cfg);
    if (st != KD_OK) return st;
    float *np = (float *)kd__calloc(m->ctx, tmp.n_param, sizeof(float));
    float *ng = np ? (float *)kd__calloc(m->ctx, tmp.n_param, sizeof(float)) : NULL;
    if (!ng) {
        kd__free(m->ctx, np);
        kd__moe_core_free(m->ctx, &tmp);
        return KD_E_NOMEM;
    }
    size_t d = c->d, f = c->f;
    int glu = cfg.activation == KD_MOE_SWIGLU;
    for (size_t e = 0; e < c->E; e++) {
        if (cl[e] == UINT32_MAX) continue;
        size_t j = cl[e];
        float a = coef[e];
        const float *P = m->param;
        for (size_t i = 0; i < d; i++) np[tmp.o_gate + j * d + i] += a * P[c->o_gate + e * d + i];
        for (size_t i = 0; i < f * d; i++) {
            np[tmp.o_w1 + j * f * d + i] += a * P[c->o_w1 + e * f * d + i];
            if (glu) np[tmp.o_w3 + j * f * d + i] += a * P[c->o_w3 + e * f * d + i];
            np[tmp.o_w2 + j * f * d + i] += a * P[c->o_w2 + e * f * d + i];
        }
    }
    memcpy(np + tmp.o_s1, m->param + c->o_s1, (c->n_param - c->o_s1) * sizeof(float));
    int custom = c->rvt != kd_router_builtin(c->cfg.router.kind);
    const kd_router_vtable *rvt = c->rvt;
    const void *rstate = c->rstate;
    kd__free(m->ctx, m->ws);
    m->ws = NULL;
    m->ws_tokens = 0;
    kd__free(m->ctx, m->grad);
    kd__free(m->ctx, m->param);
    kd__moe_core_free(m->ctx, c);
    *c = tmp;
    c->rvt = custom ? rvt : kd_router_builtin(c->cfg.router.kind);
    c->rstate = custom ? rstate : (const void *)&c->cfg.router;
    c->param = m->param = np;
    c->grad = m->grad = ng;
    m->have_train = 0;
    return KD_OK;
}

KD_API kd_status kd_moe_prune_experts(kd_moe *m, const uint8_t *keep)
{
    if (!m) return KD_E_INVALID;
    if (!keep) return kd__fail(m->ctx, KD_E_INVALID, "kd_moe_prune_experts: NULL keep");
    kd__moe_core *c = &m->core;
    if (c->cfg.gate != KD_MOE_GATE_LINEAR)
        return kd__fail(m->ctx, KD_E_UNSUPPORTED, "kd_moe_prune_experts: linear gate only");
    size_t kept = 0;
    for (size_t e = 0; e < c->E; e++) kept += keep[e] != 0;
    if (kept < c->k || kept == 0)
        return kd__fail(m->ctx, KD_E_INVALID, "kd_moe_prune_experts: %zu experts kept, k is %zu",
                        kept, c->k);
    uint32_t *cl = (uint32_t *)kd__calloc(m->ctx, c->E, sizeof(uint32_t));
    float *coef = cl ? (float *)kd__calloc(m->ctx, c->E, sizeof(float)) : NULL;
    kd_status st = KD_E_NOMEM;
    if (coef) {
        size_t j = 0;
        for (size_t e = 0; e < c->E; e++) {
            cl[e] = keep[e] ? (uint32_t)j++ : UINT32_MAX;
            coef[e] = 1.0f;
        }
        st = rebuild(m, kept, cl, coef);
    }
    kd__free(m->ctx, coef);
    kd__free(m->ctx, cl);
    return st;
}

/* ---- HC-SMoE: hierarchical clustering of expert outputs ---------------------- */

/* feat (E x d): mean over the n calibration tokens of each expert's output
 * (every token through every expert, one GEMM chain per expert). */
static kd_status expert_features(kd_moe *m, const float *x, size_t n, float *feat)
{
    kd__moe_core *c = &m->core;
    size_t d = c->d, f = c->f;
    int glu = c->cfg.activation == KD_MOE_SWIGLU;
    float *h = (float *)kd__calloc(m->ctx, n * f, sizeof(float));
    float *u = h && glu ? (float *)kd__calloc(m->ctx, n * f, sizeof(float)) : NULL;
    float *o = h && (u || !glu) ? (float *)kd__calloc(m->ctx, n * d, sizeof(float)) : NULL;
    if (!o) {
        kd__free(m->ctx, u);
        kd__free(m->ctx, h);
        return KD_E_NOMEM;
    }
    const float *P = m->param;
    for (size_t e = 0; e < c->E; e++) {
        kd__gemm(m->ctx, 0, 1, n, f, d, 1.0f, x, d, P + c->o_w1 + e * f * d, d, 0.0f, h, f);
        if (glu) kd__gemm(m->ctx, 0, 1, n, f, d, 1.0f, x, d, P + c->o_w3 + e * f * d, d, 0.0f, u, f);
        for (size_t i = 0; i < n * f; i++) {
            float v = h[i];
            if (c->cfg.activation == KD_MOE_RELU) h[i] = v > 0 ? v : 0;
            else if (c->cfg.activation == KD_MOE_GELU) h[i] = 0.5f * v * (1.0f + erff(v * 0.70710678f));
            else h[i] = v / (1.0f + expf(-v)) * u[i];
        }
        kd__gemm(m->ctx, 0, 1, n, d, f, 1.0f, h, f, P + c->o_w2 + e * d * f, f, 0.0f, o, d);
        for (size_t j = 0; j < d; j++) {
            double s = 0;
            for (size_t t = 0; t < n; t++) s += o[t * d + j];
            feat[e * d + j] = (float)(s / (double)n);
        }
    }
    kd__free(m->ctx, o);
    kd__free(m->ctx, u);
    kd__free(m->ctx, h);
    return KD_OK;
}

KD_API kd_status kd_moe_merge_experts(kd_moe *m, const float *calib, size_t n, size_t target,
                                      size_t *cluster_of)
{
    if (!m) return KD_E_INVALID;
    kd__moe_core *c = &m->core;
    size_t E = c->E, d = c->d;
    if (!calib || n == 0)
        return kd__fail(m->ctx, KD_E_INVALID, "kd_moe_merge_experts: no calibration tokens");
    if (c->cfg.gate != KD_MOE_GATE_LINEAR)
        return kd__fail(m->ctx, KD_E_UNSUPPORTED, "kd_moe_merge_experts: linear gate only");
    if (target < c->k || target > E)
        return kd__fail(m->ctx, KD_E_INVALID, "kd_moe_merge_experts: target %zu outside [k=%zu, %zu]",
                        target, c->k, E);
    /* routing frequency on the calibration tokens */
    kd_status st = kd__moe_ensure_ws(m, n);
    if (st != KD_OK) return st;
    float *y = (float *)kd__calloc(m->ctx, n * d, sizeof(float));
    if (!y) return KD_E_NOMEM;
    st = kd__moe_forward(c, m->ctx, kd_context_rng(m->ctx), 0, calib, n, y, kd__moe_ws(m));
    kd__free(m->ctx, y);
    m->have_train = 0;
    if (st != KD_OK) return st;
    float *feat = (float *)kd__calloc(m->ctx, E * d, sizeof(float));
    double *D = feat ? (double *)kd__calloc(m->ctx, E * E, sizeof(double)) : NULL;
    size_t *size = D ? (size_t *)kd__calloc(m->ctx, E, sizeof(size_t)) : NULL;
    size_t *root = size ? (size_t *)kd__calloc(m->ctx, E, sizeof(size_t)) : NULL;
    uint32_t *cl = root ? (uint32_t *)kd__calloc(m->ctx, E, sizeof(uint32_t)) : NULL;
    float *coef = cl ? (float *)kd__calloc(m->ctx, E, sizeof(float)) : NULL;
    double *mass = coef ? (double *)kd__calloc(m->ctx, E, sizeof(double)) : NULL;
    if (!mass) {
        st = KD_E_NOMEM;
        goto done;
    }
    for (size_t e = 0; e < E; e++) mass[e] = 0; /* silence analysers */
    st = expert_features(m, calib, n, feat);
    if (st != KD_OK) goto done;
    for (size_t a = 0; a < E; a++)
        for (size_t b = 0; b < E; b++) {
            double s = 0;
            for (size_t j = 0; j < d; j++) {
                double t = (double)feat[a * d + j] - feat[b * d + j];
                s += t * t;
            }
            D[a * E + b] = sqrt(s);
        }
    /* average linkage (UPGMA); cluster ids are their lowest member; ties: lowest pair */
    for (size_t e = 0; e < E; e++) root[e] = e, size[e] = 1;
    for (size_t clusters = E; clusters > target; clusters--) {
        size_t ba = E, bb = E;
        for (size_t a = 0; a < E; a++) {
            if (root[a] != a) continue;
            for (size_t b = a + 1; b < E; b++)
                if (root[b] == b && (ba == E || D[a * E + b] < D[ba * E + bb])) ba = a, bb = b;
        }
        for (size_t k = 0; k < E; k++) {
            if (root[k] != k || k == ba || k == bb) continue;
            double v = ((double)size[ba] * D[ba * E + k] + (double)size[bb] * D[bb * E + k]) /
                       (double)(size[ba] + size[bb]);
            D[ba * E + k] = D[k * E + ba] = v;
        }
        size[ba] += size[bb];
        for (size_t e = 0; e < E; e++)
            if (root[e] == bb) root[e] = ba;
    }
    /* merge weights by routing frequency (+1 so unused experts still count a little) */
    {
        size_t next = 0;
        for (size_t e = 0; e < E; e++)
            if (root[e] == e) size[e] = next++; /* reuse size[] as the new index */
        for (size_t e = 0; e < E; e++) {
            cl[e] = (uint32_t)size[root[e]];
            mass[cl[e]] += (double)c->routed[e] + 1.0;
            if (cluster_of) cluster_of[e] = cl[e];
        }
        for (size_t e = 0; e < E; e++)
            coef[e] = (float)(((double)c->routed[e] + 1.0) / mass[cl[e]]);
    }
    st = rebuild(m, target, cl, coef);
done:
    kd__free(m->ctx, mass);
    kd__free(m->ctx, coef);
    kd__free(m->ctx, cl);
    kd__free(m->ctx, root);
    kd__free(m->ctx, size);
    kd__free(m->ctx, D);
    kd__free(m->ctx, feat);
    return st;
}

/* ---- MoE-fication ------------------------------------------------------------ */

KD_API kd_status kd_moe_from_dense(kd_context *ctx, const kd_moe_config *cfg, const float *w1,
                                   const float *w3, const float *w2, kd_moe **out)
{
    if (!ctx) return KD_E_INVALID;
    if (!cfg || !w1 || !w2 || !out)
        return kd__fail(ctx, KD_E_INVALID, "kd_moe_from_dense: NULL argument");
    *out = NULL;
    if (cfg->activation == KD_MOE_SWIGLU && !w3)
        return kd__fail(ctx, KD_E_INVALID, "kd_moe_from_dense: SwiGLU needs w3");
    if (cfg->gate != KD_MOE_GATE_LINEAR || cfg->n_shared)
        return kd__fail(ctx, KD_E_UNSUPPORTED, "kd_moe_from_dense: linear gate, no shared experts");
    kd_moe *m;
    kd_status st = kd_moe_create(ctx, cfg, &m);
    if (st != KD_OK) return st;
    kd__moe_core *c = &m->core;
    size_t E = c->E, f = c->f, d = c->d, h = E * f;
    float *cent = (float *)kd__calloc(ctx, E * d, sizeof(float));
    uint32_t *lab = cent ? (uint32_t *)kd__calloc(ctx, h, sizeof(uint32_t)) : NULL;
    size_t *fill = lab ? (size_t *)kd__calloc(ctx, E, sizeof(size_t)) : NULL;
    float *score = fill ? (float *)kd__calloc(ctx, h * E, sizeof(float)) : NULL;
    if (!score) {
        st = KD_E_NOMEM;
        goto done;
    }
    /* balanced k-means (MoEfication, Zhang et al. 2022) on the rows of w1,
     * by cosine similarity; start from rows spaced evenly */
    for (size_t e = 0; e < E; e++) memcpy(cent + e * d, w1 + (e * f) * d, d * sizeof(float));
    for (int it = 0; it < 12; it++) {
        for (size_t e = 0; e < E; e++) {
            double nr = 0;
            for (size_t j = 0; j < d; j++) nr += (double)cent[e * d + j] * cent[e * d + j];
            float inv = nr > 0 ? (float)(1.0 / sqrt(nr)) : 0.0f;
            for (size_t j = 0; j < d; j++) cent[e * d + j] *= inv;
        }
        kd__gemm(ctx, 0, 1, h, E, d, 1.0f, w1, d, cent, d, 0.0f, score, E);
        /* greedy balanced assignment: each row in turn (rows with the most
         * decided preference first would be better; plain order is
         * deterministic) takes its best cluster with room */
        for (size_t e = 0; e < E; e++) fill[e] = 0;
        for (size_t r = 0; r < h; r++) {
            size_t best = E;
            for (size_t e = 0; e < E; e++)
                if (fill[e] < f && (best == E || score[r * E + e] > score[r * E + best])) best = e;
            lab[r] = (uint32_t)best;
            fill[best]++;
        }
        memset(cent, 0, E * d * sizeof(float));
        for (size_t r = 0; r < h; r++)
            for (size_t j = 0; j < d; j++) cent[lab[r] * d + j] += w1[r * d + j];
    }
    /* experts take their rows of w1 / w3 and columns of w2; the gate row is
     * the cluster's mean w1 row (a proxy for how active the cluster is) */
    for (size_t e = 0; e < E; e++) fill[e] = 0;
    float *P = m->param;
    for (size_t r = 0; r < h; r++) {
        size_t e = lab[r], i = fill[e]++;
        memcpy(P + c->o_w1 + (e * f + i) * d, w1 + r * d, d * sizeof(float));
        if (c->cfg.activation == KD_MOE_SWIGLU)
            memcpy(P + c->o_w3 + (e * f + i) * d, w3 + r * d, d * sizeof(float));
        for (size_t j = 0; j < d; j++) P[c->o_w2 + e * d * f + j * f + i] = w2[j * h + r];
    }
    for (size_t i = 0; i < E * d; i++) P[c->o_gate + i] = cent[i] / (float)f;
done:
    kd__free(ctx, score);
    kd__free(ctx, fill);
    kd__free(ctx, lab);
    kd__free(ctx, cent);
    if (st != KD_OK) {
        kd_moe_destroy(m);
        return st;
    }
    *out = m;
    return KD_OK;
}

/* ---- layer-wise distillation (LaDiMo-style recovery) ------------------------- */

KD_API kd_status kd_moe_fit(kd_moe *m, const float *x, const float *target, size_t n, float lr,
                            size_t steps, float *mse)
{
    if (!m) return KD_E_INVALID;
    if (!x || !target || n == 0 || !(lr > 0) || !isfinite(lr))
        return kd__fail(m->ctx, KD_E_INVALID, "kd_moe_fit: bad arguments");
    size_t d = m->core.d, np = m->core.n_param, nd = n * d;
    float *y = (float *)kd__calloc(m->ctx, nd, sizeof(float));
    float *dy = y ? (float *)kd__calloc(m->ctx, nd, sizeof(float)) : NULL;
    float *mo = dy ? (float *)kd__calloc(m->ctx, np, sizeof(float)) : NULL;
    float *vo = mo ? (float *)kd__calloc(m->ctx, np, sizeof(float)) : NULL;
    kd_status st = vo ? KD_OK : KD_E_NOMEM;
    double last = 0;
    /* Adam (beta 0.9, 0.999) on mean squared error to the teacher's outputs */
    for (size_t s = 0; st == KD_OK && s <= steps; s++) {
        st = kd_moe_forward(m, KD_MODE_TRAIN, x, n, y);
        if (st != KD_OK) break;
        double l = 0;
        for (size_t i = 0; i < nd; i++) {
            float r = y[i] - target[i];
            l += (double)r * r;
            dy[i] = 2.0f * r / (float)nd;
        }
        last = l / (double)nd;
        if (s == steps) break;
        kd_moe_zero_grad(m);
        st = kd_moe_backward(m, dy, NULL);
        if (st != KD_OK) break;
        double b1 = 1.0 - pow(0.9, (double)(s + 1)), b2 = 1.0 - pow(0.999, (double)(s + 1));
        for (size_t i = 0; i < np; i++) {
            float g = m->grad[i];
            mo[i] = 0.9f * mo[i] + 0.1f * g;
            vo[i] = 0.999f * vo[i] + 0.001f * g * g;
            m->param[i] -= (float)(lr * (mo[i] / b1) / (sqrt(vo[i] / b2) + 1e-8));
        }
    }
    if (st == KD_OK && mse) *mse = (float)last;
    kd__free(m->ctx, vo);
    kd__free(m->ctx, mo);
    kd__free(m->ctx, dy);
    kd__free(m->ctx, y);
    return st;
}

/* ---- Knowledge Augmentation ("Every Expert Matters") -------------------------- */

/* Samples k experts per token without replacement from softmax(z) (Gumbel
 * top-k); weights: softmax of z renormalised over the sample. */
static size_t ka_max(const void *s, size_t n, size_t E, size_t k, size_t C)
{
    (void)s, (void)C;
    return n * (k < E ? k : E);
}
static size_t ka_saved(const void *s, size_t n, size_t E)
{
    (void)s;
    return n * E;
}
static kd_status ka_route(const void *s, const kd_router_batch *b, kd_router_assign *out,
                          size_t *n_out)
{
    (void)s;
    size_t E = b->n_experts, k = b->top_k < E ? b->top_k : E, na = 0;
    float *g = b->saved;
    for (size_t t = 0; t < b->n_tokens; t++) {
        const float *z = b->logits + t * E;
        for (size_t e = 0; e < E; e++) {
            float u = kd_rng_uniform(b->rng);
            g[t * E + e] = z[e] - logf(-logf(u + 1e-12f) + 1e-12f);
        }
        size_t first = na;
        for (size_t i = 0; i < k; i++) {
            size_t best = E;
            for (size_t e = 0; e < E; e++) {
                int used = 0;
                for (size_t q = first; q < na; q++) used |= out[q].expert == e;
                if (!used && (best == E || g[t * E + e] > g[t * E + best])) best = e;
            }
            out[na++] = (kd_router_assign){(uint32_t)t, (uint32_t)best, 0};
        }
        float m = z[out[first].expert];
        double sum = 0;
        for (size_t q = first; q < na; q++) sum += exp((double)(z[out[q].expert] - m));
        for (size_t q = first; q < na; q++)
            out[q].weight = (float)(exp((double)(z[out[q].expert] - m)) / sum);
    }
    *n_out = na;
    return KD_OK;
}
static const kd_router_vtable ka_vt = {KD_ROUTER_ABI_VERSION, "sampled", ka_max, ka_saved,
                                       ka_route, NULL};

KD_API kd_status kd_moe_forward_ka(kd_moe *m, const float *x, size_t n, size_t samples, float *y)
{
    if (!m) return KD_E_INVALID;
    if ((n && (!x || !y)) || samples == 0)
        return kd__fail(m->ctx, KD_E_INVALID, "kd_moe_forward_ka: bad arguments");
    if (n == 0) return KD_OK;
    size_t nd = n * m->core.d;
    float *acc = (float *)kd__calloc(m->ctx, nd, sizeof(float));
    if (!acc) return KD_E_NOMEM;
    const kd_router_vtable *rvt = m->core.rvt;
    const void *rs = m->core.rstate;
    m->core.rvt = &ka_vt;
    m->ws_tokens = 0; /* the sampling router's buffer sizes differ */
    kd_status st = KD_OK;
    for (size_t s = 0; s < samples && st == KD_OK; s++) {
        st = kd_moe_forward(m, KD_MODE_INFER, x, n, y);
        for (size_t i = 0; st == KD_OK && i < nd; i++) acc[i] += y[i];
    }
    m->core.rvt = rvt;
    m->core.rstate = rs;
    m->ws_tokens = 0;
    if (st == KD_OK)
        for (size_t i = 0; i < nd; i++) y[i] = acc[i] / (float)samples;
    kd__free(m->ctx, acc);
    return st;
}
