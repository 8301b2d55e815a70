/* kd_idx.c - IDX (MNIST-family) parser over a borrowed buffer; no stdio, no malloc. */
#include "kd/kd_data.h"
#include "kd_internal.h"

static size_t idx_elem_size(int type)
{
    switch (type) {
    case KD_IDX_U8: case KD_IDX_I8: return 1;
    case KD_IDX_I16: return 2;
    case KD_IDX_I32: case KD_IDX_F32: return 4;
    case KD_IDX_F64: return 8;
    default: return 0;
    }
}

static uint32_t be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

kd_status kd_idx_parse(kd_context *ctx, const void *buf, size_t size, kd_idx_view *out)
{
    if (!ctx) return KD_E_INVALID;
    if (!buf || !out) return kd__fail(ctx, KD_E_INVALID, "kd_idx_parse: NULL buffer or output");
    if (out->struct_size < sizeof *out)
        return kd__fail(ctx, KD_E_VERSION, "kd_idx_parse: set out->struct_size = sizeof(kd_idx_view)");
    const unsigned char *p = (const unsigned char *)buf;
    if (size < 4) return kd__fail(ctx, KD_E_FORMAT, "IDX: %zu bytes is shorter than the magic", size);
    if (p[0] != 0 || p[1] != 0)
        return kd__fail(ctx, KD_E_FORMAT, "IDX: bad magic %x %x (not an IDX file, or still gzip-compressed?)",
                        p[0], p[1]);
    size_t esz = idx_elem_size(p[2]);
    if (!esz) return kd__fail(ctx, KD_E_FORMAT, "IDX: unknown element type 0x%x", p[2]);
    uint32_t rank = p[3];
    if (rank == 0 || rank > KD_IDX_MAX_RANK)
        return kd__fail(ctx, KD_E_FORMAT, "IDX: rank %u not in [1, %d]", rank, KD_IDX_MAX_RANK);
    size_t header = 4 + 4 * (size_t)rank;
    if (size < header)
        return kd__fail(ctx, KD_E_FORMAT, "IDX: truncated header (%zu of %zu bytes)", size, header);
    kd_idx_view v;
    memset(&v, 0, sizeof v);
    v.struct_size = (uint32_t)sizeof v;
    v.type = (kd_idx_type)p[2];
    v.rank = rank;
    size_t count = 1, item = 1;
    for (uint32_t d = 0; d < rank; d++) {
        v.dims[d] = be32(p + 4 + 4 * d);
        if (kd__mul_overflow(count, v.dims[d], &count))
            return kd__fail(ctx, KD_E_OVERFLOW, "IDX: dimension product overflows");
        if (d > 0) item *= v.dims[d];
    }
    size_t bytes, total;
    if (kd__mul_overflow(count, esz, &bytes) || kd__add_overflow(bytes, header, &total))
        return kd__fail(ctx, KD_E_OVERFLOW, "IDX: data size overflows");
    if (size != total)
        return kd__fail(ctx, KD_E_FORMAT, "IDX: %zu bytes, but the header describes %zu (%s)", size,
                        total, size < total ? "truncated" : "trailing bytes");
    v.count = count;
    v.item_size = item;
    v.data = p + header;
    *out = v;
    return KD_OK;
}

static kd_status check_range(kd_context *ctx, const kd_idx_view *view, size_t first, size_t n,
                             const void *dst, const char *fn)
{
    if (!ctx) return KD_E_INVALID;
    if (!view || !view->data || (!dst && n))
        return kd__fail(ctx, KD_E_INVALID, "%s: NULL view or destination", fn);
    size_t end;
    if (kd__add_overflow(first, n, &end) || end > view->dims[0])
        return kd__fail(ctx, KD_E_SHAPE, "%s: items [%zu, %zu + %zu) beyond the %u items", fn,
                        first, first, n, view->dims[0]);
    return KD_OK;
}

/* Element i (flat index) as double. */
static double idx_get(const kd_idx_view *v, size_t i)
{
    const unsigned char *q = v->data + i * idx_elem_size(v->type);
    switch (v->type) {
    case KD_IDX_U8: return q[0];
    case KD_IDX_I8: return (signed char)q[0];
    case KD_IDX_I16: return (int16_t)(uint16_t)((unsigned)q[0] << 8 | q[1]);
    case KD_IDX_I32: return (int32_t)be32(q);
    case KD_IDX_F32: {
        uint32_t u = be32(q);
        float f;
        memcpy(&f, &u, 4);
        return f;
    }
    case KD_IDX_F64: {
        uint64_t u = (uint64_t)be32(q) << 32 | be32(q + 4);
        double d;
        memcpy(&d, &u, 8);
        return d;
    }
    }
    return 0.0;
}

kd_status kd_idx_to_float(kd_context *ctx, const kd_idx_view *view, size_t first, size_t n,
                          float scale, float offset, float *dst)
{
    kd_status st = check_range(ctx, view, first, n, dst, "kd_idx_to_float");
    if (st != KD_OK) return st;
    size_t start, cnt;
    if (kd__mul_overflow(first, view->item_size, &start) ||
        kd__mul_overflow(n, view->item_size, &cnt))
        return kd__fail(ctx, KD_E_OVERFLOW, "kd_idx_to_float: element count overflows");
    if (view->type == KD_IDX_U8) { /* the common case, kept tight */
        const unsigned char *q = view->data + start;
        for (size_t i = 0; i < cnt; i++) dst[i] = (float)q[i] * scale + offset;
        return KD_OK;
    }
    for (size_t i = 0; i < cnt; i++) dst[i] = (float)(idx_get(view, start + i) * scale + offset);
    return KD_OK;
}

kd_status kd_idx_to_labels(kd_context *ctx, const kd_idx_view *view, size_t first, size_t n,
                           int32_t *dst)
{
    kd_status st = check_range(ctx, view, first, n, dst, "kd_idx_to_labels");
    if (st != KD_OK) return st;
    if (view->rank != 1)
        return kd__fail(ctx, KD_E_SHAPE, "kd_idx_to_labels: rank %u, labels need rank 1", view->rank);
    if (view->type == KD_IDX_F32 || view->type == KD_IDX_F64)
        return kd__fail(ctx, KD_E_FORMAT, "kd_idx_to_labels: float elements are not labels");
    for (size_t i = 0; i < n; i++) dst[i] = (int32_t)idx_get(view, first + i);
    return KD_OK;
}
