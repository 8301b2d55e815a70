/*
 * kd_vocab.h - explicit mapping between a teacher's and a student's
 * vocabularies (classes), for distillation across tokenizers of different
 * sizes (e.g. 152064 vs 151936 classes, padded tails).
 *
 * libkd never truncates silently: a loss given teacher_classes != classes
 * fails with KD_E_SHAPE; map the teacher's outputs into the student's
 * vocabulary first with one of these maps.
 *
 * Mapping semantics: student class j receives the teacher classes i with
 * map[i] == j; several teacher classes mapped to one student class are
 * merged in probability (log-sum-exp of their logits); a student class with
 * no teacher class gets -inf (probability zero: the losses treat it as
 * masked); teacher classes mapped to -1 are dropped, so the mapped teacher
 * distribution is renormalised over the classes kept.
 * Threads: a map is immutable after creation and may be shared.
 */
#ifndef KD_VOCAB_H
#define KD_VOCAB_H

#include "kd_core.h"

#ifdef __cplusplus
extern "C" {
#endif

/** @defgroup vocab Vocabulary alignment
 *  @{ */

typedef struct kd_vocab_map kd_vocab_map;

/**
 * Identity over the first `shared` classes (shared <= both sizes): teacher
 * classes >= shared (a padded tail) are dropped, student classes >= shared
 * get -inf. Errors: KD_E_INVALID (NULL, zero sizes), KD_E_SHAPE (shared
 * larger than either vocabulary), KD_E_NOMEM.
 */
KD_API kd_status kd_vocab_map_identity(kd_context *ctx, size_t teacher_classes,
                                       size_t student_classes, size_t shared,
                                       kd_vocab_map **out);

/**
 * User-supplied map: teacher_to_student[i] (teacher_classes entries, copied)
 * is the student class of teacher class i, or -1 to drop it. Errors:
 * KD_E_INVALID (entries outside [-1, student_classes), every entry -1).
 */
KD_API kd_status kd_vocab_map_from_ids(kd_context *ctx, size_t teacher_classes,
                                       size_t student_classes,
                                       const int32_t *teacher_to_student, kd_vocab_map **out);

/** NULL is a no-op. */
KD_API void kd_vocab_map_destroy(kd_vocab_map *map);

/** Teacher and student vocabulary sizes (0 for NULL). */
KD_API size_t kd_vocab_map_teacher_classes(const kd_vocab_map *map);
KD_API size_t kd_vocab_map_student_classes(const kd_vocab_map *map);

/**
 * Maps rows x teacher_classes logits (borrowed) into rows x student_classes
 * logits in out (caller-owned, must not overlap). -inf inputs stay masked;
 * NaN / +inf are KD_E_NUMERIC.
 */
KD_API kd_status kd_vocab_map_logits(const kd_vocab_map *map, const float *teacher,
                                     size_t rows, float *out);

/**
 * Rewrites n sparse teacher ids in place into student ids (-1 for dropped
 * ids; -1 stays -1). Ids outside [-1, teacher_classes) are KD_E_INVALID,
 * and nothing is written then. (With a many-to-one map, sum duplicates'
 * probabilities yourself: TOPK rows expect unique ids.)
 */
KD_API kd_status kd_vocab_map_ids(const kd_vocab_map *map, int32_t *ids, size_t n);

/** @} */

#ifdef __cplusplus
}
#endif

#endif /* KD_VOCAB_H */
