/*
 * kd_fmt.c - a small printf-style formatter for error reasons and log lines.
 *
 * libkd keeps stdio out of the library so that firmware builds link without
 * it; this covers the conversions the library itself uses.
 */
#include <math.h>

#include "kd_internal.h"

typedef struct {
    char *buf;
    size_t size;
    size_t len;
} kd_out;

static void out_ch(kd_out *o, char c)
{
    if (o->len + 1 < o->size) o->buf[o->len] = c;
    o->len++;
}

static void out_str(kd_out *o, const char *s)
{
    while (*s) out_ch(o, *s++);
}

static void out_uint(kd_out *o, unsigned long long v, unsigned base, int min_digits)
{
    char tmp[32];
    int n = 0;
    do {
        unsigned d = (unsigned)(v % base);
        tmp[n++] = (char)(d < 10 ? '0' + d : 'a' + d - 10);
        v /= base;
    } while (v != 0 && n < (int)sizeof tmp);
    while (n < min_digits && n < (int)sizeof tmp) tmp[n++] = '0';
    while (n > 0) out_ch(o, tmp[--n]);
}

static void out_int(kd_out *o, long long v)
{
    if (v < 0) {
        out_ch(o, '-');
        out_uint(o, (unsigned long long)(-(v + 1)) + 1u, 10, 1);
    } else {
        out_uint(o, (unsigned long long)v, 10, 1);
    }
}

/* Six significant digits, %g-like: plain notation for 1e-4 <= |v| < 1e6,
 * scientific otherwise. Exact to the last printed digit is not a goal. */
static void out_double(kd_out *o, double v, int fixed)
{
    if (isnan(v)) { out_str(o, "nan"); return; }
    if (signbit(v)) { out_ch(o, '-'); v = -v; }
    if (isinf(v)) { out_str(o, "inf"); return; }
    if (v == 0.0) { out_ch(o, '0'); return; }
    int exp10 = 0;
    double m = v;
    if (fixed || (v >= 1e-4 && v < 1e6)) {
        double ip = floor(v);
        double fp = v - ip;
        if (ip >= 1e18) { fixed = 0; goto sci; }
        unsigned long long frac = (unsigned long long)(fp * 1e6 + 0.5);
        if (frac >= 1000000ull) { ip += 1.0; frac -= 1000000ull; }
        out_uint(o, (unsigned long long)ip, 10, 1);
        if (frac) {
            int digits = 6;
            while (frac % 10 == 0) { frac /= 10; digits--; }
            out_ch(o, '.');
            out_uint(o, frac, 10, digits);
        }
        return;
    }
sci:
    while (m >= 10.0) { m /= 10.0; exp10++; }
    while (m < 1.0) { m *= 10.0; exp10--; }
    unsigned long long mant = (unsigned long long)(m * 1e5 + 0.5);
    if (mant >= 1000000ull) { mant /= 10; exp10++; }
    out_uint(o, mant / 100000ull, 10, 1);
    mant %= 100000ull;
    if (mant) {
        int digits = 5;
        while (mant % 10 == 0) { mant /= 10; digits--; }
        out_ch(o, '.');
        out_uint(o, mant, 10, digits);
    }
    out_ch(o, 'e');
    out_int(o, exp10);
}

size_t kd__vfmt(char *buf, size_t size, const char *fmt, va_list ap)
{
    kd_out o = {buf, size, 0};
    for (const char *p = fmt; *p; p++) {
        if (*p != '%') { out_ch(&o, *p); continue; }
        p++;
        int lng = 0, sz = 0;
        while (*p == 'l') { lng++; p++; }
        if (*p == 'z') { sz = 1; p++; }
        switch (*p) {
        case '%': out_ch(&o, '%'); break;
        case 'c': out_ch(&o, (char)va_arg(ap, int)); break;
        case 's': {
            const char *s = va_arg(ap, const char *);
            out_str(&o, s ? s : "(null)");
            break;
        }
        case 'd': case 'i':
            if (sz) out_int(&o, (long long)va_arg(ap, ptrdiff_t));
            else if (lng >= 2) out_int(&o, va_arg(ap, long long));
            else if (lng == 1) out_int(&o, va_arg(ap, long));
            else out_int(&o, va_arg(ap, int));
            break;
        case 'u': case 'x': {
            unsigned base = *p == 'x' ? 16u : 10u;
            if (sz) out_uint(&o, va_arg(ap, size_t), base, 1);
            else if (lng >= 2) out_uint(&o, va_arg(ap, unsigned long long), base, 1);
            else if (lng == 1) out_uint(&o, va_arg(ap, unsigned long), base, 1);
            else out_uint(&o, va_arg(ap, unsigned), base, 1);
            break;
        }
        case 'p':
            out_str(&o, "0x");
            out_uint(&o, (unsigned long long)(uintptr_t)va_arg(ap, void *), 16, 1);
            break;
        case 'g': out_double(&o, va_arg(ap, double), 0); break;
        case 'f': out_double(&o, va_arg(ap, double), 1); break;
        case '\0': p--; break;
        default: out_ch(&o, '%'); out_ch(&o, *p); break;
        }
    }
    if (size > 0) buf[o.len < size ? o.len : size - 1] = '\0';
    return o.len < size ? o.len : (size ? size - 1 : 0);
}

size_t kd__fmt(char *buf, size_t size, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    size_t n = kd__vfmt(buf, size, fmt, ap);
    va_end(ap);
    return n;
}
