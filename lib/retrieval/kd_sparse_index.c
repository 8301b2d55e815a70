/*
 * kd_sparse_index.c - building the sparse index image and validating images.
 *
 * The builder writes the exact bytes of the file format (kd_sparse_format.h)
 * into one heap buffer; a built index, a mapped file and a caller's buffer are
 * all searched through the same views into such an image.
 */
#include <math.h>
#include <stdlib.h>

#include "kd_sparse_format.h"

/* ---- bit packing ------------------------------------------------------ */

void kd__spx_unpack(const unsigned char *p, size_t n, unsigned w, uint32_t *out)
{
    if (w == 0) {
        for (size_t i = 0; i < n; i++) out[i] = 0;
        return;
    }
    const uint64_t mask = w >= 32 ? 0xFFFFFFFFull : ((1ull << w) - 1);
    uint64_t buf = 0;
    unsigned have = 0;
    for (size_t i = 0; i < n; i++) {
        while (have < w) {
            buf |= (uint64_t)*p++ << have;
            have += 8;
        }
        out[i] = (uint32_t)(buf & mask);
        buf >>= w;
        have -= w;
    }
}

static unsigned char *pack(unsigned char *p, const uint32_t *v, size_t n, unsigned w)
{
    if (w == 0) return p;
    uint64_t buf = 0;
    unsigned have = 0;
    for (size_t i = 0; i < n; i++) {
        buf |= (uint64_t)v[i] << have;
        have += w;
        while (have >= 8) {
            *p++ = (unsigned char)buf;
            buf >>= 8;
            have -= 8;
        }
    }
    if (have > 0) *p++ = (unsigned char)buf;
    return p;
}

static unsigned bit_width(uint32_t v)
{
    unsigned w = 0;
    while (v) {
        w++;
        v >>= 1;
    }
    return w;
}

static size_t packed_bytes(size_t n, unsigned w) { return (n * w + 7) / 8; }

/* ---- configuration ---------------------------------------------------- */

void kd_sparse_index_config_default_sized(kd_sparse_index_config *out, size_t size)
{
    kd_sparse_index_config d, *cfg = &d;
    memset(cfg, 0, sizeof *cfg);
    cfg->struct_size = sizeof *cfg;
    cfg->quant_bits = 8;
    cfg->quant_max = 0.0f;
    kd__default_out(out, size, cfg, sizeof *cfg);
}

/* ---- builder ---------------------------------------------------------- */

typedef struct {
    uint32_t ext_id;
    uint32_t len;
    uint32_t lcount, bcount;
    uint64_t loff, boff;
} bdoc;

struct kd_sparse_index_builder {
    kd_context *ctx;
    kd_sparse_index_config cfg;
    bdoc *docs;
    size_t ndocs, cap_docs;
    uint32_t *lterm; /* learned pairs, per doc ascending term */
    float *lw;
    size_t nl, cap_l;
    uint32_t *bterm; /* BM25 pairs, per doc ascending token */
    uint32_t *btf;
    size_t nb, cap_b;
    float maxw;
    uint32_t *tmp_u; /* scratch for sorting one document */
    float *tmp_f;
    size_t cap_tmp;
};

static int grow(kd_context *ctx, void **p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap) return 1;
    size_t nc = *cap ? *cap : 64;
    while (nc < need) {
        if (nc > SIZE_MAX / 2 / elem) {
            kd__fail(ctx, KD_E_OVERFLOW, "sparse index builder: array too large");
            return 0;
        }
        nc *= 2;
    }
    void *q = kd__calloc(ctx, nc, elem);
    if (!q) return 0;
    if (*p && *cap) memcpy(q, *p, *cap * elem);
    kd__free(ctx, *p);
    *p = q;
    *cap = nc;
    return 1;
}

static int grow2(kd_context *ctx, void **a, void **b, size_t *cap, size_t need, size_t ea, size_t eb)
{
    if (need <= *cap) return 1;
    size_t ca = *cap, cb = *cap;
    if (!grow(ctx, a, &ca, need, ea)) return 0;
    if (!grow(ctx, b, &cb, need, eb)) {
        /* keep *a larger than *cap: harmless, *cap stays the common size */
        return 0;
    }
    *cap = ca < cb ? ca : cb;
    return 1;
}

kd_status kd_sparse_index_builder_create(kd_context *ctx, const kd_sparse_index_config *cfg,
                                         kd_sparse_index_builder **out)
{
    if (!out) return kd__fail(ctx, KD_E_INVALID, "kd_sparse_index_builder_create: out is NULL");
    *out = NULL;
    kd_sparse_index_config c;
    kd_sparse_index_config_default(&c);
    if (cfg) {
        kd_status st = kd__config_copy(&c, sizeof c, cfg, cfg->struct_size, sizeof c);
        if (st != KD_OK) return st;
    }
    if (c.quant_bits < 1 || c.quant_bits > 8)
        return kd__fail(ctx, KD_E_INVALID, "quant_bits %u is outside 1..8", c.quant_bits);
    if (!isfinite(c.quant_max) || c.quant_max < 0.0f)
        return kd__fail(ctx, KD_E_INVALID, "quant_max %g must be finite and >= 0", (double)c.quant_max);
    kd_sparse_index_builder *b = (kd_sparse_index_builder *)kd__calloc(ctx, 1, sizeof *b);
    if (!b) return KD_E_NOMEM;
    b->ctx = ctx;
    b->cfg = c;
    *out = b;
    return KD_OK;
}

void kd_sparse_index_builder_destroy(kd_sparse_index_builder *b)
{
    if (!b) return;
    kd_context *ctx = b->ctx;
    kd__free(ctx, b->tmp_f);
    kd__free(ctx, b->tmp_u);
    kd__free(ctx, b->btf);
    kd__free(ctx, b->bterm);
    kd__free(ctx, b->lw);
    kd__free(ctx, b->lterm);
    kd__free(ctx, b->docs);
    kd__free(ctx, b);
}


/* Typed in-place sorts (quicksort, median of three, insertion sort below 16
 * elements, recursion on the smaller side): qsort's indirect comparisons
 * dominated building (glibc's merge sort through a function pointer). */
#define KD_SPX_SORT(NAME, T)                                                    \
    static void NAME(T *a, size_t n)                                            \
    {                                                                           \
        while (n > 16) {                                                        \
            T x = a[0], y = a[n / 2], z = a[n - 1], p;                          \
            p = x < y ? (y < z ? y : (x < z ? z : x)) : (x < z ? x : (y < z ? z : y)); \
            size_t i = 0, j = n - 1;                                            \
            for (;;) {                                                          \
                while (a[i] < p) i++;                                           \
                while (p < a[j]) j--;                                           \
                if (i >= j) break;                                              \
                T t = a[i];                                                     \
                a[i++] = a[j];                                                  \
                a[j--] = t;                                                     \
            }                                                                   \
            /* [0, j] <= p <= [j + 1, n) */                                     \
            if (j + 1 < n - j - 1) {                                            \
                NAME(a, j + 1);                                                 \
                a += j + 1;                                                     \
                n -= j + 1;                                                     \
            } else {                                                            \
                NAME(a + j + 1, n - j - 1);                                     \
                n = j + 1;                                                      \
            }                                                                   \
        }                                                                       \
        for (size_t i = 1; i < n; i++) {                                        \
            T x = a[i];                                                         \
            size_t j = i;                                                       \
            while (j > 0 && x < a[j - 1]) {                                     \
                a[j] = a[j - 1];                                                \
                j--;                                                            \
            }                                                                   \
            a[j] = x;                                                           \
        }                                                                       \
    }
KD_SPX_SORT(sort_u32, uint32_t)
KD_SPX_SORT(sort_u64, uint64_t)
#undef KD_SPX_SORT

kd_status kd_sparse_index_builder_add(kd_sparse_index_builder *b, uint32_t doc_id,
                                      const uint32_t *term_ids, const float *weights, size_t nnz,
                                      const uint32_t *tokens, size_t ntokens)
{
    if (!b) return KD_E_INVALID;
    kd_context *ctx = b->ctx;
    if (nnz && (!term_ids || !weights))
        return kd__fail(ctx, KD_E_INVALID, "builder_add: NULL term ids or weights with nnz %zu", nnz);
    if (ntokens && !tokens)
        return kd__fail(ctx, KD_E_INVALID, "builder_add: NULL tokens with ntokens %zu", ntokens);
    if (ntokens > 0x7FFFFFFFu || nnz > UINT32_MAX)
        return kd__fail(ctx, KD_E_INVALID, "builder_add: document too long");
    if (b->ndocs >= (size_t)UINT32_MAX - 1)
        return kd__fail(ctx, KD_E_INVALID, "builder_add: too many documents");
    for (size_t i = 0; i < nnz; i++)
        if (!isfinite(weights[i]) || weights[i] < 0.0f)
            return kd__fail(ctx, KD_E_INVALID, "builder_add: doc %u weight %zu is %g (need finite >= 0)",
                            doc_id, i, (double)weights[i]);
    size_t big = nnz > ntokens ? nnz : ntokens;
    /* tmp_u holds the learned part's 64-bit (term, position) keys: 2 u32 each */
    if (!grow(ctx, (void **)&b->tmp_u, &b->cap_tmp, 2 * big + 2, sizeof(uint32_t))) return KD_E_NOMEM;
    if (!grow(ctx, (void **)&b->docs, &b->cap_docs, b->ndocs + 1, sizeof(bdoc))) return KD_E_NOMEM;
    if (!grow2(ctx, (void **)&b->lterm, (void **)&b->lw, &b->cap_l, b->nl + nnz, sizeof(uint32_t),
               sizeof(float)))
        return KD_E_NOMEM;
    if (!grow2(ctx, (void **)&b->bterm, (void **)&b->btf, &b->cap_b, b->nb + ntokens,
               sizeof(uint32_t), sizeof(uint32_t)))
        return KD_E_NOMEM;
    bdoc *d = &b->docs[b->ndocs];
    d->ext_id = doc_id;
    d->len = (uint32_t)ntokens;
    /* learned part: sort by (term, position) (so repeated terms are summed
     * in the caller's order), sum duplicates, drop zeros */
    uint64_t *key = (uint64_t *)(void *)b->tmp_u;
    for (size_t i = 0; i < nnz; i++) key[i] = (uint64_t)term_ids[i] << 32 | (uint64_t)i;
    sort_u64(key, nnz);
    d->loff = b->nl;
    size_t n = 0;
    for (size_t i = 0; i < nnz;) {
        uint32_t t = (uint32_t)(key[i] >> 32);
        float s = 0.0f;
        while (i < nnz && (uint32_t)(key[i] >> 32) == t) s += weights[(uint32_t)key[i++]];
        if (!isfinite(s))
            return kd__fail(ctx, KD_E_INVALID, "builder_add: doc %u term %u weight overflows", doc_id, t);
        if (s > 0.0f) {
            b->lterm[b->nl + n] = t;
            b->lw[b->nl + n] = s;
            if (s > b->maxw) b->maxw = s;
            n++;
        }
    }
    d->lcount = (uint32_t)n;
    /* BM25 part: sorted tokens -> (token, tf) */
    uint32_t *tk = b->tmp_u;
    memcpy(tk, tokens ? tokens : tk, ntokens * sizeof *tk);
    sort_u32(tk, ntokens);
    d->boff = b->nb;
    n = 0;
    for (size_t i = 0; i < ntokens;) {
        uint32_t t = tk[i];
        uint32_t c = 0;
        while (i < ntokens && tk[i] == t) {
            c++;
            i++;
        }
        b->bterm[b->nb + n] = t;
        b->btf[b->nb + n] = c;
        n++;
    }
    d->bcount = (uint32_t)n;
    b->nl += d->lcount;
    b->nb += d->bcount;
    b->ndocs++;
    return KD_OK;
}

/* ---- build ------------------------------------------------------------ */

typedef struct {
    uint32_t ext;
    uint32_t pos;
} ext_pos;

static int cmp_ext(const void *a, const void *b)
{
    const ext_pos *x = (const ext_pos *)a, *y = (const ext_pos *)b;
    if (x->ext != y->ext) return (x->ext > y->ext) - (x->ext < y->ext);
    return (x->pos > y->pos) - (x->pos < y->pos);
}

/* A field in construction: postings grouped by term (CSR over terms). */
typedef struct {
    uint32_t *terms;   /* distinct term ids, ascending */
    size_t nterms;
    uint64_t *start;   /* nterms + 1 posting offsets */
    uint32_t *pdoc;    /* postings: internal doc */
    uint32_t *pval;    /* impact or tf */
    size_t np;
    size_t nblocks;
    kd__spx_block *blocks;
    uint64_t post_bytes;
} bfield;

static void bfield_free(kd_context *ctx, bfield *f)
{
    kd__free(ctx, f->blocks);
    kd__free(ctx, f->pval);
    kd__free(ctx, f->pdoc);
    kd__free(ctx, f->start);
    kd__free(ctx, f->terms);
    memset(f, 0, sizeof *f);
}

static size_t find_term(const uint32_t *terms, size_t n, uint32_t t)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (terms[mid] < t) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

/* Groups one field's postings by term. kind 0: learned (vals = quantised
 * impacts of lw), 1: BM25 (vals = tf). order[i] = builder doc of internal i. */
static kd_status field_build(kd_sparse_index_builder *b, int kind, const uint32_t *order,
                             float scale, uint32_t levels, const uint32_t *dl, bfield *f)
{
    kd_context *ctx = b->ctx;
    const uint32_t *pt = kind == 0 ? b->lterm : b->bterm;
    size_t np = kind == 0 ? b->nl : b->nb;
    memset(f, 0, sizeof *f);
    f->np = np;
    /* distinct terms. Term ids up to about the number of postings (the usual
     * case: a vocabulary) go through a dense map term -> index, built by
     * counting; larger ids sort a copy of the postings' terms. */
    uint32_t tmax = 0;
    for (size_t i = 0; i < np; i++)
        if (pt[i] > tmax) tmax = pt[i];
    uint32_t *dmap = NULL; /* [tmax + 1]: index + 1 of a term, 0 = absent */
    if (np && (uint64_t)tmax < 2 * (uint64_t)np + 65536) {
        dmap = (uint32_t *)kd__calloc(ctx, (size_t)tmax + 1, sizeof *dmap);
        if (!dmap) return KD_E_NOMEM;
    }
    uint32_t *all = NULL;
    size_t nt = 0;
    if (dmap) {
        for (size_t i = 0; i < np; i++) dmap[pt[i]] = 1;
        for (size_t t = 0; t <= tmax; t++) nt += dmap[t];
        all = (uint32_t *)kd__calloc(ctx, nt ? nt : 1, sizeof *all);
        if (!all) {
            kd__free(ctx, dmap);
            return KD_E_NOMEM;
        }
        nt = 0;
        for (size_t t = 0; t <= tmax; t++)
            if (dmap[t]) {
                all[nt++] = (uint32_t)t;
                dmap[t] = (uint32_t)nt;
            }
    } else {
        all = (uint32_t *)kd__calloc(ctx, np ? np : 1, sizeof *all);
        if (!all) return KD_E_NOMEM;
        if (np) memcpy(all, pt, np * sizeof *all);
        sort_u32(all, np);
        for (size_t i = 0; i < np; i++)
            if (i == 0 || all[i] != all[i - 1]) all[nt++] = all[i];
    }
    f->terms = all;
    f->nterms = nt;
    f->start = (uint64_t *)kd__calloc(ctx, nt + 1, sizeof *f->start);
    f->pdoc = (uint32_t *)kd__calloc(ctx, np ? np : 1, sizeof *f->pdoc);
    f->pval = (uint32_t *)kd__calloc(ctx, np ? np : 1, sizeof *f->pval);
    /* term index of each posting, reused as a counter pass then a fill pass */
    uint32_t *tix = (uint32_t *)kd__calloc(ctx, np ? np : 1, sizeof *tix);
    if (!f->start || !f->pdoc || !f->pval || !tix) {
        kd__free(ctx, tix);
        kd__free(ctx, dmap);
        return KD_E_NOMEM;
    }
    for (size_t i = 0; i < np; i++) {
        size_t t = dmap ? (size_t)dmap[pt[i]] - 1 : find_term(f->terms, nt, pt[i]);
        tix[i] = (uint32_t)t;
        f->start[t + 1]++;
    }
    kd__free(ctx, dmap);
    for (size_t t = 0; t < nt; t++) f->start[t + 1] += f->start[t];
    uint64_t *fill = (uint64_t *)kd__calloc(ctx, nt ? nt : 1, sizeof *fill);
    if (!fill) {
        kd__free(ctx, tix);
        return KD_E_NOMEM;
    }
    memcpy(fill, f->start, nt * sizeof *fill);
    for (uint32_t di = 0; di < (uint32_t)b->ndocs; di++) {
        const bdoc *d = &b->docs[order[di]];
        uint64_t off = kind == 0 ? d->loff : d->boff;
        uint32_t cnt = kind == 0 ? d->lcount : d->bcount;
        for (uint32_t j = 0; j < cnt; j++) {
            uint64_t p = off + j;
            uint64_t at = fill[tix[p]]++;
            f->pdoc[at] = di;
            if (kind == 0) {
                double q = (double)b->lw[p] / (double)scale;
                uint32_t v = q >= (double)levels ? levels : (uint32_t)(q + 0.5);
                if (v < 1) v = 1; /* a non-zero weight never quantises to 0 */
                if (v > levels) v = levels;
                f->pval[at] = v;
            } else {
                f->pval[at] = b->btf[p];
            }
        }
    }
    kd__free(ctx, fill);
    kd__free(ctx, tix);
    /* blocks */
    size_t nbk = 0;
    for (size_t t = 0; t < nt; t++) nbk += (size_t)((f->start[t + 1] - f->start[t] + KD_SPX_BLOCK - 1) / KD_SPX_BLOCK);
    f->nblocks = nbk;
    f->blocks = (kd__spx_block *)kd__calloc(ctx, nbk ? nbk : 1, sizeof *f->blocks);
    if (!f->blocks) return KD_E_NOMEM;
    uint32_t gaps[KD_SPX_BLOCK], vals[KD_SPX_BLOCK];
    size_t bi = 0;
    uint64_t off = 0;
    for (size_t t = 0; t < nt; t++) {
        uint64_t s = f->start[t], e = f->start[t + 1];
        uint32_t base = 0;
        for (uint64_t p = s; p < e; p += KD_SPX_BLOCK) {
            size_t n = (size_t)(e - p < KD_SPX_BLOCK ? e - p : KD_SPX_BLOCK);
            uint32_t maxg = 0, maxv = 0, maxv1 = 0, minl = UINT32_MAX;
            for (size_t i = 0; i < n; i++) {
                uint32_t doc = f->pdoc[p + i];
                gaps[i] = i == 0 ? doc - base : doc - f->pdoc[p + i - 1] - 1;
                if (gaps[i] > maxg) maxg = gaps[i];
                vals[i] = f->pval[p + i];
                if (vals[i] > maxv) maxv = vals[i];
                if (vals[i] - 1 > maxv1) maxv1 = vals[i] - 1;
                if (kind == 1 && dl[doc] < minl) minl = dl[doc];
            }
            size_t nbytes = 1 + packed_bytes(n, bit_width(maxg));
            nbytes += kind == 0 ? n : 1 + packed_bytes(n, bit_width(maxv1));
            kd__spx_block *bk = &f->blocks[bi++];
            bk->offset = off;
            bk->last_doc = f->pdoc[p + n - 1];
            bk->nbytes = (uint32_t)nbytes;
            bk->max_val = maxv;
            bk->min_len = kind == 1 ? minl : 0;
            off += nbytes;
            base = bk->last_doc + 1;
        }
    }
    f->post_bytes = off;
    return KD_OK;
}

static void field_write(const bfield *f, int kind, unsigned char *terms_out,
                        unsigned char *blocks_out, unsigned char *post_out)
{
    uint32_t gaps[KD_SPX_BLOCK], vals[KD_SPX_BLOCK];
    size_t bi = 0;
    for (size_t t = 0; t < f->nterms; t++) {
        uint64_t s = f->start[t], e = f->start[t + 1];
        uint32_t tmax = 0, tmin = UINT32_MAX;
        size_t first = bi;
        uint32_t base = 0;
        for (uint64_t p = s; p < e; p += KD_SPX_BLOCK) {
            size_t n = (size_t)(e - p < KD_SPX_BLOCK ? e - p : KD_SPX_BLOCK);
            const kd__spx_block *bk = &f->blocks[bi++];
            uint32_t maxg = 0, maxv1 = 0;
            for (size_t i = 0; i < n; i++) {
                uint32_t doc = f->pdoc[p + i];
                gaps[i] = i == 0 ? doc - base : doc - f->pdoc[p + i - 1] - 1;
                if (gaps[i] > maxg) maxg = gaps[i];
                vals[i] = kind == 0 ? f->pval[p + i] : f->pval[p + i] - 1;
                if (vals[i] > maxv1) maxv1 = vals[i];
            }
            unsigned char *q = post_out + bk->offset;
            unsigned w = bit_width(maxg);
            *q++ = (unsigned char)w;
            q = pack(q, gaps, n, w);
            if (kind == 0) {
                for (size_t i = 0; i < n; i++) *q++ = (unsigned char)vals[i];
            } else {
                unsigned w2 = bit_width(maxv1);
                *q++ = (unsigned char)w2;
                q = pack(q, vals, n, w2);
            }
            if (bk->max_val > tmax) tmax = bk->max_val;
            if (bk->min_len < tmin) tmin = bk->min_len;
            base = bk->last_doc + 1;
            unsigned char *r = blocks_out + (bi - 1) * 24;
            kd__spx_wr64(r, bk->offset);
            kd__spx_wr32(r + 8, bk->last_doc);
            kd__spx_wr32(r + 12, bk->nbytes);
            kd__spx_wr32(r + 16, bk->max_val);
            kd__spx_wr32(r + 20, bk->min_len);
        }
        unsigned char *r = terms_out + t * 24;
        kd__spx_wr32(r, f->terms[t]);
        kd__spx_wr32(r + 4, (uint32_t)(e - s));
        kd__spx_wr64(r + 8, (uint64_t)first);
        kd__spx_wr32(r + 16, tmax);
        kd__spx_wr32(r + 20, kind == 1 ? tmin : 0);
    }
}

static uint64_t align8(uint64_t x) { return (x + 7) & ~(uint64_t)7; }

kd_status kd_sparse_index_build(kd_sparse_index_builder *b, kd_sparse_index **out)
{
    if (!b || !out) return b ? kd__fail(b->ctx, KD_E_INVALID, "kd_sparse_index_build: out is NULL")
                             : KD_E_INVALID;
    kd_context *ctx = b->ctx;
    *out = NULL;
    if (!kd__spx_little_endian())
        return kd__fail(ctx, KD_E_UNSUPPORTED, "sparse index: big-endian hosts are not supported");
    size_t nd = b->ndocs;
    kd_status st = KD_OK;
    ext_pos *ep = (ext_pos *)kd__calloc(ctx, nd ? nd : 1, sizeof *ep);
    uint32_t *order = (uint32_t *)kd__calloc(ctx, nd ? nd : 1, sizeof *order);
    uint32_t *dl = (uint32_t *)kd__calloc(ctx, nd ? nd : 1, sizeof *dl);
    bfield f[2];
    memset(f, 0, sizeof f);
    unsigned char *img = NULL;
    kd_sparse_index *idx = NULL;
    if (!ep || !order || !dl) {
        st = KD_E_NOMEM;
        goto done;
    }
    for (size_t i = 0; i < nd; i++) {
        ep[i].ext = b->docs[i].ext_id;
        ep[i].pos = (uint32_t)i;
    }
    qsort(ep, nd, sizeof *ep, cmp_ext);
    uint64_t total_len = 0;
    for (size_t i = 0; i < nd; i++) {
        if (i > 0 && ep[i].ext == ep[i - 1].ext) {
            st = kd__fail(ctx, KD_E_INVALID, "kd_sparse_index_build: duplicate doc id %u", ep[i].ext);
            goto done;
        }
        order[i] = ep[i].pos;
        dl[i] = b->docs[ep[i].pos].len;
        total_len += dl[i];
    }
    uint32_t levels = (1u << b->cfg.quant_bits) - 1u;
    float range = b->cfg.quant_max > 0.0f ? b->cfg.quant_max : b->maxw;
    float scale = range > 0.0f ? range / (float)levels : 1.0f;
    if (!(scale > 0.0f) || !isfinite(scale)) scale = 1.0f;
    for (int k = 0; k < 2; k++) {
        st = field_build(b, k, order, scale, levels, dl, &f[k]);
        if (st != KD_OK) goto done;
    }
    /* layout */
    uint64_t sz[KD_SPX_NSECT], off[KD_SPX_NSECT];
    sz[KD_SPX_DOCS] = (uint64_t)nd * 8;
    for (int k = 0; k < 2; k++) {
        sz[1 + 3 * k] = (uint64_t)f[k].nterms * 24;
        sz[2 + 3 * k] = (uint64_t)f[k].nblocks * 24;
        sz[3 + 3 * k] = f[k].post_bytes;
    }
    uint64_t pos = KD_SPX_HEADER_SIZE;
    for (unsigned i = 0; i < KD_SPX_NSECT; i++) {
        pos = align8(pos);
        off[i] = pos;
        pos += sz[i];
    }
    if (pos > SIZE_MAX) {
        st = kd__fail(ctx, KD_E_OVERFLOW, "sparse index image of %llu bytes", (unsigned long long)pos);
        goto done;
    }
    img = (unsigned char *)kd__calloc(ctx, (size_t)pos, 1);
    if (!img) {
        st = KD_E_NOMEM;
        goto done;
    }
    for (size_t i = 0; i < nd; i++) {
        kd__spx_wr32(img + off[0] + 8 * i, ep[i].ext);
        kd__spx_wr32(img + off[0] + 8 * i + 4, dl[i]);
    }
    for (int k = 0; k < 2; k++)
        field_write(&f[k], k, img + off[1 + 3 * k], img + off[2 + 3 * k], img + off[3 + 3 * k]);
    memcpy(img, KD_SPX_MAGIC, 8);
    kd__spx_wr32(img + 8, KD_SPX_VERSION);
    kd__spx_wr32(img + 12, KD_SPX_HEADER_SIZE);
    kd__spx_wr32(img + 16, KD_SPX_NSECT);
    kd__spx_wr32(img + 20, b->cfg.quant_bits);
    kd__spx_wr64(img + 24, nd);
    kd__spx_wr64(img + 32, total_len);
    uint32_t sbits;
    memcpy(&sbits, &scale, 4);
    kd__spx_wr32(img + 40, sbits);
    kd__spx_wr32(img + 44, KD_SPX_BLOCK);
    for (unsigned i = 0; i < KD_SPX_NSECT; i++) {
        unsigned char *e = img + KD_SPX_HEADER + 24 * i;
        kd__spx_wr32(e, i + 1);
        kd__spx_wr32(e + 4, kd_crc32c(0, img + off[i], (size_t)sz[i]));
        kd__spx_wr64(e + 8, off[i]);
        kd__spx_wr64(e + 16, sz[i]);
    }
    uint32_t hc = kd_crc32c(0, img, 60);
    hc = kd_crc32c(hc, img + KD_SPX_HEADER, KD_SPX_NSECT * 24);
    kd__spx_wr32(img + 60, hc);
    idx = (kd_sparse_index *)kd__calloc(ctx, 1, sizeof *idx);
    if (!idx) {
        st = KD_E_NOMEM;
        goto done;
    }
    idx->ctx = ctx;
    idx->owned = img;
    idx->image = img;
    idx->size = (size_t)pos;
    img = NULL;
    st = kd__spx_open_image(ctx, idx);
    if (st != KD_OK) {
        kd_sparse_index_destroy(idx);
        idx = NULL;
        goto done;
    }
    *out = idx;
done:
    kd__free(ctx, img);
    bfield_free(ctx, &f[1]);
    bfield_free(ctx, &f[0]);
    kd__free(ctx, dl);
    kd__free(ctx, order);
    kd__free(ctx, ep);
    return st;
}

/* ---- validation ------------------------------------------------------- */

#define BAD(st, ...) return kd__fail(ctx, st, "sparse index: " __VA_ARGS__)

static kd_status check_field(kd_context *ctx, kd_sparse_index *idx, int kind, uint32_t *gbuf,
                             uint32_t *vbuf)
{
    const char *nm = kind == 0 ? "learned" : "bm25";
    kd__spx_field *f = &idx->f[kind];
    uint32_t levels = (1u << idx->quant_bits) - 1u;
    uint64_t next_block = 0, next_off = 0, npost = 0;
    for (size_t t = 0; t < f->nterms; t++) {
        const kd__spx_term *tr = &f->terms[t];
        if (t > 0 && tr->term <= f->terms[t - 1].term)
            BAD(KD_E_FORMAT, "%s term %zu: ids not strictly ascending", nm, t);
        if (tr->df == 0 || tr->df > idx->n_docs)
            BAD(KD_E_FORMAT, "%s term %u: df %u outside 1..%u", nm, tr->term, tr->df, idx->n_docs);
        uint64_t nb = ((uint64_t)tr->df + KD_SPX_BLOCK - 1) / KD_SPX_BLOCK;
        if (tr->first_block != next_block || nb > f->nblocks - next_block)
            BAD(KD_E_FORMAT, "%s term %u: block range [%llu, +%llu) invalid", nm, tr->term,
                (unsigned long long)tr->first_block, (unsigned long long)nb);
        uint32_t tmax = 0, tmin = UINT32_MAX;
        uint64_t base = 0;
        for (uint64_t j = 0; j < nb; j++) {
            const kd__spx_block *bk = &f->blocks[next_block + j];
            size_t n = j + 1 < nb ? KD_SPX_BLOCK : (size_t)(tr->df - (nb - 1) * KD_SPX_BLOCK);
            if (bk->offset != next_off || bk->nbytes > f->post_size ||
                bk->offset > f->post_size - bk->nbytes)
                BAD(KD_E_FORMAT, "%s term %u block %llu: bytes [%llu, +%u) invalid", nm, tr->term,
                    (unsigned long long)j, (unsigned long long)bk->offset, bk->nbytes);
            if (bk->last_doc >= idx->n_docs || bk->last_doc < base)
                BAD(KD_E_FORMAT, "%s term %u block %llu: last doc %u invalid", nm, tr->term,
                    (unsigned long long)j, bk->last_doc);
            const unsigned char *p = f->post + bk->offset;
            size_t left = bk->nbytes;
            if (left < 1) BAD(KD_E_FORMAT, "%s term %u: empty block", nm, tr->term);
            unsigned w = p[0];
            if (w > 32) BAD(KD_E_FORMAT, "%s term %u: gap width %u", nm, tr->term, w);
            size_t need = 1 + packed_bytes(n, w);
            if (need > left) BAD(KD_E_FORMAT, "%s term %u: block data truncated", nm, tr->term);
            kd__spx_unpack(p + 1, n, w, gbuf);
            p += need;
            left -= need;
            uint64_t doc = base;
            uint32_t bmax = 0, bmin = UINT32_MAX;
            if (kind == 0) {
                if (left != n) BAD(KD_E_FORMAT, "%s term %u: block size mismatch", nm, tr->term);
                for (size_t i = 0; i < n; i++) vbuf[i] = p[i];
            } else {
                if (left < 1) BAD(KD_E_FORMAT, "%s term %u: block data truncated", nm, tr->term);
                unsigned w2 = p[0];
                if (w2 > 31) BAD(KD_E_FORMAT, "%s term %u: tf width %u", nm, tr->term, w2);
                if (left != 1 + packed_bytes(n, w2))
                    BAD(KD_E_FORMAT, "%s term %u: block size mismatch", nm, tr->term);
                kd__spx_unpack(p + 1, n, w2, vbuf);
                for (size_t i = 0; i < n; i++) vbuf[i] += 1;
            }
            for (size_t i = 0; i < n; i++) {
                doc += gbuf[i] + (i > 0 ? 1u : 0u);
                if (doc >= idx->n_docs)
                    BAD(KD_E_FORMAT, "%s term %u: doc %llu out of range", nm, tr->term,
                        (unsigned long long)doc);
                uint32_t v = vbuf[i];
                if (kind == 0 && (v < 1 || v > levels))
                    BAD(KD_E_FORMAT, "%s term %u: impact %u outside 1..%u", nm, tr->term, v, levels);
                if (v > bmax) bmax = v;
                if (kind == 1 && idx->docs[doc].len < bmin) bmin = idx->docs[doc].len;
            }
            if (doc != bk->last_doc)
                BAD(KD_E_FORMAT, "%s term %u: block ends at doc %llu, table says %u", nm, tr->term,
                    (unsigned long long)doc, bk->last_doc);
            if (kind == 0) bmin = 0;
            if (bmax != bk->max_val || bmin != bk->min_len)
                BAD(KD_E_FORMAT, "%s term %u: block bounds do not match its postings", nm, tr->term);
            if (bmax > tmax) tmax = bmax;
            if (bmin < tmin) tmin = bmin;
            base = (uint64_t)bk->last_doc + 1;
            next_off += bk->nbytes;
        }
        if (tmax != tr->max_val || tmin != tr->min_len)
            BAD(KD_E_FORMAT, "%s term %u: term bounds do not match its blocks", nm, tr->term);
        next_block += nb;
        npost += tr->df;
    }
    if (next_block != f->nblocks) BAD(KD_E_FORMAT, "%s: %zu blocks, terms use %llu", nm, f->nblocks,
                                      (unsigned long long)next_block);
    if (next_off != f->post_size) BAD(KD_E_FORMAT, "%s: %zu posting bytes, blocks use %llu", nm,
                                      f->post_size, (unsigned long long)next_off);
    f->npostings = npost;
    return KD_OK;
}

kd_status kd__spx_open_image(kd_context *ctx, kd_sparse_index *idx)
{
    const unsigned char *p = idx->image;
    size_t size = idx->size;
    if (!kd__spx_little_endian())
        BAD(KD_E_UNSUPPORTED, "big-endian hosts are not supported");
    if (size < 8 || memcmp(p, KD_SPX_MAGIC, 7) != 0) BAD(KD_E_FORMAT, "bad magic (not a libkd sparse index)");
    if (size < KD_SPX_HEADER_SIZE) BAD(KD_E_FORMAT, "truncated header (%zu bytes)", size);
    if (p[7] != 1 || kd__spx_rd32(p + 8) != KD_SPX_VERSION)
        BAD(KD_E_VERSION, "format version %u (magic byte %u) is not supported (want %u)",
            kd__spx_rd32(p + 8), p[7], KD_SPX_VERSION);
    if (kd__spx_rd32(p + 12) != KD_SPX_HEADER_SIZE || kd__spx_rd32(p + 16) != KD_SPX_NSECT)
        BAD(KD_E_FORMAT, "header size %u / section count %u unexpected", kd__spx_rd32(p + 12),
            kd__spx_rd32(p + 16));
    uint32_t hc = kd_crc32c(0, p, 60);
    hc = kd_crc32c(hc, p + KD_SPX_HEADER, KD_SPX_NSECT * 24);
    if (hc != kd__spx_rd32(p + 60)) BAD(KD_E_CORRUPT, "header checksum mismatch");
    idx->quant_bits = kd__spx_rd32(p + 20);
    uint64_t nd = kd__spx_rd64(p + 24);
    idx->total_len = kd__spx_rd64(p + 32);
    uint32_t sbits = kd__spx_rd32(p + 40);
    memcpy(&idx->scale, &sbits, 4);
    if (idx->quant_bits < 1 || idx->quant_bits > 8) BAD(KD_E_FORMAT, "quant_bits %u", idx->quant_bits);
    if (nd >= KD_SPX_END) BAD(KD_E_FORMAT, "document count %llu too large", (unsigned long long)nd);
    if (!isfinite(idx->scale) || !(idx->scale > 0.0f)) BAD(KD_E_FORMAT, "quantisation scale %g", (double)idx->scale);
    if (kd__spx_rd32(p + 44) != KD_SPX_BLOCK) BAD(KD_E_FORMAT, "block size %u", kd__spx_rd32(p + 44));
    for (unsigned i = 48; i < 60; i++)
        if (p[i]) BAD(KD_E_FORMAT, "reserved header bytes are not zero");
    idx->n_docs = (uint32_t)nd;
    const unsigned char *sec[KD_SPX_NSECT];
    uint64_t ssz[KD_SPX_NSECT];
    uint64_t end = KD_SPX_HEADER_SIZE;
    for (unsigned i = 0; i < KD_SPX_NSECT; i++) {
        const unsigned char *e = p + KD_SPX_HEADER + 24 * i;
        uint64_t off = kd__spx_rd64(e + 8), sz = kd__spx_rd64(e + 16);
        if (kd__spx_rd32(e) != i + 1) BAD(KD_E_FORMAT, "section %u has id %u", i + 1, kd__spx_rd32(e));
        /* sections follow each other at the next 8-byte boundary, so every
         * byte of a valid file is covered by a checksum or is zero padding */
        if (off != ((end + 7) & ~(uint64_t)7) || off > size || sz > size - off)
            BAD(KD_E_FORMAT, "section %u: bytes [%llu, +%llu) misplaced or outside the %zu-byte file",
                i + 1, (unsigned long long)off, (unsigned long long)sz, size);
        for (uint64_t z = end; z < off; z++)
            if (p[z]) BAD(KD_E_FORMAT, "non-zero padding before section %u", i + 1);
        end = off + sz;
        if (kd_crc32c(0, p + off, (size_t)sz) != kd__spx_rd32(e + 4))
            BAD(KD_E_CORRUPT, "section %u checksum mismatch", i + 1);
        sec[i] = p + off;
        ssz[i] = sz;
    }
    if (end != size) BAD(KD_E_FORMAT, "file is %zu bytes, sections end at %llu", size, (unsigned long long)end);
    if (ssz[KD_SPX_DOCS] != nd * 8) BAD(KD_E_FORMAT, "document table size %llu for %llu docs",
                                        (unsigned long long)ssz[KD_SPX_DOCS], (unsigned long long)nd);
    idx->docs = (const kd__spx_doc *)(const void *)sec[KD_SPX_DOCS];
    uint64_t tl = 0;
    for (uint32_t i = 0; i < idx->n_docs; i++) {
        if (i > 0 && idx->docs[i].ext_id <= idx->docs[i - 1].ext_id)
            BAD(KD_E_FORMAT, "document ids not strictly ascending at %u", i);
        tl += idx->docs[i].len;
    }
    if (tl != idx->total_len) BAD(KD_E_FORMAT, "document lengths sum to %llu, header says %llu",
                                  (unsigned long long)tl, (unsigned long long)idx->total_len);
    for (int k = 0; k < 2; k++) {
        kd__spx_field *f = &idx->f[k];
        unsigned t = 1 + 3 * k;
        if (ssz[t] % 24 || ssz[t + 1] % 24)
            BAD(KD_E_FORMAT, "%s dictionary/block table sizes not multiples of 24", k ? "bm25" : "learned");
        f->terms = (const kd__spx_term *)(const void *)sec[t];
        f->nterms = (size_t)(ssz[t] / 24);
        f->blocks = (const kd__spx_block *)(const void *)sec[t + 1];
        f->nblocks = (size_t)(ssz[t + 1] / 24);
        f->post = sec[t + 2];
        f->post_size = (size_t)ssz[t + 2];
    }
    uint32_t gbuf[KD_SPX_BLOCK], vbuf[KD_SPX_BLOCK];
    for (int k = 0; k < 2; k++) {
        kd_status st = check_field(ctx, idx, k, gbuf, vbuf);
        if (st != KD_OK) return st;
    }
    return KD_OK;
}

void kd_sparse_index_destroy(kd_sparse_index *idx)
{
    if (!idx) return;
    kd_context *ctx = idx->ctx;
#if !defined(KD_EMBEDDED)
    if (idx->mapped) kd__unmap_file(&idx->map);
#endif
    kd__free(ctx, idx->owned);
    kd__free(ctx, idx);
}

kd_status kd_sparse_index_load_memory(kd_context *ctx, const void *data, size_t size,
                                      kd_sparse_index **out)
{
    if (!out) return kd__fail(ctx, KD_E_INVALID, "kd_sparse_index_load_memory: out is NULL");
    *out = NULL;
    if (!data && size) return kd__fail(ctx, KD_E_INVALID, "kd_sparse_index_load_memory: NULL data");
    kd_sparse_index *idx = (kd_sparse_index *)kd__calloc(ctx, 1, sizeof *idx);
    if (!idx) return KD_E_NOMEM;
    idx->ctx = ctx;
    if (((uintptr_t)data & 7u) != 0) {
        idx->owned = (unsigned char *)kd__alloc(ctx, size ? size : 1);
        if (!idx->owned) {
            kd__free(ctx, idx);
            return KD_E_NOMEM;
        }
        memcpy(idx->owned, data, size);
        idx->image = idx->owned;
    } else {
        idx->image = (const unsigned char *)data;
    }
    idx->size = size;
    kd_status st = kd__spx_open_image(ctx, idx);
    if (st != KD_OK) {
        kd_sparse_index_destroy(idx);
        return st;
    }
    *out = idx;
    return KD_OK;
}

kd_status kd_sparse_index_stats_get(const kd_sparse_index *idx, kd_sparse_index_stats *st)
{
    if (!idx || !st) return KD_E_INVALID;
    if (st->struct_size < sizeof(uint32_t)) return KD_E_VERSION;
    kd_sparse_index_stats s;
    memset(&s, 0, sizeof s);
    s.struct_size = sizeof s;
    s.n_docs = idx->n_docs;
    s.n_terms = idx->f[0].nterms;
    s.n_postings = idx->f[0].npostings;
    s.n_bm25_terms = idx->f[1].nterms;
    s.n_bm25_postings = idx->f[1].npostings;
    s.bytes = idx->size;
    s.postings_bytes = idx->f[0].post_size + 24u * (idx->f[0].nblocks + idx->f[0].nterms);
    s.bm25_postings_bytes = idx->f[1].post_size + 24u * (idx->f[1].nblocks + idx->f[1].nterms);
    s.quant_scale = idx->scale;
    s.quant_bits = idx->quant_bits;
    s.avg_doc_len = idx->n_docs ? (double)idx->total_len / (double)idx->n_docs : 0.0;
    size_t n = st->struct_size < sizeof s ? st->struct_size : sizeof s;
    uint32_t keep = st->struct_size;
    memcpy(st, &s, n);
    st->struct_size = keep;
    return KD_OK;
}
