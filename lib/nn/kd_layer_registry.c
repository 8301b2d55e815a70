/*
 * kd_layer_registry.c - the table of layer kinds the spec parser knows.
 *
 * This is the one place that lists kinds by name; kd_model.c and kd_spec.c
 * only walk the table. A new kind (the MoE layer) adds its kd_layer_kind
 * here (or the table moves to a file above every layer, which links them
 * all together): nothing else in lib/nn changes.
 */
#include "kd_layer.h"

const kd_layer_kind *const kd__layer_kinds[] = {
    &kd__kind_linear,    &kd__kind_conv,         &kd__kind_maxpool,  &kd__kind_avgpool,
    &kd__kind_flatten,   &kd__kind_identity,     &kd__kind_relu,     &kd__kind_gelu,
    &kd__kind_silu,      &kd__kind_tanh,         &kd__kind_sigmoid,  &kd__kind_layernorm,
    &kd__kind_batchnorm, &kd__kind_dropout,      &kd__kind_embedding, &kd__kind_embeddingbag,
    &kd__kind_residual,  NULL,
};
