/*
 * kd_distill.h - teachers, students and the training loop of distillation.
 *
 * A teacher turns a batch of inputs into logits: a frozen kd_model, a
 * weighted ensemble of teachers, or a user callback (the path for teachers
 * that live in PyTorch, llama.cpp or anything reachable through FFI).
 * A student is a kd_model, a kd_optimizer and a weighted list of kd_loss
 * terms; kd_student_step performs one update on a batch and reports every
 * term. kd_fit runs epochs over an in-memory dataset with seeded shuffling,
 * and kd_fit_chain runs born-again generations or teacher-assistant chains.
 *
 * Shapes: inputs are row-major batch x input_dim floats (the model's
 * per-sample input flattened), logits batch x classes.
 * Threads: every handle here is used by one thread at a time.
 */
#ifndef KD_DISTILL_H
#define KD_DISTILL_H

#include "kd_core.h"
#include "kd_loss.h"
#include "kd_nn.h"

#ifdef __cplusplus
extern "C" {
#endif

/** @defgroup distill Distillation: teachers, students, training
 *  @{ */

/* ---- teachers ------------------------------------------------------------ */

typedef struct kd_teacher kd_teacher;

/**
 * A teacher implemented by the caller. Fill logits (batch x classes) for the
 * inputs x (batch x input_dim). Return 0 on success; anything else makes the
 * libkd call fail with KD_E_CALLBACK. x and logits are valid only during the
 * call.
 */
typedef int (*kd_teacher_fn)(void *user, const float *x, size_t batch, size_t input_dim,
                             float *logits, size_t classes);

/**
 * A teacher that runs m in inference mode. m is borrowed (it must outlive
 * the teacher) and must not be trained meanwhile: the teacher is frozen by
 * contract, libkd never writes its parameters. Its input and output sizes
 * come from the model. Errors: KD_E_INVALID, KD_E_SHAPE (a model whose input
 * is token ids), KD_E_NOMEM.
 */
KD_API kd_status kd_teacher_from_model(kd_context *ctx, kd_model *m, kd_teacher **out);

/**
 * A teacher backed by fn(user, ...). input_dim and classes must be > 0.
 */
KD_API kd_status kd_teacher_from_callback(kd_context *ctx, size_t input_dim, size_t classes,
                                          kd_teacher_fn fn, void *user, kd_teacher **out);

/** How an ensemble combines its members. */
typedef enum kd_ensemble_mode {
    /** Weighted mean of the members' logits. */
    KD_ENSEMBLE_LOGITS = 0,
    /** Weighted mean of the members' probabilities (softmax at T = 1); the
     *  teacher outputs its log: log(sum_i w_i p_i). Losses that apply a
     *  temperature T to these outputs see the mixture sharpened or smoothed
     *  as p^(1/T), renormalised. */
    KD_ENSEMBLE_PROBS = 1
} kd_ensemble_mode;

/**
 * An ensemble of n >= 1 teachers with the same input_dim and classes.
 * members (the array is copied; the teachers are borrowed and must outlive
 * the ensemble). weights: n finite values >= 0 with a positive sum, copied
 * and normalised; NULL for equal weights.
 */
KD_API kd_status kd_teacher_ensemble(kd_context *ctx, kd_teacher *const *members, size_t n,
                                     const float *weights, kd_ensemble_mode mode,
                                     kd_teacher **out);

/**
 * 1 when t's outputs for the same inputs change from call to call (a
 * teacher that trains as it is asked, such as the student-aware MoE router,
 * or an ensemble with such a member): its outputs must not be cached, and
 * kd_fit does not cache them. 0 otherwise, and for NULL.
 */
KD_API int kd_teacher_stateful(const kd_teacher *t);

/** NULL is a no-op. Members of an ensemble are not destroyed. */
KD_API void kd_teacher_destroy(kd_teacher *t);

/** Input floats per sample, and classes (0 for NULL). */
KD_API size_t kd_teacher_input_dim(const kd_teacher *t);
KD_API size_t kd_teacher_classes(const kd_teacher *t);

/**
 * Teacher logits for a batch: logits receives batch x classes floats.
 * x is borrowed during the call. A non-finite output is KD_E_NUMERIC.
 * This is a training call: a teacher that learns as it is asked (the
 * student-aware MoE router, kd_teacher_stateful) takes its step, as
 * kd_teacher_logits_mode with KD_MODE_TRAIN. Evaluate with KD_MODE_INFER.
 */
KD_API kd_status kd_teacher_logits(kd_teacher *t, const float *x, size_t batch, float *logits);

/**
 * kd_teacher_logits, saying whether the call belongs to training.
 * KD_MODE_TRAIN: exactly kd_teacher_logits. KD_MODE_INFER: the teacher
 * answers without changing (a student-aware MoE router takes no step and
 * answers with an inference-mode forward of its copy; an ensemble passes
 * the mode to its members). Teachers that do not learn answer alike in
 * both modes. kd_fit asks in KD_MODE_TRAIN; kd_evaluate and
 * kd_cache_write_teacher in KD_MODE_INFER. Errors: those of
 * kd_teacher_logits, and KD_E_INVALID for another mode.
 */
KD_API kd_status kd_teacher_logits_mode(kd_teacher *t, const float *x, size_t batch,
                                        float *logits, kd_mode mode);

/* ---- students ------------------------------------------------------------ */

typedef struct kd_student kd_student;

/** Most loss terms a student holds. */
#define KD_STUDENT_MAX_TERMS 8

/** Flags of a loss term. */
enum {
    /** The term never sees labels: every row takes part, labelled or not.
     *  Use it for soft-target terms over a transfer set whose unlabelled
     *  rows carry the ignore index. */
    KD_TERM_NO_LABELS = 1u << 0
};

/** Student configuration. Fill with kd_student_config_default(). */
typedef struct kd_student_config {
    uint32_t struct_size;     /**< sizeof(kd_student_config) */
    /** > 0: clip the global gradient norm to this (default 0: no clipping). */
    float max_grad_norm;
    /** Learning-rate schedule applied before every step (NULL: the
     *  optimizer's rate stays as set). Copied at create. */
    const kd_schedule_config *schedule;
} kd_student_config;

/** Defaults; struct_size set. No-op when cfg is NULL. */
KD_API void kd_student_config_default_sized(kd_student_config *cfg, size_t size);
#define kd_student_config_default(cfg) kd_student_config_default_sized((cfg), sizeof(kd_student_config))

/**
 * A student over model m updated by opt (both borrowed; opt must have been
 * created for m). cfg may be NULL (defaults). Add terms with
 * kd_student_add_loss before the first step.
 */
KD_API kd_status kd_student_create(kd_context *ctx, kd_model *m, kd_optimizer *opt,
                                   const kd_student_config *cfg, kd_student **out);

/** NULL is a no-op; the model, optimizer and losses are not destroyed. */
KD_API void kd_student_destroy(kd_student *s);

/**
 * Adds a loss term (loss borrowed; it must outlive the student) with a
 * weight (finite, >= 0) and KD_TERM_* flags. The student's objective is
 * sum_i weight_i * loss_i. Errors: KD_E_INVALID, KD_E_STATE (more than
 * KD_STUDENT_MAX_TERMS terms).
 */
KD_API kd_status kd_student_add_loss(kd_student *s, kd_loss *loss, float weight, uint32_t flags);

/** What a step did. Set struct_size = sizeof(kd_step_report) before passing it. */
typedef struct kd_step_report {
    uint32_t struct_size;
    double total;                         /**< sum of weight_i * term_i */
    double terms[KD_STUDENT_MAX_TERMS];   /**< unweighted value of each term */
    size_t n_terms;
    float grad_norm;                      /**< global gradient norm before clipping */
    float lr;                             /**< learning rate used */
    uint64_t step;                        /**< optimizer steps taken, after this one */
} kd_step_report;

/**
 * One training step on a batch: forward (training mode), every loss term,
 * backward, clipping, optimizer update, then each loss's kd_loss_step.
 * x: batch x input_dim. labels: batch entries or NULL (entries equal to
 * KD_LOSS_IGNORE_INDEX mark unlabelled rows). teacher_logits: batch x
 * classes, or NULL for terms that need no teacher. All borrowed during the
 * call. report may be NULL.
 * A non-finite loss or gradient norm returns KD_E_NUMERIC before the update:
 * the weights are never poisoned by a NaN.
 */
KD_API kd_status kd_student_step(kd_student *s, const float *x, size_t batch,
                                 const int32_t *labels, const float *teacher_logits,
                                 kd_step_report *report);

/** The student's model (borrowed). */
KD_API kd_model *kd_student_model(const kd_student *s);

/**
 * Gradient hook: kd_student_step calls it after backward, before clipping
 * and the optimizer update, with the student's model (its gradient block
 * holds this step's gradients; the hook may rewrite them), the step's rows
 * and its weighted total loss. Return 0 to go on; nonzero fails the step with
 * KD_E_CALLBACK and no update. Data-parallel trainers (libkd_mpi) average
 * gradients across processes here.
 */
typedef int (*kd_grad_hook_fn)(void *user, kd_model *m, size_t batch, double loss);

/** Sets (fn non-NULL) or clears (fn NULL) the student's gradient hook. */
KD_API kd_status kd_student_set_grad_hook(kd_student *s, kd_grad_hook_fn fn, void *user);

/* ---- datasets, evaluation ------------------------------------------------- */

/**
 * An in-memory dataset: n rows of dim floats, and optional labels (entries
 * equal to KD_LOSS_IGNORE_INDEX are unlabelled rows). A view: nothing is
 * copied; the arrays must outlive every call that uses the view.
 */
typedef struct kd_dataset {
    uint32_t struct_size;      /**< sizeof(kd_dataset) */
    const float *x;            /**< n x dim */
    size_t n;
    size_t dim;
    const int32_t *labels;     /**< n, or NULL */
} kd_dataset;

/** Evaluation results. Set struct_size = sizeof(kd_eval_report) before passing it. */
typedef struct kd_eval_report {
    uint32_t struct_size;
    double accuracy;           /**< top-1 accuracy over labelled rows */
    double agreement;          /**< top-1 agreement with the teacher (0 without one) */
    double ece;                /**< expected calibration error, 15 equal-width bins */
    double nll;                /**< mean negative log-likelihood of the labels */
    size_t labelled;           /**< rows with a label */
} kd_eval_report;

/**
 * Evaluates model m (inference mode) on ds in batches of `batch` rows;
 * teacher may be NULL, and is asked in KD_MODE_INFER (a teacher that
 * learns, such as the student-aware MoE router, is left unchanged). Ties in
 * argmax go to the lower class index.
 */
KD_API kd_status kd_evaluate(kd_context *ctx, kd_model *m, kd_teacher *teacher,
                             const kd_dataset *ds, size_t batch, kd_eval_report *report);

/** Top-1 accuracy of logits (n x classes) against labels, over labelled rows. */
KD_API kd_status kd_eval_accuracy(kd_context *ctx, const float *logits, size_t n, size_t classes,
                                  const int32_t *labels, double *accuracy);
/** Share of rows whose argmax agrees between a and b (n x classes each). */
KD_API kd_status kd_eval_agreement(kd_context *ctx, const float *a, const float *b, size_t n,
                                   size_t classes, double *agreement);
/**
 * Expected calibration error with `bins` equal-width confidence bins:
 * sum_b |B_b|/N * |acc(B_b) - conf(B_b)|, confidence = max softmax prob.
 */
KD_API kd_status kd_eval_ece(kd_context *ctx, const float *logits, size_t n, size_t classes,
                             const int32_t *labels, size_t bins, double *ece);

/* ---- the training loop ---------------------------------------------------- */

/** Progress passed to a kd_progress_fn. */
typedef struct kd_progress {
    uint32_t struct_size;
    size_t epoch;              /**< 0-based */
    size_t epochs;
    size_t step;               /**< step within the epoch, 1-based */
    size_t steps_per_epoch;
    double loss;               /**< running mean of the total loss this epoch */
    double elapsed_seconds;    /**< 0 when the build has no clock (firmware) */
    int epoch_done;            /**< 1 on the call that ends an epoch */
} kd_progress;

/** Called after each step; return nonzero to stop training (KD_E_CALLBACK). */
typedef int (*kd_progress_fn)(void *user, const kd_progress *p);

/**
 * Optional augmentation: write an augmented copy of x (batch x dim) into
 * out, drawing randomness only from rng. Teacher and student see the same
 * augmented view ("a good teacher is patient and consistent"). Return 0 on
 * success.
 */
typedef int (*kd_augment_fn)(void *user, const float *x, float *out, size_t batch, size_t dim,
                             kd_rng *rng);

/** kd_fit configuration. Fill with kd_fit_config_default(). */
typedef struct kd_fit_config {
    uint32_t struct_size;      /**< sizeof(kd_fit_config) */
    size_t epochs;             /**< default 1 */
    size_t batch;              /**< default 128 */
    uint64_t seed;             /**< shuffling and augmentation seed (default 1) */
    int drop_last;             /**< skip a final partial batch (default 0) */
    kd_progress_fn progress;   /**< optional */
    void *progress_user;
    kd_augment_fn augment;     /**< optional */
    void *augment_user;
    /**
     * Without augmentation the teacher is deterministic per row, so kd_fit
     * computes its logits once for the whole dataset and reuses them every
     * epoch (default 1); 0 runs the teacher on every batch. Memory: n x
     * classes floats.
     */
    int cache_teacher;
} kd_fit_config;

/** Defaults; struct_size set. No-op when cfg is NULL. */
KD_API void kd_fit_config_default_sized(kd_fit_config *cfg, size_t size);
#define kd_fit_config_default(cfg) kd_fit_config_default_sized((cfg), sizeof(kd_fit_config))

/**
 * Trains s on ds for cfg->epochs epochs; teacher may be NULL (labels only).
 * Each epoch visits the rows in an order drawn from cfg->seed and the epoch
 * number, so the same seed gives the same run. cfg may be NULL (defaults).
 */
KD_API kd_status kd_fit(kd_student *s, kd_teacher *teacher, const kd_dataset *ds,
                        const kd_fit_config *cfg);

/**
 * kd_fit's row order: shuffles order[0..n) in place (Fisher-Yates) with a
 * generator seeded from seed and epoch. kd_fit starts from 0..n-1 and
 * applies this once per epoch, in epoch order, to the previous epoch's
 * order; call it the same way to visit the rows kd_fit visits (kd_mpi_fit
 * does). KD_E_INVALID when order is NULL and n > 0.
 */
KD_API kd_status kd_fit_shuffle(size_t *order, size_t n, uint64_t seed, size_t epoch);

/**
 * Builds the student of stage k of a chain: called with stage (0-based) and
 * the model to train at that stage; must create the optimizer, losses and
 * student in *out. kd_fit_chain destroys the student (not the model) after
 * the stage; the callback owns optimizer and losses through `user` and may
 * release them at the next call or after kd_fit_chain returns.
 */
typedef kd_status (*kd_stage_fn)(void *user, size_t stage, kd_model *model, kd_student **out);

/**
 * Multi-step distillation: stage 0 trains models[0] from `teacher`, stage k
 * trains models[k] from models[k-1] (frozen). Same architecture at every
 * stage: born-again networks; decreasing sizes: a teacher-assistant chain.
 * models are borrowed. n >= 1.
 */
KD_API kd_status kd_fit_chain(kd_context *ctx, kd_teacher *teacher, kd_model *const *models,
                              size_t n, kd_stage_fn make_student, void *user,
                              const kd_dataset *ds, const kd_fit_config *cfg);

/** @} */

#ifdef __cplusplus
}
#endif

#endif /* KD_DISTILL_H */
