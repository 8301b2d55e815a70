/*
 * kd_loss.h - the loss vtable and libkd's built-in distillation losses.
 *
 * A loss maps a batch of student outputs (logits, features or ranking
 * scores), teacher outputs and labels to a scalar value and the gradient of
 * that value with respect to the student outputs. Built-in losses and user
 * losses are the same thing: a kd_loss_vtable plus a config, turned into a
 * kd_loss handle by kd_loss_create.
 *
 * Conventions for every loss (built-in or not, the library enforces them
 * before a vtable's compute slot runs):
 *
 *  Shapes. All arrays are row-major and contiguous. B = batch->rows.
 *    student_logits, teacher_logits   B x C          (C = classes)
 *    student_features                 B x Ds
 *    teacher_features                 B x Dt
 *    student_scores, teacher_scores   B x N          (N = candidates)
 *    labels                           B  int32: a class (or, for ranking
 *                                        losses, the positive's column) in
 *                                        [0, C) / [0, N), or ignore_index
 *    weights                          B  finite and >= 0
 *
 *  Masks. -inf in logits or scores marks a masked class / absent candidate:
 *    it has probability zero and receives zero gradient. A row whose classes
 *    are all masked is an error (KD_E_INVALID). NaN or +inf anywhere in the
 *    inputs, or a non-finite feature, is KD_E_NUMERIC with the position in
 *    the reason: libkd never returns a NaN value silently. A divergence that
 *    would be infinite (the teacher puts mass on a class the student masks,
 *    a label on a masked class) is KD_E_NUMERIC as well.
 *
 *  Rows. A row whose label equals ignore_index is skipped by every loss that
 *    is given labels (value and gradient zero), so one batch serves padded
 *    token positions. Without labels every row takes part.
 *
 *  Reduction. Per-row terms l_i are combined as
 *      KD_REDUCE_MEAN (default): sum_i w_i l_i / sum_i w_i
 *      KD_REDUCE_SUM:            sum_i w_i l_i
 *    over the rows taking part, with w_i = weights[i] (1 without weights).
 *    A batch with no participating weight has value 0 and no gradient.
 *    Relational losses (RKD) are means over pairs / triplets instead; see
 *    their comments.
 *
 *  Temperature. Every temperature-scaled divergence (Hinton KD, reverse KL,
 *    JSD, skew KL, TAID, DKD, listwise KL) is multiplied by T^2, as Hinton
 *    et al. prescribe, so gradient magnitudes do not shrink as T grows.
 *
 *  Gradients ACCUMULATE: kd_loss_compute adds grad->scale * dValue/dInput
 *    to each non-NULL array of the kd_loss_grad (callers zero them first);
 *    trainable parameters of a loss accumulate into the loss's own gradient
 *    buffers the same way. Masked positions receive +0. Built-in losses
 *    detect every failure before writing anything: on failure no gradient
 *    has been added and *value is untouched.
 *
 * Threads: a kd_loss is used by one thread at a time.
 */
#ifndef KD_LOSS_H
#define KD_LOSS_H

#include "kd_core.h"

#ifdef __cplusplus
extern "C" {
#endif

/** @defgroup loss Distillation losses
 *  @{ */

/** Version of kd_loss_vtable these headers describe (see the vtable). */
#define KD_LOSS_ABI_VERSION 1u

/** PyTorch's default ignore index; kd_loss_batch_default sets it. */
#define KD_LOSS_IGNORE_INDEX (-100)

typedef enum kd_loss_reduction {
    KD_REDUCE_MEAN = 0, /**< weighted mean over participating rows */
    KD_REDUCE_SUM = 1   /**< weighted sum */
} kd_loss_reduction;

/* ---- sparse teacher logits (designed for vocabulary-scale KD) ---------- */

/** How a sparse teacher row was obtained. */
typedef enum kd_sparse_mode {
    /** ids are the teacher's k most probable classes (or top-p); tail_mass
     *  holds the probability outside them, kept as one bucket so the target
     *  stays a distribution. */
    KD_SPARSE_TOPK = 0,
    /** ids were drawn at random from a proposal (Sparse Logit Sampling);
     *  counts[i] is how often ids[i] was drawn, and the loss forms the
     *  unbiased importance-sampled estimate of the full-distribution loss. */
    KD_SPARSE_SAMPLED = 1
} kd_sparse_mode;

/** What the values of a sparse row are. */
typedef enum kd_sparse_values {
    KD_SPARSE_LOGPROB = 0, /**< log-probabilities at temperature 1 */
    KD_SPARSE_PROB = 1,    /**< probabilities at temperature 1 */
    KD_SPARSE_LOGIT = 2    /**< raw logits (only meaningful with tail_mass) */
} kd_sparse_values;

/**
 * Sparse teacher outputs: k (id, value) slots per row, B x k each. Borrowed
 * for the duration of the call. Fill with kd_sparse_logits_default().
 * Losses announce support with KD_LOSS_IN_TEACHER_SPARSE in their vtable's
 * `accepts`. Built-ins that accept sparse teachers: Hinton (alpha part),
 * reverse KL, JSD and TAID (mix PROBS) take TOPK rows; Hinton at T = 1 also
 * takes SAMPLED rows. Others report KD_E_UNSUPPORTED for a sparse-only
 * teacher.
 *
 * TOPK semantics: the k ids (unique per row; -1 slots ignored) and, with
 * tail_mass, one tail bucket holding every other class form a distribution
 * over k + 1 buckets (renormalised). At temperature T each bucket's
 * log-probability is divided by T and the buckets renormalised, the
 * student's q is bucketed the same way (its tail = 1 - sum over the ids,
 * floored at 1e-30), and the divergence is taken between the bucket
 * distributions; the gradient flows to all classes (q_j times the tail's
 * factor outside the ids). With k = C (every class listed, no tail) this
 * is the dense loss exactly.
 * SAMPLED semantics (Sparse Logit Sampling, RS-KD): with N = sum of counts,
 * the target is phat_i = (counts_i / N) p_i / proposal_i (phat_i =
 * counts_i / N without a proposal); value sum_i phat_i (log p_i - log q_i)
 * and gradient q_j sum_i phat_i - phat_j are unbiased estimates of the
 * forward KL and its gradient. values must be LOGPROB or PROB.
 */
typedef struct kd_sparse_logits {
    uint32_t struct_size;        /**< sizeof(kd_sparse_logits) */
    kd_sparse_mode mode;
    kd_sparse_values value_kind;
    size_t k;                    /**< slots per row (>= 1) */
    const int32_t *ids;          /**< B x k; a class in [0, C), or -1 for an empty slot */
    const float *values;         /**< B x k */
    const float *tail_mass;      /**< B; TOPK: mass outside ids (NULL: renormalise over ids) */
    const float *counts;         /**< B x k; SAMPLED: draw counts (NULL: 1 each) */
    const float *proposal;       /**< B x k; SAMPLED: proposal probability of each id
                                      (NULL: the teacher's own distribution) */
} kd_sparse_logits;

/** Fills *s with defaults (struct_size set, everything else 0/NULL). */
KD_API void kd_sparse_logits_default_sized(kd_sparse_logits *s, size_t size);
#define kd_sparse_logits_default(s) kd_sparse_logits_default_sized((s), sizeof(kd_sparse_logits))

/* ---- the batch a loss sees ---------------------------------------------- */

/**
 * Inputs of one loss evaluation. Every pointer is borrowed for the duration
 * of kd_loss_compute and may be NULL when the loss does not need it; inputs
 * a loss does not use are ignored (one batch can feed several losses).
 * Fill with kd_loss_batch_default() (which sets ignore_index to -100).
 */
typedef struct kd_loss_batch {
    uint32_t struct_size;            /**< sizeof(kd_loss_batch) */
    size_t rows;                     /**< B; 0 gives value 0 and touches nothing */

    size_t classes;                  /**< C, columns of the logits */
    const float *student_logits;     /**< B x C */
    const float *teacher_logits;     /**< B x C' dense teacher */
    size_t teacher_classes;          /**< C' (0: same as C). C' != C is KD_E_SHAPE:
                                          map vocabularies explicitly first */
    const kd_sparse_logits *teacher_sparse; /**< alternative to teacher_logits */

    size_t student_dim;              /**< Ds */
    const float *student_features;   /**< B x Ds */
    size_t teacher_dim;              /**< Dt */
    const float *teacher_features;   /**< B x Dt */

    size_t candidates;               /**< N, columns of the score matrices */
    const float *student_scores;     /**< B x N, ranking scores (see kd_loss_margin_mse) */
    const float *teacher_scores;     /**< B x N */

    const int32_t *labels;           /**< B, or NULL */
    int32_t ignore_index;            /**< label value that skips a row */
    const float *weights;            /**< B per-row weights >= 0, or NULL (all 1) */
} kd_loss_batch;

/** Fills *b with defaults: struct_size set, ignore_index = -100, rest 0/NULL. */
KD_API void kd_loss_batch_default_sized(kd_loss_batch *b, size_t size);
#define kd_loss_batch_default(b) kd_loss_batch_default_sized((b), sizeof(kd_loss_batch))

/**
 * Where gradients go. Each non-NULL array (same shape as the matching input)
 * receives += scale * dValue/dInput; NULL arrays are not computed. Borrowed
 * for the duration of the call. Fill with kd_loss_grad_default() (scale 1).
 */
typedef struct kd_loss_grad {
    uint32_t struct_size;            /**< sizeof(kd_loss_grad) */
    float scale;                     /**< factor on every gradient added (the loss's weight) */
    float *student_logits;           /**< B x C */
    float *student_features;         /**< B x Ds */
    float *student_scores;           /**< B x N */
} kd_loss_grad;

/** Fills *g with defaults (struct_size set, scale 1, arrays NULL). */
KD_API void kd_loss_grad_default_sized(kd_loss_grad *g, size_t size);
#define kd_loss_grad_default(g) kd_loss_grad_default_sized((g), sizeof(kd_loss_grad))

/**
 * A trainable parameter of a loss (e.g. the FitNets projection). data and
 * grad point into memory the loss owns, valid until kd_loss_destroy: an
 * optimizer updates data in place and reads grad, which kd_loss_compute
 * accumulates into and kd_loss_zero_grad clears. Row-major rows x cols
 * (count = rows * cols; a vector has rows == 1).
 */
typedef struct kd_loss_param {
    const char *name;                /**< static, e.g. "proj.weight" */
    float *data;
    float *grad;
    size_t count;
    size_t rows;
    size_t cols;
} kd_loss_param;

typedef struct kd_loss kd_loss;

/* ---- the vtable ----------------------------------------------------------- */

/** Bits of kd_loss_vtable.requires / .accepts: which batch inputs a loss uses. */
enum {
    KD_LOSS_IN_STUDENT_LOGITS = 1u << 0,
    KD_LOSS_IN_TEACHER_LOGITS = 1u << 1,   /**< dense teacher logits */
    KD_LOSS_IN_TEACHER_SPARSE = 1u << 2,   /**< in accepts: a sparse teacher may replace dense */
    KD_LOSS_IN_STUDENT_FEATURES = 1u << 3,
    KD_LOSS_IN_TEACHER_FEATURES = 1u << 4,
    KD_LOSS_IN_STUDENT_SCORES = 1u << 5,
    KD_LOSS_IN_TEACHER_SCORES = 1u << 6,
    KD_LOSS_IN_LABELS = 1u << 7
};

/**
 * A loss implementation. Like SQLite's sqlite3_io_methods, it starts with
 * abi_version and only ever grows at the end: a library calls a slot only
 * when the vtable's abi_version has it, and a vtable written for a newer
 * library (larger abi_version) works with this one through the slots below.
 * The vtable is borrowed for the lifetime of every kd_loss created from it
 * (make it static const).
 *
 * Before compute runs, the library has checked: ctx and handle valid, the
 * `requires` inputs present (KD_LOSS_IN_TEACHER_LOGITS is also met by a
 * sparse teacher when `accepts` has KD_LOSS_IN_TEACHER_SPARSE; a sparse-only
 * teacher is refused otherwise), element counts fit size_t, inputs finite
 * (-inf only in logits/scores), no all-masked row, labels in range, weights
 * finite and >= 0, teacher_classes == classes, rows > 0.
 */
typedef struct kd_loss_vtable {
    uint32_t abi_version;    /**< KD_LOSS_ABI_VERSION of the headers it was written for (>= 1) */

    /* ---- Slots of abi_version 1 ---- */
    const char *name;        /**< static, for messages */
    uint32_t requires;       /**< KD_LOSS_IN_* bits that must be present */
    uint32_t accepts;        /**< further KD_LOSS_IN_* bits it can use (e.g. TEACHER_SPARSE) */
    size_t state_size;       /**< bytes of per-handle state the library allocates, zeroed */
    /** Optional. Reads config (borrowed during the call; may be NULL for
     *  defaults) into state. Returns KD_OK or a status, with a reason left
     *  through kd_loss_fail. destroy is not called when create fails, so
     *  create cleans up after itself. */
    kd_status (*create)(kd_loss *loss, void *state, const void *config);
    /** Optional. Releases what create acquired. */
    void (*destroy)(kd_loss *loss, void *state);
    /** Required. Stores the value in *value and, when grad is non-NULL,
     *  accumulates gradients as described at the top of this header. */
    kd_status (*compute)(kd_loss *loss, void *state, const kd_loss_batch *batch,
                         double *value, const kd_loss_grad *grad);
    /** Optional. Advances schedules after optimizer step `step` (1-based). */
    kd_status (*step)(kd_loss *loss, void *state, uint64_t step);
    /** Optional. Number of trainable parameter tensors (0 when NULL). */
    size_t (*param_count)(const kd_loss *loss, const void *state);
    /** Optional. Describes parameter tensor `index` (< param_count). */
    kd_status (*param)(kd_loss *loss, void *state, size_t index, kd_loss_param *out);
    /* ---- Slots above are valid for abi_version 1 ---- */
} kd_loss_vtable;

/* ---- handle ---------------------------------------------------------------- */

/**
 * Creates a loss from a vtable (borrowed: it must outlive the handle) and a
 * config (borrowed during the call; each built-in documents its config type;
 * NULL gives its defaults). *out owns the handle; release with
 * kd_loss_destroy. Errors: KD_E_INVALID (NULL ctx/vtable/out, no compute
 * slot, bad config values), KD_E_VERSION (abi_version 0, config
 * struct_size unknown), KD_E_NOMEM.
 */
KD_API kd_status kd_loss_create(kd_context *ctx, const kd_loss_vtable *vtable,
                                const void *config, kd_loss **out);

/** Destroys a loss. NULL is a no-op. */
KD_API void kd_loss_destroy(kd_loss *loss);

/**
 * Evaluates the loss on batch: *value receives it (untouched on failure);
 * grad may be NULL (value only, parameter gradients untouched too).
 * Errors: KD_E_INVALID, KD_E_SHAPE, KD_E_OVERFLOW, KD_E_NUMERIC,
 * KD_E_UNSUPPORTED, KD_E_NOMEM, and whatever a user loss returns.
 */
KD_API kd_status kd_loss_compute(kd_loss *loss, const kd_loss_batch *batch, double *value,
                                 const kd_loss_grad *grad);

/**
 * Tells the loss that optimizer step `step` (1-based count of updates done)
 * has happened; schedules (TAID's interpolation) advance here. A no-op for
 * losses without a schedule.
 */
KD_API kd_status kd_loss_step(kd_loss *loss, uint64_t step);

/** Number of trainable parameter tensors of the loss (0 for NULL). */
KD_API size_t kd_loss_param_count(const kd_loss *loss);

/** Describes parameter tensor index; KD_E_NOT_FOUND past the end. */
KD_API kd_status kd_loss_get_param(kd_loss *loss, size_t index, kd_loss_param *out);

/** Zeroes every parameter gradient of the loss. */
KD_API kd_status kd_loss_zero_grad(kd_loss *loss);

/** The vtable's name ("" for NULL). */
KD_API const char *kd_loss_name(const kd_loss *loss);

/** The context the loss was created from (for user vtables). */
KD_API kd_context *kd_loss_context(const kd_loss *loss);

/**
 * For vtable implementations: records status and reason (a plain string,
 * copied) as the context's last error and returns status, so a slot can
 * `return kd_loss_fail(loss, KD_E_INVALID, "why");`.
 */
KD_API kd_status kd_loss_fail(kd_loss *loss, kd_status status, const char *reason);

/* ---- built-in losses --------------------------------------------------------
 * Each function returns a static vtable to pass to kd_loss_create, with the
 * config type named in its comment. P = softmax(teacher / T) (target),
 * Q = softmax(student / T). */

/** Cross-entropy with label smoothing; needs student_logits and labels. */
typedef struct kd_loss_ce_config {
    uint32_t struct_size;            /**< sizeof(kd_loss_ce_config) */
    kd_loss_reduction reduction;
    /** eps in [0, 1): target (1 - eps) one-hot + eps spread uniformly over
     *  the row's unmasked classes (PyTorch's label_smoothing when nothing
     *  is masked). Default 0. */
    float label_smoothing;
} kd_loss_ce_config;
KD_API void kd_loss_ce_config_default_sized(kd_loss_ce_config *cfg, size_t size);
#define kd_loss_ce_config_default(cfg) kd_loss_ce_config_default_sized((cfg), sizeof(kd_loss_ce_config))
KD_API const kd_loss_vtable *kd_loss_cross_entropy(void);

/**
 * Hinton KD (Distilling the Knowledge in a Neural Network):
 *   l_i = alpha * T^2 * KL(P_i || Q_i) + (1 - alpha) * CE(student_i, label_i)
 * (CE at temperature 1, with label_smoothing). Needs student and teacher
 * logits; labels when alpha < 1. alpha = 1 is plain forward KL.
 */
typedef struct kd_loss_hinton_config {
    uint32_t struct_size;            /**< sizeof(kd_loss_hinton_config) */
    kd_loss_reduction reduction;
    float temperature;               /**< T > 0, default 4 */
    float alpha;                     /**< weight of the KD term in [0, 1], default 0.9 */
    float label_smoothing;           /**< of the CE term, default 0 */
} kd_loss_hinton_config;
KD_API void kd_loss_hinton_config_default_sized(kd_loss_hinton_config *cfg, size_t size);
#define kd_loss_hinton_config_default(cfg) kd_loss_hinton_config_default_sized((cfg), sizeof(kd_loss_hinton_config))
KD_API const kd_loss_vtable *kd_loss_hinton(void);

/**
 * Config of the divergences below (one struct; each reads its fields):
 *   reverse KL:        T^2 KL(Q || P)
 *   generalized JSD:   T^2 [beta KL(P || M) + (1 - beta) KL(Q || M)],
 *                      M = beta P + (1 - beta) Q   (GKD's JSD(beta))
 *   skew KL:           T^2 KL(P || a P + (1 - a) Q)        (DistiLLM)
 *   skew reverse KL:   T^2 KL(Q || (1 - a) P + a Q)
 * All need student and teacher logits.
 */
typedef struct kd_loss_divergence_config {
    uint32_t struct_size;            /**< sizeof(kd_loss_divergence_config) */
    kd_loss_reduction reduction;
    float temperature;               /**< T > 0, default 1 */
    float jsd_beta;                  /**< in (0, 1), default 0.5 */
    float skew_alpha;                /**< a in [0, 1), default 0.1 */
} kd_loss_divergence_config;
KD_API void kd_loss_divergence_config_default_sized(kd_loss_divergence_config *cfg, size_t size);
#define kd_loss_divergence_config_default(cfg) kd_loss_divergence_config_default_sized((cfg), sizeof(kd_loss_divergence_config))
KD_API const kd_loss_vtable *kd_loss_reverse_kl(void);
KD_API const kd_loss_vtable *kd_loss_jsd(void);
KD_API const kd_loss_vtable *kd_loss_skew_kl(void);
KD_API const kd_loss_vtable *kd_loss_skew_reverse_kl(void);

/** How TAID forms its intermediate target. */
typedef enum kd_taid_mix {
    /** P_t = (1 - t) stopgrad(Q) + t P (mixture of probabilities). */
    KD_TAID_MIX_PROBS = 0,
    /** P_t = softmax(((1 - t) stopgrad(s) + t z) / T) (mixture of logits:
     *  the TAID paper's intermediate teacher, "a softmax interpolation of
     *  detached student logits and teacher logits"; the default). Needs dense
     *  teacher logits: with a sparse teacher, KD_E_UNSUPPORTED. */
    KD_TAID_MIX_LOGITS = 1
} kd_taid_mix;

/**
 * TAID (Temporally Adaptive Interpolated Distillation):
 *   l_i = T^2 KL(P_t,i || Q_i), P_t treated as a constant,
 * with t advanced by kd_loss_step after each optimizer step n from the last
 * value J_n returned by kd_loss_compute:
 *   delta_n = (J_{n-1} - J_n) / (J_{n-1} + 1e-8)      (0 at the first step)
 *   m_n     = beta m_{n-1} + (1 - beta) delta_n
 *   t       = min(t_end, max(t_lin(n), t + alpha * sigmoid(m_n) * (1 - t)))
 *   t_lin(n) = t_start + (t_end - t_start) * min(n, total_steps) / total_steps
 * so t never decreases, starts at t_start and reaches t_end by total_steps
 * (total_steps 0: no linear floor). adaptive = 0 keeps only t_lin.
 * kd_loss_taid_t reads t. Needs student and teacher logits.
 */
typedef struct kd_loss_taid_config {
    uint32_t struct_size;            /**< sizeof(kd_loss_taid_config) */
    kd_loss_reduction reduction;
    float temperature;               /**< T > 0, default 1 */
    float t_start;                   /**< in [0, 1), default 0.4 */
    float t_end;                     /**< in (t_start, 1], default 1 */
    float alpha;                     /**< step size of the adaptive update, in [0, 1], default 5e-4 */
    float beta;                      /**< momentum in [0, 1), default 0.99 */
    uint64_t total_steps;            /**< length of the linear floor, default 0 */
    int adaptive;                    /**< 1 (default): paper's adaptive update; 0: linear only */
    kd_taid_mix mix;                 /**< default KD_TAID_MIX_LOGITS (the paper's) */
} kd_loss_taid_config;
KD_API void kd_loss_taid_config_default_sized(kd_loss_taid_config *cfg, size_t size);
#define kd_loss_taid_config_default(cfg) kd_loss_taid_config_default_sized((cfg), sizeof(kd_loss_taid_config))
KD_API const kd_loss_vtable *kd_loss_taid(void);
/** Current interpolation coefficient t of a TAID loss; KD_E_INVALID for other losses. */
KD_API kd_status kd_loss_taid_t(const kd_loss *loss, double *t);

/**
 * DKD (Decoupled Knowledge Distillation), per row with target class g:
 *   b = (p_g, 1 - p_g) of P and Q; Phat, Qhat = softmax over classes != g
 *   l_i = T^2 [alpha KL(b^P || b^Q) + beta KL(Phat || Qhat)]
 * NCKD is 0 when no non-target class has teacher mass (e.g. C == 1).
 * Needs student and teacher logits and labels.
 */
typedef struct kd_loss_dkd_config {
    uint32_t struct_size;            /**< sizeof(kd_loss_dkd_config) */
    kd_loss_reduction reduction;
    float temperature;               /**< T > 0, default 4 */
    float alpha;                     /**< TCKD weight >= 0, default 1 */
    float beta;                      /**< NCKD weight >= 0, default 8 */
} kd_loss_dkd_config;
KD_API void kd_loss_dkd_config_default_sized(kd_loss_dkd_config *cfg, size_t size);
#define kd_loss_dkd_config_default(cfg) kd_loss_dkd_config_default_sized((cfg), sizeof(kd_loss_dkd_config))
KD_API const kd_loss_vtable *kd_loss_dkd(void);

/**
 * Feature losses (FitNets hints). With projection, r_i = W s_i + b, W is
 * Dt x Ds ("proj.weight", initialised uniform in +-1/sqrt(Ds) from the
 * context's RNG) and b has Dt entries ("proj.bias", zero): both are
 * trainable parameters (kd_loss_param). Without projection r_i = s_i and
 * Ds must equal Dt.
 *   MSE:     l_i = (1/Dt) sum_d (r_id - t_id)^2
 *   cosine:  l_i = 1 - r_i.t_i / max(|r_i| |t_i|, eps)
 * Need student_features (B x Ds) and teacher_features (B x Dt).
 */
typedef struct kd_loss_feature_config {
    uint32_t struct_size;            /**< sizeof(kd_loss_feature_config) */
    kd_loss_reduction reduction;
    size_t student_dim;              /**< Ds (> 0, required) */
    size_t teacher_dim;              /**< Dt (> 0, required) */
    int projection;                  /**< 1 (default): trainable linear map; 0: identity */
    float cosine_eps;                /**< default 1e-8 */
} kd_loss_feature_config;
KD_API void kd_loss_feature_config_default_sized(kd_loss_feature_config *cfg, size_t size);
#define kd_loss_feature_config_default(cfg) kd_loss_feature_config_default_sized((cfg), sizeof(kd_loss_feature_config))
KD_API const kd_loss_vtable *kd_loss_feature_mse(void);
KD_API const kd_loss_vtable *kd_loss_feature_cosine(void);

/**
 * RKD (Relational Knowledge Distillation) over the n participating rows
 * (labels == ignore_index drop a row; weights are refused). h is the Huber
 * (smooth-L1) function with threshold delta.
 *   distance: psi(i,j) = |x_i - x_j| / mu, mu = mean over i != j of |x_i - x_j|
 *             value = (1/n^2) sum_{i,j} h(psi_S(i,j) - psi_T(i,j))
 *   angle:    psi(i,j,k) = <e_ji, e_ki> with e_ji = (x_j - x_i)/|x_j - x_i|
 *             (vertex i; 0 when j == i or k == i)
 *             value = (1/n^3) sum_{i,j,k} h(psi_S - psi_T)
 * Student and teacher dimensions may differ. Fewer than 2 rows (3 for
 * angle) give 0. A zero mean distance is KD_E_NUMERIC; a zero-length
 * difference between distinct rows is treated as the zero vector.
 */
typedef struct kd_loss_rkd_config {
    uint32_t struct_size;            /**< sizeof(kd_loss_rkd_config) */
    float huber_delta;               /**< > 0, default 1 (PyTorch's smooth_l1_loss beta) */
} kd_loss_rkd_config;
KD_API void kd_loss_rkd_config_default_sized(kd_loss_rkd_config *cfg, size_t size);
#define kd_loss_rkd_config_default(cfg) kd_loss_rkd_config_default_sized((cfg), sizeof(kd_loss_rkd_config))
KD_API const kd_loss_vtable *kd_loss_rkd_distance(void);
KD_API const kd_loss_vtable *kd_loss_rkd_angle(void);

/**
 * Ranking distillation. Score layout: row i holds one query's scores over N
 * candidates, the same columns for student and teacher; the positive is
 * column labels[i] (column 0 without labels). In-batch negatives are simply
 * more columns: for B queries with G passages each, the B x (B*G) matrix of
 * every query against every passage of the batch, with labels[i] = i*G.
 * A teacher score of -inf marks a candidate the teacher did not score.
 *
 *   Margin-MSE: l_i = mean over scored j != pos of
 *                      ((s_pos - s_j) - (t_pos - t_j))^2
 *               (N = 2 is Hofstaetter et al.'s MSE((s+ - s-), (t+ - t-))).
 *               The positive must be scored by the teacher.
 *   Listwise KL: l_i = T^2 KL(softmax(t_i/T) || softmax(s_i/T)) over the row.
 * Need student_scores and teacher_scores.
 */
typedef struct kd_loss_rank_config {
    uint32_t struct_size;            /**< sizeof(kd_loss_rank_config) */
    kd_loss_reduction reduction;
    float temperature;               /**< listwise KL only, T > 0, default 1 */
} kd_loss_rank_config;
KD_API void kd_loss_rank_config_default_sized(kd_loss_rank_config *cfg, size_t size);
#define kd_loss_rank_config_default(cfg) kd_loss_rank_config_default_sized((cfg), sizeof(kd_loss_rank_config))
KD_API const kd_loss_vtable *kd_loss_margin_mse(void);
KD_API const kd_loss_vtable *kd_loss_listwise_kl(void);

/* ---- PHI-S: standardising teacher features ----------------------------------
 * PHI-S (Ranzinger et al., PHI-S: Distribution Balancing for Label-Free
 * Multi-Teacher Distillation): with the teacher features' mean mu and
 * covariance U diag(lambda) U^T, the map
 *     y = H U^T (x - mu) / sigma,   sigma^2 = mean(lambda) = trace / D,
 * H the normalised D x D Hadamard matrix, rotates the features so that every
 * dimension has the same variance and then applies ONE scalar scale: each
 * output dimension has variance 1 on the calibration data. Students regress
 * y (e.g. kd_loss_feature_mse); kd_phis_invert maps predictions back.
 * D must be a power of two (Sylvester's construction). */

typedef struct kd_phis kd_phis;

/**
 * Estimates mean, rotation and scale from n >= 2 calibration rows x
 * (n x dim, borrowed; population covariance, 1/n). The eigen-decomposition
 * is cyclic Jacobi in double, O(dim^3) per sweep: fine for dim <= 1024.
 * Errors: KD_E_INVALID, KD_E_UNSUPPORTED (dim not a power of two),
 * KD_E_NUMERIC (non-finite input, or zero total variance), KD_E_OVERFLOW,
 * KD_E_NOMEM. *out owns the result; free with kd_phis_destroy.
 */
KD_API kd_status kd_phis_fit(kd_context *ctx, const float *x, size_t n, size_t dim,
                             kd_phis **out);

/** y = H U^T (x - mu) / sigma for n rows (x and y n x dim, may not overlap). */
KD_API kd_status kd_phis_apply(const kd_phis *phis, const float *x, size_t n, float *y);

/** x = sigma U H^T y + mu, the inverse map (n x dim each, may not overlap). */
KD_API kd_status kd_phis_invert(const kd_phis *phis, const float *y, size_t n, float *x);

/**
 * Read-only views of the fitted transform (owned by phis, valid until
 * kd_phis_destroy; any out-pointer may be NULL): mean (dim), rotation
 * R = H U^T (dim x dim, row-major, y = R (x - mu) / sigma), sigma, dim.
 */
KD_API kd_status kd_phis_get(const kd_phis *phis, const float **mean, const float **rotation,
                             float *sigma, size_t *dim);

/** Frees a fitted transform. NULL is a no-op. */
KD_API void kd_phis_destroy(kd_phis *phis);

/** @} */

#ifdef __cplusplus
}
#endif

#endif /* KD_LOSS_H */
