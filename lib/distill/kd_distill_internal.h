/* kd_distill_internal.h - shared internals of teachers, students and kd_fit. */
#ifndef KD_DISTILL_INTERNAL_H
#define KD_DISTILL_INTERNAL_H

#include "kd/kd_distill.h"

/* The context a student was created from (NULL for NULL). */
kd_context *kd__student_context(const kd_student *s);

#endif
