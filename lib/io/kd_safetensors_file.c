/*
 * kd_safetensors_file.c - path-based safetensors reading (mmap) and
 * crash-safe writing (hosted builds only).
 */
#include <stdlib.h>

#include "kd_safetensors_internal.h"

static void release_map(kd_safetensors *st)
{
    kd_mapped_file m;
    m.data = (const unsigned char *)st->map_data;
    m.size = st->map_size;
    kd__unmap_file(&m);
    st->map_data = NULL;
    st->map_size = 0;
}

kd_status kd_safetensors_open_file(kd_context *ctx, const char *path, kd_safetensors **out)
{
    if (!ctx || !out) return kd__fail(ctx, KD_E_INVALID, "kd_safetensors_open_file: NULL argument");
    *out = NULL;
    kd_mapped_file m;
    kd_status st = kd__map_file(ctx, path, &m);
    if (st != KD_OK) return st;
    kd_safetensors *r = NULL;
    /* A zero-byte file maps to data == NULL; the reader needs a pointer. */
    st = kd__safetensors_open(ctx, m.data ? (const void *)m.data : (const void *)"", m.size, path,
                              &r);
    if (st != KD_OK) {
        kd__unmap_file(&m);
        return st;
    }
    r->map_data = m.data;
    r->map_size = m.size;
    r->release = release_map;
    *out = r;
    return KD_OK;
}

kd_status kd_safetensors_writer_write_file(kd_safetensors_writer *w, const char *path)
{
    if (!w) return KD_E_INVALID;
    kd_context *ctx = w->ctx;
    kd__st_plan plan;
    kd_status st = kd__st_plan_make(w, &plan);
    if (st != KD_OK) return st;
    unsigned char *hdr = (unsigned char *)kd__alloc(ctx, 8 + plan.header_len);
    if (!hdr) {
        kd__st_plan_free(w, &plan);
        return KD_E_NOMEM;
    }
    kd__st_plan_header(&plan, w->n_tensors, w->n_meta, hdr);

    kd_atomic_file f;
    st = kd__atomic_open(ctx, &f, path);
    if (st == KD_OK) {
        st = kd__atomic_write(&f, hdr, 8 + plan.header_len);
        int le = kd__st_host_le();
        for (size_t i = 0; i < w->n_tensors && st == KD_OK; i++) {
            const kd__st_wtensor *t = plan.tensors[i];
            if (le) {
                st = kd__atomic_write(&f, t->data, t->numel * sizeof(float));
                continue;
            }
            unsigned char chunk[1024];
            for (size_t done = 0; done < t->numel && st == KD_OK;) {
                size_t n = t->numel - done < 256 ? t->numel - done : 256;
                kd__st_f32_store_le(t->data + done, n, chunk);
                st = kd__atomic_write(&f, chunk, n * 4);
                done += n;
            }
        }
        if (st == KD_OK) st = kd__atomic_commit(&f);
        if (st != KD_OK) kd__atomic_abort(&f);
    }
    /* hdr was allocated after the plan: free in reverse order (arena LIFO). */
    kd__free(ctx, hdr);
    kd__st_plan_free(w, &plan);
    return st;
}
