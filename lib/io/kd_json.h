/*
 * kd_json.h - a small, strict, pull-style JSON reader (internal to libkd).
 *
 * The caller walks the document: kd__json_object_begin / kd__json_object_next
 * for objects, kd__json_array_begin / kd__json_array_next for arrays, and the
 * scalar readers for values. Nothing is allocated and nothing recurses: the
 * nesting depth is a counter checked against a limit (at most 64), and
 * kd__json_skip walks unknown values iteratively.
 *
 * Strictness (RFC 8259 with no extensions): strings must be valid UTF-8 (no
 * overlong forms, no encoded surrogates, nothing above U+10FFFF), raw control
 * characters are rejected, \uXXXX escapes must pair surrogates; numbers
 * follow the JSON grammar (no leading zeros, '+', NaN, hex); no trailing
 * commas; kd__json_finish rejects anything but whitespace after the value.
 *
 * Every failure records KD_E_FORMAT (KD_E_OVERFLOW for integers that do not
 * fit uint64_t) with "<what>: invalid JSON at byte N: reason" in the context.
 */
#ifndef KD_JSON_H
#define KD_JSON_H

#include <stddef.h>
#include <stdint.h>

#include "kd_internal.h"

#define KD_JSON_MAX_DEPTH 64

typedef struct kd__json {
    const unsigned char *begin;
    const unsigned char *p;     /* cursor */
    const unsigned char *end;
    kd_context *ctx;
    const char *what;           /* prefix of error messages, static text */
    unsigned depth;             /* open containers */
    unsigned max_depth;         /* <= KD_JSON_MAX_DEPTH */
    uint64_t is_object;         /* bit d-1: container at depth d is an object */
    int first;                  /* no member/element consumed yet in the innermost container */
} kd__json;

/* A string value: the raw bytes between the quotes (validated) and the
 * length of its decoded UTF-8 form. */
typedef struct kd__json_str {
    const unsigned char *raw;
    size_t raw_len;
    size_t len;                 /* decoded bytes, without a terminator */
    int has_nul;                /* decoded form contains U+0000 */
} kd__json_str;

/* Borrows data for the walk. max_depth is clamped to [1, KD_JSON_MAX_DEPTH]. */
void kd__json_init(kd__json *j, kd_context *ctx, const void *data, size_t size,
                   unsigned max_depth, const char *what);

/* Next non-whitespace byte without consuming it; 0 at the end of input. */
int kd__json_peek(kd__json *j);
/* Byte offset of the cursor from the start of the document. */
size_t kd__json_offset(const kd__json *j);

kd_status kd__json_object_begin(kd__json *j);
/* Reads the next member's key and its ':' (*more = 1), or the closing '}'
 * (*more = 0). */
kd_status kd__json_object_next(kd__json *j, int *more, kd__json_str *key);
kd_status kd__json_array_begin(kd__json *j);
/* Positions before the next element (*more = 1) or consumes ']' (*more = 0). */
kd_status kd__json_array_next(kd__json *j, int *more);

kd_status kd__json_string(kd__json *j, kd__json_str *out);
/* A non-negative integer literal (no fraction or exponent). */
kd_status kd__json_u64(kd__json *j, uint64_t *out);
/* Skips one value of any kind, validating it. */
kd_status kd__json_skip(kd__json *j);
/* Succeeds when only whitespace remains and every container is closed. */
kd_status kd__json_finish(kd__json *j);

/* Writes the decoded string (s->len bytes) and a NUL terminator to dst,
 * which holds at least s->len + 1 bytes. s came from kd__json_string. */
void kd__json_decode(const kd__json_str *s, char *dst);
/* Decodes at most cap - 1 bytes (cut at a character boundary) plus NUL, for
 * messages. cap >= 1. */
void kd__json_decode_prefix(const kd__json_str *s, char *dst, size_t cap);
/* 1 when the decoded string equals the NUL-terminated lit. */
int kd__json_str_eq(const kd__json_str *s, const char *lit);
/* Length of the well-formed UTF-8 sequence of 2 to 4 bytes at p (p < end,
 * *p >= 0x80), 0 when it is not one: the check of the reader's strings and
 * of the names the safetensors writer accepts. */
size_t kd__utf8_seq(const unsigned char *p, const unsigned char *end);

#endif /* KD_JSON_H */
