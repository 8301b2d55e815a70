/*
 * kd_moe.c - the stand-alone kd_moe handle: owns its parameter and gradient
 * blocks and a workspace grown to the largest token count seen.
 */
#include <math.h>

#include "kd_moe_internal.h"


KD_API void kd_moe_config_default_sized(kd_moe_config *out, size_t size)
{
    kd_moe_config d, *cfg = &d;
    memset(cfg, 0, sizeof *cfg);
    cfg->struct_size = sizeof *cfg;
    cfg->top_k = 2;
    cfg->activation = KD_MOE_RELU;
    cfg->gate = KD_MOE_GATE_LINEAR;
    cfg->cosine_dim = 16;
    kd_router_config_default(&cfg->router);
    kd__default_out(out, size, cfg, sizeof *cfg);
}

KD_API kd_status kd_moe_create(kd_context *ctx, const kd_moe_config *cfg, kd_moe **out)
{
    if (!ctx) return KD_E_INVALID;
    if (!cfg || !out) return kd__fail(ctx, KD_E_INVALID, "kd_moe_create: NULL argument");
    *out = NULL;
    kd_moe_config c;
    kd_moe_config_default(&c);
    kd_status st = kd__config_copy(&c, sizeof c, cfg, cfg->struct_size, sizeof c);
    if (st != KD_OK) return st;
    if (c.router.struct_size != sizeof(kd_router_config))
        return kd__fail(ctx, KD_E_VERSION, "kd_moe_create: router.struct_size %u unknown",
                        (unsigned)c.router.struct_size);
    kd_moe *m = (kd_moe *)kd__calloc(ctx, 1, sizeof *m);
    if (!m) return KD_E_NOMEM;
    m->ctx = ctx;
    st = kd__moe_core_init(ctx, &m->core, &c);
    if (st != KD_OK) {
        kd__free(ctx, m);
        return st;
    }
    m->param = (float *)kd__calloc(ctx, m->core.n_param, sizeof(float));
    m->grad = m->param ? (float *)kd__calloc(ctx, m->core.n_param, sizeof(float)) : NULL;
    if (!m->grad) {
        kd_moe_destroy(m);
        return KD_E_NOMEM;
    }
    m->core.param = m->param;
    m->core.grad = m->grad;
    kd__moe_core_init_params(&m->core, kd_context_rng(ctx));
    *out = m;
    return KD_OK;
}

KD_API void kd_moe_destroy(kd_moe *m)
{
    if (!m) return;
    kd_context *ctx = m->ctx;
    kd__free(ctx, m->ws);
    kd__free(ctx, m->grad);
    kd__free(ctx, m->param);
    kd__moe_core_free(ctx, &m->core);
    kd__free(ctx, m);
}

KD_API kd_status kd_moe_set_router(kd_moe *m, const kd_router_vtable *vt, const void *state)
{
    if (!m) return KD_E_INVALID;
    if (!vt) {
        m->core.rvt = kd_router_builtin(m->core.cfg.router.kind);
        m->core.rstate = &m->core.cfg.router;
    } else {
        if (vt->abi_version == 0)
            return kd__fail(m->ctx, KD_E_VERSION, "kd_moe_set_router: abi_version 0");
        if (!vt->route || !vt->max_assignments)
            return kd__fail(m->ctx, KD_E_INVALID, "kd_moe_set_router: route and "
                                                  "max_assignments are required");
        m->core.rvt = vt;
        m->core.rstate = state;
    }
    m->have_train = 0;
    m->ws_tokens = 0; /* router sizes may differ: re-size on next forward */
    return KD_OK;
}

KD_API kd_status kd_moe_set_top_k(kd_moe *m, size_t k)
{
    if (!m) return KD_E_INVALID;
    if (k == 0 || k > m->core.E)
        return kd__fail(m->ctx, KD_E_INVALID, "kd_moe_set_top_k: k %zu outside [1, %zu]", k,
                        m->core.E);
    m->core.k = m->core.cfg.top_k = k;
    m->have_train = 0;
    m->ws_tokens = 0;
    return KD_OK;
}

KD_API kd_status kd_moe_blocks(kd_moe *m, float **params, float **grads, size_t *n)
{
    if (!m) return KD_E_INVALID;
    if (params) *params = m->param;
    if (grads) *grads = m->grad;
    if (n) *n = m->core.n_param;
    return KD_OK;
}

KD_API size_t kd_moe_tensor_count(const kd_moe *m)
{
    return m ? kd__moe_tensor_count(&m->core) : 0;
}

KD_API kd_status kd_moe_tensor(kd_moe *m, size_t i, const char **name, float **data,
                               float **grad, size_t shape[KD_TENSOR_MAX_RANK], uint32_t *rank)
{
    static const char *const names[] = {"gate.weight", "gate.proj", "gate.experts",
                                        "gate.log_scale", "experts.w1", "experts.w3",
                                        "experts.w2", "shared.w1", "shared.w3", "shared.w2"};
    if (!m) return KD_E_INVALID;
    if (i >= kd__moe_tensor_count(&m->core))
        return kd__fail(m->ctx, KD_E_INVALID, "kd_moe_tensor: index %zu out of range", i);
    char nm[KD_TENSOR_NAME_MAX];
    uint32_t rk;
    size_t sh[KD_TENSOR_MAX_RANK], off;
    kd__moe_tensor_desc(&m->core, i, nm, &rk, sh, &off);
    if (name) {
        *name = "";
        for (size_t j = 0; j < sizeof names / sizeof names[0]; j++)
            if (strcmp(names[j], nm) == 0) *name = names[j];
    }
    if (data) *data = m->param + off;
    if (grad) *grad = m->grad + off;
    if (shape) memcpy(shape, sh, sizeof sh);
    if (rank) *rank = rk;
    return KD_OK;
}

KD_API kd_status kd_moe_zero_grad(kd_moe *m)
{
    if (!m) return KD_E_INVALID;
    memset(m->grad, 0, m->core.n_param * sizeof(float));
    return KD_OK;
}

kd_status kd__moe_ensure_ws(kd_moe *m, size_t n)
{
    if (m->ws && n <= m->ws_tokens) return KD_OK;
    size_t fwd, bwd, tot;
    if (kd__moe_sizes(&m->core, n, &fwd, &bwd) != KD_OK || kd__add_overflow(fwd, bwd, &tot) ||
        tot > SIZE_MAX / sizeof(float))
        return kd__fail(m->ctx, KD_E_OVERFLOW, "kd_moe_forward: %zu tokens too many", n);
    float *ws = (float *)kd__alloc(m->ctx, tot * sizeof(float) + KD_ALIGN);
    if (!ws) return KD_E_NOMEM;
    kd__free(m->ctx, m->ws);
    m->ws = ws;
    m->ws_floats = tot;
    m->fwd_floats = fwd;
    m->ws_tokens = n;
    return KD_OK;
}

/* 64-byte aligned start inside the workspace. */
float *kd__moe_ws(const kd_moe *m)
{
    uintptr_t p = (uintptr_t)m->ws;
    return (float *)((p + (KD_ALIGN - 1)) & ~(uintptr_t)(KD_ALIGN - 1));
}

KD_API kd_status kd_moe_forward(kd_moe *m, kd_mode mode, const float *x, size_t n, float *y)
{
    if (!m) return KD_E_INVALID;
    if ((n && (!x || !y)) || (mode != KD_MODE_INFER && mode != KD_MODE_TRAIN))
        return kd__fail(m->ctx, KD_E_INVALID, "kd_moe_forward: NULL array or bad mode");
    m->have_train = 0;
    kd_status st = kd__moe_ensure_ws(m, n ? n : 1);
    if (st != KD_OK) return st;
    float *fwd = kd__moe_ws(m);
    st = kd__moe_forward(&m->core, m->ctx, kd_context_rng(m->ctx), mode == KD_MODE_TRAIN, x, n,
                         y, fwd);
    if (st != KD_OK) return st;
    if (mode == KD_MODE_TRAIN) {
        m->have_train = 1;
        m->x = x;
    }
    return KD_OK;
}

KD_API kd_status kd_moe_backward(kd_moe *m, const float *dy, float *dx)
{
    if (!m) return KD_E_INVALID;
    if (!m->have_train)
        return kd__fail(m->ctx, KD_E_STATE, "kd_moe_backward: no training forward to match");
    if (m->core.n && !dy) return kd__fail(m->ctx, KD_E_INVALID, "kd_moe_backward: NULL dy");
    float *fwd = kd__moe_ws(m);
    return kd__moe_backward(&m->core, m->ctx, m->x, dy, dx, fwd, fwd + m->fwd_floats);
}

KD_API kd_status kd_moe_aux_losses(const kd_moe *m, float *balance, float *z_loss)
{
    if (!m) return KD_E_INVALID;
    if (balance) *balance = m->core.balance;
    if (z_loss) *z_loss = m->core.zloss;
    return KD_OK;
}

KD_API kd_status kd_moe_stats(const kd_moe *m, size_t *routed, size_t *dropped, float *mean_prob,
                              float *entropy)
{
    if (!m) return KD_E_INVALID;
    for (size_t e = 0; e < m->core.E; e++) {
        if (routed) routed[e] = m->core.routed[e];
        if (dropped) dropped[e] = m->core.dropped[e];
        if (mean_prob) mean_prob[e] = m->core.mean_prob[e];
    }
    if (entropy) *entropy = m->core.entropy;
    return KD_OK;
}

KD_API size_t kd_moe_expert_count(const kd_moe *m)
{
    return m ? m->core.E : 0;
}
