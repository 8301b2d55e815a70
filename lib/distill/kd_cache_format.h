/*
 * kd_cache_format.h - on-disk layout and record codec of the teacher-logit
 * cache (internal). All integers little endian.
 *
 *  header (64 bytes)
 *    0  8  magic "KDLOGITC"
 *    8  4  version (1)
 *   12  4  encoding (1 LOGPROB16, 2 COMPACT)
 *   16  8  classes V          (1 .. 2^31-1)
 *   24  4  k                  (1 .. min(V, 65535))
 *   28  4  block_positions    (1 .. 65536)
 *   32  8  positions          (0 in a partial file)
 *   40  4  value_scale        (COMPACT: 16..4096; LOGPROB16: 1024)
 *   44  4  flags              (bit 0: finished)
 *   48 12  zero
 *   60  4  CRC32C of bytes 0..59
 *  blocks, contiguous from offset 64; block b holds positions
 *  [b * block_positions, ...), all full but the last
 *    0  4  magic "KDLB"
 *    4  4  count
 *    8  8  first position
 *   16  4  payload bytes
 *   20  4  CRC32C of bytes 0..19 then the payload
 *   24     payload: count records, each varint L then L bytes
 *  index: n_blocks x u64 block offset
 *  footer (32 bytes)
 *    0  8  index offset
 *    8  8  positions
 *   16  8  n_blocks
 *   24  4  CRC32C of the index then footer bytes 0..23
 *   28  4  magic "KDLE"
 *
 * A record: varint m (entries kept, <= k), then an LSB-first bit stream
 * padded to a byte:
 *   LOGPROB16: tail code 16 bits (round(-ln t * 1024), 65535: t = 0), then
 *     m ids of ceil(log2 V) bits ascending, then m 16-bit value codes.
 *   COMPACT: tail code 16 bits (round(sqrt t * 65535)); when m > 0: r_id
 *     5 bits, r_val 4 bits, m Exp-Golomb(r_id) id gaps (first id, then
 *     id_i - id_{i-1} - 1), m Exp-Golomb(r_val) codes of level - 1, level =
 *     round(sqrt p * Q) >= 1.
 */
#ifndef KD_CACHE_FORMAT_H
#define KD_CACHE_FORMAT_H

#include <stddef.h>
#include <stdint.h>

#include "kd/kd_cache.h"
#include "kd_internal.h"

#define KDC_HEADER_SIZE 64u
#define KDC_BLOCK_HEADER 24u
#define KDC_FOOTER_SIZE 32u
#define KDC_FLAG_FINISHED 1u
#define KDC_MAX_K 65535u
#define KDC_MAX_BLOCK 65536u
#define KDC_MAX_CLASSES 0x7fffffffu
#define KDC_LOG_SCALE 1024.0
/* Longest record: varint(m) + 16-bit tail + 8 bits of parameters + per entry
 * at most 31 id bits + 16 value bits, or Exp-Golomb codes of at most 65
 * and 33 bits (kdc_max_record). Readers bound codes by the record length. */

static inline void kdc_wr32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static inline void kdc_wr64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static inline uint32_t kdc_rd32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline uint64_t kdc_rd64(const unsigned char *p)
{
    return (uint64_t)kdc_rd32(p) | (uint64_t)kdc_rd32(p + 4) << 32;
}

/* Parsed header. */
typedef struct kdc_header {
    uint32_t version;
    uint32_t encoding;
    uint64_t classes;
    uint32_t k;
    uint32_t block_positions;
    uint64_t positions;
    uint32_t value_scale;
    uint32_t flags;
} kdc_header;

void kdc_header_write(unsigned char out[KDC_HEADER_SIZE], const kdc_header *h);
/* Validates magic, CRC, version and every field's range; KD_OK or a reason. */
kd_status kdc_header_read(kd_context *ctx, const unsigned char *p, size_t size, kdc_header *h);

/* Bits per packed id for V classes (ceil(log2 V), at least 1). */
unsigned kdc_id_bits(uint64_t classes);

/* Longest record in bytes (varint length prefix included) for h. */
size_t kdc_max_record(const kdc_header *h);

/* Scratch for encoding one row: V doubles? No: k-sized arrays only. */
typedef struct kdc_encoder {
    kd_context *ctx;
    kdc_header h;
    int32_t *top;        /* k ids (heap, then sorted) */
    float *topv;         /* k logits */
    uint32_t *codes;     /* k value codes */
    uint32_t *gaps;      /* k id gaps */
    unsigned char *rec;  /* kdc_max_record bytes */
} kdc_encoder;

kd_status kdc_encoder_init(kd_context *ctx, kdc_encoder *e, const kdc_header *h);
void kdc_encoder_free(kdc_encoder *e);
/* Checks a row of V logits (KD_E_NUMERIC for NaN, +inf, all -inf). */
kd_status kdc_check_row(kd_context *ctx, const float *z, uint64_t classes, uint64_t position);
/* Encodes a checked row; returns the record length (with its varint prefix)
 * written to e->rec. */
size_t kdc_encode_row(kdc_encoder *e, const float *z);

/* Decodes the record at rec (payload bytes up to end) into k slots.
 * *used receives the bytes taken (varint + body). Returns 0 on success, or a
 * static reason. ids/values/tail may be NULL to validate only. */
const char *kdc_decode_record(const kdc_header *h, const unsigned char *rec, size_t avail,
                              size_t *used, int32_t *ids, float *values, float *tail);

/* Validates blocks from offset 64 of a file image, stopping at the first
 * damaged or incomplete block (partial files) or requiring exactly the
 * footer's blocks (finished files, strict != 0). *blocks / *positions /
 * *end receive what is intact. */
kd_status kdc_scan_blocks(kd_context *ctx, const kdc_header *h, const unsigned char *img,
                          size_t size, int strict, uint64_t expect_blocks, uint64_t *blocks,
                          uint64_t *positions, size_t *end, uint64_t *offsets);

#endif
