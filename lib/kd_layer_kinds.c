/*
 * kd_layer_kinds.c - the table of layer kinds the spec parser knows.
 *
 * This is the one place that lists kinds by name. It sits above every layer
 * (lib/meson.build compiles it after all layer folders) so that lib/nn never
 * names a higher layer: kd_model.c and kd_spec.c only walk the table through
 * the extern declaration in lib/nn/kd_layer.h. A new kind adds one entry.
 */
#include "nn/kd_layer.h"
#include "moe/kd_moe_internal.h"

const kd_layer_kind *const kd__layer_kinds[] = {
    &kd__kind_linear,    &kd__kind_conv,         &kd__kind_maxpool,  &kd__kind_avgpool,
    &kd__kind_flatten,   &kd__kind_identity,     &kd__kind_relu,     &kd__kind_gelu,
    &kd__kind_silu,      &kd__kind_tanh,         &kd__kind_sigmoid,  &kd__kind_layernorm,
    &kd__kind_batchnorm, &kd__kind_dropout,      &kd__kind_embedding, &kd__kind_embeddingbag,
    &kd__kind_residual,  &kd__kind_moe,          NULL,
};
