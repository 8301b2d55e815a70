/*
 * kd_safetensors_write.c - safetensors writer: collection and in-memory output.
 *
 * Each added tensor is one allocation (record, copied name and, with
 * KD_ST_COPY, the data); each metadata entry is one allocation. Writing
 * sorts pointers to them by name (one temporary allocation) and emits
 *   8-byte N | {"__metadata__":{...},"a":{...},"b":{...}} + spaces to N | data
 * with N a multiple of 8, so every tensor starts 8-byte aligned in the file,
 * and data offsets increasing in name order. Output is a function of the
 * contents only, never of insertion order.
 * No stdio, no allocator other than the context's: usable in firmware.
 */
#include "kd_json.h"
#include "kd_safetensors_internal.h"

/* 1 when s (len bytes) is well-formed UTF-8. */
static int utf8_valid(const unsigned char *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        size_t n = s[i] < 0x80 ? 1 : kd__utf8_seq(s + i, s + len);
        if (n == 0) return 0;
        i += n;
    }
    return 1;
}

kd_status kd_safetensors_writer_create(kd_context *ctx, kd_safetensors_writer **out)
{
    if (!ctx || !out) return kd__fail(ctx, KD_E_INVALID, "kd_safetensors_writer_create: NULL argument");
    *out = NULL;
    kd_safetensors_writer *w = (kd_safetensors_writer *)kd__calloc(ctx, 1, sizeof *w);
    if (!w) return KD_E_NOMEM;
    w->ctx = ctx;
    *out = w;
    return KD_OK;
}

void kd_safetensors_writer_destroy(kd_safetensors_writer *w)
{
    if (!w) return;
    kd_context *ctx = w->ctx;
    /* Lists are newest first, so this frees in reverse allocation order
     * (metadata and tensors interleave, which an arena tolerates). */
    while (w->meta) {
        kd__st_wmeta *m = w->meta;
        w->meta = m->next;
        kd__free(ctx, m);
    }
    while (w->tensors) {
        kd__st_wtensor *t = w->tensors;
        w->tensors = t->next;
        kd__free(ctx, t);
    }
    kd__free(ctx, w);
}

kd_status kd_safetensors_writer_add_f32(kd_safetensors_writer *w, const char *name, size_t rank,
                                        const size_t *shape, const float *data, unsigned flags)
{
    if (!w) return KD_E_INVALID;
    kd_context *ctx = w->ctx;
    if (!name || !*name)
        return kd__fail(ctx, KD_E_INVALID, "kd_safetensors_writer_add_f32: name is NULL or empty");
    size_t name_len = strlen(name);
    if (!utf8_valid((const unsigned char *)name, name_len))
        return kd__fail(ctx, KD_E_INVALID, "kd_safetensors_writer_add_f32: name is not valid UTF-8");
    if (strcmp(name, "__metadata__") == 0)
        return kd__fail(ctx, KD_E_INVALID, "kd_safetensors_writer_add_f32: \"__metadata__\" is reserved");
    if (rank > KD_SAFETENSORS_MAX_RANK)
        return kd__fail(ctx, KD_E_INVALID, "kd_safetensors_writer_add_f32: rank %zu exceeds %d", rank,
                        KD_SAFETENSORS_MAX_RANK);
    if (rank > 0 && !shape)
        return kd__fail(ctx, KD_E_INVALID, "kd_safetensors_writer_add_f32: shape is NULL");
    if (flags & ~KD_ST_COPY)
        return kd__fail(ctx, KD_E_INVALID, "kd_safetensors_writer_add_f32: unknown flags 0x%x", flags);
    /* As in the reader: any zero dimension makes the element count 0. */
    size_t numel = 1, nbytes, total;
    int zero = 0, overflow = 0;
    for (size_t i = 0; i < rank; i++) {
        if (shape[i] == 0) zero = 1;
        if (!overflow && kd__mul_overflow(numel, shape[i], &numel)) overflow = 1;
    }
    if (zero)
        numel = 0;
    else if (overflow)
        return kd__fail(ctx, KD_E_OVERFLOW, "kd_safetensors_writer_add_f32: '%s': element count overflows", name);
    if (kd__mul_overflow(numel, sizeof(float), &nbytes) ||
        kd__add_overflow(w->data_bytes, nbytes, &total))
        return kd__fail(ctx, KD_E_OVERFLOW, "kd_safetensors_writer_add_f32: '%s': byte count overflows", name);
    if (!data && numel > 0)
        return kd__fail(ctx, KD_E_INVALID, "kd_safetensors_writer_add_f32: '%s': data is NULL", name);
    for (const kd__st_wtensor *t = w->tensors; t; t = t->next)
        if (t->name_len == name_len && memcmp(t->name, name, name_len) == 0)
            return kd__fail(ctx, KD_E_INVALID, "kd_safetensors_writer_add_f32: tensor '%s' added twice", name);

    /* One block: record (rounded to 16) | data copy | name. */
    size_t head = (sizeof(kd__st_wtensor) + 15) & ~(size_t)15;
    size_t copy = (flags & KD_ST_COPY) ? nbytes : 0, size;
    if (kd__add_overflow(head, copy, &size) || kd__add_overflow(size, name_len + 1, &size))
        return kd__fail(ctx, KD_E_OVERFLOW, "kd_safetensors_writer_add_f32: '%s': too large", name);
    unsigned char *block = (unsigned char *)kd__alloc(ctx, size);
    if (!block) return KD_E_NOMEM;
    kd__st_wtensor *t = (kd__st_wtensor *)block;
    memset(t, 0, sizeof *t);
    t->name = (char *)block + head + copy;
    memcpy(t->name, name, name_len + 1);
    t->name_len = name_len;
    t->rank = rank;
    for (size_t i = 0; i < rank; i++) t->shape[i] = shape[i];
    t->numel = numel;
    if (copy) {
        memcpy(block + head, data, copy);
        t->data = (const float *)(const void *)(block + head);
    } else {
        t->data = data;
    }
    t->next = w->tensors;
    w->tensors = t;
    w->n_tensors++;
    w->data_bytes = total;
    return KD_OK;
}

kd_status kd_safetensors_writer_set_metadata(kd_safetensors_writer *w, const char *key,
                                             const char *value)
{
    if (!w) return KD_E_INVALID;
    kd_context *ctx = w->ctx;
    if (!key || !value)
        return kd__fail(ctx, KD_E_INVALID, "kd_safetensors_writer_set_metadata: NULL argument");
    size_t kl = strlen(key), vl = strlen(value), size;
    if (!utf8_valid((const unsigned char *)key, kl) || !utf8_valid((const unsigned char *)value, vl))
        return kd__fail(ctx, KD_E_INVALID, "kd_safetensors_writer_set_metadata: key or value is not valid UTF-8");
    if (kd__add_overflow(sizeof(kd__st_wmeta), kl + 1, &size) || kd__add_overflow(size, vl + 1, &size))
        return kd__fail(ctx, KD_E_OVERFLOW, "kd_safetensors_writer_set_metadata: value too large");
    unsigned char *block = (unsigned char *)kd__alloc(ctx, size);
    if (!block) return KD_E_NOMEM;
    kd__st_wmeta *m = (kd__st_wmeta *)block;
    m->key = (char *)block + sizeof *m;
    memcpy(m->key, key, kl + 1);
    m->value = m->key + kl + 1;
    memcpy(m->value, value, vl + 1);
    m->key_len = kl;
    m->value_len = vl;
    /* Replace an existing entry with the same key. */
    for (kd__st_wmeta **pp = &w->meta; *pp; pp = &(*pp)->next) {
        kd__st_wmeta *old = *pp;
        if (old->key_len == kl && memcmp(old->key, key, kl) == 0) {
            m->next = old->next;
            *pp = m;
            kd__free(ctx, old);
            return KD_OK;
        }
    }
    m->next = w->meta;
    w->meta = m;
    w->n_meta++;
    return KD_OK;
}

/* ---- header emission ---------------------------------------------------- */

typedef struct sink {
    unsigned char *buf;   /* NULL: count only */
    size_t len;
} sink;

static void put(sink *s, const char *p, size_t n)
{
    if (s->buf) memcpy(s->buf + s->len, p, n);
    s->len += n;
}

static void put_lit(sink *s, const char *lit) { put(s, lit, strlen(lit)); }

static void put_u64(sink *s, uint64_t v)
{
    char tmp[20];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    char out[20];
    for (size_t i = 0; i < n; i++) out[i] = tmp[n - 1 - i];
    put(s, out, n);
}

static void put_json_string(sink *s, const char *str, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    put(s, "\"", 1);
    size_t run = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)str[i];
        if (c >= 0x20 && c != '"' && c != '\\') continue;
        put(s, str + run, i - run);
        run = i + 1;
        char esc[6] = {'\\', 0, 0, 0, 0, 0};
        size_t n = 2;
        switch (c) {
        case '"': esc[1] = '"'; break;
        case '\\': esc[1] = '\\'; break;
        case '\b': esc[1] = 'b'; break;
        case '\f': esc[1] = 'f'; break;
        case '\n': esc[1] = 'n'; break;
        case '\r': esc[1] = 'r'; break;
        case '\t': esc[1] = 't'; break;
        default:
            esc[1] = 'u';
            esc[2] = '0';
            esc[3] = '0';
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 15];
            n = 6;
        }
        put(s, esc, n);
    }
    put(s, str + run, len - run);
    put(s, "\"", 1);
}

static void emit_header(sink *s, kd__st_wtensor *const *tensors, size_t nt,
                        kd__st_wmeta *const *meta, size_t nm)
{
    put_lit(s, "{");
    int first = 1;
    if (nm > 0) {
        put_lit(s, "\"__metadata__\":{");
        for (size_t i = 0; i < nm; i++) {
            if (i) put_lit(s, ",");
            put_json_string(s, meta[i]->key, meta[i]->key_len);
            put_lit(s, ":");
            put_json_string(s, meta[i]->value, meta[i]->value_len);
        }
        put_lit(s, "}");
        first = 0;
    }
    uint64_t offset = 0;
    for (size_t i = 0; i < nt; i++) {
        const kd__st_wtensor *t = tensors[i];
        if (!first) put_lit(s, ",");
        first = 0;
        put_json_string(s, t->name, t->name_len);
        put_lit(s, ":{\"dtype\":\"F32\",\"shape\":[");
        for (size_t d = 0; d < t->rank; d++) {
            if (d) put_lit(s, ",");
            put_u64(s, t->shape[d]);
        }
        put_lit(s, "],\"data_offsets\":[");
        put_u64(s, offset);
        put_lit(s, ",");
        offset += (uint64_t)t->numel * 4u;
        put_u64(s, offset);
        put_lit(s, "]}");
    }
    put_lit(s, "}");
}

static int cmp_wtensor(const void *a, const void *b)
{
    const kd__st_wtensor *x = *(kd__st_wtensor *const *)a, *y = *(kd__st_wtensor *const *)b;
    size_t n = x->name_len < y->name_len ? x->name_len : y->name_len;
    int c = memcmp(x->name, y->name, n);
    if (c) return c;
    return x->name_len < y->name_len ? -1 : x->name_len > y->name_len;
}

static int cmp_wmeta(const void *a, const void *b)
{
    const kd__st_wmeta *x = *(kd__st_wmeta *const *)a, *y = *(kd__st_wmeta *const *)b;
    size_t n = x->key_len < y->key_len ? x->key_len : y->key_len;
    int c = memcmp(x->key, y->key, n);
    if (c) return c;
    return x->key_len < y->key_len ? -1 : x->key_len > y->key_len;
}

kd_status kd__st_plan_make(kd_safetensors_writer *w, kd__st_plan *plan)
{
    memset(plan, 0, sizeof *plan);
    size_t n = w->n_tensors + w->n_meta; /* both bounded by allocations made */
    void **arr = (void **)kd__calloc(w->ctx, n ? n : 1, sizeof(void *));
    if (!arr) return KD_E_NOMEM;
    plan->tensors = (kd__st_wtensor **)arr;
    plan->meta = (kd__st_wmeta **)(arr + w->n_tensors);
    size_t i = 0;
    for (kd__st_wtensor *t = w->tensors; t; t = t->next) plan->tensors[i++] = t;
    i = 0;
    for (kd__st_wmeta *m = w->meta; m; m = m->next) plan->meta[i++] = m;
    kd__st_sort(plan->tensors, w->n_tensors, sizeof(void *), cmp_wtensor);
    kd__st_sort(plan->meta, w->n_meta, sizeof(void *), cmp_wmeta);

    sink s = {NULL, 0};
    emit_header(&s, plan->tensors, w->n_tensors, plan->meta, w->n_meta);
    size_t hl = (s.len + 7) & ~(size_t)7, total;
    if (hl < s.len || kd__add_overflow(hl, 8, &total) ||
        kd__add_overflow(total, w->data_bytes, &total)) {
        kd__st_plan_free(w, plan);
        return kd__fail(w->ctx, KD_E_OVERFLOW, "safetensors writer: file size overflows size_t");
    }
    plan->header_len = hl;
    plan->total = total;
    return KD_OK;
}

void kd__st_plan_free(kd_safetensors_writer *w, kd__st_plan *plan)
{
    kd__free(w->ctx, plan->tensors);
    plan->tensors = NULL;
    plan->meta = NULL;
}

void kd__st_plan_header(const kd__st_plan *plan, size_t n_tensors, size_t n_meta,
                        unsigned char *dst)
{
    uint64_t n = plan->header_len;
    for (int i = 0; i < 8; i++) dst[i] = (unsigned char)(n >> (8 * i));
    sink s = {dst + 8, 0};
    emit_header(&s, plan->tensors, n_tensors, plan->meta, n_meta);
    memset(dst + 8 + s.len, ' ', plan->header_len - s.len);
}

void kd__st_f32_store_le(const float *src, size_t n, unsigned char *dst)
{
    if (n == 0) return;
    if (kd__st_host_le()) {
        memcpy(dst, src, n * sizeof(float));
        return;
    }
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &src[i], 4);
        dst[4 * i] = (unsigned char)u;
        dst[4 * i + 1] = (unsigned char)(u >> 8);
        dst[4 * i + 2] = (unsigned char)(u >> 16);
        dst[4 * i + 3] = (unsigned char)(u >> 24);
    }
}

kd_status kd_safetensors_writer_size(kd_safetensors_writer *w, size_t *size)
{
    if (!w) return KD_E_INVALID;
    if (!size) return kd__fail(w->ctx, KD_E_INVALID, "kd_safetensors_writer_size: size is NULL");
    kd__st_plan plan;
    kd_status st = kd__st_plan_make(w, &plan);
    if (st != KD_OK) return st;
    *size = plan.total;
    kd__st_plan_free(w, &plan);
    return KD_OK;
}

kd_status kd_safetensors_writer_write_memory(kd_safetensors_writer *w, void *buf,
                                             size_t capacity, size_t *written)
{
    if (!w) return KD_E_INVALID;
    if (!buf || !written)
        return kd__fail(w->ctx, KD_E_INVALID, "kd_safetensors_writer_write_memory: NULL argument");
    kd__st_plan plan;
    kd_status st = kd__st_plan_make(w, &plan);
    if (st != KD_OK) return st;
    if (capacity < plan.total) {
        size_t need = plan.total;
        kd__st_plan_free(w, &plan);
        return kd__fail(w->ctx, KD_E_INVALID,
                        "kd_safetensors_writer_write_memory: buffer holds %zu bytes, the "
                        "checkpoint needs %zu",
                        capacity, need);
    }
    unsigned char *dst = (unsigned char *)buf;
    kd__st_plan_header(&plan, w->n_tensors, w->n_meta, dst);
    size_t pos = 8 + plan.header_len;
    for (size_t i = 0; i < w->n_tensors; i++) {
        const kd__st_wtensor *t = plan.tensors[i];
        kd__st_f32_store_le(t->data, t->numel, dst + pos);
        pos += t->numel * 4;
    }
    *written = plan.total;
    kd__st_plan_free(w, &plan);
    return KD_OK;
}
