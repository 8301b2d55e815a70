/*
 * kd_moe_layer.c - the 'moe' model layer: the MoE core behind the nn layer
 * vtable (spec grammar in kd/kd_moe.h). The last input dimension is d; the
 * other per-sample dimensions are tokens, so a (T x d) sample is T tokens.
 *
 * Workspace: training keeps the forward buffers in the layer's saved region
 * and uses scratch for backward; inference runs in scratch.
 */
#include <math.h>

#include "kd_moe_internal.h"

#define KD_MOE_WS_CAP (SIZE_MAX / 32768)

typedef struct {
    kd_layer base;
    kd__moe_core core;
    size_t rows;   /* tokens per sample */
    size_t k_spec; /* k of the spec: workspaces are sized for it */
} kd_moe_layer;

static size_t ml_tensor_count(const kd_layer *l)
{
    return kd__moe_tensor_count(&((const kd_moe_layer *)l)->core);
}

static void ml_tensor_desc(const kd_layer *l, size_t i, kd_tensor_desc *d)
{
    size_t off;
    memset(d, 0, sizeof *d);
    kd__moe_tensor_desc(&((const kd_moe_layer *)l)->core, i, d->name, &d->rank, d->shape, &off);
}

static void ml_bind(kd_layer *l, float *param, float *grad, float *buf)
{
    kd_moe_layer *L = (kd_moe_layer *)l;
    l->param = param;
    l->grad = grad;
    l->buf = buf;
    L->core.param = param;
    L->core.grad = grad;
}

static void ml_init(kd_layer *l, kd_rng *rng)
{
    kd__moe_core_init_params(&((kd_moe_layer *)l)->core, rng);
}

static void ml_workspace(const kd_layer *l, size_t batch, int train, size_t *saved,
                         size_t *scratch)
{
    const kd_moe_layer *L = (const kd_moe_layer *)l;
    size_t fwd = 0, bwd = 0, n;
    kd__moe_core full = L->core; /* sized for the spec's k, so lowering k later fits */
    full.k = L->k_spec;
    /* The model bounds its own sums by (in + out) sizes, which an MoE's
     * hidden buffers exceed: cap each size so that even 4096 such layers
     * cannot wrap the model's size_t sums; the model's allocation then
     * fails cleanly (an allocation of SIZE_MAX / 32768 floats never succeeds
     * in practice). */
    const size_t cap = KD_MOE_WS_CAP;
    if (kd__mul_overflow(batch, L->rows, &n) || kd__moe_sizes(&full, n, &fwd, &bwd) != KD_OK)
        fwd = bwd = cap;
    if (fwd > cap) fwd = cap;
    if (bwd > cap) bwd = cap;
    *saved = train ? fwd : 0;
    *scratch = train ? bwd : fwd;
}

static kd_status ml_forward(kd_layer *l, const kd_layer_run *r, const kd_layer_in *x, float *y)
{
    kd_moe_layer *L = (kd_moe_layer *)l;
    float *fwd = r->train ? r->saved : r->scratch;
    size_t f, b;
    kd__moe_core full = L->core;
    full.k = L->k_spec;
    if (kd__moe_sizes(&full, r->batch * L->rows, &f, &b) != KD_OK || f > KD_MOE_WS_CAP ||
        b > KD_MOE_WS_CAP) /* the workspace was capped: never write past it */
        return kd__fail(r->ctx, KD_E_OVERFLOW, "moe: batch %zu needs too much workspace", r->batch);
    return kd__moe_forward(&L->core, r->ctx, r->rng, r->train, x->x, r->batch * L->rows, y, fwd);
}

static kd_status ml_backward(kd_layer *l, const kd_layer_run *r, const kd_layer_in *x,
                             const float *y, const float *dy, float *dx)
{
    kd_moe_layer *L = (kd_moe_layer *)l;
    (void)y;
    return kd__moe_backward(&L->core, r->ctx, x->x, dy, dx, r->saved, r->scratch);
}

static void ml_spec(const kd_layer *l, kd__sb *sb)
{
    const kd_moe_layer *L = (const kd_moe_layer *)l;
    const kd_moe_config *c = &L->core.cfg;
    static const char *const acts[] = {"relu", "gelu", "swiglu"};
    kd__sb_printf(sb, "moe %zu %zu %zu %s", c->n_experts, c->top_k, c->d_ff, acts[c->activation]);
    if (c->n_shared) kd__sb_printf(sb, " shared %zu", c->n_shared);
    if (c->gate == KD_MOE_GATE_COSINE) {
        kd__sb_printf(sb, " router cosine %zu", c->cosine_dim);
    } else {
        switch (c->router.kind) {
        case KD_ROUTER_TOPK: break;
        case KD_ROUTER_TOPK_RAW: kd__sb_puts(sb, " router topk_raw"); break;
        case KD_ROUTER_NOISY_TOPK:
            kd__sb_puts(sb, " router noisy ");
            kd__sb_float(sb, c->router.noise_std);
            break;
        case KD_ROUTER_EXPERT_CHOICE: kd__sb_puts(sb, " router expert_choice"); break;
        case KD_ROUTER_HASH: kd__sb_puts(sb, " router hash"); break;
        case KD_ROUTER_TOPK_SELECT: kd__sb_puts(sb, " router select"); break;
        case KD_ROUTER_THRESHOLD:
            kd__sb_puts(sb, " router threshold ");
            kd__sb_float(sb, c->router.threshold);
            kd__sb_printf(sb, " %zu", c->router.k_max);
            break;
        }
    }
    if (c->capacity_factor > 0) {
        kd__sb_puts(sb, " capacity ");
        kd__sb_float(sb, c->capacity_factor);
    }
    if (c->balance_coef > 0) {
        kd__sb_puts(sb, " balance ");
        kd__sb_float(sb, c->balance_coef);
    }
    if (c->z_coef > 0) {
        kd__sb_puts(sb, " zloss ");
        kd__sb_float(sb, c->z_coef);
    }
}

static void ml_destroy(kd_layer *l, kd_context *ctx)
{
    kd__moe_core_free(ctx, &((kd_moe_layer *)l)->core);
    kd__free(ctx, l);
}

static const kd_layer_vtable moe_vt = {
    KD_LAYER_ABI_VERSION, "moe", ml_tensor_count, ml_tensor_desc, ml_bind, ml_init,
    ml_workspace, ml_forward, ml_backward, ml_spec, ml_destroy, NULL, NULL, NULL,
    NULL, /* infer_shared: the forward records routing statistics in the layer */
};

static kd_status moe_parse(kd__spec_parser *p, const kd_shape *in, kd_layer **out)
{
    if (in->kind != KD_DATA_DENSE || in->rank == 0)
        return kd__spec_error(p, "moe needs dense input");
    kd_moe_config c;
    kd_moe_config_default(&c);
    c.d_model = in->d[in->rank - 1];
    kd_status st = kd__spec_uint(p, "moe experts", (size_t)1 << 20, &c.n_experts);
    if (st == KD_OK) st = kd__spec_uint(p, "moe top-k", (size_t)1 << 20, &c.top_k);
    if (st == KD_OK) st = kd__spec_uint(p, "moe d_ff", KD_NN_MAX_NUMEL, &c.d_ff);
    if (st != KD_OK) return st;
    for (;;) {
        if (kd__spec_accept(p, "relu")) c.activation = KD_MOE_RELU;
        else if (kd__spec_accept(p, "gelu")) c.activation = KD_MOE_GELU;
        else if (kd__spec_accept(p, "swiglu")) c.activation = KD_MOE_SWIGLU;
        else if (kd__spec_accept(p, "shared")) st = kd__spec_uint(p, "shared experts", 1024, &c.n_shared);
        else if (kd__spec_accept(p, "capacity")) st = kd__spec_float(p, "capacity factor", 0, 1e6f, &c.capacity_factor);
        else if (kd__spec_accept(p, "balance")) st = kd__spec_float(p, "balance coefficient", 0, 1e6f, &c.balance_coef);
        else if (kd__spec_accept(p, "zloss")) st = kd__spec_float(p, "z-loss coefficient", 0, 1e6f, &c.z_coef);
        else if (kd__spec_accept(p, "router")) {
            if (kd__spec_accept(p, "topk")) c.router.kind = KD_ROUTER_TOPK;
            else if (kd__spec_accept(p, "topk_raw")) c.router.kind = KD_ROUTER_TOPK_RAW;
            else if (kd__spec_accept(p, "expert_choice")) c.router.kind = KD_ROUTER_EXPERT_CHOICE;
            else if (kd__spec_accept(p, "hash")) c.router.kind = KD_ROUTER_HASH;
            else if (kd__spec_accept(p, "select")) c.router.kind = KD_ROUTER_TOPK_SELECT;
            else if (kd__spec_accept(p, "noisy")) {
                c.router.kind = KD_ROUTER_NOISY_TOPK;
                st = kd__spec_float(p, "noise std", 0, 1e6f, &c.router.noise_std);
            } else if (kd__spec_accept(p, "threshold")) {
                c.router.kind = KD_ROUTER_THRESHOLD;
                st = kd__spec_float(p, "threshold", 1e-6f, 1.0f, &c.router.threshold);
                if (st == KD_OK) st = kd__spec_uint(p, "threshold k_max", 64, &c.router.k_max);
            } else if (kd__spec_accept(p, "cosine")) {
                c.gate = KD_MOE_GATE_COSINE;
                st = kd__spec_uint(p, "cosine dim", 4096, &c.cosine_dim);
            } else
                return kd__spec_error(p, "unknown moe router");
        } else
            break;
        if (st != KD_OK) return st;
    }
    if (c.top_k > 64 && c.router.kind != KD_ROUTER_EXPERT_CHOICE && c.router.kind != KD_ROUTER_HASH)
        return kd__spec_error(p, "moe: top-k above 64");
    kd_moe_layer *L = (kd_moe_layer *)kd__calloc(p->ctx, 1, sizeof *L);
    if (!L) return KD_E_NOMEM;
    st = kd__moe_core_init(p->ctx, &L->core, &c);
    if (st != KD_OK) {
        char why[KD_ERRMSG_SIZE];
        kd__fmt(why, sizeof why, "%s", kd_context_last_error(p->ctx));
        kd__free(p->ctx, L);
        return st == KD_E_NOMEM ? st : kd__spec_error(p, "%s", why);
    }
    L->base.vt = &moe_vt;
    L->base.in = *in;
    L->base.out = *in;
    L->rows = kd__shape_numel(in) / c.d_model;
    L->k_spec = c.top_k;
    *out = &L->base;
    return KD_OK;
}

const kd_layer_kind kd__kind_moe = {"moe", moe_parse};

/* ---- a model's MoE layers ------------------------------------------------------ */

static kd_moe_layer *moe_layer_of(const kd_model *m, size_t layer)
{
    kd_layer *l = kd__model_layer(m, layer);
    return l && l->vt == &moe_vt ? (kd_moe_layer *)l : NULL;
}

KD_API kd_status kd_model_moe_stats(const kd_model *m, size_t layer, size_t *routed,
                                    size_t *dropped, float *mean_prob, float *entropy)
{
    if (!m) return KD_E_INVALID;
    kd_moe_layer *L = moe_layer_of(m, layer);
    if (!L)
        return kd__fail(kd__model_context(m), KD_E_INVALID,
                        "kd_model_moe_stats: layer %zu is not an moe layer", layer);
    const kd__moe_core *c = &L->core;
    for (size_t e = 0; e < c->E; e++) {
        if (routed) routed[e] = c->routed[e];
        if (dropped) dropped[e] = c->dropped[e];
        if (mean_prob) mean_prob[e] = c->mean_prob[e];
    }
    if (entropy) *entropy = c->entropy;
    return KD_OK;
}

KD_API kd_status kd_model_moe_aux_losses(const kd_model *m, size_t layer, float *balance,
                                         float *z_loss)
{
    if (!m) return KD_E_INVALID;
    kd_moe_layer *L = moe_layer_of(m, layer);
    if (!L)
        return kd__fail(kd__model_context(m), KD_E_INVALID,
                        "kd_model_moe_aux_losses: layer %zu is not an moe layer", layer);
    if (balance) *balance = L->core.balance;
    if (z_loss) *z_loss = L->core.zloss;
    return KD_OK;
}

KD_API kd_status kd_model_moe_set_top_k(kd_model *m, size_t layer, size_t k)
{
    if (!m) return KD_E_INVALID;
    kd_moe_layer *L = moe_layer_of(m, layer);
    kd_context *ctx = kd__model_context(m);
    if (!L)
        return kd__fail(ctx, KD_E_INVALID, "kd_model_moe_set_top_k: layer %zu is not an moe layer",
                        layer);
    if (k == 0 || k > L->k_spec)
        return kd__fail(ctx, KD_E_INVALID,
                        "kd_model_moe_set_top_k: k %zu outside [1, %zu] (the spec's k)", k,
                        L->k_spec);
    L->core.k = k;
    return KD_OK;
}

kd__moe_core *kd__moe_layer_core(const kd_model *m, size_t layer)
{
    kd_moe_layer *L = moe_layer_of(m, layer);
    return L ? &L->core : NULL;
}
