/*
 * kd_json.c - strict pull-style JSON reader; see kd_json.h.
 *
 * No allocation, no recursion, no stdio: usable in firmware builds.
 */
#include "kd_json.h"

static kd_status jfail(kd__json *j, kd_status st, const char *why)
{
    return kd__fail(j->ctx, st, "%s: invalid JSON at byte %zu: %s", j->what,
                    (size_t)(j->p - j->begin), why);
}

void kd__json_init(kd__json *j, kd_context *ctx, const void *data, size_t size,
                   unsigned max_depth, const char *what)
{
    j->begin = (const unsigned char *)data;
    j->p = j->begin;
    j->end = j->begin + size;
    j->ctx = ctx;
    j->what = what ? what : "JSON";
    j->depth = 0;
    if (max_depth < 1) max_depth = 1;
    if (max_depth > KD_JSON_MAX_DEPTH) max_depth = KD_JSON_MAX_DEPTH;
    j->max_depth = max_depth;
    j->is_object = 0;
    j->first = 1;
}

static void skip_ws(kd__json *j)
{
    while (j->p < j->end &&
           (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r'))
        j->p++;
}

int kd__json_peek(kd__json *j)
{
    skip_ws(j);
    return j->p < j->end ? *j->p : 0;
}

size_t kd__json_offset(const kd__json *j) { return (size_t)(j->p - j->begin); }

static kd_status open_container(kd__json *j, unsigned char open, int is_object)
{
    skip_ws(j);
    if (j->p >= j->end || *j->p != open)
        return jfail(j, KD_E_FORMAT, is_object ? "expected '{'" : "expected '['");
    if (j->depth >= j->max_depth) return jfail(j, KD_E_FORMAT, "nesting too deep");
    j->p++;
    if (is_object)
        j->is_object |= (uint64_t)1 << j->depth;
    else
        j->is_object &= ~((uint64_t)1 << j->depth);
    j->depth++;
    j->first = 1;
    return KD_OK;
}

kd_status kd__json_object_begin(kd__json *j) { return open_container(j, '{', 1); }
kd_status kd__json_array_begin(kd__json *j) { return open_container(j, '[', 0); }

static int top_is_object(const kd__json *j)
{
    return j->depth > 0 && ((j->is_object >> (j->depth - 1)) & 1u);
}

kd_status kd__json_object_next(kd__json *j, int *more, kd__json_str *key)
{
    *more = 0;
    if (!top_is_object(j)) return kd__fail(j->ctx, KD_E_INTERNAL, "JSON walk: not in an object");
    skip_ws(j);
    if (j->p >= j->end) return jfail(j, KD_E_FORMAT, "unexpected end inside an object");
    if (*j->p == '}') {
        j->p++;
        j->depth--;
        j->first = 0;
        return KD_OK;
    }
    if (!j->first) {
        if (*j->p != ',') return jfail(j, KD_E_FORMAT, "expected ',' or '}'");
        j->p++;
        skip_ws(j);
    }
    if (j->p >= j->end || *j->p != '"') return jfail(j, KD_E_FORMAT, "expected a string key");
    kd_status st = kd__json_string(j, key);
    if (st != KD_OK) return st;
    skip_ws(j);
    if (j->p >= j->end || *j->p != ':') return jfail(j, KD_E_FORMAT, "expected ':'");
    j->p++;
    skip_ws(j);
    if (j->p >= j->end) return jfail(j, KD_E_FORMAT, "missing value after ':'");
    j->first = 0;
    *more = 1;
    return KD_OK;
}

kd_status kd__json_array_next(kd__json *j, int *more)
{
    *more = 0;
    if (j->depth == 0 || top_is_object(j))
        return kd__fail(j->ctx, KD_E_INTERNAL, "JSON walk: not in an array");
    skip_ws(j);
    if (j->p >= j->end) return jfail(j, KD_E_FORMAT, "unexpected end inside an array");
    if (*j->p == ']') {
        j->p++;
        j->depth--;
        j->first = 0;
        return KD_OK;
    }
    if (!j->first) {
        if (*j->p != ',') return jfail(j, KD_E_FORMAT, "expected ',' or ']'");
        j->p++;
        skip_ws(j);
        if (j->p >= j->end || *j->p == ']')
            return jfail(j, KD_E_FORMAT, "expected a value after ','");
    }
    j->first = 0;
    *more = 1;
    return KD_OK;
}

static int hex4(const unsigned char *p, uint32_t *out)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        unsigned c = p[i], d;
        if (c >= '0' && c <= '9')
            d = c - '0';
        else if (c >= 'a' && c <= 'f')
            d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F')
            d = c - 'A' + 10;
        else
            return 0;
        v = (v << 4) | d;
    }
    *out = v;
    return 1;
}

size_t kd__utf8_seq(const unsigned char *p, const unsigned char *end)
{
    unsigned c = p[0];
    size_t n;
    unsigned lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) {
        n = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        n = 3;
        if (c == 0xE0) lo = 0xA0;        /* overlong */
        if (c == 0xED) hi = 0x9F;        /* UTF-16 surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4;
        if (c == 0xF0) lo = 0x90;        /* overlong */
        if (c == 0xF4) hi = 0x8F;        /* above U+10FFFF */
    } else {
        return 0;
    }
    if ((size_t)(end - p) < n) return 0;
    if (p[1] < lo || p[1] > hi) return 0;
    for (size_t i = 2; i < n; i++)
        if (p[i] < 0x80 || p[i] > 0xBF) return 0;
    return n;
}

static size_t utf8_len(uint32_t cp) { return cp < 0x80 ? 1 : cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4; }

kd_status kd__json_string(kd__json *j, kd__json_str *out)
{
    skip_ws(j);
    if (j->p >= j->end || *j->p != '"') return jfail(j, KD_E_FORMAT, "expected a string");
    j->p++;
    const unsigned char *start = j->p;
    size_t len = 0;
    int has_nul = 0;
    for (;;) {
        if (j->p >= j->end) return jfail(j, KD_E_FORMAT, "unterminated string");
        unsigned c = *j->p;
        if (c == '"') break;
        if (c < 0x20) return jfail(j, KD_E_FORMAT, "control character in a string");
        if (c < 0x80 && c != '\\') {
            j->p++;
            len++;
            continue;
        }
        if (c >= 0x80) {
            size_t n = kd__utf8_seq(j->p, j->end);
            if (n == 0) return jfail(j, KD_E_FORMAT, "invalid UTF-8 in a string");
            j->p += n;
            len += n;
            continue;
        }
        /* escape */
        if (j->end - j->p < 2) return jfail(j, KD_E_FORMAT, "unterminated escape");
        unsigned e = j->p[1];
        if (e == '"' || e == '\\' || e == '/' || e == 'b' || e == 'f' || e == 'n' || e == 'r' ||
            e == 't') {
            j->p += 2;
            len++;
            continue;
        }
        if (e != 'u') return jfail(j, KD_E_FORMAT, "invalid escape in a string");
        uint32_t cp;
        if (j->end - j->p < 6 || !hex4(j->p + 2, &cp))
            return jfail(j, KD_E_FORMAT, "invalid \\u escape");
        if (cp >= 0xDC00 && cp <= 0xDFFF)
            return jfail(j, KD_E_FORMAT, "unpaired low surrogate escape");
        if (cp >= 0xD800 && cp <= 0xDBFF) {
            uint32_t lo;
            if (j->end - j->p < 12 || j->p[6] != '\\' || j->p[7] != 'u' || !hex4(j->p + 8, &lo) ||
                lo < 0xDC00 || lo > 0xDFFF)
                return jfail(j, KD_E_FORMAT, "unpaired high surrogate escape");
            j->p += 12;
            len += 4;
            continue;
        }
        if (cp == 0) has_nul = 1;
        j->p += 6;
        len += utf8_len(cp);
    }
    out->raw = start;
    out->raw_len = (size_t)(j->p - start);
    out->len = len;
    out->has_nul = has_nul;
    j->p++; /* closing quote */
    return KD_OK;
}

/* Scans a number per the JSON grammar. *integer: no fraction/exponent. */
static kd_status scan_number(kd__json *j, int *negative, int *integer, uint64_t *value,
                             int *overflow)
{
    const unsigned char *p = j->p, *e = j->end;
    *negative = *integer = *overflow = 0;
    *value = 0;
    if (p < e && *p == '-') {
        *negative = 1;
        p++;
    }
    if (p >= e || *p < '0' || *p > '9') {
        j->p = p;
        return jfail(j, KD_E_FORMAT, "invalid number");
    }
    if (*p == '0') {
        p++;
        if (p < e && *p >= '0' && *p <= '9') {
            j->p = p;
            return jfail(j, KD_E_FORMAT, "leading zero in a number");
        }
    } else {
        while (p < e && *p >= '0' && *p <= '9') {
            unsigned d = (unsigned)(*p - '0');
            if (*value > (UINT64_MAX - d) / 10)
                *overflow = 1;
            else
                *value = *value * 10 + d;
            p++;
        }
    }
    *integer = 1;
    if (p < e && *p == '.') {
        *integer = 0;
        p++;
        if (p >= e || *p < '0' || *p > '9') {
            j->p = p;
            return jfail(j, KD_E_FORMAT, "digits expected after '.'");
        }
        while (p < e && *p >= '0' && *p <= '9') p++;
    }
    if (p < e && (*p == 'e' || *p == 'E')) {
        *integer = 0;
        p++;
        if (p < e && (*p == '+' || *p == '-')) p++;
        if (p >= e || *p < '0' || *p > '9') {
            j->p = p;
            return jfail(j, KD_E_FORMAT, "digits expected in an exponent");
        }
        while (p < e && *p >= '0' && *p <= '9') p++;
    }
    j->p = p;
    return KD_OK;
}

kd_status kd__json_u64(kd__json *j, uint64_t *out)
{
    skip_ws(j);
    const unsigned char *at = j->p;
    int neg, integer, overflow;
    uint64_t v;
    kd_status st = scan_number(j, &neg, &integer, &v, &overflow);
    if (st != KD_OK) return st;
    if (neg || !integer || overflow) {
        const unsigned char *after = j->p;
        j->p = at;
        st = jfail(j, overflow && !neg && integer ? KD_E_OVERFLOW : KD_E_FORMAT,
                   neg ? "negative number where a non-negative integer is required"
                   : !integer ? "expected an integer, found a fraction or exponent"
                              : "integer does not fit 64 bits");
        j->p = after;
        return st;
    }
    *out = v;
    return KD_OK;
}

static kd_status scalar(kd__json *j)
{
    int c = kd__json_peek(j);
    if (c == '"') {
        kd__json_str s;
        return kd__json_string(j, &s);
    }
    if (c == '-' || (c >= '0' && c <= '9')) {
        int neg, integer, overflow;
        uint64_t v;
        return scan_number(j, &neg, &integer, &v, &overflow);
    }
    static const char *const lits[3] = {"true", "false", "null"};
    for (int i = 0; i < 3; i++) {
        size_t n = strlen(lits[i]);
        if ((size_t)(j->end - j->p) >= n && memcmp(j->p, lits[i], n) == 0) {
            j->p += n;
            return KD_OK;
        }
    }
    return jfail(j, KD_E_FORMAT, c == 0 ? "unexpected end, expected a value" : "expected a value");
}

kd_status kd__json_skip(kd__json *j)
{
    const unsigned base = j->depth;
    kd_status st;
    for (;;) {
        int c = kd__json_peek(j);
        if (c == '{')
            st = kd__json_object_begin(j);
        else if (c == '[')
            st = kd__json_array_begin(j);
        else
            st = scalar(j);
        if (st != KD_OK) return st;
        /* Move to the next value still to be read, closing finished containers. */
        for (;;) {
            if (j->depth == base) return KD_OK;
            int more;
            if (top_is_object(j)) {
                kd__json_str key;
                st = kd__json_object_next(j, &more, &key);
            } else {
                st = kd__json_array_next(j, &more);
            }
            if (st != KD_OK) return st;
            if (more) break;
        }
    }
}

kd_status kd__json_finish(kd__json *j)
{
    if (j->depth != 0) return kd__fail(j->ctx, KD_E_INTERNAL, "JSON walk: containers left open");
    skip_ws(j);
    if (j->p != j->end) return jfail(j, KD_E_FORMAT, "trailing characters after the value");
    return KD_OK;
}

/* Decodes the next character of a validated raw string into out (1..4 bytes). */
static size_t decode_one(const unsigned char **pp, unsigned char out[4])
{
    const unsigned char *p = *pp;
    uint32_t cp = 0;
    if (*p != '\\') {
        size_t n = *p < 0x80 ? 1 : kd__utf8_seq(p, p + 4);
        /* validated earlier, so kd__utf8_seq cannot read past the string end */
        memcpy(out, p, n);
        *pp = p + n;
        return n;
    }
    switch (p[1]) {
    case 'b': out[0] = '\b'; *pp = p + 2; return 1;
    case 'f': out[0] = '\f'; *pp = p + 2; return 1;
    case 'n': out[0] = '\n'; *pp = p + 2; return 1;
    case 'r': out[0] = '\r'; *pp = p + 2; return 1;
    case 't': out[0] = '\t'; *pp = p + 2; return 1;
    case 'u': break;
    default: out[0] = p[1]; *pp = p + 2; return 1;
    }
    (void)hex4(p + 2, &cp);
    *pp = p + 6;
    if (cp >= 0xD800 && cp <= 0xDBFF) {
        uint32_t lo = 0;
        (void)hex4(p + 8, &lo);
        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
        *pp = p + 12;
    }
    if (cp < 0x80) {
        out[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (unsigned char)(0xC0 | (cp >> 6));
        out[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (unsigned char)(0xE0 | (cp >> 12));
        out[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (unsigned char)(0xF0 | (cp >> 18));
    out[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

void kd__json_decode(const kd__json_str *s, char *dst)
{
    const unsigned char *p = s->raw, *e = s->raw + s->raw_len;
    size_t n = 0;
    unsigned char ch[4];
    while (p < e) {
        size_t k = decode_one(&p, ch);
        memcpy(dst + n, ch, k);
        n += k;
    }
    dst[n] = '\0';
}

void kd__json_decode_prefix(const kd__json_str *s, char *dst, size_t cap)
{
    const unsigned char *p = s->raw, *e = s->raw + s->raw_len;
    size_t n = 0;
    unsigned char ch[4];
    while (p < e) {
        size_t k = decode_one(&p, ch);
        if (n + k >= cap) break;
        memcpy(dst + n, ch, k);
        n += k;
    }
    dst[n] = '\0';
}

int kd__json_str_eq(const kd__json_str *s, const char *lit)
{
    size_t n = strlen(lit);
    if (s->len != n) return 0;
    const unsigned char *p = s->raw, *e = s->raw + s->raw_len;
    size_t i = 0;
    unsigned char ch[4];
    while (p < e) {
        size_t k = decode_one(&p, ch);
        if (memcmp(lit + i, ch, k) != 0) return 0;
        i += k;
    }
    return 1;
}
