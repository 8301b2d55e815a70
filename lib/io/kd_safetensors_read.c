/*
 * kd_safetensors_read.c - safetensors reader over a borrowed buffer.
 *
 * Opening validates everything once, so the query functions need no checks
 * beyond their arguments:
 *   1. the 8-byte length N: at most KD_SAFETENSORS_MAX_HEADER and inside the
 *      buffer;
 *   2. the JSON header, walked twice with the same code: the first walk
 *      validates it and counts tensors, metadata entries, shape entries and
 *      string bytes; one allocation then holds the handle, and the second walk
 *      fills it (so an arena context works and a failure frees one block);
 *   3. each tensor: known dtype, rank <= KD_SAFETENSORS_MAX_RANK, element
 *      count and byte count without overflow, 0 <= begin <= end <= data size,
 *      end - begin == numel * dtype size;
 *   4. all tensors together, sorted by offset: they tile the data buffer
 *      exactly (no hole, no overlap, nothing after the last);
 *   5. names and metadata keys, sorted: no duplicates.
 * No stdio and no allocator other than the context's: usable in firmware.
 */
#include "kd_json.h"
#include "kd_safetensors_internal.h"

static const struct {
    const char *name;
    kd_st_dtype dtype;
    unsigned char size;
} dtypes[] = {
    {"BOOL", KD_ST_BOOL, 1}, {"U8", KD_ST_U8, 1},   {"I8", KD_ST_I8, 1},
    {"I16", KD_ST_I16, 2},   {"U16", KD_ST_U16, 2}, {"F16", KD_ST_F16, 2},
    {"BF16", KD_ST_BF16, 2}, {"I32", KD_ST_I32, 4}, {"U32", KD_ST_U32, 4},
    {"F32", KD_ST_F32, 4},   {"F64", KD_ST_F64, 8}, {"I64", KD_ST_I64, 8},
    {"U64", KD_ST_U64, 8},   {"F8_E5M2", KD_ST_F8_E5M2, 1}, {"F8_E4M3", KD_ST_F8_E4M3, 1},
};
#define N_DTYPES (sizeof dtypes / sizeof dtypes[0])

const char *kd_st_dtype_name(kd_st_dtype dtype)
{
    for (size_t i = 0; i < N_DTYPES; i++)
        if (dtypes[i].dtype == dtype) return dtypes[i].name;
    return "";
}

size_t kd_st_dtype_size(kd_st_dtype dtype)
{
    for (size_t i = 0; i < N_DTYPES; i++)
        if (dtypes[i].dtype == dtype) return dtypes[i].size;
    return 0;
}

int kd__st_host_le(void)
{
    const uint16_t one = 1;
    unsigned char b;
    memcpy(&b, &one, 1);
    return b == 1;
}

/* ---- sorting --------------------------------------------------------- */

static void swap_bytes(unsigned char *a, unsigned char *b, size_t size)
{
    while (size--) {
        unsigned char t = *a;
        *a++ = *b;
        *b++ = t;
    }
}

static void sift_down(unsigned char *base, size_t root, size_t n, size_t size,
                      int (*cmp)(const void *, const void *))
{
    for (;;) {
        size_t child = 2 * root + 1;
        if (child >= n) return;
        if (child + 1 < n && cmp(base + child * size, base + (child + 1) * size) < 0) child++;
        if (cmp(base + root * size, base + child * size) >= 0) return;
        swap_bytes(base + root * size, base + child * size, size);
        root = child;
    }
}

void kd__st_sort(void *base_, size_t n, size_t size, int (*cmp)(const void *, const void *))
{
    unsigned char *base = (unsigned char *)base_;
    if (n < 2) return;
    for (size_t i = n / 2; i-- > 0;) sift_down(base, i, n, size, cmp);
    for (size_t end = n - 1; end > 0; end--) {
        swap_bytes(base, base + end * size, size);
        sift_down(base, 0, end, size, cmp);
    }
}

static int bytes_cmp(const char *a, size_t na, const char *b, size_t nb)
{
    size_t n = na < nb ? na : nb;
    int c = memcmp(a, b, n);
    if (c != 0) return c;
    return na < nb ? -1 : na > nb ? 1 : 0;
}

static int cmp_tensor_name(const void *a, const void *b)
{
    const kd__st_tensor *x = (const kd__st_tensor *)a, *y = (const kd__st_tensor *)b;
    return bytes_cmp(x->name, x->name_len, y->name, y->name_len);
}

static int cmp_tensor_offset(const void *a, const void *b)
{
    const kd__st_tensor *x = (const kd__st_tensor *)a, *y = (const kd__st_tensor *)b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}

static int cmp_meta_key(const void *a, const void *b)
{
    const kd__st_meta *x = (const kd__st_meta *)a, *y = (const kd__st_meta *)b;
    return bytes_cmp(x->key, x->key_len, y->key, y->key_len);
}

/* The entry of base[0..n) (sorted by cmp, which also orders the parse) that
 * compares equal to key, or NULL: the look-up of tensors by name and of
 * metadata by key. */
static const void *find_sorted(const void *key, const void *base, size_t n, size_t size,
                               int (*cmp)(const void *, const void *))
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const void *e = (const unsigned char *)base + mid * size;
        int c = cmp(e, key);
        if (c == 0) return e;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

/* ---- header walk ------------------------------------------------------ */

typedef struct walk {
    kd_context *ctx;
    const char *what;
    size_t data_size;
    /* counts (first walk) */
    size_t n_tensors, n_meta, n_dims, n_chars;
    /* fill cursors (second walk); NULL during the first */
    kd_safetensors *st;
    size_t *dims;
    char *chars;
} walk;

#define NAME_MSG 48

static kd_status tensor_fail(walk *w, kd_status status, const kd__json_str *name,
                             const char *why)
{
    char buf[NAME_MSG];
    kd__json_decode_prefix(name, buf, sizeof buf);
    return kd__fail(w->ctx, status, "safetensors %s: tensor '%s'%s: %s", w->what, buf,
                    name->len >= NAME_MSG ? "..." : "", why);
}

static kd_status add_chars(walk *w, size_t len)
{
    /* len + 1 cannot overflow: len <= header size <= KD_SAFETENSORS_MAX_HEADER */
    if (kd__add_overflow(w->n_chars, len + 1, &w->n_chars))
        return kd__fail(w->ctx, KD_E_OVERFLOW, "safetensors %s: header too large", w->what);
    return KD_OK;
}

static char *store_string(walk *w, const kd__json_str *s)
{
    char *dst = w->chars;
    kd__json_decode(s, dst);
    w->chars += s->len + 1;
    return dst;
}

static kd_status parse_u64_pair(kd__json *j, walk *w, const kd__json_str *name,
                                uint64_t pair[2])
{
    kd_status st = kd__json_array_begin(j);
    if (st != KD_OK) return st;
    size_t n = 0;
    for (;;) {
        int more;
        st = kd__json_array_next(j, &more);
        if (st != KD_OK) return st;
        if (!more) break;
        if (n == 2) return tensor_fail(w, KD_E_FORMAT, name, "data_offsets has more than 2 entries");
        st = kd__json_u64(j, &pair[n]);
        if (st != KD_OK) return st;
        n++;
    }
    if (n != 2) return tensor_fail(w, KD_E_FORMAT, name, "data_offsets needs 2 entries");
    return KD_OK;
}

static kd_status parse_tensor(kd__json *j, walk *w, const kd__json_str *name)
{
    if (name->len == 0)
        return kd__fail(w->ctx, KD_E_FORMAT, "safetensors %s: a tensor has an empty name", w->what);
    if (name->has_nul) return tensor_fail(w, KD_E_FORMAT, name, "name contains U+0000");
    if (kd__json_peek(j) != '{') return tensor_fail(w, KD_E_FORMAT, name, "entry is not an object");
    kd_status st = kd__json_object_begin(j);
    if (st != KD_OK) return st;

    enum { HAVE_DTYPE = 1, HAVE_SHAPE = 2, HAVE_OFFSETS = 4 };
    unsigned have = 0;
    kd_st_dtype dtype = KD_ST_INVALID;
    size_t esize = 0, rank = 0, shape[KD_SAFETENSORS_MAX_RANK];
    uint64_t off[2] = {0, 0};
    for (;;) {
        int more;
        kd__json_str key;
        st = kd__json_object_next(j, &more, &key);
        if (st != KD_OK) return st;
        if (!more) break;
        if (kd__json_str_eq(&key, "dtype")) {
            if (have & HAVE_DTYPE) return tensor_fail(w, KD_E_FORMAT, name, "\"dtype\" given twice");
            have |= HAVE_DTYPE;
            if (kd__json_peek(j) != '"')
                return tensor_fail(w, KD_E_FORMAT, name, "\"dtype\" is not a string");
            kd__json_str d;
            st = kd__json_string(j, &d);
            if (st != KD_OK) return st;
            for (size_t i = 0; i < N_DTYPES && dtype == KD_ST_INVALID; i++)
                if (kd__json_str_eq(&d, dtypes[i].name)) {
                    dtype = dtypes[i].dtype;
                    esize = dtypes[i].size;
                }
            if (dtype == KD_ST_INVALID) {
                char dn[24], nb[NAME_MSG];
                kd__json_decode_prefix(&d, dn, sizeof dn);
                kd__json_decode_prefix(name, nb, sizeof nb);
                return kd__fail(w->ctx, KD_E_FORMAT, "safetensors %s: tensor '%s': unknown dtype '%s'",
                                w->what, nb, dn);
            }
        } else if (kd__json_str_eq(&key, "shape")) {
            if (have & HAVE_SHAPE) return tensor_fail(w, KD_E_FORMAT, name, "\"shape\" given twice");
            have |= HAVE_SHAPE;
            if (kd__json_peek(j) != '[')
                return tensor_fail(w, KD_E_FORMAT, name, "\"shape\" is not an array");
            st = kd__json_array_begin(j);
            if (st != KD_OK) return st;
            for (;;) {
                st = kd__json_array_next(j, &more);
                if (st != KD_OK) return st;
                if (!more) break;
                if (rank == KD_SAFETENSORS_MAX_RANK)
                    return tensor_fail(w, KD_E_FORMAT, name, "rank exceeds the supported maximum 8");
                uint64_t d;
                if (kd__json_peek(j) == '-')
                    return tensor_fail(w, KD_E_FORMAT, name, "negative dimension");
                st = kd__json_u64(j, &d);
                if (st != KD_OK) return st;
                if (d > (uint64_t)SIZE_MAX)
                    return tensor_fail(w, KD_E_OVERFLOW, name, "dimension does not fit size_t");
                shape[rank++] = (size_t)d;
            }
        } else if (kd__json_str_eq(&key, "data_offsets")) {
            if (have & HAVE_OFFSETS)
                return tensor_fail(w, KD_E_FORMAT, name, "\"data_offsets\" given twice");
            have |= HAVE_OFFSETS;
            if (kd__json_peek(j) != '[')
                return tensor_fail(w, KD_E_FORMAT, name, "\"data_offsets\" is not an array");
            st = parse_u64_pair(j, w, name, off);
            if (st != KD_OK) return st;
        } else {
            /* Unknown fields are ignored, as the reference implementation does. */
            st = kd__json_skip(j);
            if (st != KD_OK) return st;
        }
    }
    if (!(have & HAVE_DTYPE)) return tensor_fail(w, KD_E_FORMAT, name, "no \"dtype\"");
    if (!(have & HAVE_SHAPE)) return tensor_fail(w, KD_E_FORMAT, name, "no \"shape\"");
    if (!(have & HAVE_OFFSETS)) return tensor_fail(w, KD_E_FORMAT, name, "no \"data_offsets\"");

    /* Element count: any zero dimension makes it 0 whatever the others. */
    size_t numel = 1, nbytes;
    int zero = 0, overflow = 0;
    for (size_t i = 0; i < rank; i++) {
        if (shape[i] == 0) zero = 1;
        if (!overflow && kd__mul_overflow(numel, shape[i], &numel)) overflow = 1;
    }
    if (zero) {
        numel = 0;
    } else if (overflow) {
        return tensor_fail(w, KD_E_OVERFLOW, name, "element count of the shape overflows size_t");
    }
    if (kd__mul_overflow(numel, esize, &nbytes))
        return tensor_fail(w, KD_E_OVERFLOW, name, "byte count of the shape overflows size_t");
    if (off[0] > off[1]) return tensor_fail(w, KD_E_FORMAT, name, "data_offsets begin after end");
    if (off[1] > (uint64_t)w->data_size) {
        char nb[NAME_MSG];
        kd__json_decode_prefix(name, nb, sizeof nb);
        return kd__fail(w->ctx, KD_E_FORMAT,
                        "safetensors %s: tensor '%s': data_offsets [%llu, %llu] run past the "
                        "%zu-byte data buffer",
                        w->what, nb, (unsigned long long)off[0], (unsigned long long)off[1],
                        w->data_size);
    }
    if (off[1] - off[0] != (uint64_t)nbytes) {
        char nb[NAME_MSG];
        kd__json_decode_prefix(name, nb, sizeof nb);
        return kd__fail(w->ctx, KD_E_FORMAT,
                        "safetensors %s: tensor '%s': data_offsets span %llu bytes but shape x "
                        "%s needs %zu",
                        w->what, nb, (unsigned long long)(off[1] - off[0]),
                        kd_st_dtype_name(dtype), nbytes);
    }

    if (w->st) {
        kd__st_tensor *t = &w->st->tensors[w->n_tensors];
        t->name = store_string(w, name);
        t->name_len = name->len;
        for (size_t i = 0; i < rank; i++) w->dims[i] = shape[i];
        t->shape = w->dims;
        w->dims += rank;
        t->rank = (uint32_t)rank;
        t->begin = (size_t)off[0];
        t->end = (size_t)off[1];
        t->numel = numel;
        t->dtype = dtype;
    } else {
        st = add_chars(w, name->len);
        if (st != KD_OK) return st;
    }
    w->n_tensors++;
    w->n_dims += rank;
    return KD_OK;
}

static kd_status parse_metadata(kd__json *j, walk *w)
{
    if (kd__json_peek(j) != '{')
        return kd__fail(w->ctx, KD_E_FORMAT, "safetensors %s: \"__metadata__\" is not an object",
                        w->what);
    kd_status st = kd__json_object_begin(j);
    if (st != KD_OK) return st;
    for (;;) {
        int more;
        kd__json_str key, value;
        st = kd__json_object_next(j, &more, &key);
        if (st != KD_OK) return st;
        if (!more) return KD_OK;
        char kb[NAME_MSG];
        kd__json_decode_prefix(&key, kb, sizeof kb);
        if (key.has_nul)
            return kd__fail(w->ctx, KD_E_FORMAT, "safetensors %s: metadata key '%s' contains U+0000",
                            w->what, kb);
        if (kd__json_peek(j) != '"')
            return kd__fail(w->ctx, KD_E_FORMAT,
                            "safetensors %s: metadata value of '%s' is not a string", w->what, kb);
        st = kd__json_string(j, &value);
        if (st != KD_OK) return st;
        if (value.has_nul)
            return kd__fail(w->ctx, KD_E_FORMAT,
                            "safetensors %s: metadata value of '%s' contains U+0000", w->what, kb);
        if (w->st) {
            kd__st_meta *m = &w->st->meta[w->n_meta];
            m->key = store_string(w, &key);
            m->key_len = key.len;
            m->value = store_string(w, &value);
        } else {
            st = add_chars(w, key.len);
            if (st == KD_OK) st = add_chars(w, value.len);
            if (st != KD_OK) return st;
        }
        w->n_meta++;
    }
}

static kd_status walk_header(walk *w, const unsigned char *hdr, size_t len)
{
    kd__json j;
    kd__json_init(&j, w->ctx, hdr, len, 8, "safetensors header");
    int seen_meta = 0;
    kd_status st = kd__json_object_begin(&j);
    if (st != KD_OK) return st;
    for (;;) {
        int more;
        kd__json_str key;
        st = kd__json_object_next(&j, &more, &key);
        if (st != KD_OK) return st;
        if (!more) break;
        if (kd__json_str_eq(&key, "__metadata__")) {
            if (seen_meta)
                return kd__fail(w->ctx, KD_E_FORMAT, "safetensors %s: \"__metadata__\" given twice",
                                w->what);
            seen_meta = 1;
            st = parse_metadata(&j, w);
        } else {
            st = parse_tensor(&j, w, &key);
        }
        if (st != KD_OK) return st;
    }
    return kd__json_finish(&j);
}

static size_t round8(size_t n, int *overflow)
{
    size_t r;
    if (kd__add_overflow(n, 7, &r)) *overflow = 1;
    return r & ~(size_t)7;
}

static kd_status check_layout(kd_safetensors *st, const char *what)
{
    kd_context *ctx = st->ctx;
    kd__st_sort(st->tensors, st->n_tensors, sizeof *st->tensors, cmp_tensor_offset);
    size_t pos = 0;
    for (size_t i = 0; i < st->n_tensors; i++) {
        const kd__st_tensor *t = &st->tensors[i];
        if (t->begin < pos)
            return kd__fail(ctx, KD_E_FORMAT,
                            "safetensors %s: tensors '%s' and '%s' overlap in the data buffer",
                            what, st->tensors[i - 1].name, t->name);
        if (t->begin > pos)
            return kd__fail(ctx, KD_E_FORMAT,
                            "safetensors %s: bytes [%zu, %zu) of the data buffer belong to no "
                            "tensor (hole before '%s')",
                            what, pos, t->begin, t->name);
        pos = t->end;
    }
    if (pos != st->data_size)
        return kd__fail(ctx, KD_E_FORMAT,
                        "safetensors %s: tensors cover %zu bytes of the %zu-byte data buffer", what,
                        pos, st->data_size);
    kd__st_sort(st->tensors, st->n_tensors, sizeof *st->tensors, cmp_tensor_name);
    for (size_t i = 1; i < st->n_tensors; i++)
        if (cmp_tensor_name(&st->tensors[i - 1], &st->tensors[i]) == 0)
            return kd__fail(ctx, KD_E_FORMAT, "safetensors %s: tensor name '%s' appears twice",
                            what, st->tensors[i].name);
    kd__st_sort(st->meta, st->n_meta, sizeof *st->meta, cmp_meta_key);
    for (size_t i = 1; i < st->n_meta; i++)
        if (cmp_meta_key(&st->meta[i - 1], &st->meta[i]) == 0)
            return kd__fail(ctx, KD_E_FORMAT, "safetensors %s: metadata key '%s' appears twice",
                            what, st->meta[i].key);
    return KD_OK;
}

kd_status kd__safetensors_open(kd_context *ctx, const void *data_, size_t size, const char *what,
                               kd_safetensors **out)
{
    const unsigned char *data = (const unsigned char *)data_;
    if (size < 8)
        return kd__fail(ctx, KD_E_FORMAT,
                        "safetensors %s: %zu bytes, shorter than the 8-byte header length", what,
                        size);
    uint64_t n = 0;
    for (int i = 7; i >= 0; i--) n = (n << 8) | data[i];
    if (n > KD_SAFETENSORS_MAX_HEADER)
        return kd__fail(ctx, KD_E_FORMAT,
                        "safetensors %s: header length %llu exceeds the %u-byte limit", what,
                        (unsigned long long)n, (unsigned)KD_SAFETENSORS_MAX_HEADER);
    if (n > (uint64_t)(size - 8))
        return kd__fail(ctx, KD_E_FORMAT,
                        "safetensors %s: header length %llu runs past the end (%zu bytes follow "
                        "the length)",
                        what, (unsigned long long)n, size - 8);
    const unsigned char *hdr = data + 8;
    size_t hlen = (size_t)n;

    walk w;
    memset(&w, 0, sizeof w);
    w.ctx = ctx;
    w.what = what;
    w.data_size = size - 8 - hlen;
    kd_status status = walk_header(&w, hdr, hlen);
    if (status != KD_OK) return status;

    /* One block: handle | tensors | metadata | dims | strings. */
    int ovf = 0;
    size_t off_t_ = round8(sizeof(kd_safetensors), &ovf), sz, off_m, off_d, off_c, total;
    ovf |= kd__mul_overflow(w.n_tensors, sizeof(kd__st_tensor), &sz);
    ovf |= kd__add_overflow(off_t_, sz, &off_m);
    off_m = round8(off_m, &ovf);
    ovf |= kd__mul_overflow(w.n_meta, sizeof(kd__st_meta), &sz);
    ovf |= kd__add_overflow(off_m, sz, &off_d);
    off_d = round8(off_d, &ovf);
    ovf |= kd__mul_overflow(w.n_dims, sizeof(size_t), &sz);
    ovf |= kd__add_overflow(off_d, sz, &off_c);
    ovf |= kd__add_overflow(off_c, w.n_chars, &total);
    if (ovf)
        return kd__fail(ctx, KD_E_OVERFLOW, "safetensors %s: index size overflows size_t", what);
    unsigned char *block = (unsigned char *)kd__alloc(ctx, total);
    if (!block) return KD_E_NOMEM;
    kd_safetensors *st = (kd_safetensors *)block;
    memset(st, 0, sizeof *st);
    st->ctx = ctx;
    st->data = hdr + hlen;
    st->data_size = w.data_size;
    st->tensors = (kd__st_tensor *)(block + off_t_);
    st->meta = (kd__st_meta *)(block + off_m);
    st->n_tensors = w.n_tensors;
    st->n_meta = w.n_meta;

    walk f;
    memset(&f, 0, sizeof f);
    f.ctx = ctx;
    f.what = what;
    f.data_size = w.data_size;
    f.st = st;
    f.dims = (size_t *)(block + off_d);
    f.chars = (char *)(block + off_c);
    status = walk_header(&f, hdr, hlen);
    if (status == KD_OK && (f.n_tensors != w.n_tensors || f.n_meta != w.n_meta))
        status = kd__fail(ctx, KD_E_INTERNAL, "safetensors %s: second header walk disagrees", what);
    if (status == KD_OK) status = check_layout(st, what);
    if (status != KD_OK) {
        kd__free(ctx, block);
        return status;
    }
    *out = st;
    return KD_OK;
}

/* ---- public reader API ------------------------------------------------- */

kd_status kd_safetensors_open_memory(kd_context *ctx, const void *data, size_t size,
                                     kd_safetensors **out)
{
    if (!ctx || !out) return kd__fail(ctx, KD_E_INVALID, "kd_safetensors_open_memory: NULL argument");
    *out = NULL;
    if (!data && size > 0)
        return kd__fail(ctx, KD_E_INVALID, "kd_safetensors_open_memory: data is NULL");
    return kd__safetensors_open(ctx, data ? data : "", data ? size : 0, "buffer", out);
}

void kd_safetensors_close(kd_safetensors *st)
{
    if (!st) return;
    if (st->release) st->release(st);
    kd__free(st->ctx, st);
}

size_t kd_safetensors_count(const kd_safetensors *st) { return st ? st->n_tensors : 0; }

static kd_status check_index(const kd_safetensors *st, size_t index, const char *fn)
{
    if (!st) return KD_E_INVALID;
    if (index >= st->n_tensors)
        return kd__fail(st->ctx, KD_E_INVALID, "%s: index %zu out of range (%zu tensors)", fn, index,
                        st->n_tensors);
    return KD_OK;
}

kd_status kd_safetensors_info(const kd_safetensors *st, size_t index,
                                     kd_safetensors_tensor_info *info)
{
    kd_status s = check_index(st, index, "kd_safetensors_info");
    if (s != KD_OK) return s;
    if (!info) return kd__fail(st->ctx, KD_E_INVALID, "kd_safetensors_info: info is NULL");
    if (info->struct_size < sizeof(kd_safetensors_tensor_info))
        return kd__fail(st->ctx, KD_E_VERSION,
                        "kd_safetensors_info: struct_size %u, need %zu", (unsigned)info->struct_size,
                        sizeof(kd_safetensors_tensor_info));
    const kd__st_tensor *t = &st->tensors[index];
    info->name = t->name;
    info->name_len = t->name_len;
    info->dtype = t->dtype;
    info->rank = t->rank;
    for (uint32_t i = 0; i < KD_SAFETENSORS_MAX_RANK; i++)
        info->shape[i] = i < t->rank ? t->shape[i] : 0;
    info->numel = t->numel;
    info->nbytes = t->end - t->begin;
    info->data = st->data + t->begin;
    return KD_OK;
}

kd_status kd_safetensors_find(const kd_safetensors *st, const char *name, size_t *index)
{
    if (!st) return KD_E_INVALID;
    if (!name || !index) return kd__fail(st->ctx, KD_E_INVALID, "kd_safetensors_find: NULL argument");
    kd__st_tensor k;
    memset(&k, 0, sizeof k);
    k.name = name;
    k.name_len = strlen(name);
    const kd__st_tensor *t = (const kd__st_tensor *)find_sorted(&k, st->tensors, st->n_tensors, sizeof k,
                                                                cmp_tensor_name);
    if (t) {
        *index = (size_t)(t - st->tensors);
        return KD_OK;
    }
    return kd__fail(st->ctx, KD_E_NOT_FOUND, "safetensors: no tensor named '%s'", name);
}

kd_status kd_safetensors_data_f32(const kd_safetensors *st, size_t index, const float **out)
{
    kd_status s = check_index(st, index, "kd_safetensors_data_f32");
    if (s != KD_OK) return s;
    if (!out) return kd__fail(st->ctx, KD_E_INVALID, "kd_safetensors_data_f32: out is NULL");
    const kd__st_tensor *t = &st->tensors[index];
    const unsigned char *p = st->data + t->begin;
    if (t->dtype != KD_ST_F32)
        return kd__fail(st->ctx, KD_E_UNSUPPORTED, "safetensors: tensor '%s' is %s, not F32",
                        t->name, kd_st_dtype_name(t->dtype));
    if (!kd__st_host_le())
        return kd__fail(st->ctx, KD_E_UNSUPPORTED, "safetensors: zero-copy F32 needs a little-endian host");
    if ((uintptr_t)p % _Alignof(float) != 0)
        return kd__fail(st->ctx, KD_E_UNSUPPORTED,
                        "safetensors: tensor '%s' is not 4-byte aligned in memory", t->name);
    *out = (const float *)(const void *)p;
    return KD_OK;
}

static float bits_to_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* IEEE binary16 -> binary32, exact for every input. */
static uint32_t f16_bits_to_f32_bits(uint32_t h)
{
    uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1Fu, man = h & 0x3FFu;
    if (exp == 0x1F) return sign | 0x7F800000u | (man << 13); /* Inf, NaN (payload kept) */
    if (exp != 0) return sign | ((exp + 112u) << 23) | (man << 13);
    if (man == 0) return sign;                                /* +-0 */
    /* Subnormal: man * 2^-24. Normalise so bit 10 is set. */
    uint32_t e = 113;                                         /* biased exponent of 2^-14 */
    while (!(man & 0x400u)) {
        man <<= 1;
        e--;
    }
    return sign | (e << 23) | ((man & 0x3FFu) << 13);
}

kd_status kd_safetensors_read_f32(const kd_safetensors *st, size_t index, float *dst,
                                  size_t count)
{
    kd_status s = check_index(st, index, "kd_safetensors_read_f32");
    if (s != KD_OK) return s;
    const kd__st_tensor *t = &st->tensors[index];
    if (count != t->numel)
        return kd__fail(st->ctx, KD_E_SHAPE,
                        "safetensors: tensor '%s' has %zu elements, destination holds %zu", t->name,
                        t->numel, count);
    if (!dst && count > 0) return kd__fail(st->ctx, KD_E_INVALID, "kd_safetensors_read_f32: dst is NULL");
    const unsigned char *p = st->data + t->begin;
    size_t n = t->numel;
    switch (t->dtype) {
    case KD_ST_F32:
        if (kd__st_host_le()) {
            if (n) memcpy(dst, p, n * 4);
        } else {
            for (size_t i = 0; i < n; i++, p += 4)
                dst[i] = bits_to_f32((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                                     (uint32_t)p[3] << 24);
        }
        return KD_OK;
    case KD_ST_F16:
        for (size_t i = 0; i < n; i++, p += 2)
            dst[i] = bits_to_f32(f16_bits_to_f32_bits((uint32_t)p[0] | (uint32_t)p[1] << 8));
        return KD_OK;
    case KD_ST_BF16:
        for (size_t i = 0; i < n; i++, p += 2)
            dst[i] = bits_to_f32(((uint32_t)p[0] | (uint32_t)p[1] << 8) << 16);
        return KD_OK;
    case KD_ST_F64: case KD_ST_I64: case KD_ST_I32: case KD_ST_I16: case KD_ST_I8:
    case KD_ST_U8: case KD_ST_BOOL: case KD_ST_U16: case KD_ST_U32: case KD_ST_U64: {
        /* Rounded to the nearest float: integers are exact up to 2^24 (what
         * PyTorch's int64 num_batches_tracked holds in practice). */
        size_t w = kd_st_dtype_size(t->dtype);
        for (size_t i = 0; i < n; i++, p += w) {
            uint64_t u = 0;
            for (size_t b = 0; b < w; b++) u |= (uint64_t)p[b] << (8 * b);
            switch (t->dtype) {
            case KD_ST_F64: {
                double d;
                memcpy(&d, &u, 8);
                dst[i] = (float)d;
                break;
            }
            case KD_ST_I64: dst[i] = (float)(int64_t)u; break;
            case KD_ST_I32: dst[i] = (float)(int32_t)(uint32_t)u; break;
            case KD_ST_I16: dst[i] = (float)(int16_t)(uint16_t)u; break;
            case KD_ST_I8: dst[i] = (float)(int8_t)(uint8_t)u; break;
            default: dst[i] = (float)u; break; /* unsigned and BOOL */
            }
        }
        return KD_OK;
    }
    default:
        return kd__fail(st->ctx, KD_E_UNSUPPORTED,
                        "safetensors: tensor '%s' is %s, which does not convert to float",
                        t->name, kd_st_dtype_name(t->dtype));
    }
}

size_t kd_safetensors_metadata_count(const kd_safetensors *st) { return st ? st->n_meta : 0; }

kd_status kd_safetensors_metadata_at(const kd_safetensors *st, size_t index, const char **key,
                                     const char **value)
{
    if (!st) return KD_E_INVALID;
    if (index >= st->n_meta)
        return kd__fail(st->ctx, KD_E_INVALID, "kd_safetensors_metadata_at: index %zu out of range (%zu entries)",
                        index, st->n_meta);
    if (key) *key = st->meta[index].key;
    if (value) *value = st->meta[index].value;
    return KD_OK;
}

kd_status kd_safetensors_metadata_get(const kd_safetensors *st, const char *key,
                                      const char **value)
{
    if (!st) return KD_E_INVALID;
    if (!key || !value)
        return kd__fail(st->ctx, KD_E_INVALID, "kd_safetensors_metadata_get: NULL argument");
    kd__st_meta k;
    memset(&k, 0, sizeof k);
    k.key = key;
    k.key_len = strlen(key);
    const kd__st_meta *m = (const kd__st_meta *)find_sorted(&k, st->meta, st->n_meta, sizeof k, cmp_meta_key);
    if (m) {
        *value = m->value;
        return KD_OK;
    }
    return kd__fail(st->ctx, KD_E_NOT_FOUND, "safetensors: no metadata key '%s'", key);
}
