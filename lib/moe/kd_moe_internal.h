/*
 * kd_moe_internal.h - the MoE compute core shared by the stand-alone kd_moe
 * handle and the 'moe' model layer (never installed).
 */
#ifndef KD_MOE_INTERNAL_H
#define KD_MOE_INTERNAL_H

#include "kd/kd_moe.h"
#include "../nn/kd_layer.h"

/* Parameters, by offset into the parameter block (floats). */
typedef struct kd__moe_core {
    kd_moe_config cfg;
    const kd_router_vtable *rvt;
    const void *rstate;          /* &cfg.router for built-ins */
    size_t E, d, f, k, fs, dl;   /* fs = n_shared * d_ff */
    size_t o_gate, o_proj, o_cemb, o_lscale, o_w1, o_w3, o_w2, o_s1, o_s3, o_s2, n_param;
    float *param, *grad;         /* bound blocks */
    /* last forward */
    size_t n, n_assign, n_kept, capacity;
    int train;
    float balance, zloss, entropy;
    size_t *routed, *dropped, *offs; /* E, E, E + 1 (allocated for the initial E) */
    float *mean_prob;                /* E */
    size_t E_alloc;
} kd__moe_core;

/* Sets sizes and offsets from cfg (validated); allocates the per-expert arrays. */
kd_status kd__moe_core_init(kd_context *ctx, kd__moe_core *c, const kd_moe_config *cfg);
void kd__moe_core_free(kd_context *ctx, kd__moe_core *c);
/* Validates a config (reason in ctx). */
kd_status kd__moe_config_check(kd_context *ctx, const kd_moe_config *cfg);
/* Fills parameters from rng. */
void kd__moe_core_init_params(kd__moe_core *c, kd_rng *rng);
/* Tensor i of tensor_count: name, rank, shape, offset. */
size_t kd__moe_tensor_count(const kd__moe_core *c);
void kd__moe_tensor_desc(const kd__moe_core *c, size_t i, char name[KD_TENSOR_NAME_MAX],
                         uint32_t *rank, size_t shape[KD_TENSOR_MAX_RANK], size_t *offset);
/* Floats of the forward buffers (kept for backward in training) and of the
 * backward-only buffers for n tokens. */
kd_status kd__moe_sizes(const kd__moe_core *c, size_t n, size_t *fwd, size_t *bwd);
/* y (n x d) from x. fwd: kd__moe_sizes' fwd floats, 64-byte aligned. */
kd_status kd__moe_forward(kd__moe_core *c, kd_context *ctx, kd_rng *rng, int train,
                          const float *x, size_t n, float *y, float *fwd);
/* After a training forward with the same x, n and fwd. dx may be NULL. */
kd_status kd__moe_backward(kd__moe_core *c, kd_context *ctx, const float *x, const float *dy,
                           float *dx, float *fwd, float *bwd);

/* The stand-alone handle (kd_moe.c). */
struct kd_moe {
    kd_context *ctx;
    kd__moe_core core;
    float *param, *grad;
    float *ws;         /* fwd | bwd */
    size_t ws_floats, fwd_floats;
    size_t ws_tokens;  /* the workspace was sized for this many tokens */
    int have_train;
    const float *x;    /* last training forward's input (borrowed) */
};

/* Grows the workspace to n tokens; 64-byte aligned start of it. */
kd_status kd__moe_ensure_ws(kd_moe *m, size_t n);
float *kd__moe_ws(const kd_moe *m);

/* Built-in routers (kd_moe_router.c). */
size_t kd__router_kmax(const kd_router_config *rc, size_t top_k, size_t E);

extern const kd_layer_kind kd__kind_moe;

/* The core of top-level layer `layer` of m when it is an 'moe' layer, else NULL. */
kd__moe_core *kd__moe_layer_core(const kd_model *m, size_t layer);

#endif
