/* kd_checkpoint_file.c - path-based checkpoint save/load (hosted builds). */
#include "kd/kd_checkpoint.h"
#include "kd_checkpoint_internal.h"
#include "kd_internal.h"
#include "../nn/kd_layer.h"

kd_status kd_model_save(kd_model *m, const char *path)
{
    if (!m) return KD_E_INVALID;
    kd_safetensors_writer *w;
    kd_status st = kd__checkpoint_writer(m, &w);
    if (st != KD_OK) return st;
    st = kd_safetensors_writer_write_file(w, path);
    kd_safetensors_writer_destroy(w);
    return st;
}

kd_status kd_model_load(kd_context *ctx, const char *path, kd_model **out)
{
    if (!ctx) return KD_E_INVALID;
    if (!out) return kd__fail(ctx, KD_E_INVALID, "kd_model_load: NULL out");
    *out = NULL;
    kd_safetensors *st_file = NULL;
    kd_status st = kd_safetensors_open_file(ctx, path, &st_file);
    if (st != KD_OK) return st;
    st = kd__checkpoint_build(ctx, st_file, out);
    kd_safetensors_close(st_file);
    return st;
}

kd_status kd_model_load_weights(kd_model *m, const char *path)
{
    if (!m) return KD_E_INVALID;
    kd_safetensors *st_file = NULL;
    kd_status st = kd_safetensors_open_file(kd__model_context(m), path, &st_file);
    if (st != KD_OK) return st;
    st = kd__checkpoint_fill(m, st_file);
    kd_safetensors_close(st_file);
    return st;
}
