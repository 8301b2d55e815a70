/*
 * kd_nn.h - models (an ordered list of layers), their parameters and
 * gradients, forward/backward, optimizers, learning-rate schedules.
 *
 * A model is described by an architecture spec, a short text that also goes
 * into a checkpoint's __metadata__ so that a checkpoint alone rebuilds it:
 *
 *     input 1x28x28; conv 32 3 stride 1 pad 1; relu; maxpool 2; flatten; linear 10
 *
 * Grammar (whitespace-separated words; items separated by ';'):
 *
 *     spec     := input (';' item)* [';']
 *     input    := 'input' DIMS            dense float samples, DIMS = D1[xD2[xD3[xD4]]]
 *               | 'input' 'ids' T         T token ids per sample (int32)
 *               | 'input' 'bags'          variable-length id lists (CSR offsets + ids)
 *     item     := 'linear' OUT ['nobias']             y = x W^T + b over the last dim
 *               | 'conv' OUT K ['stride' S] ['pad' P] ['nobias']   NCHW, square K x K
 *               | 'maxpool' K ['stride' S]  |  'avgpool' K ['stride' S]   (stride default K, no padding)
 *               | 'flatten' | 'identity'
 *               | 'relu' | 'gelu' ['tanh'] | 'silu' | 'tanh' | 'sigmoid'
 *               | 'layernorm' ['eps' E]               over the last dim
 *               | 'batchnorm' ['eps' E] ['momentum' M]  channels = first per-sample dim
 *               | 'dropout' P
 *               | 'embedding' V D                     needs 'input ids T'; out T x D
 *               | 'embeddingbag' V D ['sum' | 'mean'] needs 'input bags'; out D (default sum)
 *               | 'residual' '{' item (';' item)* [';'] '}'    y = x + f(x)
 *
 * Integers are decimal; E, M, P are decimal floats ("1e-5", "0.1"). A spec is
 * at most KD_SPEC_MAX_LEN bytes, nests residuals at most 8 deep, holds at most
 * 4096 layers; every per-sample size is at most 2^31 elements. Anything else
 * gives KD_E_FORMAT with the offending position in the reason.
 *
 * Parameter names follow PyTorch's nn.Sequential state_dict: the layer's
 * index in the list (the input line does not count; parameter-free layers
 * do), a dot, the tensor name: "0.weight", "0.bias", "3.running_mean". A
 * residual at index k names its body's tensors "k.body.j.<name>" (a PyTorch
 * module with `self.body = nn.Sequential(...)` and forward x + body(x)).
 * Tensors are either trainable parameters (in the model's single parameter
 * block, with a gradient at the same offset in its single gradient block) or
 * buffers (batch-norm running_mean, running_var and num_batches_tracked,
 * kept as float; in the model's buffer block, no gradient).
 *
 * GELU is the exact erf form by default (PyTorch's nn.GELU()); 'gelu tanh'
 * is the tanh approximation (nn.GELU(approximate='tanh')).
 *
 * Initialisation (seeded; see kd_model_create_from_spec): linear and conv
 * weights and biases ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with fan_in = in
 * features (linear) or C*K*K (conv), which is PyTorch's default
 * (kaiming_uniform_ with a = sqrt(5) for the weight); embeddings ~ N(0, 1);
 * layer/batch norm weight 1, bias 0; running_mean 0, running_var 1.
 *
 * NaN and Inf: forward propagates them (ReLU(NaN) = NaN, max-pool picks a NaN
 * when its window has one, GEMM propagates); nothing fails and nothing
 * crashes. Backward likewise propagates them into gradients. Use
 * kd_model_clip_grad_norm, which reports KD_E_NUMERIC for a non-finite norm,
 * to stop an update.
 *
 * Memory: the parameter and buffer blocks are allocated once, when the model
 * is first used; the gradient block the first time gradients are needed
 * (inference-only users never pay for it). Activations are sized on the
 * first forward at a given batch size and reused for that batch size or any
 * smaller one: no allocation per step. Inference keeps two activation buffers
 * (ping-pong); training keeps every layer's output for backward.
 *
 * Inference (forward in KD_MODE_INFER) uses no stdio and allocates only
 * through the context, so it runs from an arena in firmware builds.
 * kd_model_infer runs one built model from several threads at once, each
 * with its own caller-owned workspace, and allocates nothing (see "shared
 * inference" below).
 */
#ifndef KD_NN_H
#define KD_NN_H

#include "kd_core.h"

#ifdef __cplusplus
extern "C" {
#endif

/** @defgroup nn Models: layers, parameters, forward/backward, optimizers
 *  @{ */

/** Longest accepted spec string, in bytes (excluding the NUL). */
#define KD_SPEC_MAX_LEN 65536
/** Longest tensor name, in bytes including the NUL. */
#define KD_TENSOR_NAME_MAX 96
/** Largest tensor rank reported by kd_model_tensor_shape. */
#define KD_TENSOR_MAX_RANK 4

typedef struct kd_model kd_model;

/** Forward mode: inference (dropout off, batch norm uses running stats) or training. */
typedef enum kd_mode {
    KD_MODE_INFER = 0,
    KD_MODE_TRAIN = 1
} kd_mode;

/**
 * Parses spec (grammar above) and creates the model. spec is borrowed during
 * the call. The model draws two words from kd_context_rng(ctx) at creation:
 * one seeds its weight initialisation, one its dropout stream; so the same
 * context seed and the same sequence of calls give the same weights.
 * On success *out owns the model (kd_model_destroy). Errors: KD_E_INVALID
 * (NULL), KD_E_FORMAT (bad spec, with position), KD_E_NOMEM.
 */
KD_API kd_status kd_model_create_from_spec(kd_context *ctx, const char *spec, kd_model **out);

/**
 * Appends layers ("linear 10; relu") to a model that has not been used yet
 * (no forward, no parameter access): builds a model layer by layer. spec is
 * borrowed during the call. On failure the model is unchanged.
 * Errors: KD_E_STATE (model already used), KD_E_FORMAT, KD_E_SHAPE is not
 * used here (shape errors in a spec are format errors), KD_E_NOMEM.
 */
KD_API kd_status kd_model_append(kd_model *m, const char *spec);

/** Destroys the model and everything it owns. NULL is a no-op. */
KD_API void kd_model_destroy(kd_model *m);

/**
 * Writes the model's canonical spec (which kd_model_create_from_spec accepts
 * and which prints back identically) into buf, NUL-terminated. *needed (may
 * be NULL) receives the length without the NUL. buf may be NULL when size is
 * 0. Errors: KD_E_INVALID, KD_E_OVERFLOW (buf too small; *needed still set,
 * buf holds a truncated NUL-terminated prefix).
 */
KD_API kd_status kd_model_spec(const kd_model *m, char *buf, size_t size, size_t *needed);

/** Number of top-level layers (the input line excluded). 0 for NULL. */
KD_API size_t kd_model_layer_count(const kd_model *m);

/**
 * Per-sample input shape (without the batch dimension): rank and dims.
 * For 'input ids T' the shape is {T}; for 'input bags' rank is 0.
 * *is_ids (may be NULL) is 1 for id inputs. shape holds KD_TENSOR_MAX_RANK.
 */
KD_API kd_status kd_model_input_shape(const kd_model *m, size_t shape[KD_TENSOR_MAX_RANK],
                                      uint32_t *rank, int *is_ids);
/** Per-sample output shape and element count (*numel may be NULL). */
KD_API kd_status kd_model_output_shape(const kd_model *m, size_t shape[KD_TENSOR_MAX_RANK],
                                       uint32_t *rank, size_t *numel);

/* ---- parameters, gradients and buffers -------------------------------- */

/** Number of trainable scalars (the size of the parameter block); 0 for NULL. */
KD_API size_t kd_model_param_count(const kd_model *m);

/**
 * The parameter block (*n floats) and the gradient block (same layout),
 * owned by the model, valid until kd_model_destroy or
 * kd_model_fold_batchnorm. grads may be NULL when not wanted; asking for it
 * allocates the gradient block (zeroed) if it does not exist yet.
 */
KD_API kd_status kd_model_blocks(kd_model *m, float **params, float **grads, size_t *n);

/** Number of named tensors (parameters then buffers, in state_dict order). */
KD_API size_t kd_model_tensor_count(const kd_model *m);

/** Name of tensor i (static to the model, valid as the data pointers are). */
KD_API kd_status kd_model_tensor_name(const kd_model *m, size_t i, const char **name);

/** Index of the tensor called name. KD_E_NOT_FOUND when there is none. */
KD_API kd_status kd_model_tensor_find(const kd_model *m, const char *name, size_t *index);

/**
 * Tensor i: data (owned by the model; write to it to load weights), element
 * count, shape (PyTorch's: linear weight is out x in, conv weight
 * OC x C x K x K; num_batches_tracked has rank 0), and whether it is a
 * trainable parameter (1) or a buffer (0). Any out-pointer may be NULL.
 */
KD_API kd_status kd_model_tensor(kd_model *m, size_t i, float **data, size_t *numel,
                                 size_t shape[KD_TENSOR_MAX_RANK], uint32_t *rank,
                                 int *trainable);

/** Gradient of parameter tensor i (allocates the gradient block on first use).
 *  KD_E_INVALID for a buffer. */
KD_API kd_status kd_model_tensor_grad(kd_model *m, size_t i, float **grad, size_t *numel);

/** Sets every gradient to 0 (allocating the gradient block on first use). */
KD_API kd_status kd_model_zero_grad(kd_model *m);

/* ---- forward / backward ------------------------------------------------ */

/**
 * Forward pass on a dense input x (n_x == batch x per-sample input numel
 * floats, row-major, borrowed; another n_x is KD_E_SHAPE). *y receives the
 * output (batch x output numel),
 * owned by the model, valid until the next forward in the same mode or
 * destroy. In KD_MODE_TRAIN, x must stay unchanged until kd_model_backward.
 * Errors: KD_E_INVALID (NULL, batch 0, id model), KD_E_SHAPE (n_x),
 * KD_E_OVERFLOW (batch x sizes beyond size_t), KD_E_NOMEM.
 */
KD_API kd_status kd_model_forward(kd_model *m, kd_mode mode, const float *x, size_t n_x,
                                  size_t batch, const float **y);

/**
 * Forward pass on token ids (models whose input is 'input ids T' or
 * 'input bags'). For 'ids T': offsets is NULL and n_ids == batch * T. For
 * 'bags': offsets has batch + 1 entries, offsets[0] == 0, non-decreasing,
 * offsets[batch] == n_ids; sample b is ids[offsets[b] .. offsets[b+1]) (an
 * empty bag gives a zero vector). Ids must lie in [0, V). Arrays are
 * borrowed (until kd_model_backward in training mode). Errors as
 * kd_model_forward, plus KD_E_INVALID for bad offsets or ids, KD_E_SHAPE
 * when n_ids != batch * T.
 */
KD_API kd_status kd_model_forward_ids(kd_model *m, kd_mode mode, const int32_t *ids,
                                      size_t n_ids, const int32_t *offsets, size_t batch,
                                      const float **y);

/**
 * Backward pass for the last KD_MODE_TRAIN forward: dy holds n_dy == batch
 * x output numel floats (borrowed). Parameter gradients are accumulated (+=)
 * into the gradient block; call kd_model_zero_grad between steps. dx, when
 * not NULL, receives the gradient with respect to the dense input (n_dx ==
 * batch x input numel floats, overwritten); it must be NULL for id models.
 * The forward's x (or ids) must be unchanged since that forward.
 * Errors: KD_E_INVALID, KD_E_SHAPE (n_dy, n_dx), KD_E_STATE (no training
 * forward yet).
 */
KD_API kd_status kd_model_backward(kd_model *m, const float *dy, size_t n_dy, float *dx,
                                   size_t n_dx);

/**
 * Folds every batch norm that directly follows a linear or conv layer (with
 * matching channels) into that layer, using the running statistics, and
 * replaces the batch norm with 'identity' so later indices and names keep
 * their meaning. A linear/conv without bias gains one. The result is an
 * inference model: its spec, parameter count and tensor list change, blocks
 * and pointers obtained before are invalid, and gradients and optimizer state
 * must be recreated. *folded (may be NULL) receives the number folded.
 */
KD_API kd_status kd_model_fold_batchnorm(kd_model *m, size_t *folded);

/**
 * Bytes the context must still be able to provide for a forward at this
 * batch size in this mode (activations and scratch; plus the gradient block
 * for training), on top of what the model holds already. For an arena,
 * size it as kd_context_arena_usage's used after creation plus this.
 */
KD_API kd_status kd_model_workspace_size(kd_model *m, kd_mode mode, size_t batch, size_t *bytes);

/* ---- shared inference: one frozen model, many threads ------------------- */

/**
 * Thread safety of a kd_model: every function taking a non-const kd_model *
 * (forward, backward, blocks, load, fold, destroy, ...) needs the model to
 * itself: one thread at a time. kd_model_infer and kd_model_infer_ids are
 * the exception: they read the model's layers and weights and write only the
 * caller's y and workspace, so any number of threads may call them on one
 * model at once, each with its own kd_context and its own workspace, as long
 * as no thread changes the model meanwhile (no forward, backward, optimizer
 * step, weight write, load, fold or destroy). The model must be built
 * (weights exist: it was loaded, run once, or kd_model_blocks was called)
 * and made only of layers that keep no state in their forward: every
 * built-in nn layer; an MoE layer records routing statistics and is refused
 * (KD_E_UNSUPPORTED). Results are bit-identical to kd_model_forward in
 * KD_MODE_INFER with the same GEMM backend and thread count.
 *
 * Neither function allocates: the workspace belongs to the caller (a static
 * buffer in firmware), so they run in the embedded profile too.
 */

/**
 * Bytes of workspace kd_model_infer / kd_model_infer_ids need for batch
 * samples (activations and scratch, plus KD_ALIGN bytes so the buffer may
 * have any alignment). A workspace sized for batch serves any smaller batch.
 * Reads m only. Errors (no reason recorded: m's context is not touched):
 * KD_E_INVALID (NULL, batch 0), KD_E_STATE (no layers, no weights yet),
 * KD_E_UNSUPPORTED (a layer that cannot be shared), KD_E_OVERFLOW (batch too
 * large for this model).
 */
KD_API kd_status kd_model_infer_workspace_size(const kd_model *m, size_t batch, size_t *bytes);

/**
 * Inference forward of a shared model: x holds n_x == batch x input numel
 * floats (borrowed), y receives n_y == batch x output numel floats (caller's
 * array, overwritten; it must not overlap x or the workspace). workspace is
 * workspace_bytes of caller memory (any alignment), used as scratch during
 * the call only; its content before and after means nothing. ctx is the
 * calling thread's context: it receives the reason of a failure and chooses
 * the GEMM backend and threads; it must not be used by another thread during
 * the call (it may be the model's own context when no other thread uses it).
 * Errors: KD_E_INVALID (NULL, batch 0, id model, workspace too small),
 * KD_E_SHAPE (n_x, n_y), KD_E_OVERFLOW (batch too large), KD_E_STATE,
 * KD_E_UNSUPPORTED (see above). On failure y is unspecified.
 */
KD_API kd_status kd_model_infer(const kd_model *m, kd_context *ctx, const float *x, size_t n_x,
                                size_t batch, float *y, size_t n_y, void *workspace,
                                size_t workspace_bytes);

/**
 * kd_model_infer for models whose input is token ids: ids, n_ids and offsets
 * as in kd_model_forward_ids (borrowed during the call); errors as
 * kd_model_infer and kd_model_forward_ids.
 */
KD_API kd_status kd_model_infer_ids(const kd_model *m, kd_context *ctx, const int32_t *ids,
                                    size_t n_ids, const int32_t *offsets, size_t batch, float *y,
                                    size_t n_y, void *workspace, size_t workspace_bytes);

/**
 * Global L2 norm of all gradients (double accumulation) into *norm (may be
 * NULL); if it exceeds max_norm, scales every gradient by
 * max_norm / (norm + 1e-6) as torch.nn.utils.clip_grad_norm_. A non-finite
 * norm gives KD_E_NUMERIC and leaves the gradients unchanged.
 * max_norm must be > 0 (KD_E_INVALID).
 */
KD_API kd_status kd_model_clip_grad_norm(kd_model *m, float max_norm, float *norm);

/* ---- optimizers --------------------------------------------------------- */

typedef enum kd_optimizer_kind {
    KD_OPTIM_SGD = 0,   /**< torch.optim.SGD: momentum, dampening, Nesterov, L2 weight decay */
    KD_OPTIM_ADAMW = 1  /**< torch.optim.AdamW: decoupled weight decay, bias correction */
} kd_optimizer_kind;

/** Optimizer configuration. Fill with kd_optimizer_config_default(). */
typedef struct kd_optimizer_config {
    uint32_t struct_size;     /**< sizeof(kd_optimizer_config) */
    kd_optimizer_kind kind;   /**< default KD_OPTIM_ADAMW */
    float lr;                 /**< learning rate (default 1e-3); kd_optimizer_set_lr changes it */
    float weight_decay;       /**< default 0.01 for AdamW, 0 for SGD */
    float momentum;           /**< SGD (default 0) */
    float dampening;          /**< SGD (default 0) */
    int nesterov;             /**< SGD: nonzero for Nesterov momentum (needs momentum > 0, dampening 0) */
    float beta1;              /**< AdamW (default 0.9) */
    float beta2;              /**< AdamW (default 0.999) */
    float eps;                /**< AdamW (default 1e-8) */
} kd_optimizer_config;

/** Defaults for kind (AdamW or SGD); struct_size set. No-op when cfg is NULL. */
KD_API void kd_optimizer_config_default_sized(kd_optimizer_config *cfg, kd_optimizer_kind kind, size_t size);
#define kd_optimizer_config_default(cfg, kind) kd_optimizer_config_default_sized((cfg), (kind), sizeof(kd_optimizer_config))

typedef struct kd_optimizer kd_optimizer;

/**
 * Creates an optimizer over every trainable parameter of m (borrowed: m must
 * outlive the optimizer and must not be folded meanwhile). cfg is copied.
 * State (momentum, Adam moments) is allocated here. Errors: KD_E_INVALID
 * (NULL, negative or non-finite hyper-parameters, betas outside [0, 1)),
 * KD_E_VERSION (struct_size), KD_E_NOMEM.
 */
KD_API kd_status kd_optimizer_create(kd_model *m, const kd_optimizer_config *cfg,
                                     kd_optimizer **out);
/** NULL is a no-op. */
KD_API void kd_optimizer_destroy(kd_optimizer *opt);
/** One update from the model's gradient block (gradients are not cleared). */
KD_API kd_status kd_optimizer_step(kd_optimizer *opt);
/** Sets the learning rate for the next steps (>= 0, finite). */
KD_API kd_status kd_optimizer_set_lr(kd_optimizer *opt, float lr);
/** Number of steps taken. 0 for NULL. */
KD_API uint64_t kd_optimizer_steps(const kd_optimizer *opt);

/* ---- learning-rate schedules ------------------------------------------- */

typedef enum kd_schedule_kind {
    KD_SCHEDULE_CONSTANT = 0, /**< base_lr (after warm-up) */
    KD_SCHEDULE_STEP = 1,     /**< base_lr * gamma^floor((step - warmup) / step_size) */
    KD_SCHEDULE_COSINE = 2    /**< min_lr + (base_lr - min_lr) * (1 + cos(pi * t)) / 2,
                                   t = (step - warmup) / (total_steps - warmup), clamped to 1 */
} kd_schedule_kind;

/** Schedule configuration. Fill with kd_schedule_config_default(). */
typedef struct kd_schedule_config {
    uint32_t struct_size;     /**< sizeof(kd_schedule_config) */
    kd_schedule_kind kind;    /**< default KD_SCHEDULE_CONSTANT */
    float base_lr;            /**< default 1e-3 */
    float min_lr;             /**< cosine floor (default 0) */
    uint64_t warmup_steps;    /**< linear warm-up base_lr * (step + 1) / warmup_steps (default 0) */
    uint64_t total_steps;     /**< cosine length including warm-up (default 1000) */
    uint64_t step_size;       /**< step schedule period (default 100) */
    float gamma;              /**< step schedule factor (default 0.1) */
} kd_schedule_config;

/** Defaults (constant 1e-3); struct_size set. No-op when cfg is NULL. */
KD_API void kd_schedule_config_default_sized(kd_schedule_config *cfg, size_t size);
#define kd_schedule_config_default(cfg) kd_schedule_config_default_sized((cfg), sizeof(kd_schedule_config))

/**
 * Learning rate for step (0-based: the rate for the step-th update).
 * Pure function of cfg and step. Errors: KD_E_INVALID (NULL, unknown kind,
 * non-finite or negative rates, step_size 0, cosine total_steps <=
 * warmup_steps), KD_E_VERSION. ctx may be NULL (no reason is recorded).
 */
KD_API kd_status kd_schedule_lr(kd_context *ctx, const kd_schedule_config *cfg, uint64_t step,
                                float *lr);

/** @} */

#ifdef __cplusplus
}
#endif

#endif /* KD_NN_H */
