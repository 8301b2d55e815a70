/*
 * kd_safetensors.h - libkd io: safetensors checkpoints (read and write).
 *
 * The safetensors format (Hugging Face): an 8-byte little-endian header
 * length N, N bytes of UTF-8 JSON
 *   {"name": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]},
 *    ..., "__metadata__": {"key": "value", ...}}
 * then the data buffer; offsets are relative to its start, and the tensors
 * must cover it exactly (no holes, no overlaps). Tensor data is row-major
 * ('C' order), little-endian.
 *
 * Reading: a kd_safetensors handle opens a checkpoint from a caller's memory
 * buffer (zero-copy: firmware keeps checkpoints in flash) or from a path
 * (memory-mapped; hosted builds only). The whole header is validated at open:
 * a handle that opened successfully has only well-formed tensors whose bytes
 * lie inside the buffer. Hostile input gives KD_E_FORMAT (KD_E_OVERFLOW when
 * an integer does not fit 64 bits or a shape's element or byte count does
 * not fit size_t) with a reason in the context, never an out-of-bounds read.
 * The reader is strict: JSON per RFC 8259 with valid UTF-8, header at most
 * KD_SAFETENSORS_MAX_HEADER bytes, nesting at most 8 deep, known dtypes,
 * rank at most KD_SAFETENSORS_MAX_RANK, tensors tiling the data buffer
 * exactly, no duplicate names or metadata keys, metadata values strings,
 * no U+0000 in names, keys or values; unknown fields inside a tensor entry
 * are ignored (as the reference implementation does). Any dtype of the
 * format can be enumerated; conversion to float covers F32, F16 and BF16.
 *
 * Writing: a kd_safetensors_writer collects F32 tensors and string metadata,
 * then writes them to a caller's buffer or, crash-safely, to a path.
 *
 * Thread safety: a reader is immutable after open; its query functions may be
 * called from several threads at once as long as none fails (a failure
 * records its reason in the shared kd_context). A writer is used by one
 * thread at a time.
 */
#ifndef KD_SAFETENSORS_H
#define KD_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "kd_core.h"

#ifdef __cplusplus
extern "C" {
#endif

/** @defgroup safetensors I/O: safetensors checkpoints
 *  @{ */

/** Largest rank the reader and writer accept. */
#define KD_SAFETENSORS_MAX_RANK 8
/** Largest JSON header the reader accepts, in bytes (the reference implementation's limit). */
#define KD_SAFETENSORS_MAX_HEADER 100000000u

/** Element types of the safetensors format. Numbers are pinned. */
typedef enum kd_st_dtype {
    KD_ST_INVALID = 0,
    KD_ST_BOOL = 1,
    KD_ST_U8 = 2,
    KD_ST_I8 = 3,
    KD_ST_I16 = 4,
    KD_ST_U16 = 5,
    KD_ST_F16 = 6,      /**< IEEE 754 binary16 */
    KD_ST_BF16 = 7,     /**< bfloat16: the top half of a binary32 */
    KD_ST_I32 = 8,
    KD_ST_U32 = 9,
    KD_ST_F32 = 10,
    KD_ST_F64 = 11,
    KD_ST_I64 = 12,
    KD_ST_U64 = 13,
    KD_ST_F8_E5M2 = 14,
    KD_ST_F8_E4M3 = 15
} kd_st_dtype;

/** The format's name of a dtype ("F32", "BF16", ...); "" for an unknown value. Static storage. */
KD_API const char *kd_st_dtype_name(kd_st_dtype dtype);
/** Bytes per element of a dtype; 0 for an unknown value. */
KD_API size_t kd_st_dtype_size(kd_st_dtype dtype);

/* ---- reading ---------------------------------------------------------- */

typedef struct kd_safetensors kd_safetensors;

/**
 * Description of one tensor. The caller sets struct_size (to
 * sizeof(kd_safetensors_tensor_info)) before passing it in; the library fills
 * the fields that fit. Pointers are owned by the reader and stay valid until
 * kd_safetensors_close.
 */
typedef struct kd_safetensors_tensor_info {
    uint32_t struct_size;
    const char *name;        /**< NUL-terminated UTF-8 */
    size_t name_len;         /**< bytes, without the NUL */
    kd_st_dtype dtype;
    uint32_t rank;           /**< 0 .. KD_SAFETENSORS_MAX_RANK; 0 is a scalar */
    size_t shape[KD_SAFETENSORS_MAX_RANK]; /**< first `rank` entries used, the rest 0 */
    size_t numel;            /**< product of the shape (1 for a scalar) */
    size_t nbytes;           /**< numel * kd_st_dtype_size(dtype) */
    const void *data;        /**< raw little-endian bytes inside the checkpoint; may be unaligned */
} kd_safetensors_tensor_info;

/**
 * Opens a checkpoint held in memory. Borrows data (size bytes) until
 * kd_safetensors_close: nothing is copied, tensors point into it. Available in
 * embedded builds; the handle's own bookkeeping is one kd_context allocation
 * (so an arena works). On success *out owns the reader.
 */
KD_API kd_status kd_safetensors_open_memory(kd_context *ctx, const void *data, size_t size,
                                            kd_safetensors **out);

/**
 * Opens a checkpoint file by memory-mapping it (read-only). path is borrowed
 * only during the call. Missing file: KD_E_NOT_FOUND. Hosted builds only
 * (the symbol does not exist in embedded builds).
 */
KD_API kd_status kd_safetensors_open_file(kd_context *ctx, const char *path,
                                          kd_safetensors **out);

/** Closes a reader (unmapping its file, if any). NULL is a no-op. */
KD_API void kd_safetensors_close(kd_safetensors *st);

/** Number of tensors; 0 when st is NULL. Tensors are indexed 0..count-1 in
 *  ascending byte order of their names. */
KD_API size_t kd_safetensors_count(const kd_safetensors *st);

/** Describes tensor `index` (see kd_safetensors_tensor_info for ownership).
 *  KD_E_INVALID for an index out of range, KD_E_VERSION when
 *  info->struct_size is smaller than the first released version. */
KD_API kd_status kd_safetensors_info(const kd_safetensors *st, size_t index,
                                     kd_safetensors_tensor_info *info);

/** Index of the tensor called name (borrowed during the call);
 *  KD_E_NOT_FOUND when there is none. O(log count). */
KD_API kd_status kd_safetensors_find(const kd_safetensors *st, const char *name, size_t *index);

/**
 * Zero-copy view of an F32 tensor: *out points into the checkpoint (owned by
 * the reader, valid until close). KD_E_UNSUPPORTED when the tensor is not
 * F32, its bytes are not 4-byte aligned in memory, or the host is not
 * little-endian: use kd_safetensors_read_f32 then.
 */
KD_API kd_status kd_safetensors_data_f32(const kd_safetensors *st, size_t index,
                                         const float **out);

/**
 * Copies tensor `index` into dst (count floats, caller-owned), converting F32,
 * F16 and BF16 exactly (F16 subnormals, infinities and NaN included; NaN
 * payloads are kept), and F64 and the integer and BOOL dtypes rounded to the
 * nearest float (integers exact up to 2^24: PyTorch stores batch norm's
 * num_batches_tracked as I64). count must equal the tensor's numel
 * (KD_E_SHAPE otherwise); FP8 gives KD_E_UNSUPPORTED. dst may be unaligned relative to the file.
 */
KD_API kd_status kd_safetensors_read_f32(const kd_safetensors *st, size_t index, float *dst,
                                         size_t count);

/** Number of "__metadata__" entries; 0 when st is NULL or there are none. */
KD_API size_t kd_safetensors_metadata_count(const kd_safetensors *st);

/** Entry `index` of the metadata, in ascending byte order of keys. *key and
 *  *value are NUL-terminated UTF-8 owned by the reader (valid until close). */
KD_API kd_status kd_safetensors_metadata_at(const kd_safetensors *st, size_t index,
                                            const char **key, const char **value);

/** Value of metadata key (borrowed during the call); *value is owned by the
 *  reader. KD_E_NOT_FOUND when the key is absent. */
KD_API kd_status kd_safetensors_metadata_get(const kd_safetensors *st, const char *key,
                                             const char **value);

/* ---- writing ---------------------------------------------------------- */

typedef struct kd_safetensors_writer kd_safetensors_writer;

/** Flags of kd_safetensors_writer_add_f32. */
#define KD_ST_BORROW 0u  /**< data is borrowed until the last write or destroy (no copy) */
#define KD_ST_COPY 1u    /**< data is copied now; the caller may reuse its buffer at once */

/** Creates an empty writer. On success *out owns it; release with
 *  kd_safetensors_writer_destroy. Available in embedded builds. */
KD_API kd_status kd_safetensors_writer_create(kd_context *ctx, kd_safetensors_writer **out);

/** Destroys a writer and the copies it holds. NULL is a no-op. */
KD_API void kd_safetensors_writer_destroy(kd_safetensors_writer *w);

/**
 * Adds an F32 tensor. name (non-empty UTF-8, not "__metadata__", unique in the
 * writer) and shape (rank entries, rank <= KD_SAFETENSORS_MAX_RANK) are
 * copied; data (product of shape floats, row-major; may be NULL only when
 * that product is 0) is borrowed or copied according to flags. Values are
 * stored bit-exactly: NaN and infinities are written as they are. Duplicate
 * names: KD_E_INVALID. Files list tensors in ascending byte order of names.
 */
KD_API kd_status kd_safetensors_writer_add_f32(kd_safetensors_writer *w, const char *name,
                                               size_t rank, const size_t *shape,
                                               const float *data, unsigned flags);

/** Sets a "__metadata__" entry (both strings UTF-8, copied). A key set twice
 *  keeps the last value. The model code stores its architecture here. */
KD_API kd_status kd_safetensors_writer_set_metadata(kd_safetensors_writer *w, const char *key,
                                                    const char *value);

/** Exact size in bytes of the checkpoint the writer would produce now. */
KD_API kd_status kd_safetensors_writer_size(kd_safetensors_writer *w, size_t *size);

/**
 * Writes the checkpoint into buf (capacity bytes, caller-owned); *written
 * receives its size. KD_E_INVALID when capacity is smaller than
 * kd_safetensors_writer_size (nothing useful is left in buf then).
 * Available in embedded builds.
 */
KD_API kd_status kd_safetensors_writer_write_memory(kd_safetensors_writer *w, void *buf,
                                                    size_t capacity, size_t *written);

/**
 * Writes the checkpoint to path (borrowed during the call) crash-safely: a
 * temporary file beside it, fsync, rename over path, fsync of the folder. On
 * any failure (KD_E_IO with the OS reason) the file previously under path, if
 * any, is untouched and no temporary file remains. Hosted builds only.
 */
KD_API kd_status kd_safetensors_writer_write_file(kd_safetensors_writer *w, const char *path);

/** @} */

#ifdef __cplusplus
}
#endif

#endif /* KD_SAFETENSORS_H */
