/*
 * kd_data.h - dataset file parsers.
 *
 * IDX is the format of MNIST and Fashion-MNIST (and Debian's
 * dataset-fashion-mnist package, gzip-compressed: decompress first, e.g.
 * with zlib, then parse the bytes). Parsing borrows the caller's buffer and
 * copies nothing; every header field is validated before use.
 */
#ifndef KD_DATA_H
#define KD_DATA_H

#include "kd_core.h"

#ifdef __cplusplus
extern "C" {
#endif

/** @defgroup data Data: dataset files
 *  @{ */

/** IDX element types (the third magic byte). */
typedef enum kd_idx_type {
    KD_IDX_U8 = 0x08,
    KD_IDX_I8 = 0x09,
    KD_IDX_I16 = 0x0B,
    KD_IDX_I32 = 0x0C,
    KD_IDX_F32 = 0x0D,
    KD_IDX_F64 = 0x0E
} kd_idx_type;

#define KD_IDX_MAX_RANK 8

/** A parsed IDX buffer. Set struct_size = sizeof(kd_idx_view) before parsing. */
typedef struct kd_idx_view {
    uint32_t struct_size;
    kd_idx_type type;
    uint32_t rank;                    /**< 1..KD_IDX_MAX_RANK */
    uint32_t dims[KD_IDX_MAX_RANK];   /**< dims[0] is the number of items */
    size_t count;                     /**< product of dims */
    size_t item_size;                 /**< product of dims[1..rank-1] (1 for rank 1) */
    const unsigned char *data;        /**< big-endian elements, borrowed from the buffer */
} kd_idx_view;

/**
 * Parses an uncompressed IDX buffer of size bytes. The buffer must hold
 * exactly the header and count elements (trailing bytes are an error: a
 * truncated or concatenated file is reported, not half-used). out->data
 * points into buf, which must outlive every use of out.
 * Errors: KD_E_INVALID (NULL), KD_E_VERSION (struct_size), KD_E_FORMAT (bad
 * magic, type, rank, or size), KD_E_OVERFLOW (dimension product).
 */
KD_API kd_status kd_idx_parse(kd_context *ctx, const void *buf, size_t size, kd_idx_view *out);

/**
 * Converts items [first, first + n) of a parsed view to floats,
 * dst[i] = value * scale + offset, written row-major (n * item_size floats).
 * Errors: KD_E_INVALID, KD_E_SHAPE (range beyond the view), KD_E_OVERFLOW.
 */
KD_API kd_status kd_idx_to_float(kd_context *ctx, const kd_idx_view *view, size_t first, size_t n,
                                 float scale, float offset, float *dst);

/**
 * Converts items [first, first + n) of a rank-1 integer view (labels) to
 * int32. Errors: KD_E_INVALID, KD_E_SHAPE (rank != 1 or range beyond the
 * view), KD_E_FORMAT (float element type).
 */
KD_API kd_status kd_idx_to_labels(kd_context *ctx, const kd_idx_view *view, size_t first,
                                  size_t n, int32_t *dst);

/** @} */

#ifdef __cplusplus
}
#endif

#endif /* KD_DATA_H */
