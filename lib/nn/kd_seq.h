/* kd_seq.h - running a list of layers (internal to lib/nn and containers). */
#ifndef KD_SEQ_H
#define KD_SEQ_H

#include "kd_layer.h"

/* Forward through list: x is the first layer's input, *y receives the last
 * layer's output (inside region). region has kd__seq_region(...) floats for
 * r->batch and r->train; r->scratch is shared, r->saved is ignored. */
kd_status kd__seq_forward(kd_layer *const *list, size_t n, const kd_layer_run *r,
                          float *region, const kd_layer_in *x, float **y);

/* Backward through list after a training kd__seq_forward with the same
 * region and x: accumulates parameter gradients, writes dx (may be NULL). */
kd_status kd__seq_backward(kd_layer *const *list, size_t n, const kd_layer_run *r,
                           float *region, const kd_layer_in *x, const float *dy, float *dx);

#endif
