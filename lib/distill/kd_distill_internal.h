/* kd_distill_internal.h - shared internals of teachers, students and kd_fit. */
#ifndef KD_DISTILL_INTERNAL_H
#define KD_DISTILL_INTERNAL_H

#include "kd/kd_distill.h"

/* The context a student was created from (NULL for NULL). */
kd_context *kd__student_context(const kd_student *s);

/* Floats per sample of a dense-input model (0 for an id model). */
size_t kd__model_input_numel(kd_model *m);
/* Checks a dataset view against a model taking dim floats per row; fn names
 * the caller in the reason. */
kd_status kd__check_dataset(kd_context *ctx, const kd_dataset *ds, size_t dim, const char *fn);

/* The batch gather of kd_fit and kd_fit_cached: rows[0..b) of ds, inputs into
 * xb (b x dim) and labels into yb (KD_LOSS_IGNORE_INDEX without labels). */
void kd__fit_gather(const kd_dataset *ds, size_t dim, const size_t *rows, size_t b, float *xb,
                    int32_t *yb);
/* Reports step + 1 of steps in epoch (running mean loss, seconds since the
 * start) to cfg->progress when set; KD_E_CALLBACK, reason naming fn, when the
 * callback asks to stop. */
kd_status kd__fit_progress(kd_context *ctx, const kd_fit_config *cfg, const char *fn, size_t epoch,
                           size_t step, size_t steps, double running, double seconds);

/* A teacher implemented by another layer: run fills batch x classes
 * logits and returns a status (reason set); train is 1 for a training call
 * (kd_teacher_logits, kd_fit: a teacher that learns as it is asked may
 * step) and 0 for an inference call (kd_teacher_logits_mode with
 * KD_MODE_INFER, kd_evaluate: the teacher must not change). release(user)
 * runs at destroy (not when creation fails: the caller still owns user
 * then). stateful: the teacher's answer for a row changes between training
 * calls (kd_teacher_stateful; kd_fit never caches it). */
typedef kd_status (*kd__teacher_run_fn)(void *user, const float *x, size_t batch, float *logits,
                                        int train);
kd_status kd__teacher_create_owned(kd_context *ctx, size_t input_dim, size_t classes,
                                   kd__teacher_run_fn run, void (*release)(void *user),
                                   void *user, int stateful, kd_teacher **out);

#endif
