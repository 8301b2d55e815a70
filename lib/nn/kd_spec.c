/*
 * kd_spec.c - the architecture spec: tokenizer, numbers, item lists, and the
 * string builder used to print specs back. Hostile text must end in
 * KD_E_FORMAT with a position, never in a crash: every read is bounded by
 * p->len and every number by an explicit maximum.
 */
#include <math.h>
#include <stdarg.h>

#include "kd_layer.h"

#define KD_SPEC_MAX_DEPTH 8
#define KD_SPEC_MAX_LAYERS 4096

/* ---- string builder ------------------------------------------------------ */

void kd__sb_puts(kd__sb *sb, const char *s)
{
    while (*s) {
        if (sb->len + 1 < sb->size) sb->buf[sb->len] = *s;
        sb->len++;
        s++;
    }
    if (sb->size) sb->buf[sb->len < sb->size ? sb->len : sb->size - 1] = '\0';
}

void kd__sb_printf(kd__sb *sb, const char *fmt, ...)
{
    char tmp[128];
    va_list ap;
    va_start(ap, fmt);
    kd__vfmt(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    kd__sb_puts(sb, tmp);
}

static int is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* Decimal float: [+-]digits[.digits][e[+-]digits]. Mantissa digits beyond 19
 * are dropped (scaled); the exponent is clamped. Returns 0 on syntax error. */
static int parse_float_text(const char *t, size_t n, double *out)
{
    size_t i = 0;
    int neg = 0;
    if (i < n && (t[i] == '+' || t[i] == '-')) neg = t[i++] == '-';
    uint64_t mant = 0;
    int exp10 = 0, digits = 0, sig = 0;
    while (i < n && is_digit(t[i])) {
        if (sig < 19) {
            mant = mant * 10 + (uint64_t)(t[i] - '0');
            if (mant) sig++;
        } else {
            exp10++;
        }
        i++;
        digits++;
    }
    if (i < n && t[i] == '.') {
        i++;
        while (i < n && is_digit(t[i])) {
            if (sig < 19) {
                mant = mant * 10 + (uint64_t)(t[i] - '0');
                if (mant) sig++;
                exp10--;
            }
            i++;
            digits++;
        }
    }
    if (digits == 0) return 0;
    if (i < n && (t[i] == 'e' || t[i] == 'E')) {
        i++;
        int eneg = 0, ed = 0, e = 0;
        if (i < n && (t[i] == '+' || t[i] == '-')) eneg = t[i++] == '-';
        while (i < n && is_digit(t[i])) {
            if (e < 10000) e = e * 10 + (t[i] - '0');
            i++;
            ed++;
        }
        if (ed == 0) return 0;
        exp10 += eneg ? -e : e;
    }
    if (i != n) return 0;
    double v = (double)mant;
    if (mant != 0) {
        if (exp10 > 400) v = INFINITY;
        else if (exp10 < -400) v = 0;
        else {
            /* Powers of ten up to 1e22 are exact in double: one rounding. */
            int e = exp10 < 0 ? -exp10 : exp10;
            double p = 1;
            while (e > 22) {
                p *= 1e22;
                e -= 22;
            }
            double q = 1;
            while (e-- > 0) q *= 10;
            p *= q;
            v = exp10 < 0 ? v / p : v * p;
        }
    }
    *out = neg ? -v : v;
    return 1;
}

void kd__sb_float(kd__sb *sb, float v)
{
    char tmp[48];
    if (v == 0) {
        kd__sb_puts(sb, "0");
        return;
    }
    double a = fabs((double)v);
    int e10 = (int)floor(log10(a));
    for (int digits = 1; digits <= 9; digits++) {
        /* mantissa m with `digits` digits: v ~= m * 10^(e10 - digits + 1) */
        int sc = e10 - digits + 1;
        double m = sc >= 0 ? a / pow(10, sc) : a * pow(10, -sc);
        uint64_t mi = (uint64_t)llround(m);
        int e = sc;
        if (mi >= (uint64_t)pow(10, digits)) { /* rounded up to one more digit */
            mi /= 10;
            e++;
        }
        /* Print mi * 10^e, plain when small exponents, else 'e' notation. */
        char ds[24];
        int nd = 0;
        uint64_t t = mi;
        do {
            ds[nd++] = (char)('0' + t % 10);
            t /= 10;
        } while (t);
        /* trim trailing zeros into the exponent */
        int lead = 0;
        while (lead < nd - 1 && ds[lead] == '0') {
            lead++;
            e++;
        }
        size_t k = 0;
        if (v < 0) tmp[k++] = '-';
        int ndig = nd - lead; /* digits most significant at ds[nd-1] */
        if (e >= 0 && e + ndig <= 9) {
            for (int j = nd - 1; j >= lead; j--) tmp[k++] = ds[j];
            for (int j = 0; j < e; j++) tmp[k++] = '0';
        } else if (e < 0 && -e < ndig) {
            for (int j = nd - 1; j >= lead; j--) {
                tmp[k++] = ds[j];
                if (j - lead == -e) tmp[k++] = '.';
            }
        } else if (e < 0 && -e - ndig < 4) {
            tmp[k++] = '0';
            tmp[k++] = '.';
            for (int j = 0; j < -e - ndig; j++) tmp[k++] = '0';
            for (int j = nd - 1; j >= lead; j--) tmp[k++] = ds[j];
        } else {
            for (int j = nd - 1; j >= lead; j--) tmp[k++] = ds[j];
            tmp[k++] = 'e';
            int ee = e;
            if (ee < 0) {
                tmp[k++] = '-';
                ee = -ee;
            }
            char es[8];
            int ne = 0;
            do {
                es[ne++] = (char)('0' + ee % 10);
                ee /= 10;
            } while (ee);
            while (ne) tmp[k++] = es[--ne];
        }
        tmp[k] = '\0';
        double back;
        if (parse_float_text(tmp, k, &back) && (float)back == v) break;
    }
    kd__sb_puts(sb, tmp);
}

/* ---- tokenizer ------------------------------------------------------------ */

static int is_word_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || is_digit(c) || c == '_' ||
           c == '.' || c == '+' || c == '-';
}

static void skip_space(kd__spec_parser *p)
{
    while (p->pos < p->len &&
           (p->s[p->pos] == ' ' || p->s[p->pos] == '\t' || p->s[p->pos] == '\n' || p->s[p->pos] == '\r'))
        p->pos++;
}

size_t kd__spec_peek(kd__spec_parser *p, const char **tok)
{
    skip_space(p);
    *tok = p->s + p->pos;
    if (p->pos >= p->len) return 0;
    char c = p->s[p->pos];
    if (!is_word_char(c)) return 1; /* single punctuation (or a bad byte) */
    size_t n = 0;
    while (p->pos + n < p->len && is_word_char(p->s[p->pos + n])) n++;
    return n;
}

void kd__spec_skip(kd__spec_parser *p, size_t n)
{
    p->pos += n;
}

int kd__spec_accept(kd__spec_parser *p, const char *word)
{
    const char *t;
    size_t n = kd__spec_peek(p, &t), wl = strlen(word);
    if (n == wl && memcmp(t, word, n) == 0) {
        p->pos += n;
        return 1;
    }
    return 0;
}

kd_status kd__spec_error(kd__spec_parser *p, const char *fmt, ...)
{
    char what[160];
    va_list ap;
    va_start(ap, fmt);
    kd__vfmt(what, sizeof what, fmt, ap);
    va_end(ap);
    return kd__fail(p->ctx, KD_E_FORMAT, "model spec, byte %zu: %s", p->pos, what);
}

kd_status kd__spec_uint(kd__spec_parser *p, const char *what, size_t max, size_t *v)
{
    const char *t;
    size_t n = kd__spec_peek(p, &t);
    if (n == 0 || !is_digit(t[0])) return kd__spec_error(p, "expected %s (a positive integer)", what);
    size_t x = 0;
    for (size_t i = 0; i < n; i++) {
        if (!is_digit(t[i])) return kd__spec_error(p, "bad integer for %s", what);
        x = x * 10 + (size_t)(t[i] - '0');
        if (x > max) return kd__spec_error(p, "%s larger than %zu", what, max);
    }
    if (x == 0) return kd__spec_error(p, "%s must be positive", what);
    p->pos += n;
    *v = x;
    return KD_OK;
}

kd_status kd__spec_float(kd__spec_parser *p, const char *what, float lo, float hi, float *v)
{
    const char *t;
    size_t n = kd__spec_peek(p, &t);
    double d;
    if (n == 0 || !is_word_char(t[0]) || !parse_float_text(t, n, &d))
        return kd__spec_error(p, "expected a number for %s", what);
    float f = (float)d;
    if (!(f >= lo && f <= hi)) return kd__spec_error(p, "%s out of range", what);
    p->pos += n;
    *v = f;
    return KD_OK;
}

kd_status kd__spec_parse_items(kd__spec_parser *p, const kd_shape *in, kd_layer ***list,
                               size_t *n, size_t *cap, int until_brace)
{
    kd_context *ctx = p->ctx;
    kd_shape cur = *in;
    if (p->depth > KD_SPEC_MAX_DEPTH) return kd__spec_error(p, "residuals nested too deep");
    for (;;) {
        const char *t;
        size_t tl = kd__spec_peek(p, &t);
        if (tl == 0) {
            if (until_brace) return kd__spec_error(p, "missing '}'");
            break;
        }
        if (until_brace && tl == 1 && t[0] == '}') break;
        if (!is_word_char(t[0])) return kd__spec_error(p, "expected a layer, found '%c'", t[0]);
        const kd_layer_kind *kind = NULL;
        for (size_t k = 0; kd__layer_kinds[k]; k++) {
            const char *kw = kd__layer_kinds[k]->keyword;
            if (strlen(kw) == tl && memcmp(kw, t, tl) == 0) {
                kind = kd__layer_kinds[k];
                break;
            }
        }
        if (!kind) return kd__spec_error(p, "unknown layer '%.*s'", (int)(tl > 32 ? 32 : tl), t);
        if (++p->layers > KD_SPEC_MAX_LAYERS) return kd__spec_error(p, "more than %d layers", KD_SPEC_MAX_LAYERS);
        if (cur.kind != KD_DATA_DENSE && *n > 0)
            return kd__spec_error(p, "internal: id data after the first layer");
        p->pos += tl;
        kd_layer *l = NULL;
        kd_status st = kind->parse(p, &cur, &l);
        if (st != KD_OK) return st;
        if ((st = kd__layer_list_push(ctx, list, n, cap, l)) != KD_OK) {
            kd__layer_destroy(l, ctx);
            return st;
        }
        cur = l->out;
        tl = kd__spec_peek(p, &t);
        if (tl == 1 && t[0] == ';') {
            p->pos++;
            continue;
        }
        if (tl == 0) {
            if (until_brace) return kd__spec_error(p, "missing '}'");
            break;
        }
        if (until_brace && tl == 1 && t[0] == '}') break;
        return kd__spec_error(p, "unexpected '%.*s' after layer", (int)(tl > 32 ? 32 : tl), t);
    }
    return KD_OK;
}
