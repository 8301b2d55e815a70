/*
 * kd_moe.h - Mixture-of-Experts layers: a pluggable router vtable, capacity
 * and token dropping, auxiliary balancing losses, grouped expert compute.
 *
 * A kd_moe maps n tokens x (n x d, row-major) to y (n x d):
 *
 *     z   = gate(x)                       n x E gate logits
 *     A   = route(z)                      assignments (token t, expert e, weight w)
 *     y_t = shared(x_t) + sum_{(t,e,w) in A, kept} w * FFN_e(x_t)
 *
 * FFN_e(x) = W2_e act(W1_e x) (ReLU or exact-erf GELU), or for SwiGLU
 * W2_e (silu(W1_e x) * (W3_e x)); no biases (as Mixtral). The optional
 * shared experts are one FFN of hidden size n_shared * d_ff that every token
 * uses with weight 1 (DeepSeekMoE-style shared experts, concatenated).
 *
 * Gate: linear, z = x Wg^T (Wg is E x d), or cosine (X-MoE, Chi et al.
 * 2022): z_te = exp(s) * cos(P x_t, c_e), with P (d_low x d) projecting to a
 * low-dimensional hypersphere, expert embeddings c (E x d_low) and a
 * learnable log inverse temperature s. The router (a vtable, below) turns
 * z into assignments; capacity is applied by the layer afterwards.
 *
 * Ties: top-k picks the larger logit and, between equal logits, the lower
 * expert index; expert choice picks the larger score and then the lower
 * token index. Routing is deterministic (noisy routing draws its noise from
 * the given RNG: the context's for kd_moe, the model's dropout stream in a
 * kd_model).
 *
 * Capacity: with capacity_factor f > 0 every expert keeps at most
 * C = ceil(f * n * k / E) assignments, in token order (earlier tokens win);
 * the rest are dropped (their expert output is not added, their routing
 * weight gets no gradient, the per-expert 'dropped' counter counts them).
 * f == 0 is dropless: nothing is dropped and nothing is padded. Expert
 * choice routing uses C as the number of tokens each expert takes
 * (ceil(n * k / E) when dropless), clamped to n.
 *
 * Edge cases (tested): n == 0 is a no-op; C above n drops nothing; an
 * expert that receives no token costs nothing; a router that lists the same
 * expert twice for one token gets both contributions added (nothing is
 * overwritten); when all tokens are dropped y is the shared output (0
 * without shared experts).
 *
 * Compute: assignments are grouped by expert with a stable counting sort,
 * each expert runs one GEMM per weight matrix over its contiguous rows, and
 * the weighted outputs are scatter-added; backward mirrors this.
 *
 * Auxiliary losses (computed in every training forward; their gradients are
 * added to the gate in kd_moe_backward when the coefficients are > 0):
 *   balance = E * sum_i f_i * P_i   (Switch Transformer), f_i = share of
 *             ALL router assignments (all k choices, before capacity drops)
 *             that picked expert i, P_i = mean_t softmax(z_t)_i. Uniform
 *             routing gives 1. Gradient flows through P only.
 *   z-loss  = mean_t (logsumexp_j z_tj)^2   (ST-MoE).
 *
 * Tensors (state_dict names; shapes):
 *   gate.weight (E, d)                     linear gate
 *   gate.proj (d_low, d), gate.experts (E, d_low), gate.log_scale (1)   cosine gate
 *   experts.w1 (E, d_ff, d), [experts.w3 (E, d_ff, d) SwiGLU], experts.w2 (E, d, d_ff)
 *   shared.w1 (S*d_ff, d), [shared.w3], shared.w2 (d, S*d_ff)   S = n_shared > 0
 *
 * In a kd_model the spec item is
 *     moe E K D_FF [relu|gelu|swiglu] [shared S] [router R] [capacity F]
 *         [balance C] [zloss C]
 * with R one of: topk (renormalised k weights, the default), topk_raw
 * (softmax probabilities of the k picks, not renormalised), noisy STD,
 * expert_choice, hash, threshold P KMAX (top-p, 1..KMAX experts),
 * select (top-k, weight 1 each), cosine D_LOW. The layer applies to the last input dimension (d); other
 * dimensions are tokens.
 */
#ifndef KD_MOE_H
#define KD_MOE_H

#include "kd_core.h"
#include "kd_distill.h"
#include "kd_nn.h"

#ifdef __cplusplus
extern "C" {
#endif

/** @defgroup moe Mixture of Experts: routers, MoE layer
 *  @{ */

/* ---- router vtable -------------------------------------------------------- */

#define KD_ROUTER_ABI_VERSION 1u

/** One routing decision: token row, expert index, routing weight. */
typedef struct kd_router_assign {
    uint32_t token;
    uint32_t expert;
    float weight;
} kd_router_assign;

/** What a router gets for one batch (all borrowed for the call). */
typedef struct kd_router_batch {
    kd_context *ctx;      /**< for error reasons */
    const float *logits;  /**< n_tokens x n_experts gate logits */
    size_t n_tokens;
    size_t n_experts;
    size_t top_k;         /**< the layer's k (token-choice routers pick k per token) */
    size_t capacity;      /**< per-expert capacity the layer enforces (0: none) */
    int train;            /**< 1 in training (noise on, backward will follow) */
    kd_rng *rng;          /**< noise source (the context's or the model's stream) */
    float *saved;         /**< saved_size floats: route writes, backward reads */
} kd_router_batch;

/**
 * A router. state is the router's own configuration (borrowed by the layer
 * for its lifetime). abi_version only grows; slots are appended.
 */
typedef struct kd_router_vtable {
    uint32_t abi_version; /**< KD_ROUTER_ABI_VERSION it was written for (>= 1) */

    /* ---- Slots of abi_version 1 ---- */
    const char *name;
    /** Upper bound on the assignments route may return. */
    size_t (*max_assignments)(const void *state, size_t n_tokens, size_t n_experts,
                              size_t top_k, size_t capacity);
    /** Floats of per-batch state route keeps for backward (may be NULL: 0). */
    size_t (*saved_size)(const void *state, size_t n_tokens, size_t n_experts);
    /** Writes *n_out <= max_assignments assignments (token < n_tokens,
     *  expert < n_experts; a NaN weight propagates). Must not allocate. */
    kd_status (*route)(const void *state, const kd_router_batch *b, kd_router_assign *out,
                       size_t *n_out);
    /** Accumulates (+=) into dlogits (n_tokens x n_experts) the gradient of
     *  the gate logits given dweight[i] = dL/d(a[i].weight) for the
     *  assignments route returned. NULL: routing weights have no gradient. */
    kd_status (*backward)(const void *state, const kd_router_batch *b,
                          const kd_router_assign *a, size_t n_a, const float *dweight,
                          float *dlogits);
    /* ---- Slots above are valid for abi_version 1 ---- */
} kd_router_vtable;

/** Built-in routers. */
typedef enum kd_router_kind {
    KD_ROUTER_TOPK = 0,          /**< softmax top-k, the k weights renormalised to sum 1 */
    KD_ROUTER_TOPK_RAW = 1,      /**< softmax top-k, weights = full-softmax probabilities */
    KD_ROUTER_NOISY_TOPK = 2,    /**< training: z + noise_std * N(0,1), then renormalised top-k */
    KD_ROUTER_EXPERT_CHOICE = 3, /**< each expert takes its top-C tokens by softmax score */
    KD_ROUTER_HASH = 4,          /**< k distinct experts from a hash of (seed, token row); weight 1/k */
    KD_ROUTER_THRESHOLD = 5,     /**< top-p: fewest experts whose probability reaches p, 1..k_max, renormalised */
    KD_ROUTER_TOPK_SELECT = 6    /**< top-k by logit, weight 1 each (selection only, as MoE-fication:
                                      with k = E the layer is the dense FFN); no routing-weight gradient */
} kd_router_kind;

/** Configuration of the built-in routers (their vtable state). */
typedef struct kd_router_config {
    uint32_t struct_size;  /**< sizeof(kd_router_config) */
    kd_router_kind kind;   /**< default KD_ROUTER_TOPK */
    float noise_std;       /**< noisy top-k (default 1) */
    float threshold;       /**< top-p mass in (0, 1] (default 0.5) */
    size_t k_max;          /**< threshold routing: most experts per token (default 0: the layer's k) */
    uint64_t hash_seed;    /**< hash routing (default 0) */
} kd_router_config;

KD_API void kd_router_config_default_sized(kd_router_config *cfg, size_t size);
#define kd_router_config_default(cfg) kd_router_config_default_sized((cfg), sizeof(kd_router_config))

/**
 * The vtable of a built-in router. Its state is a kd_router_config whose
 * kind equals the one asked for. k is at most 64 for token-choice routers
 * (route fails with KD_E_UNSUPPORTED above). NULL for an unknown kind.
 */
KD_API const kd_router_vtable *kd_router_builtin(kd_router_kind kind);

/* ---- the MoE layer ---------------------------------------------------------- */

typedef enum kd_moe_activation {
    KD_MOE_RELU = 0,
    KD_MOE_GELU = 1,  /**< exact erf form */
    KD_MOE_SWIGLU = 2
} kd_moe_activation;

typedef enum kd_moe_gate {
    KD_MOE_GATE_LINEAR = 0,
    KD_MOE_GATE_COSINE = 1   /**< X-MoE low-dimensional hypersphere routing */
} kd_moe_gate;

/** Fill with kd_moe_config_default(), then set d_model, d_ff, n_experts. */
typedef struct kd_moe_config {
    uint32_t struct_size;       /**< sizeof(kd_moe_config) */
    size_t d_model;             /**< d */
    size_t d_ff;                /**< hidden size of one expert */
    size_t n_experts;           /**< E >= 1 */
    size_t top_k;               /**< k, 1..E (default 2) */
    size_t n_shared;            /**< shared experts (default 0) */
    kd_moe_activation activation; /**< default KD_MOE_RELU */
    kd_moe_gate gate;           /**< default KD_MOE_GATE_LINEAR */
    size_t cosine_dim;          /**< d_low of the cosine gate (default 16) */
    float capacity_factor;      /**< 0: dropless (default) */
    float balance_coef;         /**< weight of the balance loss gradient (default 0) */
    float z_coef;               /**< weight of the z-loss gradient (default 0) */
    kd_router_config router;    /**< built-in router (copied) */
} kd_moe_config;

KD_API void kd_moe_config_default_sized(kd_moe_config *cfg, size_t size);
#define kd_moe_config_default(cfg) kd_moe_config_default_sized((cfg), sizeof(kd_moe_config))

typedef struct kd_moe kd_moe;

/**
 * Creates a stand-alone MoE layer that owns its parameters, initialised as
 * PyTorch's nn.Linear (U(+-1/sqrt(fan_in))) from kd_context_rng(ctx); the
 * cosine gate's expert embeddings ~ N(0, 1) and its log_scale starts at
 * log(1/0.07) (temperature 0.07); gradients zeroed.
 * Errors: KD_E_INVALID (NULL, zero sizes, k > E, bad router settings),
 * KD_E_VERSION, KD_E_OVERFLOW, KD_E_NOMEM.
 */
KD_API kd_status kd_moe_create(kd_context *ctx, const kd_moe_config *cfg, kd_moe **out);
KD_API void kd_moe_destroy(kd_moe *moe);

/**
 * Replaces the router with a custom vtable (borrowed, with its state, for
 * the layer's lifetime); vt NULL restores the configured built-in.
 * Errors: KD_E_INVALID, KD_E_VERSION (abi_version 0), KD_E_INVALID (missing
 * route or max_assignments).
 */
KD_API kd_status kd_moe_set_router(kd_moe *moe, const kd_router_vtable *vt, const void *state);

/** Changes k (1..E) for the next forward calls (e.g. lower k at inference). */
KD_API kd_status kd_moe_set_top_k(kd_moe *moe, size_t k);

/** Parameter block and gradient block (same layout, *n floats), owned by moe. */
KD_API kd_status kd_moe_blocks(kd_moe *moe, float **params, float **grads, size_t *n);
/** Number of named tensors. */
KD_API size_t kd_moe_tensor_count(const kd_moe *moe);
/** Tensor i: name (static to moe), data and gradient (owned), shape. Any out may be NULL. */
KD_API kd_status kd_moe_tensor(kd_moe *moe, size_t i, const char **name, float **data,
                               float **grad, size_t shape[KD_TENSOR_MAX_RANK], uint32_t *rank);
KD_API kd_status kd_moe_zero_grad(kd_moe *moe);

/**
 * y (n x d, overwritten) for x (n x d); both borrowed. In KD_MODE_TRAIN x
 * must stay unchanged until kd_moe_backward. Grows internal buffers when n
 * exceeds every earlier n. Errors: KD_E_INVALID (NULL), KD_E_OVERFLOW,
 * KD_E_NOMEM, KD_E_CALLBACK (a custom router failed or returned an invalid
 * assignment).
 */
KD_API kd_status kd_moe_forward(kd_moe *moe, kd_mode mode, const float *x, size_t n, float *y);

/**
 * Backward of the last training forward: accumulates parameter gradients,
 * adds balance_coef and z_coef times the auxiliary losses' gradients, and
 * writes dx (n x d, overwritten; may be NULL). Errors: KD_E_INVALID,
 * KD_E_STATE (no training forward).
 */
KD_API kd_status kd_moe_backward(kd_moe *moe, const float *dy, float *dx);

/** Auxiliary losses of the last forward (any out may be NULL). */
KD_API kd_status kd_moe_aux_losses(const kd_moe *moe, float *balance, float *z_loss);

/**
 * Statistics of the last forward. routed[e]: assignments the router made to
 * e; dropped[e]: how many of those capacity dropped; mean_prob[e]: mean
 * softmax probability of e; *entropy: mean over tokens of the entropy (nats)
 * of softmax(z_t). Arrays hold n_experts entries; any may be NULL.
 */
KD_API kd_status kd_moe_stats(const kd_moe *moe, size_t *routed, size_t *dropped,
                              float *mean_prob, float *entropy);

/**
 * Expert pruning: keeps the experts with keep[e] != 0 (at least top_k of
 * them), removing the others' weights and gate rows; the parameter block is
 * reallocated (earlier pointers are invalid). Pick keep from routing
 * frequency (kd_moe_stats) on calibration data. Linear gate only.
 * Errors: KD_E_INVALID, KD_E_UNSUPPORTED (cosine gate), KD_E_NOMEM.
 */
KD_API kd_status kd_moe_prune_experts(kd_moe *moe, const uint8_t *keep);

/** Number of experts (changes after pruning or merging). 0 for NULL. */
KD_API size_t kd_moe_expert_count(const kd_moe *moe);

/**
 * HC-SMoE expert merging (Chen et al. 2024, retraining-free): runs the n
 * calibration tokens calib (n x d) through the layer to count routing
 * frequencies and through every expert; represents expert e by its mean
 * output over the calibration tokens; clusters the experts into `target`
 * groups by agglomerative clustering with average linkage on Euclidean
 * distance (ties: lowest pair); replaces each group by the frequency-
 * weighted average ((routed + 1) weights) of its experts' weights and gate
 * rows. cluster_of (E entries, may be NULL) receives each old expert's new
 * index. target in [top_k, E]. Linear gate only. Reallocates the blocks.
 * Errors: KD_E_INVALID, KD_E_UNSUPPORTED, KD_E_NOMEM.
 */
KD_API kd_status kd_moe_merge_experts(kd_moe *moe, const float *calib, size_t n, size_t target,
                                      size_t *cluster_of);

/**
 * MoE-fication (Zhang et al. 2022): splits a dense FFN y = w2 act(w1 x)
 * [* (w3 x)] with hidden size h = cfg->n_experts * cfg->d_ff (w1, w3: h x d,
 * w2: d x h, row-major, borrowed during the call) into cfg->n_experts
 * experts of d_ff hidden units each, grouping the rows of w1 by balanced
 * k-means (cosine similarity, 12 rounds, equal-size clusters). Expert e's
 * gate row is its cluster's mean w1 row. With router KD_ROUTER_TOPK_SELECT
 * and k = E the result computes exactly the dense layer; lower k trades
 * accuracy for compute (recover with kd_moe_fit). cfg: linear gate, no
 * shared experts. Errors: KD_E_INVALID, KD_E_UNSUPPORTED, KD_E_NOMEM.
 */
KD_API kd_status kd_moe_from_dense(kd_context *ctx, const kd_moe_config *cfg, const float *w1,
                                   const float *w3, const float *w2, kd_moe **out);

/**
 * Layer-wise distillation (as LaDiMo's recovery step): `steps` full-batch
 * Adam steps (lr, betas 0.9/0.999) on mean squared error between the
 * layer's training-mode output on x (n x d) and target (n x d, e.g. the
 * dense layer's output), plus the configured auxiliary-loss gradients.
 * *mse (may be NULL) receives the error after the last step. Gradients are
 * overwritten. Errors: KD_E_INVALID, KD_E_NOMEM.
 */
KD_API kd_status kd_moe_fit(kd_moe *moe, const float *x, const float *target, size_t n, float lr,
                            size_t steps, float *mse);

/**
 * Knowledge Augmentation ("Every Expert Matters", 2025): the teacher output
 * averaged over `samples` routings in which each token's k experts are
 * sampled without replacement from softmax(z) (Gumbel top-k, drawn from
 * kd_context_rng) and weighted by softmax(z) renormalised over the sample.
 * Inference mode; y (n x d) is overwritten. Errors: KD_E_INVALID, KD_E_NOMEM.
 */
KD_API kd_status kd_moe_forward_ka(kd_moe *moe, const float *x, size_t n, size_t samples,
                                   float *y);

/* ---- MoE layers inside a kd_model ----------------------------------------------- */

/**
 * Statistics of top-level layer `layer` of m (an 'moe' item) from the last
 * forward, as kd_moe_stats. KD_E_INVALID when that layer is not an moe layer.
 */
KD_API kd_status kd_model_moe_stats(const kd_model *m, size_t layer, size_t *routed,
                                    size_t *dropped, float *mean_prob, float *entropy);
/** Auxiliary losses of that layer's last forward (either out may be NULL). */
KD_API kd_status kd_model_moe_aux_losses(const kd_model *m, size_t layer, float *balance,
                                         float *z_loss);
/**
 * Lowers (or restores) k of that layer for later forwards: 1..the spec's k
 * (workspaces are sized for the spec's k). The spec still prints the
 * original k.
 */
KD_API kd_status kd_model_moe_set_top_k(kd_model *m, size_t layer, size_t k);

/* ---- MoE teachers ("Every Expert Matters", Kim et al. 2025) ---------------------- */

/** What an MoE teacher does with the experts its router did not pick. */
typedef enum kd_moe_teacher_mode {
    /**
     * Knowledge Augmentation: the teacher output is the mean of `samples`
     * forward passes; in each, every top-level 'moe' layer samples each
     * token's k experts (the layer's k; k_max for threshold routers) without
     * replacement from softmax(z / temperature) (Gumbel top-k) instead of
     * taking the top k. A sampled expert set S is weighted as the layer's
     * router weights its picks: softmax(z) renormalised over S (topk, noisy,
     * threshold, expert_choice, hash, cosine gates), softmax(z) over all
     * experts (topk_raw), or 1 each (select). temperature -> 0 gives back
     * top-k routing.
     * Random draws: a kd_rng seeded kd_rng_seed(rng, seed, 0) at creation
     * and never reseeded. Each forward pass visits the moe layers in order,
     * tokens in row order, experts in index order, and draws one
     * u = (kd_rng_u32() + 0.5) / 2^32 per (token, expert); the score is
     * z_e * (1 / temperature) - log(-log u), the k largest scores (ties: lower
     * index) are the sample. The same seed and the same calls give the same
     * outputs. kd_fit with cache_teacher computes the augmented targets once.
     */
    KD_MOE_TEACHER_KA = 0,
    /**
     * Student-aware router: the teacher runs every expert of every 'moe'
     * layer (k = E, weights softmax(z) over all experts) on a private copy
     * of the model; before answering a batch it takes one Adam step
     * (lr = router_lr, betas 0.9/0.999, eps 1e-8) on the router (gate)
     * parameters only, minimising kd_model_moe_sar_loss against the current
     * student's logits (student run in inference mode), and answers with
     * the logits computed before that step. Experts and every other layer
     * stay frozen. Stateful: kd_fit runs it on every batch (never caches).
     * Only training calls step (kd_teacher_logits, kd_fit): an inference
     * call (kd_teacher_logits_mode with KD_MODE_INFER, kd_evaluate,
     * kd_cache_write_teacher) answers with an inference-mode forward of the
     * copy and leaves the router as it is.
     * Needs E <= 64 per layer; training-mode forward (dropout is active).
     */
    KD_MOE_TEACHER_SAR = 1
} kd_moe_teacher_mode;

/** Fill with kd_moe_teacher_config_default(). */
typedef struct kd_moe_teacher_config {
    uint32_t struct_size;       /**< sizeof(kd_moe_teacher_config) */
    kd_moe_teacher_mode mode;   /**< default KD_MOE_TEACHER_KA */
    size_t samples;             /**< KA: routings averaged, >= 1 (default 4) */
    float temperature;          /**< KA: sampling temperature, > 0 (default 1) */
    uint64_t seed;              /**< KA: seed of the sampling stream (default 1) */
    /** KA: average logits (KD_ENSEMBLE_LOGITS, default) or probabilities
     *  (KD_ENSEMBLE_PROBS: the teacher outputs log of the mean softmax). */
    kd_ensemble_mode combine;
    /** SAR: the student (borrowed; same input and classes as the teacher).
     *  NULL: all experts are used and the router stays frozen. */
    kd_model *student;
    float router_lr;            /**< SAR: Adam rate of the router (default 1e-3) */
    float kd_temperature;       /**< SAR: temperature of the objective (default 1) */
} kd_moe_teacher_config;

KD_API void kd_moe_teacher_config_default_sized(kd_moe_teacher_config *cfg, size_t size);
#define kd_moe_teacher_config_default(cfg) \
    kd_moe_teacher_config_default_sized((cfg), sizeof(kd_moe_teacher_config))

/**
 * A teacher over a kd_model with 'moe' layers (m borrowed, must outlive the
 * teacher, dense input; KA uses the top-level moe layers, SAR every moe
 * item of the spec). KA runs m itself (its routers are swapped during each
 * call and restored after); SAR copies m's tensors at creation and never
 * writes m. Use it with kd_fit / kd_student_step like any teacher.
 * Threads: KA changes m's routers during a call; nothing else may use m
 * meanwhile. SAR takes a router step on every training call
 * (kd_teacher_logits, kd_fit), none in kd_evaluate or
 * kd_teacher_logits_mode with KD_MODE_INFER.
 * Errors: KD_E_INVALID (NULL, bad settings, no moe layer, a student of
 * other sizes), KD_E_SHAPE (token-id model), KD_E_UNSUPPORTED (KA: k above
 * 64 (at kd_teacher_logits) or an expert-choice layer with capacity factor
 * below 1; SAR: more than 64 experts), KD_E_VERSION, KD_E_NOMEM.
 */
KD_API kd_status kd_teacher_create_moe(kd_context *ctx, kd_model *m,
                                       const kd_moe_teacher_config *cfg, kd_teacher **out);

/**
 * The student-aware router objective on a batch: mean over rows of
 * T^2 * KL(softmax(t / T) || softmax(s / T)), with t = m's logits from a
 * training-mode forward on x (batch x input floats) and s = student_logits
 * (batch x classes, borrowed). Adds its gradient to m's gradient block (all
 * tensors; SAR updates the gate tensors only) and writes the value to
 * *loss (may be NULL); teacher_logits (may be NULL) receives t. m is
 * typically a model whose moe layers route to every expert ('moe E E ...').
 * Errors: KD_E_INVALID, KD_E_SHAPE, KD_E_NUMERIC, KD_E_NOMEM.
 */
KD_API kd_status kd_model_moe_sar_loss(kd_model *m, const float *x, size_t batch,
                                       const float *student_logits, float temperature,
                                       double *loss, float *teacher_logits);

/** @} */

#ifdef __cplusplus
}
#endif

#endif /* KD_MOE_H */
