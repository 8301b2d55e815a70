/*
 * kd_cache_codec.c - record coding of the teacher-logit cache, and the
 * validating reader over a file image (layout in kd_cache_format.h).
 */
#include <math.h>

#include "kd_cache_format.h"
#include "kd_vocab_internal.h"

/* ---- header ----------------------------------------------------------------- */

static const unsigned char kdc_magic[8] = {'K', 'D', 'L', 'O', 'G', 'I', 'T', 'C'};

void kdc_header_write(unsigned char out[KDC_HEADER_SIZE], const kdc_header *h)
{
    memset(out, 0, KDC_HEADER_SIZE);
    memcpy(out, kdc_magic, 8);
    kdc_wr32(out + 8, h->version);
    kdc_wr32(out + 12, h->encoding);
    kdc_wr64(out + 16, h->classes);
    kdc_wr32(out + 24, h->k);
    kdc_wr32(out + 28, h->block_positions);
    kdc_wr64(out + 32, h->positions);
    kdc_wr32(out + 40, h->value_scale);
    kdc_wr32(out + 44, h->flags);
    kdc_wr32(out + 60, kd_crc32c(0, out, 60));
}

kd_status kdc_header_read(kd_context *ctx, const unsigned char *p, size_t size, kdc_header *h)
{
    if (size < KDC_HEADER_SIZE)
        return kd__fail(ctx, KD_E_FORMAT, "logit cache: %zu bytes, shorter than the 64-byte header", size);
    if (memcmp(p, kdc_magic, 8) != 0) return kd__fail(ctx, KD_E_FORMAT, "logit cache: bad magic");
    if (kd_crc32c(0, p, 60) != kdc_rd32(p + 60))
        return kd__fail(ctx, KD_E_CORRUPT, "logit cache: header CRC32C mismatch");
    h->version = kdc_rd32(p + 8);
    h->encoding = kdc_rd32(p + 12);
    h->classes = kdc_rd64(p + 16);
    h->k = kdc_rd32(p + 24);
    h->block_positions = kdc_rd32(p + 28);
    h->positions = kdc_rd64(p + 32);
    h->value_scale = kdc_rd32(p + 40);
    h->flags = kdc_rd32(p + 44);
    if (h->version != KD_CACHE_FORMAT_VERSION)
        return kd__fail(ctx, KD_E_VERSION, "logit cache: format version %u, this library reads %u",
                        (unsigned)h->version, KD_CACHE_FORMAT_VERSION);
    if (h->encoding != KD_CACHE_ENC_LOGPROB16 && h->encoding != KD_CACHE_ENC_COMPACT)
        return kd__fail(ctx, KD_E_FORMAT, "logit cache: unknown encoding %u", (unsigned)h->encoding);
    if (h->classes == 0 || h->classes > KDC_MAX_CLASSES)
        return kd__fail(ctx, KD_E_FORMAT, "logit cache: class count %llu out of range",
                        (unsigned long long)h->classes);
    if (h->k == 0 || h->k > KDC_MAX_K || h->k > h->classes)
        return kd__fail(ctx, KD_E_FORMAT, "logit cache: k = %u out of range for %llu classes",
                        (unsigned)h->k, (unsigned long long)h->classes);
    if (h->block_positions == 0 || h->block_positions > KDC_MAX_BLOCK)
        return kd__fail(ctx, KD_E_FORMAT, "logit cache: block size %u out of range",
                        (unsigned)h->block_positions);
    if (h->encoding == KD_CACHE_ENC_COMPACT ? (h->value_scale < 16 || h->value_scale > 4096)
                                            : h->value_scale != (uint32_t)KDC_LOG_SCALE)
        return kd__fail(ctx, KD_E_FORMAT, "logit cache: value scale %u invalid", (unsigned)h->value_scale);
    if (h->flags & ~KDC_FLAG_FINISHED)
        return kd__fail(ctx, KD_E_FORMAT, "logit cache: unknown flags 0x%x", (unsigned)h->flags);
    for (int i = 48; i < 60; i++)
        if (p[i]) return kd__fail(ctx, KD_E_FORMAT, "logit cache: reserved header bytes not zero");
    return KD_OK;
}

unsigned kdc_id_bits(uint64_t classes)
{
    unsigned b = 1;
    while (b < 32 && ((uint64_t)1 << b) < classes) b++;
    return b;
}

size_t kdc_max_record(const kdc_header *h)
{
    /* length varint 5 + m varint 3 + tail 16 bits + parameters 9 bits +
     * per entry an Exp-Golomb code of at most 2 * 32 + 1 id bits and
     * 2 * 16 + 1 value bits (LOGPROB16: 31 + 16), plus a byte. */
    return 5 + 3 + (16 + 9 + (size_t)h->k * 98) / 8 + 2;
}

/* ---- bits --------------------------------------------------------------------- */

typedef struct {
    unsigned char *p;
    size_t pos; /* bits */
} bitw;

static void bw_put(bitw *w, uint32_t v, unsigned n)
{
    for (unsigned i = 0; i < n; i++, w->pos++) {
        if ((w->pos & 7) == 0) w->p[w->pos >> 3] = 0;
        if ((v >> i) & 1u) w->p[w->pos >> 3] |= (unsigned char)(1u << (w->pos & 7));
    }
}

/* Exp-Golomb code of order r (robust to outliers, unlike a plain Rice
 * code): w = v + 2^r has nb + 1 bits; nb - r ones, a zero, then the low nb
 * bits of w. */
static unsigned eg_bits(uint32_t v, unsigned r)
{
    uint64_t w = (uint64_t)v + ((uint64_t)1 << r);
    unsigned nb = 0;
    while ((w >> (nb + 1)) != 0) nb++;
    return 2 * nb - r + 1;
}

static void bw_rice(bitw *w, uint32_t v, unsigned r)
{
    uint64_t x = (uint64_t)v + ((uint64_t)1 << r);
    unsigned nb = 0;
    while ((x >> (nb + 1)) != 0) nb++;
    for (unsigned i = r; i < nb; i++) bw_put(w, 1, 1);
    bw_put(w, 0, 1);
    for (unsigned i = 0; i < nb; i++) bw_put(w, (uint32_t)(x >> i) & 1u, 1);
}

typedef struct {
    const unsigned char *p;
    size_t pos, end; /* bits */
} bitr;

static int br_get(bitr *r, unsigned n, uint32_t *v)
{
    if (n > r->end - r->pos) return -1;
    uint32_t x = 0;
    for (unsigned i = 0; i < n; i++, r->pos++)
        x |= (uint32_t)((r->p[r->pos >> 3] >> (r->pos & 7)) & 1u) << i;
    *v = x;
    return 0;
}

static int br_rice(bitr *r, unsigned k, uint32_t limit, uint32_t *v)
{
    unsigned q = 0;
    for (;;) {
        if (r->pos >= r->end) return -1;
        unsigned bit = (r->p[r->pos >> 3] >> (r->pos & 7)) & 1u;
        r->pos++;
        if (!bit) break;
        if (++q + k > 32) return -1;
    }
    unsigned nb = q + k;
    uint64_t x = 0;
    for (unsigned i = 0; i < nb; i++) {
        if (r->pos >= r->end) return -1;
        x |= (uint64_t)((r->p[r->pos >> 3] >> (r->pos & 7)) & 1u) << i;
        r->pos++;
    }
    x |= (uint64_t)1 << nb;
    x -= (uint64_t)1 << k;
    if (x > limit) return -1;
    *v = (uint32_t)x;
    return 0;
}

static size_t varint_put(unsigned char *p, uint32_t v)
{
    size_t n = 0;
    while (v >= 0x80) {
        p[n++] = (unsigned char)(v | 0x80);
        v >>= 7;
    }
    p[n++] = (unsigned char)v;
    return n;
}

/* Canonical LEB128 of at most 32 bits; returns bytes used or 0. */
static size_t varint_get(const unsigned char *p, size_t avail, uint32_t *v)
{
    uint64_t x = 0;
    for (size_t i = 0; i < 5 && i < avail; i++) {
        x |= (uint64_t)(p[i] & 0x7f) << (7 * i);
        if (!(p[i] & 0x80)) {
            if (x > 0xffffffffu || (i > 0 && p[i] == 0)) return 0;
            *v = (uint32_t)x;
            return i + 1;
        }
    }
    return 0;
}

/* ---- encoding --------------------------------------------------------------- */

kd_status kdc_encoder_init(kd_context *ctx, kdc_encoder *e, const kdc_header *h)
{
    memset(e, 0, sizeof *e);
    e->ctx = ctx;
    e->h = *h;
    e->top = (int32_t *)kd__calloc(ctx, h->k, sizeof *e->top);
    e->topv = (float *)kd__calloc(ctx, h->k, sizeof *e->topv);
    e->codes = (uint32_t *)kd__calloc(ctx, h->k, sizeof *e->codes);
    e->gaps = (uint32_t *)kd__calloc(ctx, h->k, sizeof *e->gaps);
    e->rec = (unsigned char *)kd__alloc(ctx, kdc_max_record(h));
    if (!e->top || !e->topv || !e->codes || !e->gaps || !e->rec) {
        kdc_encoder_free(e);
        return kd_context_last_status(ctx);
    }
    return KD_OK;
}

void kdc_encoder_free(kdc_encoder *e)
{
    kd__free(e->ctx, e->rec);
    kd__free(e->ctx, e->gaps);
    kd__free(e->ctx, e->codes);
    kd__free(e->ctx, e->topv);
    kd__free(e->ctx, e->top);
    e->rec = NULL;
    e->gaps = e->codes = NULL;
    e->topv = NULL;
    e->top = NULL;
}

kd_status kdc_check_row(kd_context *ctx, const float *z, uint64_t classes, uint64_t position)
{
    size_t ninf = 0;
    if (!kd__vocab_scan(z, (size_t)classes, &ninf) && ninf < classes) return KD_OK;
    for (uint64_t j = 0; j < classes; j++) { /* name the fault */
        float v = z[j];
        if (isnan(v) || v == INFINITY)
            return kd__fail(ctx, KD_E_NUMERIC, "logit cache: non-finite logit at position %llu, class %llu",
                            (unsigned long long)position, (unsigned long long)j);
    }
    return kd__fail(ctx, KD_E_NUMERIC, "logit cache: every class of position %llu is -inf",
                    (unsigned long long)position);
}

/* Heap order: the root is the worst kept entry (lower logit, then higher id). */
static int worse(float za, int32_t ia, float zb, int32_t ib) { return za < zb || (za == zb && ia > ib); }

static void swap_entries(int32_t *id, float *z, size_t a, size_t b)
{
    int32_t ti = id[a];
    float tz = z[a];
    id[a] = id[b];
    z[a] = z[b];
    id[b] = ti;
    z[b] = tz;
}

static void sift_down(int32_t *id, float *z, size_t n, size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, w = i;
        if (l < n && worse(z[l], id[l], z[w], id[w])) w = l;
        if (r < n && worse(z[r], id[r], z[w], id[w])) w = r;
        if (w == i) return;
        swap_entries(id, z, i, w);
        i = w;
    }
}

static void sift_up(int32_t *id, float *z, size_t i)
{
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!worse(z[i], id[i], z[p], id[p])) return;
        swap_entries(id, z, i, p);
        i = p;
    }
}

/* Shell sort of (id, z) by ascending id (k <= 65535, no libc qsort needed). */
static void sort_by_id(int32_t *id, float *z, size_t n)
{
    static const size_t gaps[] = {1750, 701, 301, 132, 57, 23, 10, 4, 1};
    for (size_t g = 0; g < sizeof gaps / sizeof gaps[0]; g++) {
        size_t gap = gaps[g];
        for (size_t i = gap; i < n; i++) {
            int32_t ti = id[i];
            float tz = z[i];
            size_t j = i;
            for (; j >= gap && id[j - gap] > ti; j -= gap) {
                id[j] = id[j - gap];
                z[j] = z[j - gap];
            }
            id[j] = ti;
            z[j] = tz;
        }
    }
}

static unsigned best_rice(const uint32_t *v, size_t n, unsigned max_r)
{
    unsigned best = 0;
    uint64_t best_cost = UINT64_MAX;
    for (unsigned r = 0; r <= max_r; r++) {
        uint64_t c = 0;
        for (size_t i = 0; i < n; i++) c += eg_bits(v[i], r);
        if (c < best_cost) {
            best_cost = c;
            best = r;
        }
    }
    return best;
}

size_t kdc_encode_row(kdc_encoder *e, const float *z)
{
    const kdc_header *h = &e->h;
    const size_t V = (size_t)h->classes, k = h->k;
    /* Three passes over the row: a vectorised log-sum-exp, the top-k heap
     * (compares only), and a vectorised sum of the mass below the k-th
     * largest logit. The tail is summed directly, not as 1 - sum(top k),
     * which would cancel when the teacher is confident. */
    const double lse = kd__vocab_lse(z, V);
    size_t n = 0, j = 0;
    for (; j < V && n < k; j++) {
        e->top[n] = (int32_t)j;
        e->topv[n] = z[j];
        sift_up(e->top, e->topv, n);
        n++;
    }
    /* Ids only grow from here, so an entry equal to the root never beats
     * it: only strictly larger logits enter the heap. */
    while ((j += kd__vocab_find_above(z + j, V - j, e->topv[0])) < V) {
        e->top[0] = (int32_t)j;
        e->topv[0] = z[j];
        sift_down(e->top, e->topv, n, 0);
        j++;
    }
    const float below = e->topv[0]; /* the heap root: the smallest kept logit */
    size_t kept_equal = 0, equal = 0;
    for (size_t i = 0; i < n; i++) kept_equal += e->topv[i] == below;
    double tail = 0.0;
    kd__vocab_tail(z, V, lse, below, &tail, &equal);
    if (equal > kept_equal) tail += (double)(equal - kept_equal) * exp((double)below - lse);
    sort_by_id(e->top, e->topv, n);
    /* quantise; entries that round to nothing move into the tail */
    size_t m = 0;
    const double Q = (double)h->value_scale;
    for (size_t i = 0; i < n; i++) {
        double lp = (double)e->topv[i] - lse, p = exp(lp);
        uint32_t code;
        if (h->encoding == KD_CACHE_ENC_COMPACT) {
            double lv = floor(sqrt(p) * Q + 0.5);
            if (lv < 1.0) {
                tail += p;
                continue;
            }
            code = (uint32_t)(lv > Q ? Q : lv);
        } else {
            if (p <= 0.0) continue;
            double c = floor(-lp * KDC_LOG_SCALE + 0.5);
            code = (uint32_t)(c < 0.0 ? 0.0 : c > 65534.0 ? 65534.0 : c);
        }
        e->top[m] = e->top[i];
        e->codes[m++] = code;
    }
    if (tail > 1.0) tail = 1.0;
    uint32_t tcode;
    if (h->encoding == KD_CACHE_ENC_COMPACT) {
        tcode = (uint32_t)floor(sqrt(tail) * 65535.0 + 0.5);
    } else if (tail <= 0.0) {
        tcode = 65535;
    } else {
        double c = floor(-log(tail) * KDC_LOG_SCALE + 0.5);
        tcode = (uint32_t)(c < 0.0 ? 0.0 : c > 65534.0 ? 65534.0 : c);
    }
    /* body at rec + 5, then the length prefix moved in front of it */
    unsigned char *body = e->rec + 5;
    size_t hb = varint_put(body, (uint32_t)m);
    bitw w = {body + hb, 0};
    bw_put(&w, tcode, 16);
    if (h->encoding == KD_CACHE_ENC_COMPACT) {
        if (m > 0) {
            for (size_t i = 0; i < m; i++)
                e->gaps[i] = (uint32_t)(e->top[i] - (i ? e->top[i - 1] + 1 : 0));
            unsigned rid = best_rice(e->gaps, m, 31);
            for (size_t i = 0; i < m; i++) e->codes[i] -= 1;
            unsigned rv = best_rice(e->codes, m, 15);
            bw_put(&w, rid, 5);
            bw_put(&w, rv, 4);
            for (size_t i = 0; i < m; i++) bw_rice(&w, e->gaps[i], rid);
            for (size_t i = 0; i < m; i++) bw_rice(&w, e->codes[i], rv);
        }
    } else {
        unsigned ib = kdc_id_bits(h->classes);
        for (size_t i = 0; i < m; i++) bw_put(&w, (uint32_t)e->top[i], ib);
        for (size_t i = 0; i < m; i++) bw_put(&w, e->codes[i], 16);
    }
    size_t blen = hb + (w.pos + 7) / 8;
    unsigned char pre[5];
    size_t pl = varint_put(pre, (uint32_t)blen);
    memmove(e->rec + pl, body, blen);
    memcpy(e->rec, pre, pl);
    return pl + blen;
}

/* ---- decoding ----------------------------------------------------------------- */

const char *kdc_decode_record(const kdc_header *h, const unsigned char *rec, size_t avail,
                              size_t *used, int32_t *ids, float *values, float *tail)
{
    uint32_t len, m;
    size_t pl = varint_get(rec, avail, &len);
    if (!pl) return "bad record length";
    if (len > avail - pl) return "record runs past its block";
    const unsigned char *body = rec + pl;
    size_t hb = varint_get(body, len, &m);
    if (!hb) return "bad entry count";
    if (m > h->k) return "more entries than k";
    bitr r = {body + hb, 0, (size_t)(len - hb) * 8};
    uint32_t tcode;
    if (br_get(&r, 16, &tcode)) return "record truncated";
    const size_t k = h->k;
    double mass = 0.0, tl;
    if (h->encoding == KD_CACHE_ENC_COMPACT) {
        double u = tcode / 65535.0;
        tl = u * u;
    } else {
        tl = tcode == 65535 ? 0.0 : exp(-(double)tcode / KDC_LOG_SCALE);
    }
    if (h->encoding == KD_CACHE_ENC_COMPACT) {
        if (m > 0) {
            uint32_t rid, rv;
            if (br_get(&r, 5, &rid) || br_get(&r, 4, &rv)) return "record truncated";
            uint64_t id = 0;
            for (uint32_t i = 0; i < m; i++) {
                uint32_t g;
                if (br_rice(&r, rid, KDC_MAX_CLASSES, &g)) return "bad id code";
                id += g + (i ? 1u : 0u);
                if (id >= h->classes) return "class id out of range";
                if (ids) ids[i] = (int32_t)id;
            }
            const double Q = (double)h->value_scale;
            for (uint32_t i = 0; i < m; i++) {
                uint32_t c;
                if (br_rice(&r, rv, h->value_scale - 1, &c)) return "bad value code";
                double u = (double)(c + 1) / Q;
                mass += u * u;
                if (values) values[i] = (float)(2.0 * log(u));
            }
        }
    } else {
        unsigned ib = kdc_id_bits(h->classes);
        uint32_t prev = 0;
        for (uint32_t i = 0; i < m; i++) {
            uint32_t id;
            if (br_get(&r, ib, &id)) return "record truncated";
            if (id >= h->classes) return "class id out of range";
            if (i && id <= prev) return "class ids not ascending";
            prev = id;
            if (ids) ids[i] = (int32_t)id;
        }
        for (uint32_t i = 0; i < m; i++) {
            uint32_t c;
            if (br_get(&r, 16, &c)) return "record truncated";
            if (c == 65535) return "bad value code";
            mass += exp(-(double)c / KDC_LOG_SCALE);
            if (values) values[i] = (float)(-(double)c / KDC_LOG_SCALE);
        }
    }
    /* canonical: fewer than 8 padding bits, all zero */
    if (r.end - r.pos >= 8) return "record longer than its contents";
    uint32_t pad;
    if (br_get(&r, (unsigned)(r.end - r.pos), &pad) || pad) return "nonzero padding bits";
    if (mass + tl <= 0.0) return "record has no probability mass";
    if (ids)
        for (size_t i = m; i < k; i++) ids[i] = -1;
    if (values)
        for (size_t i = m; i < k; i++) values[i] = 0.0f;
    if (tail) *tail = (float)tl;
    *used = pl + len;
    return NULL;
}

kd_status kdc_scan_blocks(kd_context *ctx, const kdc_header *h, const unsigned char *img,
                          size_t size, int strict, uint64_t expect_blocks, uint64_t *blocks,
                          uint64_t *positions, size_t *end, uint64_t *offsets)
{
    const uint64_t bp = h->block_positions;
    size_t off = KDC_HEADER_SIZE;
    uint64_t b = 0, pos = 0;
    *blocks = 0;
    *positions = 0;
    *end = off;
    for (;; b++) {
        if (strict ? b == expect_blocks : off == size) break;
        const char *why = NULL;
        uint32_t count = 0, payload = 0;
        if (size - off < KDC_BLOCK_HEADER) {
            why = "block header truncated";
        } else {
            const unsigned char *p = img + off;
            count = kdc_rd32(p + 4);
            payload = kdc_rd32(p + 16);
            uint64_t want = bp;
            if (strict && b + 1 == expect_blocks) want = h->positions - b * bp;
            if (memcmp(p, "KDLB", 4) != 0) why = "bad block magic";
            else if (count != want) why = "wrong position count in block";
            else if (kdc_rd64(p + 8) != pos) why = "wrong first position in block";
            else if (payload > size - off - KDC_BLOCK_HEADER) why = "block payload truncated";
            else if (kd_crc32c(kd_crc32c(0, p, 20), p + KDC_BLOCK_HEADER, payload) != kdc_rd32(p + 20)) {
                if (strict)
                    return kd__fail(ctx, KD_E_CORRUPT, "logit cache: CRC32C mismatch in block %llu",
                                    (unsigned long long)b);
                why = "CRC mismatch";
            } else {
                const unsigned char *q = p + KDC_BLOCK_HEADER;
                size_t left = payload;
                for (uint32_t i = 0; i < count && !why; i++) {
                    size_t used = 0;
                    why = kdc_decode_record(h, q, left, &used, NULL, NULL, NULL);
                    q += used;
                    left -= used;
                }
                if (!why && left) why = "block payload longer than its records";
            }
        }
        if (why) {
            if (strict)
                return kd__fail(ctx, KD_E_FORMAT, "logit cache: block %llu at offset %zu: %s",
                                (unsigned long long)b, off, why);
            break; /* a partial file: keep what precedes the damage */
        }
        if (offsets) offsets[b] = off;
        off += KDC_BLOCK_HEADER + (size_t)payload;
        pos += count;
        *blocks = b + 1;
        *positions = pos;
        *end = off;
    }
    return KD_OK;
}

/* ---- reader ------------------------------------------------------------------ */

struct kd_logit_cache {
    kd_context *ctx;
    kdc_header h;
    const unsigned char *img;
    size_t size;
    const unsigned char *index; /* n_blocks x u64 (validated) */
#if !defined(KD_EMBEDDED)
    kd_mapped_file map;
#endif
};

/* Validates img and fills c (not allocated here). */
static kd_status cache_validate(kd_context *ctx, const unsigned char *img, size_t size,
                                struct kd_logit_cache *c)
{
    kd_status st = kdc_header_read(ctx, img, size, &c->h);
    if (st != KD_OK) return st;
    const kdc_header *h = &c->h;
    if (!(h->flags & KDC_FLAG_FINISHED))
        return kd__fail(ctx, KD_E_FORMAT, "logit cache: the file was never finished (a partial file?)");
    if (size < KDC_HEADER_SIZE + KDC_FOOTER_SIZE)
        return kd__fail(ctx, KD_E_FORMAT, "logit cache: truncated (%zu bytes, no footer)", size);
    const unsigned char *f = img + size - KDC_FOOTER_SIZE;
    if (memcmp(f + 28, "KDLE", 4) != 0)
        return kd__fail(ctx, KD_E_FORMAT, "logit cache: footer magic missing (truncated file?)");
    uint64_t io = kdc_rd64(f), fpos = kdc_rd64(f + 8), nb = kdc_rd64(f + 16);
    if (fpos != h->positions)
        return kd__fail(ctx, KD_E_FORMAT, "logit cache: footer says %llu positions, header %llu",
                        (unsigned long long)fpos, (unsigned long long)h->positions);
    uint64_t want_nb = h->positions / h->block_positions + (h->positions % h->block_positions != 0);
    if (nb != want_nb)
        return kd__fail(ctx, KD_E_FORMAT, "logit cache: %llu blocks for %llu positions of %u",
                        (unsigned long long)nb, (unsigned long long)h->positions,
                        (unsigned)h->block_positions);
    uint64_t room = size - KDC_HEADER_SIZE - KDC_FOOTER_SIZE;
    if (nb > room / 8 || io < KDC_HEADER_SIZE || io != size - KDC_FOOTER_SIZE - nb * 8)
        return kd__fail(ctx, KD_E_FORMAT, "logit cache: index offset or block count inconsistent with the size");
    uint32_t crc = kd_crc32c(kd_crc32c(0, img + io, (size_t)nb * 8), f, 24);
    if (crc != kdc_rd32(f + 24)) return kd__fail(ctx, KD_E_CORRUPT, "logit cache: index CRC32C mismatch");
    uint64_t blocks, pos;
    size_t end;
    if ((st = kdc_scan_blocks(ctx, h, img, (size_t)io, 1, nb, &blocks, &pos, &end, NULL)) != KD_OK)
        return st;
    if (end != io) return kd__fail(ctx, KD_E_FORMAT, "logit cache: bytes between the last block and the index");
    size_t off = KDC_HEADER_SIZE;
    for (uint64_t b = 0; b < nb; b++) {
        if (kdc_rd64(img + io + 8 * b) != off)
            return kd__fail(ctx, KD_E_FORMAT, "logit cache: index entry %llu does not point at block %llu",
                            (unsigned long long)b, (unsigned long long)b);
        off += KDC_BLOCK_HEADER + kdc_rd32(img + off + 16);
    }
    c->img = img;
    c->size = size;
    c->index = img + io;
    return KD_OK;
}

kd_status kd_logit_cache_open_memory(kd_context *ctx, const void *data, size_t size, kd_logit_cache **out)
{
    if (!ctx) return KD_E_INVALID;
    if (!out || (!data && size)) return kd__fail(ctx, KD_E_INVALID, "kd_logit_cache_open_memory: NULL argument");
    *out = NULL;
    kd_logit_cache tmp;
    memset(&tmp, 0, sizeof tmp);
    kd_status st = cache_validate(ctx, (const unsigned char *)data, size, &tmp);
    if (st != KD_OK) return st;
    kd_logit_cache *c = (kd_logit_cache *)kd__calloc(ctx, 1, sizeof *c);
    if (!c) return kd_context_last_status(ctx);
    *c = tmp;
    c->ctx = ctx;
    *out = c;
    return KD_OK;
}

#if !defined(KD_EMBEDDED)
kd_status kd_logit_cache_open(kd_context *ctx, const char *path, kd_logit_cache **out)
{
    if (!ctx) return KD_E_INVALID;
    if (!out || !path) return kd__fail(ctx, KD_E_INVALID, "kd_logit_cache_open: NULL argument");
    *out = NULL;
    kd_mapped_file m;
    kd_status st = kd__map_file(ctx, path, &m);
    if (st != KD_OK) return st;
    kd_logit_cache tmp;
    memset(&tmp, 0, sizeof tmp);
    if ((st = cache_validate(ctx, m.data, m.size, &tmp)) != KD_OK) {
        kd__unmap_file(&m);
        return st;
    }
    kd_logit_cache *c = (kd_logit_cache *)kd__calloc(ctx, 1, sizeof *c);
    if (!c) {
        kd__unmap_file(&m);
        return kd_context_last_status(ctx);
    }
    *c = tmp;
    c->ctx = ctx;
    c->map = m;
    *out = c;
    return KD_OK;
}
#endif

void kd_logit_cache_close(kd_logit_cache *c)
{
    if (!c) return;
#if !defined(KD_EMBEDDED)
    kd__unmap_file(&c->map);
#endif
    kd__free(c->ctx, c);
}

uint64_t kd_logit_cache_positions(const kd_logit_cache *c) { return c ? c->h.positions : 0; }
size_t kd_logit_cache_classes(const kd_logit_cache *c) { return c ? (size_t)c->h.classes : 0; }
size_t kd_logit_cache_k(const kd_logit_cache *c) { return c ? (size_t)c->h.k : 0; }
uint64_t kd_logit_cache_file_bytes(const kd_logit_cache *c) { return c ? (uint64_t)c->size : 0; }

kd_status kd_logit_cache_rows(const kd_logit_cache *c, const uint64_t *rows, size_t n, int32_t *ids,
                              float *values, float *tail_mass, kd_sparse_logits *out)
{
    if (!c) return KD_E_INVALID;
    kd_context *ctx = c->ctx;
    if (n && (!rows || !ids || !values || !tail_mass))
        return kd__fail(ctx, KD_E_INVALID, "kd_logit_cache_rows: NULL array");
    size_t cells;
    if (kd__mul_overflow(n, (size_t)c->h.k, &cells))
        return kd__fail(ctx, KD_E_OVERFLOW, "kd_logit_cache_rows: %zu rows too many", n);
    for (size_t i = 0; i < n; i++)
        if (rows[i] >= c->h.positions)
            return kd__fail(ctx, KD_E_INVALID, "kd_logit_cache_rows: row %llu outside %llu positions",
                            (unsigned long long)rows[i], (unsigned long long)c->h.positions);
    const size_t k = c->h.k;
    for (size_t i = 0; i < n; i++) {
        uint64_t b = rows[i] / c->h.block_positions, within = rows[i] % c->h.block_positions;
        size_t off = (size_t)kdc_rd64(c->index + 8 * b);
        const unsigned char *p = c->img + off + KDC_BLOCK_HEADER;
        size_t left = kdc_rd32(c->img + off + 16), used = 0;
        for (uint64_t s = 0; s < within; s++) { /* lengths were validated at open */
            uint32_t len = 0;
            size_t pl = varint_get(p, left, &len);
            p += pl + len;
            left -= pl + len;
        }
        const char *why = kdc_decode_record(&c->h, p, left, &used, ids + i * k, values + i * k, tail_mass + i);
        if (why) return kd__fail(ctx, KD_E_INTERNAL, "kd_logit_cache_rows: %s after validation", why);
    }
    if (out) {
        kd_sparse_logits_default(out);
        out->mode = KD_SPARSE_TOPK;
        out->value_kind = KD_SPARSE_LOGPROB;
        out->k = k;
        out->ids = ids;
        out->values = values;
        out->tail_mass = tail_mass;
    }
    return KD_OK;
}
