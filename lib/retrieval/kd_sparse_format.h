/*
 * kd_sparse_format.h - the sparse index image (in memory and on disk), and
 * internals shared by the retrieval sources. Never installed.
 *
 * File layout, all integers little-endian, version 1:
 *
 *   offset size  field
 *   0      8     magic "KDSPIDX\x01"
 *   8      4     version (1)
 *   12     4     header_size (232 = 64 + 7 * 24)
 *   16     4     section_count (7)
 *   20     4     quant_bits (1..8)
 *   24     8     n_docs (< 2^32 - 1)
 *   32     8     total_len: sum of BM25 document lengths
 *   40     4     quant_scale (IEEE float, > 0): weight per impact unit
 *   44     4     block_size (128)
 *   48     12    reserved, zero
 *   60     4     header CRC-32C of bytes [0, 60) and of the section table
 *   64     7*24  section table, entry i (id = i + 1):
 *                  u32 id, u32 crc32c of the section bytes, u64 offset, u64 size
 *   sections, each at an 8-byte aligned offset (zero padding between):
 *     1 DOCS    n_docs x {u32 doc_id, u32 len}, doc_id strictly ascending;
 *               internal doc number = position
 *     2 LTERMS  learned term dictionary, ascending term id, 24-byte records
 *               {u32 term, u32 df, u64 first_block, u32 max_val, u32 min_len}
 *     3 LBLOCKS block table, 24-byte records
 *               {u64 offset, u32 last_doc, u32 nbytes, u32 max_val, u32 min_len}
 *     4 LPOST   learned posting blocks (bytes)
 *     5 BTERMS, 6 BBLOCKS, 7 BPOST: the same for BM25 tokens
 *
 * A term's postings are ceil(df / 128) consecutive blocks starting at
 * first_block, 128 postings each except the last. Block data (at offset,
 * nbytes long, blocks stored back to back from offset 0):
 *   u8 width w (0..32), then the n doc-id gaps bit-packed LSB-first with w
 *   bits each: gap_0 = doc_0 - base, gap_i = doc_i - doc_{i-1} - 1, where
 *   base = previous block's last_doc + 1 (0 for a term's first block);
 *   learned: n impact bytes (1 .. 2^quant_bits - 1);
 *   BM25: u8 width w2, then n values (tf - 1) packed with w2 bits.
 * Block and term bounds: learned max_val = largest impact, min_len = 0;
 * BM25 max_val = largest tf, min_len = smallest dl among the block's docs.
 * The loader checks every one of these facts, so search trusts them.
 */
#ifndef KD_SPARSE_FORMAT_H
#define KD_SPARSE_FORMAT_H

#include "kd_internal.h"
#include "kd/kd_retrieval.h"

#define KD_SPX_MAGIC "KDSPIDX\x01"
#define KD_SPX_VERSION 1u
#define KD_SPX_NSECT 7u
#define KD_SPX_HEADER 64u
#define KD_SPX_HEADER_SIZE (KD_SPX_HEADER + KD_SPX_NSECT * 24u)
#define KD_SPX_BLOCK 128u
#define KD_SPX_END 0xFFFFFFFFu

enum { KD_SPX_DOCS = 0, KD_SPX_LTERMS, KD_SPX_LBLOCKS, KD_SPX_LPOST, KD_SPX_BTERMS,
       KD_SPX_BBLOCKS, KD_SPX_BPOST };

typedef struct kd__spx_doc {
    uint32_t ext_id;
    uint32_t len;
} kd__spx_doc;

typedef struct kd__spx_term {
    uint32_t term;
    uint32_t df;
    uint64_t first_block;
    uint32_t max_val;
    uint32_t min_len;
} kd__spx_term;

typedef struct kd__spx_block {
    uint64_t offset;
    uint32_t last_doc;
    uint32_t nbytes;
    uint32_t max_val;
    uint32_t min_len;
} kd__spx_block;

/* One posting field: 0 = learned impacts, 1 = BM25 term frequencies. */
typedef struct kd__spx_field {
    const kd__spx_term *terms;
    size_t nterms;
    const kd__spx_block *blocks;
    size_t nblocks;
    const unsigned char *post;
    size_t post_size;
    uint64_t npostings;
} kd__spx_field;

struct kd_sparse_index {
    kd_context *ctx;
    const unsigned char *image;
    size_t size;
    unsigned char *owned; /* heap image (built, or a copied misaligned buffer) */
#if !defined(KD_EMBEDDED)
    kd_mapped_file map;
#endif
    int mapped;
    uint32_t n_docs;
    uint64_t total_len;
    float scale;
    uint32_t quant_bits;
    const kd__spx_doc *docs;
    kd__spx_field f[2];
};

static inline uint32_t kd__spx_rd32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline uint64_t kd__spx_rd64(const unsigned char *p)
{
    return (uint64_t)kd__spx_rd32(p) | (uint64_t)kd__spx_rd32(p + 4) << 32;
}
static inline void kd__spx_wr32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16);
    p[3] = (unsigned char)(v >> 24);
}
static inline void kd__spx_wr64(unsigned char *p, uint64_t v)
{
    kd__spx_wr32(p, (uint32_t)v);
    kd__spx_wr32(p + 4, (uint32_t)(v >> 32));
}
static inline int kd__spx_little_endian(void)
{
    const uint16_t one = 1;
    unsigned char c;
    memcpy(&c, &one, 1);
    return c == 1;
}

/* Unpacks n values of w bits (LSB first) from p, reading exactly
 * ceil(n * w / 8) bytes. */
void kd__spx_unpack(const unsigned char *p, size_t n, unsigned w, uint32_t *out);

/* Validates an image and fills idx's views (idx->image/size set by caller).
 * Every structural fact of the format is checked. */
kd_status kd__spx_open_image(kd_context *ctx, kd_sparse_index *idx);

/* ---- search internals (kd_sparse_search.c) --------------------------- */

/* Per-thread scratch for searching: sized once, then reused without any
 * allocation or context access (so workers of a batch never touch ctx). */
typedef struct kd__spx_scratch kd__spx_scratch;

/* Allocates scratch for queries of at most nterms distinct terms + tokens
 * and at most k results. exhaustive: bit 0 (1) adds the per-document
 * accumulators of the exhaustive search; KD__SPX_SCRATCH_DOCTAB a
 * per-document BM25 table (8 bytes per document, filled by the first BM25
 * query and again when k1 or b change), which saves each posting the
 * length normalisation and, at tf 1, the division (for scratch reused
 * across many queries). */
#define KD__SPX_SCRATCH_DOCTAB 2
kd_status kd__spx_scratch_create(kd_context *ctx, const kd_sparse_index *idx, size_t nterms,
                                 size_t k, int exhaustive, kd__spx_scratch **out);
void kd__spx_scratch_destroy(kd_context *ctx, kd__spx_scratch *s);

/* Copies and validates a caller's search configuration (NULL = defaults). */
kd_status kd__spx_search_config(kd_context *ctx, const kd_sparse_search_config *in,
                                kd_sparse_search_config *out);

/* One query with validated cfg and scratch sized for it. Touches neither
 * ctx nor any shared mutable state; on failure *why is static text. */
kd_status kd__spx_search_core(const kd_sparse_index *idx, const kd_sparse_search_config *cfg,
                              kd__spx_scratch *s, const uint32_t *term_ids, const float *weights,
                              size_t nnz, const uint32_t *tokens, size_t ntokens, size_t k,
                              uint32_t *out_ids, float *out_scores, size_t *out_count,
                              const char **why);

#endif /* KD_SPARSE_FORMAT_H */
