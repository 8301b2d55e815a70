/*
 * kd_checkpoint.h - model checkpoints as safetensors files that PyTorch reads
 * and writes.
 *
 * A checkpoint holds every named tensor of the model (parameters and buffers,
 * with PyTorch nn.Sequential state_dict names such as "0.weight") as F32, and
 * the model's architecture spec in the header's __metadata__ under the key
 * "kd.spec", so the file alone rebuilds the model. A file written by PyTorch
 * loads too: with a "kd.spec" entry through kd_model_load*, or without one
 * into a model the caller built with kd_model_load_weights*. Reading accepts
 * F32, F16 and BF16 tensors.
 *
 * Loading is strict: every tensor of the model must be present with the
 * model's shape (KD_E_NOT_FOUND / KD_E_SHAPE otherwise) and the file may not
 * hold tensors the model lacks (KD_E_FORMAT), so a checkpoint never loads
 * half-way into the wrong architecture. On failure the model passed to
 * kd_model_load_weights* may hold a mix of old and new values; destroy it or
 * load again.
 */
#ifndef KD_CHECKPOINT_H
#define KD_CHECKPOINT_H

#include "kd_core.h"
#include "kd_nn.h"

#ifdef __cplusplus
extern "C" {
#endif

/** @defgroup checkpoint Checkpoints
 *  @{ */

/** The metadata key that holds the model spec. */
#define KD_CHECKPOINT_SPEC_KEY "kd.spec"

/**
 * Writes m to path: temporary file, fsync, rename (the previous file under
 * path stays intact on any failure). Hosted builds only.
 */
KD_API kd_status kd_model_save(kd_model *m, const char *path);

/**
 * Bytes kd_model_save_memory needs for m (into *size).
 */
KD_API kd_status kd_model_save_size(kd_model *m, size_t *size);

/**
 * Writes m as safetensors into buf (capacity cap bytes); *written receives the
 * size. KD_E_OVERFLOW when cap is too small.
 */
KD_API kd_status kd_model_save_memory(kd_model *m, void *buf, size_t cap, size_t *written);

/**
 * Rebuilds a model from a checkpoint file (spec from "kd.spec", then the
 * weights). *out owns the new model. Hosted builds only.
 */
KD_API kd_status kd_model_load(kd_context *ctx, const char *path, kd_model **out);

/**
 * As kd_model_load, from a buffer (borrowed during the call: the weights are
 * copied into the model, so the buffer, e.g. a const array in flash, need not
 * outlive it).
 */
KD_API kd_status kd_model_load_memory(kd_context *ctx, const void *buf, size_t size,
                                      kd_model **out);

/** Loads weights by name into an existing model from a file (hosted builds). */
KD_API kd_status kd_model_load_weights(kd_model *m, const char *path);

/** Loads weights by name into an existing model from a buffer (borrowed during the call). */
KD_API kd_status kd_model_load_weights_memory(kd_model *m, const void *buf, size_t size);

/** @} */

#ifdef __cplusplus
}
#endif

#endif /* KD_CHECKPOINT_H */
