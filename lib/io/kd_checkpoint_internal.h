/* kd_checkpoint_internal.h - shared by the memory and file checkpoint paths. */
#ifndef KD_CHECKPOINT_INTERNAL_H
#define KD_CHECKPOINT_INTERNAL_H

#include "kd/kd_nn.h"
#include "kd/kd_safetensors.h"

kd_status kd__checkpoint_writer(kd_model *m, kd_safetensors_writer **out);
kd_status kd__checkpoint_fill(kd_model *m, const kd_safetensors *st);
kd_status kd__checkpoint_build(kd_context *ctx, const kd_safetensors *st, kd_model **out);

#endif
