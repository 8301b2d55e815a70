/*
 * kd_cache.h - the teacher-logit cache: run a teacher once, offline, store
 * its top-k distribution per position in a compact checksummed file, and
 * train students from that file with no teacher at training time.
 *
 * Per position (a dataset row, or one token position of a sequence) the
 * cache keeps at most k (class id, probability) pairs, the teacher's most
 * probable classes at temperature 1, plus the tail mass (the probability of
 * every other class), so a decoded row is a KD_SPARSE_TOPK kd_sparse_logits
 * row with tail_mass: a distribution over k + 1 buckets.
 *
 * Encodings (values are quantised; the bounds below are per stored entry):
 *  KD_CACHE_ENC_LOGPROB16: ids packed in ceil(log2 V) bits, log-probabilities
 *    as 16-bit fixed point (step 1/1024 nat): |ln p' - ln p| <= 1/2048 for
 *    p >= e^-63.9 (smaller p are stored as e^-63.9); tail likewise.
 *  KD_CACHE_ENC_COMPACT (default): ids sorted and gap-coded (Exp-Golomb code
 *    with a per-position order), probabilities as round(sqrt(p) * Q) with
 *    Q = value_scale (default 128), Exp-Golomb coded: |sqrt p' - sqrt p| <= 1/(2Q),
 *    so the quantisation adds about sum_i (sqrt p'_i - sqrt p_i)^2 * 2 <=
 *    k / (2 Q^2) nats of KL (1.5e-3 at k = 50, Q = 128; typically a third of
 *    that). Entries with sqrt(p) * Q < 0.5 are folded into the tail bucket,
 *    so a row may hold fewer than k ids (the rest are -1 slots). The tail is
 *    stored as round(sqrt(tail) * 65535).
 *  Decoded values are always KD_SPARSE_LOGPROB; ids are ascending per row.
 *
 * File (little endian): a 64-byte header (magic "KDLOGITC", version, V, k,
 * encoding, value scale, block size, position count, header CRC32C), blocks
 * of block_positions positions (each with its own CRC32C), an index of block
 * offsets and a footer (CRC32C of the index). While writing, the blocks go to
 * "<path>.partial"; finishing writes the complete file through a temporary
 * file, fsync and rename, so "<path>" is either absent or complete. A run
 * that stops early leaves "<path>.partial"; opening a writer with resume
 * keeps its intact blocks (CRC-checked; a torn last block is dropped) and
 * continues at the first missing position, and the finished file is
 * byte-identical to an uninterrupted run.
 *
 * Readers validate everything at open (header, footer, index, every block
 * CRC and every record's coding): a corrupted or truncated file is
 * KD_E_FORMAT / KD_E_CORRUPT / KD_E_VERSION with a reason, never trusted,
 * and decoding rows afterwards cannot fail on file contents.
 *
 * Threads: a writer or a cache is used by one thread at a time; an open
 * cache is read-only and kd_logit_cache_rows may run concurrently on it.
 */
#ifndef KD_CACHE_H
#define KD_CACHE_H

#include "kd_core.h"
#include "kd_distill.h"
#include "kd_loss.h"

#ifdef __cplusplus
extern "C" {
#endif

/** @defgroup cache Teacher-logit cache
 *  @{ */

/** File format version written by this library. */
#define KD_CACHE_FORMAT_VERSION 1u

typedef enum kd_cache_encoding {
    KD_CACHE_ENC_LOGPROB16 = 1, /**< packed ids + 16-bit log-probabilities */
    KD_CACHE_ENC_COMPACT = 2    /**< gap-coded ids + sqrt-quantised probabilities */
} kd_cache_encoding;

/** Writer configuration. Fill with kd_cache_config_default(). */
typedef struct kd_cache_config {
    uint32_t struct_size;        /**< sizeof(kd_cache_config) */
    size_t k;                    /**< entries per position, 1..65535 and <= V (default 50) */
    kd_cache_encoding encoding;  /**< default KD_CACHE_ENC_COMPACT */
    uint32_t value_scale;        /**< COMPACT: Q in 16..4096 (default 128); ignored otherwise */
    size_t block_positions;      /**< positions per checksummed block, 1..65536 (default 128) */
    size_t batch;                /**< kd_cache_write_teacher: rows per teacher call (default 64) */
} kd_cache_config;

/** Defaults; struct_size set. No-op for NULL. */
KD_API void kd_cache_config_default_sized(kd_cache_config *cfg, size_t size);
#define kd_cache_config_default(cfg) kd_cache_config_default_sized((cfg), sizeof(kd_cache_config))

/* ---- writing ---------------------------------------------------------------- */

typedef struct kd_cache_writer kd_cache_writer;

/**
 * Starts (resume == 0) or resumes (resume != 0) writing a cache of `classes`
 * (V, 1..2^31-1) classes to path; cfg may be NULL (defaults). Work goes to
 * "<path>.partial" (created or truncated when not resuming). Resuming a
 * partial file written with another V, k, encoding, scale or block size is
 * KD_E_INVALID; a missing partial file starts from position 0; a damaged one
 * keeps the blocks before the first damaged block. *out owns the writer.
 * Errors: KD_E_INVALID, KD_E_VERSION, KD_E_IO, KD_E_NOMEM.
 */
KD_API kd_status kd_cache_writer_open(kd_context *ctx, const char *path, size_t classes,
                                      const kd_cache_config *cfg, int resume,
                                      kd_cache_writer **out);

/** Positions written so far (including those kept by a resume); 0 for NULL. */
KD_API uint64_t kd_cache_writer_positions(const kd_cache_writer *w);

/**
 * Appends rows positions from dense teacher logits (rows x V, borrowed).
 * -inf marks an impossible class; NaN, +inf or an all -inf row is
 * KD_E_NUMERIC and nothing of the batch is kept. Complete blocks are written
 * to the partial file as they fill.
 */
KD_API kd_status kd_cache_writer_append_logits(kd_cache_writer *w, const float *logits,
                                               size_t rows);

/**
 * Writes the remaining positions, the index and the footer, and publishes
 * path atomically; the partial file is removed. The writer accepts nothing
 * afterwards (KD_E_STATE) but must still be destroyed.
 */
KD_API kd_status kd_cache_writer_finish(kd_cache_writer *w);

/**
 * Releases the writer. Without a finish, the complete blocks already written
 * stay in "<path>.partial" for a later resume (positions of an unfinished
 * block are dropped, as a crash would). NULL is a no-op.
 */
KD_API void kd_cache_writer_destroy(kd_cache_writer *w);

/**
 * Runs teacher over every row of ds (batches of cfg->batch rows) into a
 * finished cache at path. With resume != 0 it continues an interrupted run
 * from "<path>.partial". The teacher is asked in KD_MODE_INFER
 * (kd_teacher_logits_mode): a teacher that learns is not changed. Errors as
 * above plus the teacher's.
 */
KD_API kd_status kd_cache_write_teacher(kd_context *ctx, kd_teacher *teacher,
                                        const kd_dataset *ds, const char *path,
                                        const kd_cache_config *cfg, int resume);

/* ---- reading ---------------------------------------------------------------- */

typedef struct kd_logit_cache kd_logit_cache;

/**
 * Memory-maps a finished cache and validates all of it. *out owns the cache.
 * Errors: KD_E_NOT_FOUND, KD_E_IO, KD_E_FORMAT (bad magic, counts, offsets,
 * records, truncation), KD_E_CORRUPT (CRC mismatch), KD_E_VERSION,
 * KD_E_NOMEM.
 */
KD_API kd_status kd_logit_cache_open(kd_context *ctx, const char *path, kd_logit_cache **out);

/**
 * Same over a caller's buffer (borrowed: it must outlive the cache and stay
 * unchanged).
 */
KD_API kd_status kd_logit_cache_open_memory(kd_context *ctx, const void *data, size_t size,
                                            kd_logit_cache **out);

/** Unmaps and releases. NULL is a no-op. */
KD_API void kd_logit_cache_close(kd_logit_cache *c);

/** Positions, classes V and slots k of the cache (0 for NULL). */
KD_API uint64_t kd_logit_cache_positions(const kd_logit_cache *c);
KD_API size_t kd_logit_cache_classes(const kd_logit_cache *c);
KD_API size_t kd_logit_cache_k(const kd_logit_cache *c);
/** Bytes of the file (header, blocks, index and footer). */
KD_API uint64_t kd_logit_cache_file_bytes(const kd_logit_cache *c);

/**
 * Decodes n positions (rows[i] < positions) into caller buffers: ids and
 * values n x k (unused slots: id -1, value 0), tail_mass n. When out is
 * non-NULL it is filled to describe them (TOPK, LOGPROB, k, the three
 * pointers) for kd_loss_batch.teacher_sparse. Errors: KD_E_INVALID (NULL,
 * a row out of range).
 */
KD_API kd_status kd_logit_cache_rows(const kd_logit_cache *c, const uint64_t *rows, size_t n,
                                     int32_t *ids, float *values, float *tail_mass,
                                     kd_sparse_logits *out);

/* ---- training from the cache ---------------------------------------------- */

/**
 * One student step with a sparse teacher (borrowed, batch rows) instead of
 * dense logits: as kd_student_step, every term receives it as
 * kd_loss_batch.teacher_sparse (terms whose loss does not accept sparse
 * teachers fail with KD_E_UNSUPPORTED). teacher may be NULL.
 */
KD_API kd_status kd_student_step_sparse(kd_student *s, const float *x, size_t batch,
                                        const int32_t *labels, const kd_sparse_logits *teacher,
                                        kd_step_report *report);

/**
 * kd_fit with the teacher replaced by a cache whose position i is row i of
 * ds (positions == ds->n, classes == the student's): same shuffling, batches
 * and progress reports as kd_fit for the same cfg. cfg->augment must be NULL
 * (the cache holds the teacher on the original rows: KD_E_INVALID) and
 * cfg->cache_teacher is ignored.
 */
KD_API kd_status kd_fit_cached(kd_student *s, const kd_logit_cache *cache, const kd_dataset *ds,
                               const kd_fit_config *cfg);

/** @} */

#ifdef __cplusplus
}
#endif

#endif /* KD_CACHE_H */
