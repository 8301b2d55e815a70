/*
 * kd_sparse_search.c - exact top-k over the sparse index: MaxScore (Turtle &
 * Flood 1995), Block-Max WAND (Ding & Suel 2011) and an exhaustive
 * term-at-a-time oracle.
 *
 * Exactness. All three compute a document's score with the same function
 * from the same inputs: the learned part is an integer sum (order-free), the
 * BM25 part a float sum of per-term values taken in ascending token order
 * (absent terms add +0.0f, which changes nothing). Pruning uses upper bounds
 * in double inflated by a relative slack far larger than float rounding, so
 * a document is skipped only when its exact score cannot beat the current
 * k-th result; the heap orders (score desc, doc id asc), so the top-k is
 * the same whatever order documents are offered in, and ties go to the
 * smaller doc id in every algorithm.
 *
 * Speed. Blocks are skipped through the block table without decoding; a
 * decoded block's doc gaps are unpacked eight at a time (AVX2 when the CPU
 * has it, else one unaligned 64-bit load per value), and its values
 * (impacts, term frequencies) only when a posting of the block is scored.
 * A BM25 value is w (tf (k1 + 1)) / (tf + norm_d) with w = qtf idf per
 * query term and norm_d = k1 (1 - b + b dl / avgdl) per document, taken
 * from a per-document table by searchers (kd_sparse_searcher). MaxScore
 * works on windows of documents (see run_maxscore); BMW keeps cursors
 * sorted incrementally, caches each cursor's shallow block bound and hands
 * over to MaxScore when its bounds stop skipping (SPX_BMW_CHECK); the
 * exhaustive oracle scores block by block into accumulators that it resets
 * only where it wrote.
 */
#include <math.h>
#include <stdlib.h>

#include "kd_sparse_format.h"

#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

typedef struct cursor {
    const kd__spx_field *f;
    const kd__spx_term *t;
    const kd__spx_block *blocks;
    const unsigned char *pend; /* end of the field's posting bytes */
    const unsigned char *vp;   /* values of the decoded block: learned impact
                                  bytes, or BM25 {u8 width, packed tf - 1} */
    int kind;         /* 0 learned, 1 BM25 */
    int vdec;         /* BM25: vals[] holds the decoded block's tf - 1 */
    uint32_t nb;      /* blocks in the list */
    uint32_t blk;     /* decoded block */
    uint32_t pos, n;  /* position in / size of the decoded block */
    uint32_t doc;     /* current doc or KD_SPX_END */
    uint32_t qq;      /* learned: quantised query weight */
    float idf, qtf;   /* BM25 */
    float w;          /* BM25: qtf * idf, the factor of every posting's value */
    uint32_t slot;    /* BM25: index in ascending token order */
    double ub;        /* weighted upper bound over the list */
    double ubk;       /* learned: weighted score per impact unit */
    double bk;        /* BM25: wbm qtf idf (k1 + 1), the factor of its bounds */
    /* shallow pointer (block-max bounds without decoding): block sblk covers
     * docs [s_first, s_last] and bounds them by s_bound; targets only grow */
    uint32_t sblk, s_first, s_last;
    double s_bound;
    uint32_t docs[KD_SPX_BLOCK];
    uint32_t vals[KD_SPX_BLOCK];
} cursor;

/* Per document, for given k1 and b: norm = k1 (1 - b + b dl / avgdl),
 * computed by the very function the search uses (doc_norm), so a value read
 * from the table is the value doc_norm would compute, bit for bit. */
typedef float dnorm;

typedef struct sparams {
    const kd__spx_doc *dtab;
    uint32_t ndocs;
    const dnorm *dn; /* [n_docs] or NULL: each norm is computed from dtab */
    double unit;  /* learned: score per integer unit (weight_sparse included) */
    float wbm;
    float k1, k1p1, b1, bavg;
    double dk1, db1, dbavg; /* the same in double, for bounds */
    double slack; /* 1 + relative slack */
} sparams;

typedef struct hent {
    float s;
    uint32_t d;
} hent;

typedef struct qpair {
    uint32_t id;
    float w;
} qpair;

struct kd__spx_scratch {
    size_t cap_terms, cap_k, cap_docs;
    uint32_t win;      /* largest MaxScore window (documents) */
    int64_t *wisum;    /* [win] */
    double *west;      /* [win] */
    uint64_t *wbits;   /* [win / 64] */
    uint64_t *wmask;   /* [win]: BM25 slots written per document (<= 64 slots) */
    float *wslot;      /* [max(16384, 64 x cap_terms)]: window x BM25 slots */
    cursor *cur;
    cursor **ps;
    uint32_t *order;
    double *cum;
    double *bcum;
    float *slots;
    qpair *qp;
    uint32_t *qt;
    hent *heap;
    /* exhaustive */
    int64_t *isum;
    float *bacc;
    uint8_t *seen;
    uint32_t *touched;
    /* per-document BM25 table (searchers only), valid for (dn_k1, dn_b) */
    dnorm *dn;
    size_t dn_docs;
    int dn_ok;
    float dn_k1, dn_b;
};

/* ---- configuration ---------------------------------------------------- */

void kd_sparse_search_config_default_sized(kd_sparse_search_config *out, size_t size)
{
    kd_sparse_search_config d, *cfg = &d;
    memset(cfg, 0, sizeof *cfg);
    cfg->struct_size = sizeof *cfg;
    cfg->algo = KD_SPARSE_MAXSCORE;
    cfg->weight_sparse = 1.0f;
    cfg->weight_bm25 = 1.0f;
    cfg->bm25_k1 = 0.9f;
    cfg->bm25_b = 0.4f;
    cfg->threads = 0;
    kd__default_out(out, size, cfg, sizeof *cfg);
}

kd_status kd__spx_search_config(kd_context *ctx, const kd_sparse_search_config *in,
                                kd_sparse_search_config *out)
{
    kd_sparse_search_config_default(out);
    if (in) {
        kd_status st = kd__config_copy(out, sizeof *out, in, in->struct_size, sizeof *out);
        if (st != KD_OK) return st;
    }
    if (out->algo != KD_SPARSE_MAXSCORE && out->algo != KD_SPARSE_BMW &&
        out->algo != KD_SPARSE_EXHAUSTIVE)
        return kd__fail(ctx, KD_E_INVALID, "sparse search: unknown algorithm %d", (int)out->algo);
    if (!isfinite(out->weight_sparse) || out->weight_sparse < 0.0f || !isfinite(out->weight_bm25) ||
        out->weight_bm25 < 0.0f)
        return kd__fail(ctx, KD_E_INVALID, "sparse search: weights must be finite and >= 0");
    if (!isfinite(out->bm25_k1) || out->bm25_k1 < 0.0f || !(out->bm25_b >= 0.0f && out->bm25_b <= 1.0f))
        return kd__fail(ctx, KD_E_INVALID, "sparse search: need k1 >= 0 and 0 <= b <= 1 (k1 %g, b %g)",
                        (double)out->bm25_k1, (double)out->bm25_b);
    if (out->threads < 0) return kd__fail(ctx, KD_E_INVALID, "sparse search: threads %d", out->threads);
    return KD_OK;
}

/* ---- scratch ---------------------------------------------------------- */

void kd__spx_scratch_destroy(kd_context *ctx, kd__spx_scratch *s)
{
    if (!s) return;
    kd__free(ctx, s->dn);
    kd__free(ctx, s->touched);
    kd__free(ctx, s->seen);
    kd__free(ctx, s->bacc);
    kd__free(ctx, s->isum);
    kd__free(ctx, s->heap);
    kd__free(ctx, s->qt);
    kd__free(ctx, s->qp);
    kd__free(ctx, s->slots);
    kd__free(ctx, s->wslot);
    kd__free(ctx, s->wbits);
    kd__free(ctx, s->wmask);
    kd__free(ctx, s->west);
    kd__free(ctx, s->wisum);
    kd__free(ctx, s->bcum);
    kd__free(ctx, s->cum);
    kd__free(ctx, s->order);
    kd__free(ctx, s->ps);
    kd__free(ctx, s->cur);
    kd__free(ctx, s);
}

kd_status kd__spx_scratch_create(kd_context *ctx, const kd_sparse_index *idx, size_t nterms,
                                 size_t k, int exhaustive, kd__spx_scratch **out)
{
    *out = NULL;
    kd__spx_scratch *s = (kd__spx_scratch *)kd__calloc(ctx, 1, sizeof *s);
    if (!s) return KD_E_NOMEM;
    size_t nt = nterms ? nterms : 1;
    if (k > idx->n_docs) k = idx->n_docs;
    size_t nk = k ? k : 1;
    s->cap_terms = nterms;
    s->cap_k = k;
    s->cur = (cursor *)kd__calloc(ctx, nt, sizeof *s->cur);
    s->ps = (cursor **)kd__calloc(ctx, nt, sizeof *s->ps);
    s->order = (uint32_t *)kd__calloc(ctx, nt, sizeof *s->order);
    s->cum = (double *)kd__calloc(ctx, nt, sizeof *s->cum);
    s->bcum = (double *)kd__calloc(ctx, nt, sizeof *s->bcum);
    s->slots = (float *)kd__calloc(ctx, nt, sizeof *s->slots);
    s->qp = (qpair *)kd__calloc(ctx, nt, sizeof *s->qp);
    s->qt = (uint32_t *)kd__calloc(ctx, nt, sizeof *s->qt);
    s->heap = (hent *)kd__calloc(ctx, nk, sizeof *s->heap);
    /* MaxScore window: up to 1024 documents (no more than the index has,
     * rounded up to 64); run_maxscore narrows it for queries with many BM25
     * slots so that the per-(document, slot) values stay within 64 KiB
     * (window_size). All of it is zeroed once here and left zeroed by every
     * search, so a reused scratch needs no clearing. */
    uint32_t win = 1024;
    while (win > 64 && win / 2 >= idx->n_docs) win /= 2;
    s->win = win;
    s->wisum = (int64_t *)kd__calloc(ctx, win, sizeof *s->wisum);
    s->west = (double *)kd__calloc(ctx, win, sizeof *s->west);
    s->wbits = (uint64_t *)kd__calloc(ctx, win / 64, sizeof *s->wbits);
    s->wmask = (uint64_t *)kd__calloc(ctx, win, sizeof *s->wmask);
    s->wslot = (float *)kd__calloc(ctx, nt > 256 ? 64 * nt : 16384, sizeof *s->wslot);
    int ok = s->wisum && s->west && s->wbits && s->wmask && s->wslot && s->cur && s->ps && s->order && s->cum && s->bcum && s->slots && s->qp && s->qt && s->heap;
    if (ok && (exhaustive & 1)) {
        size_t nd = idx->n_docs ? idx->n_docs : 1;
        s->cap_docs = idx->n_docs;
        s->isum = (int64_t *)kd__calloc(ctx, nd, sizeof *s->isum);
        s->bacc = (float *)kd__calloc(ctx, nd, sizeof *s->bacc);
        s->seen = (uint8_t *)kd__calloc(ctx, nd, sizeof *s->seen);
        s->touched = (uint32_t *)kd__calloc(ctx, nd, sizeof *s->touched);
        ok = s->isum && s->bacc && s->seen && s->touched;
    }
    if (ok && (exhaustive & KD__SPX_SCRATCH_DOCTAB) && idx->n_docs) {
        s->dn = (dnorm *)kd__calloc(ctx, idx->n_docs, sizeof *s->dn);
        s->dn_docs = idx->n_docs;
        ok = s->dn != NULL;
    }
    if (!ok) {
        kd__spx_scratch_destroy(ctx, s);
        return KD_E_NOMEM;
    }
    *out = s;
    return KD_OK;
}

/* ---- cursors ---------------------------------------------------------- */

/* Unpacks n values of w bits (LSB first) from p. When at least 8 bytes can be
 * read from the last byte used on (p + ceil(n w / 8) + 7 <= end), each value
 * is one unaligned 64-bit load and a shift; otherwise the bytewise decoder. */
#if defined(__GNUC__)
#define SPX_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define SPX_ALWAYS_INLINE inline
#endif
#if defined(__GNUC__)
#define SPX_NOINLINE __attribute__((noinline))
#else
#define SPX_NOINLINE
#endif
/* the eight values of a group are unrolled so that each load offset and
 * shift is a constant (GCC does not unroll these at -O2 by itself) */
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 8
#define SPX_UNROLL8 _Pragma("GCC unroll 8")
#elif defined(__clang__)
#define SPX_UNROLL8 _Pragma("unroll 8")
#else
#define SPX_UNROLL8
#endif

/* The 64-bit-load decoder for a width w the compiler knows: eight values
 * span exactly w bytes, so within a group of eight every load offset and
 * shift is a constant (one load, shift, mask and store per value). */
static SPX_ALWAYS_INLINE void unpack_w(const unsigned char *p, uint32_t n, const unsigned w,
                                       uint32_t *out)
{
    const uint64_t mask = w >= 32 ? 0xFFFFFFFFull : ((1ull << w) - 1);
    size_t i = 0;
    const unsigned char *q = p;
    for (; i + 8 <= n; i += 8, q += w, out += 8) {
        SPX_UNROLL8
        for (unsigned j = 0; j < 8; j++) {
            uint64_t x;
            memcpy(&x, q + ((j * w) >> 3), 8);
            out[j] = (uint32_t)((x >> ((j * w) & 7)) & mask);
        }
    }
    out -= i;
    size_t bit = i * w;
    for (; i < n; i++) {
        uint64_t x;
        memcpy(&x, p + (bit >> 3), 8);
        out[i] = (uint32_t)((x >> (bit & 7)) & mask);
        bit += w;
    }
}

/* The same with the doc-gap prefix sum fused in: out[i] = d after
 * d += gap_i + 1, from d = base - 1 (unsigned wrap-around intended). */
static SPX_ALWAYS_INLINE void unpack_gaps_w(const unsigned char *p, uint32_t n, const unsigned w,
                                            uint32_t base, uint32_t *out)
{
    const uint64_t mask = w >= 32 ? 0xFFFFFFFFull : ((1ull << w) - 1);
    uint32_t d = base - 1u;
    size_t i = 0;
    const unsigned char *q = p;
    for (; i + 8 <= n; i += 8, q += w, out += 8) {
        SPX_UNROLL8
        for (unsigned j = 0; j < 8; j++) {
            uint64_t x;
            memcpy(&x, q + ((j * w) >> 3), 8);
            d += (uint32_t)((x >> ((j * w) & 7)) & mask) + 1u;
            out[j] = d;
        }
    }
    out -= i;
    size_t bit = i * w;
    for (; i < n; i++) {
        uint64_t x;
        memcpy(&x, p + (bit >> 3), 8);
        d += (uint32_t)((x >> (bit & 7)) & mask) + 1u;
        out[i] = d;
        bit += w;
    }
}

/* AVX2 unpacking (x86-64 GCC or clang, hosted builds; chosen at run time):
 * eight values of w <= 16 bits per step, each lane picking its four bytes
 * with one shuffle of two 16-byte loads and shifting them into place with
 * a per-lane shift; the doc-gap variant adds the prefix sum (two in-lane
 * shifted adds, then the low half's total into the high half). Integer
 * only, so the results are those of the scalar decoders exactly. Reads up
 * to 16 bytes past the packed bytes of the last full group: callers check
 * that these are inside the buffer. */
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(KD_EMBEDDED)
#define SPX_AVX2 1
#include <immintrin.h>

#define SPX_AVX2_FN __attribute__((target("avx2")))

/* Unpacks groups x 8 values of w (1..16) bits from p; prefix: out[i] = d
 * after d += value + 1 from d = base - 1, else the values. */
static SPX_AVX2_FN void unpack8_avx2(const unsigned char *p, size_t groups, unsigned w, int prefix,
                                     uint32_t base, uint32_t *out)
{
    const int b4 = (int)((4 * w) >> 3); /* byte offset of the high half's load */
    __m256i bit = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32((int)w));
    bit = _mm256_sub_epi32(bit, _mm256_setr_epi32(0, 0, 0, 0, 8 * b4, 8 * b4, 8 * b4, 8 * b4));
    const __m256i ctl = _mm256_add_epi32(_mm256_mullo_epi32(_mm256_srli_epi32(bit, 3), _mm256_set1_epi32(0x01010101)),
                                         _mm256_set1_epi32(0x03020100));
    const __m256i sh = _mm256_and_si256(bit, _mm256_set1_epi32(7));
    const __m256i mask = _mm256_set1_epi32((int)((1u << w) - 1u));
    const __m256i one = _mm256_set1_epi32(1), i3 = _mm256_set1_epi32(3), i7 = _mm256_set1_epi32(7);
    __m256i carry = _mm256_set1_epi32((int)(base - 1u));
    for (size_t g = 0; g < groups; g++, p += w, out += 8) {
        __m128i a = _mm_loadu_si128((const __m128i *)(const void *)p);
        __m128i b = _mm_loadu_si128((const __m128i *)(const void *)(p + b4));
        __m256i x = _mm256_inserti128_si256(_mm256_castsi128_si256(a), b, 1);
        x = _mm256_and_si256(_mm256_srlv_epi32(_mm256_shuffle_epi8(x, ctl), sh), mask);
        if (prefix) {
            x = _mm256_add_epi32(x, one);
            x = _mm256_add_epi32(x, _mm256_slli_si256(x, 4));
            x = _mm256_add_epi32(x, _mm256_slli_si256(x, 8));
            __m256i lo = _mm256_permutevar8x32_epi32(x, i3);
            x = _mm256_add_epi32(x, _mm256_blend_epi32(_mm256_setzero_si256(), lo, 0xF0));
            x = _mm256_add_epi32(x, carry);
            carry = _mm256_permutevar8x32_epi32(x, i7);
        }
        _mm256_storeu_si256((__m256i *)(void *)out, x);
    }
}

/* 1 when unpack8_avx2 may decode n values of w bits at p (buffer end). */
static inline int use_avx2(const unsigned char *p, const unsigned char *end, uint32_t n, unsigned w,
                           size_t bytes)
{
    return w >= 1 && w <= 16 && n >= 8 && (size_t)(end - p) >= bytes + 16 &&
           __builtin_cpu_supports("avx2");
}
#endif

/* Doc ids of a block: gaps of w bits at p, the first relative to base. */
static void unpack_docs(const unsigned char *p, const unsigned char *end, uint32_t n, unsigned w,
                        uint32_t base, uint32_t *out)
{
    size_t bytes = ((size_t)n * w + 7) / 8;
    if (w == 0 || w > 32 || (size_t)(end - p) < bytes + 7) {
        kd__spx_unpack(p, n, w, out);
        uint32_t d = base - 1u;
        for (uint32_t i = 0; i < n; i++) {
            d += out[i] + 1u;
            out[i] = d;
        }
        return;
    }
#if defined(SPX_AVX2)
    if (use_avx2(p, end, n, w, bytes)) {
        size_t g = n / 8;
        unpack8_avx2(p, g, w, 1, base, out);
        uint32_t d = out[8 * g - 1];
        const uint64_t mask = (1ull << w) - 1;
        for (size_t i = 8 * g, bit = i * w; i < n; i++, bit += w) {
            uint64_t x;
            memcpy(&x, p + (bit >> 3), 8);
            d += (uint32_t)((x >> (bit & 7)) & mask) + 1u;
            out[i] = d;
        }
        return;
    }
#endif
    switch (w) {
#define SPX_W(W)                              \
    case W:                                   \
        unpack_gaps_w(p, n, W, base, out);    \
        return;
        SPX_W(1) SPX_W(2) SPX_W(3) SPX_W(4) SPX_W(5) SPX_W(6) SPX_W(7) SPX_W(8)
        SPX_W(9) SPX_W(10) SPX_W(11) SPX_W(12) SPX_W(13) SPX_W(14) SPX_W(15) SPX_W(16)
#undef SPX_W
    default:
        unpack_gaps_w(p, n, w, base, out);
        return;
    }
}

static inline void unpack_fast(const unsigned char *p, const unsigned char *end, uint32_t n,
                               unsigned w, uint32_t *out)
{
    size_t bytes = ((size_t)n * w + 7) / 8;
    if (w == 0 || w > 32 || (size_t)(end - p) < bytes + 7) {
        kd__spx_unpack(p, n, w, out);
        return;
    }
#if defined(SPX_AVX2)
    if (use_avx2(p, end, n, w, bytes)) {
        size_t g = n / 8;
        unpack8_avx2(p, g, w, 0, 0, out);
        const uint64_t mask = (1ull << w) - 1;
        for (size_t i = 8 * g, bit = i * w; i < n; i++, bit += w) {
            uint64_t x;
            memcpy(&x, p + (bit >> 3), 8);
            out[i] = (uint32_t)((x >> (bit & 7)) & mask);
        }
        return;
    }
#endif
    switch (w) {
#define SPX_W(W)                     \
    case W:                          \
        unpack_w(p, n, W, out);      \
        return;
        SPX_W(1) SPX_W(2) SPX_W(3) SPX_W(4) SPX_W(5) SPX_W(6) SPX_W(7) SPX_W(8)
        SPX_W(9) SPX_W(10) SPX_W(11) SPX_W(12) SPX_W(13) SPX_W(14) SPX_W(15) SPX_W(16)
#undef SPX_W
    default:
        unpack_w(p, n, w, out);
        return;
    }
}

/* Decodes block j's doc ids; values stay packed until asked for. */
static void cur_decode(cursor *c, uint32_t j)
{
    const kd__spx_block *bk = &c->blocks[j];
    uint32_t n = j + 1 < c->nb ? KD_SPX_BLOCK : c->t->df - (c->nb - 1) * KD_SPX_BLOCK;
    const unsigned char *p = c->f->post + bk->offset;
    unsigned w = p[0];
    uint32_t *docs = c->docs;
    unpack_docs(p + 1, c->pend, n, w, j ? c->blocks[j - 1].last_doc + 1 : 0, docs);
    c->vp = p + 1 + ((size_t)n * w + 7) / 8;
    c->vdec = 0;
    c->blk = j;
    c->n = n;
    c->pos = 0;
    c->doc = docs[0];
}

/* BM25: unpacks the decoded block's term frequencies (tf - 1) into vals[]
 * for loops that score every posting of a block. */
static inline void cur_vals(cursor *c)
{
    if (!c->vdec) {
        unpack_fast(c->vp + 1, c->pend, c->n, c->vp[0], c->vals);
        c->vdec = 1;
    }
}

/* Value (impact or tf) at the cursor's position. Unless the block's term
 * frequencies were unpacked (cur_vals), one is read in place: they are
 * fixed-width fields, so that is one unaligned load (the index is
 * little-endian only, see kd__spx_open_image), where a probe would
 * otherwise unpack 128 values to use one. */
static inline uint32_t cur_val(const cursor *c)
{
    if (c->kind == 0) return c->vp[c->pos];
    if (c->vdec) return c->vals[c->pos] + 1;
    unsigned w = c->vp[0];
    if (w == 0) return 1;
    size_t bit = (size_t)c->pos * w;
    const unsigned char *q = c->vp + 1 + (bit >> 3);
    uint64_t x = 0;
    if (c->pend - q >= 8) {
        memcpy(&x, q, 8);
    } else {
        for (size_t i = 0; q + i < c->pend; i++) x |= (uint64_t)q[i] << (8 * i);
    }
    uint64_t mask = w >= 32 ? 0xFFFFFFFFull : ((1ull << w) - 1);
    return (uint32_t)((x >> (bit & 7)) & mask) + 1;
}

static inline void cur_next(cursor *c)
{
    if (c->doc == KD_SPX_END) return;
    if (++c->pos < c->n) c->doc = c->docs[c->pos];
    else if (c->blk + 1 < c->nb) cur_decode(c, c->blk + 1);
    else c->doc = KD_SPX_END;
}

/* First block index >= from whose last_doc >= target (nb when none). */
static uint32_t find_block(const cursor *c, uint32_t from, uint32_t target)
{
    uint32_t j = from;
    /* gallop, then binary search */
    uint32_t step = 1;
    while (j < c->nb && c->blocks[j].last_doc < target) {
        uint32_t nj = j + step;
        if (nj >= c->nb || c->blocks[nj].last_doc >= target) {
            uint32_t lo = j + 1, hi = nj < c->nb ? nj : c->nb;
            while (lo < hi) {
                uint32_t mid = lo + (hi - lo) / 2;
                if (c->blocks[mid].last_doc < target) lo = mid + 1;
                else hi = mid;
            }
            return lo;
        }
        j = nj;
        step *= 2;
    }
    return j;
}

static inline void cur_next_geq(cursor *c, uint32_t target)
{
    if (c->doc >= target) return;
    if (c->blocks[c->blk].last_doc < target) {
        uint32_t from = c->sblk > c->blk && c->s_first <= target ? c->sblk : c->blk + 1;
        uint32_t j = find_block(c, from, target);
        if (j >= c->nb) {
            c->doc = KD_SPX_END;
            return;
        }
        cur_decode(c, j);
    }
    /* first doc >= target in the block (its last one is; those before pos
     * are below c->doc, so the whole block can be searched): a branch-free
     * binary search of a fixed number of steps for full blocks, where a
     * scan from pos ends at an unpredictable point */
    const uint32_t *p = c->docs;
    size_t len = c->n;
    while (len > 1) {
        size_t half = len / 2;
        p += half & ((size_t)0 - (size_t)(p[half - 1] < target));
        len -= half;
    }
    c->pos = (uint32_t)(p - c->docs);
    c->doc = *p;
}

/* BM25 length normalisation of a document of dl tokens. */
static inline float doc_norm(const sparams *sp, uint32_t dl)
{
    float norm = sp->bavg * (float)dl;
    norm = sp->b1 + norm;
    return sp->k1 * norm;
}

/* BM25 term factor tf (k1 + 1) / (tf + norm). */
static inline float bm25_tf(float k1p1, uint32_t tf, float norm)
{
    float t = (float)tf;
    float num = t * k1p1;
    float den = t + norm;
    return num / den;
}

/* BM25 value of one posting (term weight w = qtf * idf, document d). Every
 * path calls this function. (A table of the tf-1 values per document, to
 * save most postings the division, was measured: fewer instructions, but
 * no faster, the tf == 1 branch being unpredictable.) */
static inline float bm25_value(const sparams *sp, float w, uint32_t tf, uint32_t d)
{
    float norm = sp->dn ? sp->dn[d] : doc_norm(sp, sp->dtab[d].len);
    return w * bm25_tf(sp->k1p1, tf, norm);
}

/* Upper bound of c's weighted BM25 values over postings with tf <= maxtf in
 * documents of at least minlen tokens, in double; c->bk = wbm qtf idf
 * (k1 + 1) (set by the query preparation). */
static double bm25_bound(const sparams *sp, const cursor *c, uint32_t maxtf, uint32_t minlen)
{
    double t = (double)maxtf;
    double den = t + sp->dk1 * (sp->db1 + sp->dbavg * (double)minlen);
    return c->bk * t / den;
}

static inline double bound_of(const sparams *sp, const cursor *c, uint32_t max_val, uint32_t min_len)
{
    if (c->kind == 0) return c->ubk * (double)max_val;
    return bm25_bound(sp, c, max_val, min_len);
}

/* Block-max bound of c's postings at target (>= c->doc), from the block
 * table only; 0 when the list ends before target. Targets passed to one
 * cursor never decrease, so the shallow pointer only moves forward and the
 * bound of the current shallow block is reused while target stays in it. */
static inline double shallow_bound(const sparams *sp, cursor *c, uint32_t target)
{
    if (target <= c->s_last && target >= c->s_first) return c->s_bound;
    uint32_t j = c->sblk > c->blk && c->s_first <= target ? c->sblk : c->blk;
    j = find_block(c, j, target);
    c->sblk = j;
    if (j >= c->nb) {
        c->s_first = j ? c->blocks[j - 1].last_doc + 1 : 0;
        c->s_last = KD_SPX_END;
        c->s_bound = 0.0;
        return 0.0;
    }
    c->s_first = j ? c->blocks[j - 1].last_doc + 1 : 0;
    c->s_last = c->blocks[j].last_doc;
    c->s_bound = bound_of(sp, c, c->blocks[j].max_val, c->blocks[j].min_len);
    return c->s_bound;
}

/* ---- scoring and heap ------------------------------------------------- */

static float final_score(const sparams *sp, int64_t isum, float bm)
{
    float ls = (float)((double)isum * sp->unit);
    float bs = sp->wbm * bm;
    return ls + bs;
}

/* Adds cursor c's posting at its current doc to (isum, slots); BM25 slot i
 * is slots[i * stride]. Returns the double estimate of the weighted
 * contribution for pruning. */
static inline double add_posting(const sparams *sp, cursor *c, int64_t *isum, float *slots,
                                 size_t stride)
{
    uint32_t v = cur_val(c);
    if (c->kind == 0) {
        int64_t x = (int64_t)c->qq * (int64_t)v;
        *isum += x;
        return sp->unit * (double)x;
    }
    float x = bm25_value(sp, c->w, v, c->doc);
    slots[c->slot * stride] = x;
    return (double)sp->wbm * (double)x;
}

/* Sums slots[0..n) in ascending order and zeroes them in the same pass (a
 * separate clearing loop becomes a memset call per document). */
static inline float take_slots(float *slots, size_t n)
{
    float b = 0.0f;
    for (size_t i = 0; i < n; i++) {
        b = b + slots[i];
        slots[i] = 0.0f;
    }
    return b;
}

/* The same for slots i * stride. */
static inline float take_slots_strided(float *slots, size_t n, size_t stride)
{
    float b = 0.0f;
    for (size_t i = 0; i < n; i++) {
        b = b + slots[i * stride];
        slots[i * stride] = 0.0f;
    }
    return b;
}

static inline int worse(hent a, hent b) { return a.s < b.s || (a.s == b.s && a.d > b.d); }

typedef struct heap {
    hent *h;
    size_t n, cap;
} heap;

static void heap_down(heap *hp, size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < hp->n && worse(hp->h[l], hp->h[m])) m = l;
        if (r < hp->n && worse(hp->h[r], hp->h[m])) m = r;
        if (m == i) return;
        hent t = hp->h[i];
        hp->h[i] = hp->h[m];
        hp->h[m] = t;
        i = m;
    }
}

/* Offers e; returns 1 when the threshold (k-th score) may have changed. */
static int heap_offer(heap *hp, hent e)
{
    if (hp->n < hp->cap) {
        size_t i = hp->n++;
        hp->h[i] = e;
        while (i > 0) {
            size_t p = (i - 1) / 2;
            if (!worse(hp->h[i], hp->h[p])) break;
            hent t = hp->h[i];
            hp->h[i] = hp->h[p];
            hp->h[p] = t;
            i = p;
        }
        return hp->n == hp->cap;
    }
    if (!worse(hp->h[0], e)) return 0;
    hp->h[0] = e;
    heap_down(hp, 0);
    return 1;
}

static float heap_thr(const heap *hp) { return hp->n == hp->cap ? hp->h[0].s : -INFINITY; }

static int better_first(const void *a, const void *b)
{
    hent x = *(const hent *)a, y = *(const hent *)b;
    if (worse(y, x)) return -1;
    if (worse(x, y)) return 1;
    return 0;
}

/* ---- algorithms ------------------------------------------------------- */

/* Largest block bound of c's postings in [lo, hi) (c->doc < hi), from the
 * block table only. */
static double window_bound(const sparams *sp, const cursor *c, uint32_t lo, uint32_t hi)
{
    uint32_t j = c->blk;
    if (c->blocks[j].last_doc < lo) j = find_block(c, j, lo);
    uint32_t mv = 0, ml = UINT32_MAX;
    for (; j < c->nb; j++) {
        const kd__spx_block *bk = &c->blocks[j];
        if (bk->max_val > mv) mv = bk->max_val;
        if (bk->min_len < ml) ml = bk->min_len;
        if (bk->last_doc >= hi - 1) break;
    }
    return mv ? bound_of(sp, c, mv, ml) : 0.0;
}

/* Largest block bound of c's postings in [a, z] from c->doc on (block
 * table only); 0 when c has none there. Moves the shallow pointer to z's
 * block: calls to one cursor must come with non-decreasing a. */
static double range_bound(const sparams *sp, cursor *c, uint32_t a, uint32_t z)
{
    if (c->doc > z) return 0.0;
    double b = shallow_bound(sp, c, a > c->doc ? a : c->doc);
    while (c->s_last < z) {
        double x = shallow_bound(sp, c, c->s_last + 1);
        if (x > b) b = x;
    }
    return b;
}

/* Scores the BM25 postings of c's decoded block from c->pos on that are
 * below hi into the window [lo, hi): the value to col[doc - lo] (the
 * column of c's slot), its double estimate added to west, the document's
 * bit set in wbits and the slot's bit in wmask (when not NULL). Returns the
 * position of the first posting not scored (c->n when none is left). The
 * loop works on locals only: written inline in run_maxscore, its stores
 * through float pointers made the compiler reload the cursor's fields for
 * every posting. */
static uint32_t window_bm25(const sparams *sp, cursor *c, uint32_t lo, uint32_t hi,
                            uint64_t *restrict wbits, uint64_t *restrict wmask,
                            float *restrict col, double *restrict west)
{
    cur_vals(c);
    const uint32_t *docs = c->docs, *vals = c->vals;
    uint32_t pos = c->pos;
    const uint32_t cn = c->n;
    const float w = c->w, k1p1 = sp->k1p1;
    const double wbm = (double)sp->wbm;
    const dnorm *dn = sp->dn;
    if (dn && wmask) {
        const uint64_t sbit = 1ull << c->slot;
        for (; pos < cn; pos++) {
            uint32_t d = docs[pos];
            if (d >= hi) break;
            uint32_t o = d - lo;
            uint32_t tf = vals[pos] + 1;
            /* = bm25_value(sp, w, tf, d) */
            float x = w * bm25_tf(k1p1, tf, dn[d]);
            wbits[o >> 6] |= 1ull << (o & 63);
            wmask[o] |= sbit;
            col[o] = x;
            west[o] += wbm * (double)x;
        }
        return pos;
    }
    for (; pos < cn; pos++) {
        uint32_t d = docs[pos];
        if (d >= hi) break;
        uint32_t o = d - lo;
        float x = bm25_value(sp, w, vals[pos] + 1, d);
        wbits[o >> 6] |= 1ull << (o & 63);
        if (wmask) wmask[o] |= 1ull << c->slot;
        col[o] = x;
        west[o] += wbm * (double)x;
    }
    return pos;
}

/* The candidates of MaxScore's window [lo, hi) (documents set in wbits),
 * in ascending doc order: bounds of the probed lists lord[0, fw), probes,
 * scores offered to the heap; *dthr_io and *fe_io follow the threshold.
 * Leaves the window's accumulators zeroed (rows excepted, see wmask).
 * has_mask: wmask is not NULL. Called through the out-of-line functions
 * below (inside run_maxscore its loop ran short of registers). */
static SPX_ALWAYS_INLINE void window_candidates_body(const sparams *sp, kd__spx_scratch *s, size_t n,
                                                     heap *hp, size_t nslots, uint32_t W, uint32_t lo,
                                                     uint32_t hi, const uint32_t *lord, size_t fw,
                                                     double wne, int learned, uint64_t *wmask,
                                                     double *dthr_io, size_t *fe_io, const int has_mask)
{
    cursor *cur = s->cur;
    uint64_t *wbits = s->wbits;
    double *west = s->west;
    float *wsl = s->wslot;
    int64_t *wis = s->wisum;
    double *bcum = s->bcum;
    double dthr = *dthr_io;
    size_t fe = *fe_io;
    uint32_t nw = (hi - lo + 63) / 64;
    for (uint32_t wi = 0; wi < nw; wi++) {
        uint64_t bits = wbits[wi];
        if (!bits) continue;
        wbits[wi] = 0;
        /* bound of the non-essential lists: the window's (wne) until a
         * candidate of this 64-document group passes it, then the
         * group's block bounds (bcum, computed once per group) */
        double gne = wne;
        int gready = 0;
        while (bits) {
            uint32_t o = wi * 64 + (uint32_t)__builtin_ctzll(bits);
            bits &= bits - 1;
            uint32_t d = lo + o;
            double part = west[o];
            west[o] = 0.0;
            float *row = wsl + o; /* slot i at row[i * W] */
            if (fw > 0) {
                int out = part + gne <= dthr;
                if (!out && !gready) {
                    uint32_t ga = lo + wi * 64, gz = ga + 63 < hi - 1 ? ga + 63 : hi - 1;
                    double b = 0.0;
                    for (size_t i = 0; i < fw; i++) {
                        b += range_bound(sp, &cur[lord[i]], ga, gz);
                        bcum[i] = b;
                    }
                    gne = b;
                    gready = 1;
                    out = part + gne <= dthr;
                }
                if (out) {
                    /* the common case: out before anything is read */
                    if (has_mask) wmask[o] = 0;
                    else (void)take_slots_strided(row, nslots, W);
                    if (learned) wis[o] = 0;
                    continue;
                }
            }
            int64_t isum = 0;
            if (learned) {
                isum = wis[o];
                wis[o] = 0;
            }
            int pruned = 0;
            if (fw > 0) {
                for (size_t i = fw; i-- > 0;) {
                    if (part + bcum[i] <= dthr) {
                        pruned = 1;
                        break;
                    }
                    cursor *c = &cur[lord[i]];
                    cur_next_geq(c, d);
                    if (c->doc == d) {
                        part += add_posting(sp, c, &isum, row, W);
                        if (has_mask && c->kind) wmask[o] |= 1ull << c->slot;
                    }
                }
            } else if (part <= dthr) {
                pruned = 1;
            }
            /* with wmask, rows are not cleared: only the slots of
             * wmask[o] are ever read, and each was written first */
            float bsum = 0.0f;
            if (has_mask) {
                uint64_t m = wmask[o];
                wmask[o] = 0;
                if (!pruned)
                    while (m) {
                        unsigned i = (unsigned)__builtin_ctzll(m);
                        m &= m - 1;
                        bsum = bsum + row[(size_t)i * W];
                    }
            } else {
                bsum = take_slots_strided(row, nslots, W);
            }
            if (!pruned) {
                hent e = {final_score(sp, isum, bsum), d};
                if (heap_offer(hp, e)) {
                    dthr = (double)heap_thr(hp) / sp->slack;
                    while (fe < n && s->cum[fe] <= dthr) fe++;
                }
            }
        }
    }
    *dthr_io = dthr;
    *fe_io = fe;
}

/* window_candidates_body for the common case (BM25 only, <= 64 slots) with
 * its tests folded away, and for any other. */
static SPX_NOINLINE void window_candidates_bm25(const sparams *sp, kd__spx_scratch *s, size_t n,
                                                heap *hp, size_t nslots, uint32_t W, uint32_t lo,
                                                uint32_t hi, const uint32_t *lord, size_t fw,
                                                double wne, double *dthr_io, size_t *fe_io)
{
    window_candidates_body(sp, s, n, hp, nslots, W, lo, hi, lord, fw, wne, 0, s->wmask, dthr_io, fe_io, 1);
}

static SPX_NOINLINE void window_candidates(const sparams *sp, kd__spx_scratch *s, size_t n, heap *hp,
                                           size_t nslots, uint32_t W, uint32_t lo, uint32_t hi,
                                           const uint32_t *lord, size_t fw, double wne, int learned,
                                           uint64_t *wmask, double *dthr_io, size_t *fe_io)
{
    window_candidates_body(sp, s, n, hp, nslots, W, lo, hi, lord, fw, wne, learned, wmask, dthr_io, fe_io,
                           wmask != NULL);
}

/* MaxScore over doc windows (as Lucene's MaxScoreBulkScorer does): lists are
 * sorted by upper bound; those whose bounds together cannot reach the
 * threshold are non-essential. Essential lists are scored term at a time into
 * small accumulators covering a window of s->win documents (cache resident,
 * no per-document merge over cursors); then each document of the window that
 * any essential list matched, in ascending order, is tested against the
 * non-essential lists' window bounds, then against their block-max bounds
 * over its group of 64 documents (block table only, nothing decoded,
 * computed once per group), and unless that is already below the threshold,
 * probes them from the largest bound down while the remaining bounds could
 * still lift it over (window_candidates). BM25 values are kept per
 * (document, slot) so the final float sum is taken in ascending slot order
 * exactly as every other path does.
 *
 * Also runs the rest of a BMW search (run_bmw): cursors may then stand past
 * documents that BMW proved cannot enter; scoring such a document from the
 * lists still at it gives a value <= its full score < the threshold (float
 * sums of non-negative terms are monotone), which the heap rejects; every
 * document BMW offered is below every cursor, so none is offered twice. */
static void run_maxscore(const sparams *sp, kd__spx_scratch *s, size_t n, heap *hp, size_t nslots)
{
    cursor *cur = s->cur;
    uint32_t *ord = s->order;
    for (size_t i = 0; i < n; i++) ord[i] = (uint32_t)i;
    for (size_t i = 1; i < n; i++) { /* ascending upper bound */
        uint32_t x = ord[i];
        size_t j = i;
        while (j > 0 && cur[ord[j - 1]].ub > cur[x].ub) {
            ord[j] = ord[j - 1];
            j--;
        }
        ord[j] = x;
    }
    double acc = 0.0;
    for (size_t i = 0; i < n; i++) {
        acc += cur[ord[i]].ub;
        s->cum[i] = acc;
    }
    /* k-th score / slack: prune when bound <= dthr (a heap filled by BMW
     * before it handed over sets it from the start) */
    double dthr = hp->n == hp->cap ? (double)heap_thr(hp) / sp->slack : -INFINITY;
    size_t fe = 0; /* first essential list in ord */
    while (fe < n && s->cum[fe] <= dthr) fe++;
    if (fe == n) return;
    uint32_t W = s->win; /* window: W x nslots <= 16384 floats (or W = 64) */
    while (W > 64 && (size_t)W * nslots > 16384) W /= 2;
    int64_t *wis = s->wisum;
    double *west = s->west;
    uint64_t *wbits = s->wbits;
    float *wsl = s->wslot; /* nslots x W: slot i of window document o at i * W + o */
    /* with at most 64 slots, a per-document mask of the slots written lets
     * the sum (and the clearing) visit only those: absent slots hold +0.0f,
     * and skipping them leaves every float sum bit-identical */
    uint64_t *wmask = nslots <= 64 ? s->wmask : NULL;
    /* rows of the window are left uncleared by queries with wmask; a query
     * without reads (and clears) every slot of a row, so it starts from
     * zeros */
    if (!wmask) memset(wsl, 0, (size_t)W * nslots * sizeof *wsl);
    int learned = 0; /* any learned list: else wis stays zero untouched */
    for (size_t i = 0; i < n; i++) learned |= cur[i].kind == 0;
    uint32_t done = 0; /* documents below this were scored in earlier windows */
    for (;;) {
        uint32_t lo = KD_SPX_END;
        for (size_t i = fe; i < n; i++)
            if (cur[ord[i]].doc < lo) lo = cur[ord[i]].doc;
        if (lo == KD_SPX_END) break;
        if (lo < done) lo = done; /* a list probed only in the last window lags */
        uint32_t hi = lo + W < lo || lo + W > KD_SPX_END ? KD_SPX_END : lo + W;
        done = hi;
        /* window bounds: the largest block maximum of each list over
         * [lo, hi), from the block tables only. (A partition of the lists
         * per window by these bounds, as Lucene's MaxScoreBulkScorer does,
         * was measured: 1.2% more instructions on the Debian BM25 queries,
         * so the global partition by whole-list bounds stays.) */
        const uint32_t *lord = ord;
        const size_t fw = fe; /* lists lord[0, fw) are probed in this window */
        double wne = 0.0, wall = 0.0;
        if (dthr > -INFINITY) {
            for (size_t i = 0; i < n; i++) {
                cursor *c = &cur[ord[i]];
                double b = c->doc < hi ? window_bound(sp, c, lo, hi) : 0.0;
                if (i < fw) wne += b;
                wall += b;
            }
            if (wall <= dthr) { /* nothing in the window can enter: skip it */
                for (size_t i = fw; i < n; i++) cur_next_geq(&cur[ord[i]], hi);
                continue;
            }
        }
        /* essential lists, term at a time into the window */
        for (size_t i = fw; i < n; i++) {
            cursor *c = &cur[lord[i]];
            if (c->doc < lo) cur_next_geq(c, lo);
            while (c->doc < hi) {
                const uint32_t *docs = c->docs;
                uint32_t pos = c->pos, cn = c->n;
                if (c->kind == 0) {
                    const unsigned char *vp = c->vp;
                    const int64_t qq = c->qq;
                    const double ubk = c->ubk;
                    for (; pos < cn && docs[pos] < hi; pos++) {
                        uint32_t o = docs[pos] - lo;
                        int64_t x = qq * (int64_t)vp[pos];
                        wbits[o >> 6] |= 1ull << (o & 63);
                        wis[o] += x;
                        west[o] += ubk * (double)vp[pos];
                    }
                } else {
                    pos = window_bm25(sp, c, lo, hi, wbits, wmask, wsl + (size_t)c->slot * W, west);
                }
                if (pos < cn) {
                    c->pos = pos;
                    c->doc = docs[pos];
                } else if (c->blk + 1 < c->nb) {
                    cur_decode(c, c->blk + 1);
                } else {
                    c->pos = cn;
                    c->doc = KD_SPX_END;
                }
            }
        }
        if (wmask && !learned)
            window_candidates_bm25(sp, s, n, hp, nslots, W, lo, hi, lord, fw, wne, &dthr, &fe);
        else
            window_candidates(sp, s, n, hp, nslots, W, lo, hi, lord, fw, wne, learned, wmask, &dthr, &fe);
        if (fe == n) break;
    }
}

/* Moves ps[i] (whose doc grew) to its place in doc order. */
static inline void resort_one(cursor **ps, size_t n, size_t i)
{
    cursor *x = ps[i];
    while (i + 1 < n && ps[i + 1]->doc < x->doc) {
        ps[i] = ps[i + 1];
        i++;
    }
    ps[i] = x;
}

static void sort_by_doc(cursor **ps, size_t n)
{
    for (size_t i = 1; i < n; i++) {
        cursor *x = ps[i];
        size_t j = i;
        while (j > 0 && ps[j - 1]->doc > x->doc) {
            ps[j] = ps[j - 1];
            j--;
        }
        ps[j] = x;
    }
}

static void run_maxscore(const sparams *sp, kd__spx_scratch *s, size_t n, heap *hp, size_t nslots);

/* BMW's check that pruning pays: every SPX_BMW_CHECK pivot selections,
 * run_bmw compares its work since the last check, taken as n per pivot
 * selection (each scans and bounds the cursors up to the pivot, and a
 * scored document moves and re-sorts several), with the postings the lists
 * hold over the documents it got past in that time, estimated from their
 * document frequencies (sum df x span / n_docs): about what MaxScore's
 * window accumulation would read at most. When the first is the larger,
 * bounds are not skipping enough for document-at-a-time evaluation to pay
 * (frequent terms whose blocks all hold high impacts leave BMW stopping at
 * nearly every document: on learned-weight queries of Zipf-drawn terms it
 * was 8-12x slower than the exhaustive search; so is a heap that never
 * fills, k >= the matching documents), and run_bmw hands the rest of the
 * search to run_maxscore, from where its cursors stand and with its heap.
 * The result is the same top-k either way (tests/test_retrieval_index.c,
 * dense_head_terms). */
#define SPX_BMW_CHECK 1024u

/* Block-Max WAND. Cursors stay sorted by doc: only moved cursors are
 * re-inserted. Shallow block bounds are cached per cursor. Invariant at the
 * top of the loop: every document below the first cursor's was offered or
 * shown unable to enter, and none at or above it was offered. Returns 1
 * when it handed over to run_maxscore (see SPX_BMW_CHECK). */
static int run_bmw(const sparams *sp, kd__spx_scratch *s, size_t n, heap *hp, size_t nslots)
{
    cursor **ps = s->ps;
    for (size_t i = 0; i < n; i++) ps[i] = &s->cur[i];
    sort_by_doc(ps, n);
    float thr = -INFINITY;
    double dthr = -INFINITY;
    float *slots = s->slots;
    for (size_t i = 0; i < nslots; i++) slots[i] = 0.0f;
    double dfsum = 0.0; /* postings of all lists */
    for (size_t i = 0; i < n; i++) dfsum += (double)s->cur[i].t->df;
    uint32_t chk_it = 0, chk_doc = ps[0]->doc; /* pivot selections since the check, first doc then */
    for (;;) {
        if (++chk_it >= SPX_BMW_CHECK && ps[0]->doc != KD_SPX_END) {
            double span = (double)(ps[0]->doc - chk_doc);
            double postings = dfsum * span / (double)(sp->ndocs ? sp->ndocs : 1);
            if ((double)chk_it * (double)n > postings) {
                run_maxscore(sp, s, n, hp, nslots);
                return 1;
            }
            chk_it = 0;
            chk_doc = ps[0]->doc;
        }
        double acc = 0.0;
        size_t p = n;
        for (size_t i = 0; i < n; i++) {
            if (ps[i]->doc == KD_SPX_END) break;
            acc += ps[i]->ub;
            if (acc > dthr) {
                p = i;
                break;
            }
        }
        if (p == n) break;
        uint32_t pd = ps[p]->doc;
        while (p + 1 < n && ps[p + 1]->doc == pd) p++;
        double bs = 0.0;
        for (size_t i = 0; i <= p; i++) bs += shallow_bound(sp, ps[i], pd);
        if (bs > dthr) {
            if (ps[0]->doc == pd) {
                int64_t isum = 0;
                for (size_t i = 0; i <= p; i++) add_posting(sp, ps[i], &isum, slots, 1);
                hent e = {final_score(sp, isum, take_slots(slots, nslots)), pd};
                if (heap_offer(hp, e)) {
                    thr = heap_thr(hp);
                    dthr = (double)thr / sp->slack;
                }
                for (size_t i = 0; i <= p; i++) cur_next(ps[i]);
                sort_by_doc(ps, n);
            } else {
                /* move the list before the pivot with the largest bound */
                size_t best = 0;
                for (size_t i = 1; i < p; i++)
                    if (ps[i]->doc < pd && ps[i]->ub > ps[best]->ub) best = i;
                cur_next_geq(ps[best], pd);
                resort_one(ps, n, best);
            }
        } else {
            /* no document before the end of the shallowest block can win */
            uint32_t dn = KD_SPX_END;
            for (size_t i = 0; i <= p; i++) {
                uint32_t last = ps[i]->s_last;
                if (last != KD_SPX_END && last + 1 < dn) dn = last + 1;
            }
            if (p + 1 < n && ps[p + 1]->doc < dn) dn = ps[p + 1]->doc;
            if (dn <= pd) dn = pd + 1; /* cannot happen; keeps progress certain */
            size_t best = 0;
            for (size_t i = 1; i <= p; i++)
                if (ps[i]->ub > ps[best]->ub) best = i;
            cur_next_geq(ps[best], dn);
            resort_one(ps, n, best);
        }
    }
    return 0;
}

/* Term at a time over every posting, block by block. Accumulators are zero
 * on entry and reset (touched entries only) before returning. */
static size_t run_exhaustive(const sparams *sp, kd__spx_scratch *s, size_t n, heap *hp)
{
    size_t nt = 0;
    int64_t *isum = s->isum;
    float *bacc = s->bacc;
    uint8_t *seen = s->seen;
    uint32_t *touched = s->touched;
    /* cursors: learned first, then BM25 in ascending slot order */
    for (size_t i = 0; i < n; i++) {
        cursor *c = &s->cur[i];
        for (;;) {
            if (c->kind) cur_vals(c);
            for (uint32_t j = 0; j < c->n; j++) {
                uint32_t d = c->docs[j];
                if (!seen[d]) {
                    seen[d] = 1;
                    touched[nt++] = d;
                }
                c->pos = j;
                c->doc = d;
                if (c->kind == 0) {
                    isum[d] += (int64_t)c->qq * (int64_t)c->vp[j];
                } else {
                    float x = bm25_value(sp, c->w, c->vals[j] + 1, d);
                    bacc[d] = bacc[d] + x;
                }
            }
            if (c->blk + 1 >= c->nb) break;
            cur_decode(c, c->blk + 1);
        }
        c->doc = KD_SPX_END;
    }
    for (size_t i = 0; i < nt; i++) {
        uint32_t d = touched[i];
        hent e = {final_score(sp, isum[d], bacc[d]), d};
        heap_offer(hp, e);
        isum[d] = 0;
        bacc[d] = 0.0f;
        seen[d] = 0;
    }
    return nt;
}

/* ---- query preparation and the core ----------------------------------- */

static int cmp_qpair(const void *a, const void *b)
{
    const qpair *x = (const qpair *)a, *y = (const qpair *)b;
    return (x->id > y->id) - (x->id < y->id);
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

static const kd__spx_term *lookup(const kd__spx_field *f, uint32_t t)
{
    size_t lo = 0, hi = f->nterms;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (f->terms[mid].term < t) lo = mid + 1;
        else hi = mid;
    }
    return lo < f->nterms && f->terms[lo].term == t ? &f->terms[lo] : NULL;
}

static void cur_open(cursor *c, const kd__spx_field *f, const kd__spx_term *t, int kind)
{
    c->f = f;
    c->t = t;
    c->kind = kind;
    c->blocks = f->blocks + t->first_block;
    c->nb = (uint32_t)((t->df + KD_SPX_BLOCK - 1) / KD_SPX_BLOCK);
    c->pend = f->post + f->post_size;
    c->sblk = 0;
    c->s_first = 1; /* empty range: the first shallow move computes it */
    c->s_last = 0;
    c->s_bound = 0.0;
    cur_decode(c, 0);
}

kd_status kd__spx_search_core(const kd_sparse_index *idx, const kd_sparse_search_config *cfg,
                              kd__spx_scratch *s, const uint32_t *term_ids, const float *weights,
                              size_t nnz, const uint32_t *tokens, size_t ntokens, size_t k,
                              uint32_t *out_ids, float *out_scores, size_t *out_count,
                              const char **why)
{
    *why = "";
    if ((nnz && (!term_ids || !weights)) || (ntokens && !tokens)) {
        *why = "NULL query arrays with a non-zero length";
        return KD_E_INVALID;
    }
    if (k && !out_ids) {
        *why = "out_ids is NULL";
        return KD_E_INVALID;
    }
    if (nnz + ntokens > s->cap_terms || nnz + ntokens < nnz) {
        *why = "query larger than the scratch it was given";
        return KD_E_INTERNAL;
    }
    for (size_t i = 0; i < nnz; i++)
        if (!isfinite(weights[i]) || weights[i] < 0.0f) {
            *why = "query weights must be finite and >= 0";
            return KD_E_INVALID;
        }
    size_t kk = k < idx->n_docs ? k : idx->n_docs;
    if (kk > s->cap_k || (cfg->algo == KD_SPARSE_EXHAUSTIVE && s->cap_docs < idx->n_docs)) {
        *why = "k larger than the scratch it was given";
        return KD_E_INTERNAL;
    }
    *out_count = 0;
    sparams sp;
    memset(&sp, 0, sizeof sp);
    sp.dtab = idx->docs;
    sp.ndocs = idx->n_docs;
    size_t n = 0;
    /* learned part: merge duplicates, drop zeros and unknown terms */
    if (cfg->weight_sparse > 0.0f && nnz) {
        for (size_t i = 0; i < nnz; i++) {
            s->qp[i].id = term_ids[i];
            s->qp[i].w = weights[i];
        }
        qsort(s->qp, nnz, sizeof *s->qp, cmp_qpair);
        size_t m = 0;
        for (size_t i = 0; i < nnz;) {
            uint32_t t = s->qp[i].id;
            double w = 0.0;
            while (i < nnz && s->qp[i].id == t) w += s->qp[i++].w;
            if (w > 0.0) {
                s->qp[m].id = t;
                s->qp[m].w = (float)w;
                if (!isfinite(s->qp[m].w)) {
                    *why = "query weight overflows";
                    return KD_E_INVALID;
                }
                m++;
            }
        }
        double qmax = 0.0;
        for (size_t i = 0; i < m; i++)
            if (lookup(&idx->f[0], s->qp[i].id) && s->qp[i].w > qmax) qmax = s->qp[i].w;
        if (qmax > 0.0) {
            sp.unit = (double)cfg->weight_sparse * (double)idx->scale * qmax / 65535.0;
            for (size_t i = 0; i < m; i++) {
                const kd__spx_term *t = lookup(&idx->f[0], s->qp[i].id);
                if (!t) continue;
                cursor *c = &s->cur[n++];
                double q = 65535.0 * (double)s->qp[i].w / qmax + 0.5;
                c->qq = q >= 65535.0 ? 65535u : (uint32_t)q;
                if (c->qq < 1) c->qq = 1;
                cur_open(c, &idx->f[0], t, 0);
            }
        }
    }
    /* BM25 part */
    size_t nslots = 0;
    if (cfg->weight_bm25 > 0.0f && ntokens) {
        memcpy(s->qt, tokens, ntokens * sizeof *tokens);
        qsort(s->qt, ntokens, sizeof *s->qt, cmp_u32);
        double avgdl = idx->n_docs && idx->total_len ? (double)idx->total_len / idx->n_docs : 1.0;
        sp.wbm = cfg->weight_bm25;
        sp.k1 = cfg->bm25_k1;
        sp.k1p1 = cfg->bm25_k1 + 1.0f;
        sp.b1 = 1.0f - cfg->bm25_b;
        sp.bavg = (float)((double)cfg->bm25_b / avgdl);
        sp.dk1 = (double)sp.k1;
        sp.db1 = (double)sp.b1;
        sp.dbavg = (double)sp.bavg;
        if (s->dn && s->dn_docs == idx->n_docs) {
            if (!s->dn_ok || s->dn_k1 != cfg->bm25_k1 || s->dn_b != cfg->bm25_b) {
                for (uint32_t d = 0; d < idx->n_docs; d++) s->dn[d] = doc_norm(&sp, idx->docs[d].len);
                s->dn_k1 = cfg->bm25_k1;
                s->dn_b = cfg->bm25_b;
                s->dn_ok = 1;
            }
            sp.dn = s->dn;
        }
        for (size_t i = 0; i < ntokens;) {
            uint32_t t = s->qt[i];
            uint32_t qtf = 0;
            while (i < ntokens && s->qt[i] == t) {
                qtf++;
                i++;
            }
            const kd__spx_term *tr = lookup(&idx->f[1], t);
            if (!tr) continue;
            cursor *c = &s->cur[n++];
            double N = (double)idx->n_docs, df = (double)tr->df;
            c->idf = (float)log(1.0 + (N - df + 0.5) / (df + 0.5));
            c->qtf = (float)qtf;
            c->w = c->qtf * c->idf;
            c->bk = (double)sp.wbm * (double)c->qtf * (double)c->idf * (double)sp.k1p1;
            c->slot = (uint32_t)nslots++;
            cur_open(c, &idx->f[1], tr, 1);
        }
    }
    for (size_t i = 0; i < n; i++) {
        s->cur[i].ubk = sp.unit * (double)s->cur[i].qq;
        s->cur[i].ub = bound_of(&sp, &s->cur[i], s->cur[i].t->max_val, s->cur[i].t->min_len);
    }
    /* float rounding of one score: a few ulps per term; this slack is far larger */
    sp.slack = 1.0 + ldexp((double)(n + 16), -20);
    if (kk == 0 || n == 0) return KD_OK;
    heap hp = {s->heap, 0, kk};
    if (cfg->algo == KD_SPARSE_EXHAUSTIVE) run_exhaustive(&sp, s, n, &hp);
    else if (cfg->algo == KD_SPARSE_BMW) (void)run_bmw(&sp, s, n, &hp, nslots);
    else run_maxscore(&sp, s, n, &hp, nslots);
    qsort(hp.h, hp.n, sizeof *hp.h, better_first);
    for (size_t i = 0; i < hp.n; i++) {
        out_ids[i] = idx->docs[hp.h[i].d].ext_id;
        if (out_scores) out_scores[i] = hp.h[i].s;
    }
    *out_count = hp.n;
    return KD_OK;
}

/* ---- searcher: scratch kept between queries ---------------------------- */

struct kd_sparse_searcher {
    kd_context *ctx;
    const kd_sparse_index *idx;
    kd__spx_scratch *s; /* NULL until the first query */
};

kd_status kd_sparse_searcher_create(kd_context *ctx, const kd_sparse_index *idx,
                                    kd_sparse_searcher **out)
{
    if (!out) return kd__fail(ctx, KD_E_INVALID, "kd_sparse_searcher_create: out is NULL");
    *out = NULL;
    if (!idx) return kd__fail(ctx, KD_E_INVALID, "kd_sparse_searcher_create: index is NULL");
    if (!ctx) ctx = idx->ctx;
    kd_sparse_searcher *s = (kd_sparse_searcher *)kd__calloc(ctx, 1, sizeof *s);
    if (!s) return KD_E_NOMEM;
    s->ctx = ctx;
    s->idx = idx;
    *out = s;
    return KD_OK;
}

void kd_sparse_searcher_destroy(kd_sparse_searcher *s)
{
    if (!s) return;
    kd__spx_scratch_destroy(s->ctx, s->s);
    kd__free(s->ctx, s);
}

/* Validates a query's arguments and runs it with scratch *sp, replacing the
 * scratch by a larger one when the query needs it (grow = 1: at least twice
 * the old capacity, so a growing stream reallocates O(log) times). */
static kd_status search_with(kd_context *ctx, const kd_sparse_index *idx, kd__spx_scratch **sp,
                             int grow, const kd_sparse_search_config *cfg, const uint32_t *term_ids,
                             const float *weights, size_t nnz, const uint32_t *tokens,
                             size_t ntokens, size_t k, uint32_t *out_ids, float *out_scores,
                             size_t *out_count)
{
    if (!out_count) return kd__fail(ctx, KD_E_INVALID, "kd_sparse_index_search: out_count is NULL");
    kd_sparse_search_config c;
    kd_status st = kd__spx_search_config(ctx, cfg, &c);
    if (st != KD_OK) return st;
    if (nnz > SIZE_MAX / 2 || ntokens > SIZE_MAX / 2)
        return kd__fail(ctx, KD_E_OVERFLOW, "kd_sparse_index_search: query too long");
    size_t nterms = nnz + ntokens;
    size_t kk = k < idx->n_docs ? k : idx->n_docs;
    int exh = c.algo == KD_SPARSE_EXHAUSTIVE;
    kd__spx_scratch *s = *sp;
    if (!s || s->cap_terms < nterms || s->cap_k < kk || (exh && s->cap_docs < idx->n_docs)) {
        size_t want_t = nterms, want_k = kk;
        int want_exh = exh;
        if (s && grow) {
            if (s->cap_terms > SIZE_MAX / 4 || s->cap_k > SIZE_MAX / 4)
                return kd__fail(ctx, KD_E_OVERFLOW, "kd_sparse_index_search: scratch too large");
            if (want_t < 2 * s->cap_terms) want_t = 2 * s->cap_terms;
            if (want_k < s->cap_k) want_k = s->cap_k;
            if (s->cap_docs >= idx->n_docs && idx->n_docs) want_exh = 1;
        }
        if (grow && want_t < 16) want_t = 16;
        /* a searcher's scratch keeps the per-document BM25 table (moved
         * over from the scratch it replaces) */
        int flags = want_exh | (grow && !(s && s->dn) ? KD__SPX_SCRATCH_DOCTAB : 0);
        kd__spx_scratch *ns = NULL;
        st = kd__spx_scratch_create(ctx, idx, want_t, want_k, flags, &ns);
        if (st != KD_OK) return kd__fail(ctx, st, "kd_sparse_index_search: out of memory for scratch");
        if (s && s->dn) {
            ns->dn = s->dn;
            ns->dn_docs = s->dn_docs;
            ns->dn_ok = s->dn_ok;
            ns->dn_k1 = s->dn_k1;
            ns->dn_b = s->dn_b;
            s->dn = NULL;
        }
        kd__spx_scratch_destroy(ctx, s);
        *sp = s = ns;
    }
    const char *why = "";
    st = kd__spx_search_core(idx, &c, s, term_ids, weights, nnz, tokens, ntokens, k, out_ids,
                             out_scores, out_count, &why);
    if (st != KD_OK) return kd__fail(ctx, st, "kd_sparse_index_search: %s", why);
    return KD_OK;
}

kd_status kd_sparse_searcher_search(kd_sparse_searcher *s, const kd_sparse_search_config *cfg,
                                    const uint32_t *term_ids, const float *weights, size_t nnz,
                                    const uint32_t *tokens, size_t ntokens, size_t k,
                                    uint32_t *out_ids, float *out_scores, size_t *out_count)
{
    if (!s) return kd__fail(NULL, KD_E_INVALID, "kd_sparse_searcher_search: searcher is NULL");
    return search_with(s->ctx, s->idx, &s->s, 1, cfg, term_ids, weights, nnz, tokens, ntokens, k,
                       out_ids, out_scores, out_count);
}

kd_status kd_sparse_index_search(kd_context *ctx, const kd_sparse_index *idx,
                                 const kd_sparse_search_config *cfg, const uint32_t *term_ids,
                                 const float *weights, size_t nnz, const uint32_t *tokens,
                                 size_t ntokens, size_t k, uint32_t *out_ids, float *out_scores,
                                 size_t *out_count)
{
    if (!idx) return kd__fail(ctx, KD_E_INVALID, "kd_sparse_index_search: index is NULL");
    if (!ctx) ctx = idx->ctx;
    kd__spx_scratch *s = NULL;
    kd_status st = search_with(ctx, idx, &s, 0, cfg, term_ids, weights, nnz, tokens, ntokens, k,
                               out_ids, out_scores, out_count);
    kd__spx_scratch_destroy(ctx, s);
    return st;
}
