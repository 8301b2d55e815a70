/*
 * kd_checkpoint.c - kd_model <-> safetensors (firmware-safe part: memory
 * buffers). Path-based save/load is in kd_checkpoint_file.c.
 */
#include "kd/kd_checkpoint.h"
#include "kd/kd_safetensors.h"
#include "kd_checkpoint_internal.h"
#include "kd_internal.h"
#include "../nn/kd_layer.h"

/* Builds a writer holding every tensor of m (borrowed) and the spec. */
kd_status kd__checkpoint_writer(kd_model *m, kd_safetensors_writer **out)
{
    kd_context *ctx = kd__model_context(m);
    *out = NULL;
    size_t need = 0;
    kd_status st = kd_model_spec(m, NULL, 0, &need);
    if (st != KD_OK && st != KD_E_OVERFLOW) return st;
    char *spec = (char *)kd__alloc(ctx, need + 1);
    if (!spec) return kd_context_last_status(ctx);
    kd_safetensors_writer *w = NULL;
    if ((st = kd_model_spec(m, spec, need + 1, NULL)) != KD_OK) goto fail;
    if ((st = kd_safetensors_writer_create(ctx, &w)) != KD_OK) goto fail;
    if ((st = kd_safetensors_writer_set_metadata(w, KD_CHECKPOINT_SPEC_KEY, spec)) != KD_OK) goto fail;
    if ((st = kd_safetensors_writer_set_metadata(w, "format", "pt")) != KD_OK) goto fail;
    for (size_t i = 0, n = kd_model_tensor_count(m); i < n; i++) {
        const char *name;
        float *data;
        size_t shape[KD_TENSOR_MAX_RANK];
        uint32_t rank;
        if ((st = kd_model_tensor_name(m, i, &name)) != KD_OK) goto fail;
        if ((st = kd_model_tensor(m, i, &data, NULL, shape, &rank, NULL)) != KD_OK) goto fail;
        if ((st = kd_safetensors_writer_add_f32(w, name, rank, shape, data, KD_ST_BORROW)) != KD_OK)
            goto fail;
    }
    kd__free(ctx, spec);
    *out = w;
    return KD_OK;
fail:
    kd_safetensors_writer_destroy(w);
    kd__free(ctx, spec);
    return st;
}

kd_status kd_model_save_size(kd_model *m, size_t *size)
{
    if (!m) return KD_E_INVALID;
    if (!size) return kd__fail(kd__model_context(m), KD_E_INVALID, "kd_model_save_size: NULL size");
    kd_safetensors_writer *w;
    kd_status st = kd__checkpoint_writer(m, &w);
    if (st != KD_OK) return st;
    st = kd_safetensors_writer_size(w, size);
    kd_safetensors_writer_destroy(w);
    return st;
}

kd_status kd_model_save_memory(kd_model *m, void *buf, size_t cap, size_t *written)
{
    if (!m) return KD_E_INVALID;
    kd_context *ctx = kd__model_context(m);
    if (!buf) return kd__fail(ctx, KD_E_INVALID, "kd_model_save_memory: NULL buffer");
    kd_safetensors_writer *w;
    kd_status st = kd__checkpoint_writer(m, &w);
    if (st != KD_OK) return st;
    size_t need = 0, done = 0;
    st = kd_safetensors_writer_size(w, &need);
    if (st == KD_OK && cap < need)
        st = kd__fail(ctx, KD_E_OVERFLOW, "kd_model_save_memory: %zu bytes needed, buffer has %zu",
                      need, cap);
    if (st == KD_OK) st = kd_safetensors_writer_write_memory(w, buf, cap, &done);
    kd_safetensors_writer_destroy(w);
    if (st == KD_OK && written) *written = done;
    return st;
}

/* Copies every tensor of m from st, strictly (see kd_checkpoint.h). */
kd_status kd__checkpoint_fill(kd_model *m, const kd_safetensors *st_file)
{
    kd_context *ctx = kd__model_context(m);
    const size_t n = kd_model_tensor_count(m);
    size_t in_file = kd_safetensors_count(st_file);
    if (in_file != n) {
        /* Name the first tensor the model does not have, for a useful reason. */
        for (size_t i = 0; i < in_file; i++) {
            kd_safetensors_tensor_info info;
            memset(&info, 0, sizeof info);
            info.struct_size = (uint32_t)sizeof info;
            size_t idx;
            if (kd_safetensors_info(st_file, i, &info) == KD_OK &&
                kd_model_tensor_find(m, info.name, &idx) != KD_OK)
                return kd__fail(ctx, KD_E_FORMAT, "checkpoint tensor '%s' is not in the model", info.name);
        }
    }
    for (size_t i = 0; i < n; i++) {
        const char *name;
        float *data;
        size_t numel, shape[KD_TENSOR_MAX_RANK], idx;
        uint32_t rank;
        kd_status s = kd_model_tensor_name(m, i, &name);
        if (s == KD_OK) s = kd_model_tensor(m, i, &data, &numel, shape, &rank, NULL);
        if (s != KD_OK) return s;
        if (kd_safetensors_find(st_file, name, &idx) != KD_OK)
            return kd__fail(ctx, KD_E_NOT_FOUND, "checkpoint has no tensor '%s'", name);
        kd_safetensors_tensor_info info;
        memset(&info, 0, sizeof info);
        info.struct_size = (uint32_t)sizeof info;
        if ((s = kd_safetensors_info(st_file, idx, &info)) != KD_OK) return s;
        int same = info.rank == rank;
        for (uint32_t r = 0; same && r < rank; r++) same = info.shape[r] == shape[r];
        if (!same)
            return kd__fail(ctx, KD_E_SHAPE, "checkpoint tensor '%s' has rank %u and %llu elements; "
                            "the model's has rank %u and %zu", name, (unsigned)info.rank,
                            (unsigned long long)info.numel, (unsigned)rank, numel);
        if ((s = kd_safetensors_read_f32(st_file, idx, data, numel)) != KD_OK) return s;
    }
    if (in_file != n)
        return kd__fail(ctx, KD_E_FORMAT, "checkpoint holds %zu tensors, the model %zu", in_file, n);
    return KD_OK;
}

kd_status kd__checkpoint_build(kd_context *ctx, const kd_safetensors *st_file, kd_model **out)
{
    const char *spec = NULL;
    kd_status st = kd_safetensors_metadata_get(st_file, KD_CHECKPOINT_SPEC_KEY, &spec);
    if (st != KD_OK)
        return kd__fail(ctx, st == KD_E_NOT_FOUND ? KD_E_FORMAT : st,
                        "checkpoint has no '%s' metadata: build the model from its spec and use "
                        "kd_model_load_weights", KD_CHECKPOINT_SPEC_KEY);
    kd_model *m = NULL;
    if ((st = kd_model_create_from_spec(ctx, spec, &m)) != KD_OK) return st;
    if ((st = kd__checkpoint_fill(m, st_file)) != KD_OK) {
        kd_model_destroy(m);
        return st;
    }
    *out = m;
    return KD_OK;
}

kd_status kd_model_load_memory(kd_context *ctx, const void *buf, size_t size, kd_model **out)
{
    if (!ctx) return KD_E_INVALID;
    if (!out) return kd__fail(ctx, KD_E_INVALID, "kd_model_load_memory: NULL out");
    *out = NULL;
    kd_safetensors *st_file = NULL;
    kd_status st = kd_safetensors_open_memory(ctx, buf, size, &st_file);
    if (st != KD_OK) return st;
    st = kd__checkpoint_build(ctx, st_file, out);
    kd_safetensors_close(st_file);
    return st;
}

kd_status kd_model_load_weights_memory(kd_model *m, const void *buf, size_t size)
{
    if (!m) return KD_E_INVALID;
    kd_safetensors *st_file = NULL;
    kd_status st = kd_safetensors_open_memory(kd__model_context(m), buf, size, &st_file);
    if (st != KD_OK) return st;
    st = kd__checkpoint_fill(m, st_file);
    kd_safetensors_close(st_file);
    return st;
}
