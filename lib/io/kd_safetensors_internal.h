/*
 * kd_safetensors_internal.h - structures shared by the safetensors reader,
 * writer and their hosted (path-based) front ends. Never installed.
 */
#ifndef KD_SAFETENSORS_INTERNAL_H
#define KD_SAFETENSORS_INTERNAL_H

#include "kd/kd_safetensors.h"
#include "kd_internal.h"

/* ---- reader ---------------------------------------------------------- */

typedef struct kd__st_tensor {
    const char *name;        /* in the reader's string pool, NUL-terminated */
    size_t name_len;
    const size_t *shape;     /* rank entries in the reader's dims pool */
    size_t begin, end;       /* byte range inside the data buffer, validated */
    size_t numel;
    uint32_t rank;
    kd_st_dtype dtype;
} kd__st_tensor;

typedef struct kd__st_meta {
    const char *key;
    const char *value;
    size_t key_len;
} kd__st_meta;

struct kd_safetensors {
    kd_context *ctx;
    const unsigned char *data;   /* start of the data buffer */
    size_t data_size;
    kd__st_tensor *tensors;      /* sorted by name */
    size_t n_tensors;
    kd__st_meta *meta;           /* sorted by key */
    size_t n_meta;
    /* Set by the path-based opener: releases the mapping at close. */
    void (*release)(struct kd_safetensors *st);
    const void *map_data;
    size_t map_size;
};

/* Validates and indexes a checkpoint at data (borrowed). what names the
 * source in error messages ("buffer", a path). */
kd_status kd__safetensors_open(kd_context *ctx, const void *data, size_t size, const char *what,
                               kd_safetensors **out);

/* In-place heapsort (no recursion, no allocation). */
void kd__st_sort(void *base, size_t n, size_t size,
                 int (*cmp)(const void *a, const void *b));

/* 1 on a little-endian host. */
int kd__st_host_le(void);

/* ---- writer ---------------------------------------------------------- */

typedef struct kd__st_wtensor {
    struct kd__st_wtensor *next;
    char *name;
    size_t name_len;
    size_t rank;
    size_t shape[KD_SAFETENSORS_MAX_RANK];
    size_t numel;
    const float *data;           /* borrowed, or the copy stored after this struct */
} kd__st_wtensor;

typedef struct kd__st_wmeta {
    struct kd__st_wmeta *next;
    char *key;
    char *value;
    size_t key_len;
    size_t value_len;
} kd__st_wmeta;

struct kd_safetensors_writer {
    kd_context *ctx;
    kd__st_wtensor *tensors;     /* newest first */
    size_t n_tensors;
    kd__st_wmeta *meta;
    size_t n_meta;
    size_t data_bytes;           /* sum of tensor byte sizes */
};

/* A write plan: tensors and metadata in file order, and the sizes. */
typedef struct kd__st_plan {
    kd__st_wtensor **tensors;
    kd__st_wmeta **meta;
    size_t header_len;           /* N, a multiple of 8 */
    size_t total;                /* 8 + N + data bytes */
} kd__st_plan;

kd_status kd__st_plan_make(kd_safetensors_writer *w, kd__st_plan *plan);
void kd__st_plan_free(kd_safetensors_writer *w, kd__st_plan *plan);
/* Writes the 8-byte length and the padded header (8 + header_len bytes). */
void kd__st_plan_header(const kd__st_plan *plan, size_t n_tensors, size_t n_meta,
                        unsigned char *dst);
/* Stores n floats little-endian at dst (any alignment). */
void kd__st_f32_store_le(const float *src, size_t n, unsigned char *dst);

#endif /* KD_SAFETENSORS_INTERNAL_H */
