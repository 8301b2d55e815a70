/* test_safetensors_hostile.c - broken and hostile safetensors input: each case
 * gives its pinned status and a reason, never a crash or an out-of-bounds read.
 * Every buffer is an exact-size heap block, so the sanitizer build catches any
 * read past its end. */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "kd_internal.h"
#include "kd_test.h"
#include "st_expect.h"

/* 8-byte length + header + data_len zero bytes, in an exact-size block. */
static unsigned char *build(const char *json, size_t json_len, size_t data_len, size_t *size)
{
    *size = 8 + json_len + data_len;
    unsigned char *b = malloc(*size ? *size : 1);
    for (int i = 0; i < 8; i++) b[i] = (unsigned char)((uint64_t)json_len >> (8 * i));
    memcpy(b + 8, json, json_len);
    memset(b + 8 + json_len, 0, data_len);
    return b;
}

typedef struct {
    const char *json;
    size_t data_len;
    kd_status want;
    const char *why; /* substring of the reason */
} bad_case;

#define T1 "\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}"

static const bad_case bad[] = {
    /* JSON syntax */
    {"", 0, KD_E_FORMAT, "expected '{'"},
    {"hello", 0, KD_E_FORMAT, "expected '{'"},
    {"[]", 0, KD_E_FORMAT, "expected '{'"},
    {"{\"t\":{\"dtype\":\"F32\"", 0, KD_E_FORMAT, "unexpected end"},
    {"{\"t", 0, KD_E_FORMAT, "unterminated string"},
    {"{} x", 0, KD_E_FORMAT, "trailing characters"},
    {"{}{}", 0, KD_E_FORMAT, "trailing characters"},
    {"{" T1 ",}", 4, KD_E_FORMAT, "expected a string key"},
    {"{\"t\":{\"dtype\":\"F32\",\"shape\":[1,],\"data_offsets\":[0,4]}}", 4, KD_E_FORMAT, "expected a value after ','"},
    {"{\"t\" {}}", 0, KD_E_FORMAT, "expected ':'"},
    {"{\"__metadata__\":{\"a\":\"b\" \"c\":\"d\"}}", 0, KD_E_FORMAT, "expected ',' or '}'"},
    {"{\"t\":{\"x\":tru}}", 0, KD_E_FORMAT, "expected a value"},
    {"{\"t\":{\"x\":[1 2]}}", 0, KD_E_FORMAT, "expected ',' or ']'"},
    {"{\"t\":{\"x\":-}}", 0, KD_E_FORMAT, "invalid number"},
    {"{\"t\":{\"x\":1.}}", 0, KD_E_FORMAT, "digits expected after '.'"},
    {"{\"t\":{\"x\":1e+}}", 0, KD_E_FORMAT, "digits expected in an exponent"},
    {"{\"t\":{\"x\":[}}", 0, KD_E_FORMAT, "expected a value"},
    {"{\"t\":{\"x\":{\"a\"}}}", 0, KD_E_FORMAT, "expected ':'"},
    /* strings: UTF-8 and escapes */
    {"{\"\xff\":{}}", 0, KD_E_FORMAT, "invalid UTF-8"},
    {"{\"\xc0\xaf\":{}}", 0, KD_E_FORMAT, "invalid UTF-8"},
    {"{\"\xed\xa0\x80\":{}}", 0, KD_E_FORMAT, "invalid UTF-8"},
    {"{\"\xf4\x90\x80\x80\":{}}", 0, KD_E_FORMAT, "invalid UTF-8"},
    {"{\"\xe2\x9c\":{}}", 0, KD_E_FORMAT, "invalid UTF-8"},
    {"{\"\x80\":{}}", 0, KD_E_FORMAT, "invalid UTF-8"},
    {"{\"a\x01\x62\":{}}", 0, KD_E_FORMAT, "control character"},
    {"{\"a\nb\":{}}", 0, KD_E_FORMAT, "control character"},
    {"{\"\\ud800x\":{}}", 0, KD_E_FORMAT, "unpaired high surrogate"},
    {"{\"\\ud800\\u0041\":{}}", 0, KD_E_FORMAT, "unpaired high surrogate"},
    {"{\"\\udc00\":{}}", 0, KD_E_FORMAT, "unpaired low surrogate"},
    {"{\"\\q\":{}}", 0, KD_E_FORMAT, "invalid escape"},
    {"{\"\\u12G4\":{}}", 0, KD_E_FORMAT, "invalid \\u escape"},
    {"{\"\\u12", 0, KD_E_FORMAT, "invalid \\u escape"},
    {"{\"\\", 0, KD_E_FORMAT, "unterminated escape"},
    /* nesting: root (1) + entry (2) + 7 arrays exceeds the limit of 8 */
    {"{\"t\":{\"x\":[[[[[[[1]]]]]]]}}", 0, KD_E_FORMAT, "nesting too deep"},
    {"{\"t\":{\"x\":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[", 0,
     KD_E_FORMAT, "nesting too deep"},
    /* numbers */
    {"{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,99999999999999999999999]}}", 4,
     KD_E_OVERFLOW, "does not fit 64 bits"},
    {"{\"t\":{\"dtype\":\"F32\",\"shape\":[18446744073709551616],\"data_offsets\":[0,4]}}", 4,
     KD_E_OVERFLOW, "does not fit 64 bits"},
    {"{\"t\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4, KD_E_FORMAT, "negative dimension"},
    {"{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}", 4, KD_E_FORMAT, "negative number"},
    {"{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4.0]}}", 4, KD_E_FORMAT, "fraction or exponent"},
    {"{\"t\":{\"dtype\":\"F32\",\"shape\":[1e0],\"data_offsets\":[0,4]}}", 4, KD_E_FORMAT, "fraction or exponent"},
    {"{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[00,4]}}", 4, KD_E_FORMAT, "leading zero"},
    {"{\"t\":{\"dtype\":\"F32\",\"shape\":[\"1\"],\"data_offsets\":[0,4]}}", 4, KD_E_FORMAT, "invalid number"},
    /* tensor entries */
    {"{\"t\":5}", 0, KD_E_FORMAT, "entry is not an object"},
    {"{\"t\":{\"dtype\":\"F17\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, KD_E_FORMAT, "unknown dtype 'F17'"},
    {"{\"t\":{\"dtype\":\"f32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, KD_E_FORMAT, "unknown dtype 'f32'"},
    {"{\"t\":{\"dtype\":\"F32\\u0000\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, KD_E_FORMAT, "unknown dtype"},
    {"{\"t\":{\"dtype\":5,\"shape\":[1],\"data_offsets\":[0,4]}}", 4, KD_E_FORMAT, "\"dtype\" is not a string"},
    {"{\"t\":{\"dtype\":\"F32\",\"shape\":3,\"data_offsets\":[0,4]}}", 4, KD_E_FORMAT, "\"shape\" is not an array"},
    {"{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":{}}}", 4, KD_E_FORMAT, "\"data_offsets\" is not an array"},
    {"{\"t\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, KD_E_FORMAT, "no \"dtype\""},
    {"{\"t\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4, KD_E_FORMAT, "no \"shape\""},
    {"{\"t\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, KD_E_FORMAT, "no \"data_offsets\""},
    {"{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}}", 8, KD_E_FORMAT, "more than 2 entries"},
    {"{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4]}}", 4, KD_E_FORMAT, "needs 2 entries"},
    {"{\"t\":{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, KD_E_FORMAT, "given twice"},
    {"{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"shape\":[1],\"data_offsets\":[0,4]}}", 4, KD_E_FORMAT, "given twice"},
    {"{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"data_offsets\":[0,4]}}", 4, KD_E_FORMAT, "given twice"},
    {"{\"\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, KD_E_FORMAT, "empty name"},
    {"{\"a\\u0000b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, KD_E_FORMAT, "U+0000"},
    {"{\"t\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", 4, KD_E_FORMAT, "rank exceeds"},
    /* sizes and offsets */
    {"{\"t\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4294967296],\"data_offsets\":[0,0]}}", 0,
     KD_E_OVERFLOW, "element count"},
    {"{\"t\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904],\"data_offsets\":[0,0]}}", 0,
     KD_E_OVERFLOW, "byte count"},
    {"{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 4, KD_E_FORMAT, "run past"},
    {"{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,18446744073709551615]}}", 4, KD_E_FORMAT, "run past"},
    {"{\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,0]}}", 4, KD_E_FORMAT, "begin after end"},
    {"{\"t\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8, KD_E_FORMAT, "needs 12"},
    {"{\"t\":{\"dtype\":\"F16\",\"shape\":[4],\"data_offsets\":[0,4]}}", 4, KD_E_FORMAT, "needs 8"},
    {"{\"t\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,4]}}", 4, KD_E_FORMAT, "needs 0"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
     "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12, KD_E_FORMAT, "overlap"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
     "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8, KD_E_FORMAT, "overlap"},
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
     "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}", 12, KD_E_FORMAT, "belong to no tensor"},
    {"{\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, KD_E_FORMAT, "belong to no tensor"},
    {"{" T1 "}", 8, KD_E_FORMAT, "cover 4 bytes of the 8-byte"},
    {"{}", 4, KD_E_FORMAT, "cover 0 bytes of the 4-byte"},
    {"{" T1 ",\"t\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, KD_E_FORMAT, "appears twice"},
    {"{" T1 ",\"\\u0074\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}", 8, KD_E_FORMAT, "appears twice"},
    /* metadata */
    {"{\"__metadata__\":{\"a\":1}}", 0, KD_E_FORMAT, "not a string"},
    {"{\"__metadata__\":{\"a\":{\"b\":\"c\"}}}", 0, KD_E_FORMAT, "not a string"},
    {"{\"__metadata__\":{\"a\":null}}", 0, KD_E_FORMAT, "not a string"},
    {"{\"__metadata__\":[]}", 0, KD_E_FORMAT, "\"__metadata__\" is not an object"},
    {"{\"__metadata__\":\"x\"}", 0, KD_E_FORMAT, "\"__metadata__\" is not an object"},
    {"{\"__metadata__\":{\"a\":\"1\",\"a\":\"2\"}}", 0, KD_E_FORMAT, "metadata key 'a' appears twice"},
    {"{\"__metadata__\":{},\"__metadata__\":{}}", 0, KD_E_FORMAT, "\"__metadata__\" given twice"},
    {"{\"__metadata__\":{\"a\":\"x\\u0000\"}}", 0, KD_E_FORMAT, "U+0000"},
    {"{\"__metadata__\":{\"a\\u0000\":\"x\"}}", 0, KD_E_FORMAT, "U+0000"},
    {"{\"__metadata__\":{\"a\":\"\xff\"}}", 0, KD_E_FORMAT, "invalid UTF-8"},
};

START_TEST(hostile_headers)
{
    kd_context *ctx = kd_test_ctx();
    size_t ncases = sizeof bad / sizeof bad[0];
    for (size_t i = 0; i < ncases; i++) {
        size_t size;
        unsigned char *buf = build(bad[i].json, strlen(bad[i].json), bad[i].data_len, &size);
        kd_safetensors *st = (kd_safetensors *)0x1;
        kd_status s = kd_safetensors_open_memory(ctx, buf, size, &st);
        ck_assert_msg(s == bad[i].want, "case %zu (%s): status %d, want %d (%s)", i, bad[i].json, s,
                      bad[i].want, kd_context_last_error(ctx));
        ck_assert_msg(strstr(kd_context_last_error(ctx), bad[i].why) != NULL,
                      "case %zu (%s): reason '%s' lacks '%s'", i, bad[i].json,
                      kd_context_last_error(ctx), bad[i].why);
        ck_assert_ptr_null(st);
        free(buf);
    }
    kd_context_destroy(ctx);
}
END_TEST

START_TEST(hostile_lengths)
{
    kd_context *ctx = kd_test_ctx();
    kd_safetensors *st;
    unsigned char small[5] = {1, 0, 0, 0, 0};
    ck_assert_int_eq(kd_safetensors_open_memory(ctx, small, sizeof small, &st), KD_E_FORMAT);
    ck_assert(strstr(kd_context_last_error(ctx), "shorter than the 8-byte") != NULL);

    size_t size;
    unsigned char *buf = build("{}", 2, 18, &size);
    buf[0] = 0xE8; /* 1000 */
    buf[1] = 0x03;
    ck_assert_int_eq(kd_safetensors_open_memory(ctx, buf, size, &st), KD_E_FORMAT);
    ck_assert(strstr(kd_context_last_error(ctx), "runs past the end") != NULL);
    buf[0] = 21; /* one more than the 20 bytes that follow */
    buf[1] = 0;
    ck_assert_int_eq(kd_safetensors_open_memory(ctx, buf, size, &st), KD_E_FORMAT);
    ck_assert(strstr(kd_context_last_error(ctx), "runs past the end") != NULL);
    memset(buf, 0, 8);
    buf[5] = 1; /* 2^40 */
    ck_assert_int_eq(kd_safetensors_open_memory(ctx, buf, size, &st), KD_E_FORMAT);
    ck_assert(strstr(kd_context_last_error(ctx), "exceeds the 100000000-byte limit") != NULL);
    memset(buf, 0xFF, 8);
    ck_assert_int_eq(kd_safetensors_open_memory(ctx, buf, size, &st), KD_E_FORMAT);
    free(buf);
    kd_context_destroy(ctx);
}
END_TEST

typedef struct {
    const char *json;
    size_t data_len;
    size_t tensors;
    size_t metadata;
} good_case;

static const good_case good[] = {
    {"{}", 0, 0, 0},
    {" \t\r\n{ } \n  ", 0, 0, 0},
    {"{\"__metadata__\":{}}", 0, 0, 0},
    /* unknown fields are skipped, whatever they hold (within the depth limit) */
    {"{\"t\":{\"x\":[[[[[[1]]]]]],\"dtype\":\"F32\",\"y\":{\"a\":[true,false,null,-0.5e-3,1E+9,\"s\\\"\"]},"
     "\"shape\":[1],\"data_offsets\":[0,4],\"z\":{}}}", 4, 1, 0},
    /* a zero dimension makes the element count 0 whatever the others */
    {"{\"t\":{\"dtype\":\"F32\",\"shape\":[0,18446744073709551615,18446744073709551615],\"data_offsets\":[0,0]}}", 0, 1, 0},
    /* zero-size tensors at the same offset, between others */
    {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},\"e1\":{\"dtype\":\"F32\",\"shape\":[0],"
     "\"data_offsets\":[4,4]},\"e2\":{\"dtype\":\"I64\",\"shape\":[2,0],\"data_offsets\":[4,4]},"
     "\"s\":{\"dtype\":\"U8\",\"shape\":[],\"data_offsets\":[4,5]}}", 5, 4, 0},
    /* every dtype the format defines */
    {"{\"a\":{\"dtype\":\"BOOL\",\"shape\":[1],\"data_offsets\":[0,1]},\"b\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]},"
     "\"c\":{\"dtype\":\"I8\",\"shape\":[1],\"data_offsets\":[2,3]},\"d\":{\"dtype\":\"F8_E5M2\",\"shape\":[1],\"data_offsets\":[3,4]},"
     "\"e\":{\"dtype\":\"F8_E4M3\",\"shape\":[1],\"data_offsets\":[4,5]},\"f\":{\"dtype\":\"I16\",\"shape\":[1],\"data_offsets\":[5,7]},"
     "\"g\":{\"dtype\":\"U16\",\"shape\":[1],\"data_offsets\":[7,9]},\"h\":{\"dtype\":\"I32\",\"shape\":[1],\"data_offsets\":[9,13]},"
     "\"i\":{\"dtype\":\"U32\",\"shape\":[1],\"data_offsets\":[13,17]},\"j\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[17,25]},"
     "\"k\":{\"dtype\":\"U64\",\"shape\":[1],\"data_offsets\":[25,33]}}", 33, 11, 0},
    /* metadata with escapes; "__metadata__" written with an escape is still metadata */
    {"{\"__metad\\u0061ta__\":{\"k\\/1\":\"\\b\\f\\n\\r\\t\\\\\\\"\",\"k2\":\"\"}}", 0, 0, 2},
};

START_TEST(valid_edge_cases)
{
    kd_context *ctx = kd_test_ctx();
    for (size_t i = 0; i < sizeof good / sizeof good[0]; i++) {
        size_t size;
        unsigned char *buf = build(good[i].json, strlen(good[i].json), good[i].data_len, &size);
        kd_safetensors *st = NULL;
        kd_status s = kd_safetensors_open_memory(ctx, buf, size, &st);
        ck_assert_msg(s == KD_OK, "case %zu: %s", i, kd_context_last_error(ctx));
        ck_assert_uint_eq(kd_safetensors_count(st), good[i].tensors);
        ck_assert_uint_eq(kd_safetensors_metadata_count(st), good[i].metadata);
        for (size_t t = 0; t < good[i].tensors; t++) {
            kd_safetensors_tensor_info info;
            info.struct_size = sizeof info;
            ck_assert_int_eq(kd_safetensors_info(st, t, &info), KD_OK);
            ck_assert_uint_eq(info.nbytes, info.numel * kd_st_dtype_size(info.dtype));
        }
        kd_safetensors_close(st);
        free(buf);
    }
    kd_context_destroy(ctx);
}
END_TEST

START_TEST(escaped_names_decode)
{
    kd_context *ctx = kd_test_ctx();
    const char *json = "{\"a\\u00e9\\ud834\\udd1e\\n\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                       "\"__metadata__\":{\"\\u00fc\":\"\\u2713\"}}";
    size_t size;
    unsigned char *buf = build(json, strlen(json), 4, &size);
    kd_safetensors *st;
    ck_assert_int_eq(kd_safetensors_open_memory(ctx, buf, size, &st), KD_OK);
    size_t idx;
    ck_assert_int_eq(kd_safetensors_find(st, "a\xc3\xa9\xf0\x9d\x84\x9e\n", &idx), KD_OK);
    const char *v;
    ck_assert_int_eq(kd_safetensors_metadata_get(st, "\xc3\xbc", &v), KD_OK);
    ck_assert_str_eq(v, "\xe2\x9c\x93");
    kd_safetensors_close(st);
    free(buf);
    kd_context_destroy(ctx);
}
END_TEST

/* Every truncation of a valid checkpoint fails cleanly; so does every
 * single-byte corruption of its length and header (status unconstrained). */
START_TEST(truncations_and_corruptions)
{
    kd_context *ctx = kd_test_ctx();
    kd_safetensors_writer *w;
    ck_assert_int_eq(st_kd_writer(ctx, &w), KD_OK);
    size_t size, n;
    ck_assert_int_eq(kd_safetensors_writer_size(w, &size), KD_OK);
    unsigned char *full = malloc(size);
    ck_assert_int_eq(kd_safetensors_writer_write_memory(w, full, size, &n), KD_OK);
    kd_safetensors_writer_destroy(w);
    kd_safetensors *st;
    for (size_t len = 0; len < size; len++) {
        unsigned char *b = malloc(len ? len : 1);
        memcpy(b, full, len);
        ck_assert_int_eq(kd_safetensors_open_memory(ctx, b, len, &st), KD_E_FORMAT);
        free(b);
    }
    size_t hdr_end = 8 + (size_t)full[0] + ((size_t)full[1] << 8);
    const unsigned char subst[6] = {0x00, 0xFF, '"', '\\', '9', '}'};
    unsigned char *b = malloc(size);
    size_t opened = 0;
    for (size_t pos = 0; pos < hdr_end; pos++) {
        for (int k = 0; k < 6; k++) {
            memcpy(b, full, size);
            b[pos] = subst[k];
            if (kd_safetensors_open_memory(ctx, b, size, &st) == KD_OK) {
                opened++;
                float v[64 * 33];
                for (size_t i = 0; i < kd_safetensors_count(st); i++) {
                    kd_safetensors_tensor_info info;
                    info.struct_size = sizeof info;
                    ck_assert_int_eq(kd_safetensors_info(st, i, &info), KD_OK);
                    ck_assert(info.nbytes <= size);
                    if (info.numel <= 64 * 33) kd_safetensors_read_f32(st, i, v, info.numel);
                }
                kd_safetensors_close(st);
            }
        }
    }
    ck_assert_uint_gt(opened, 0); /* e.g. a changed metadata character */
    free(b);
    free(full);
    kd_context_destroy(ctx);
}
END_TEST

/* The path-based opener reports the same errors and names the file. */
START_TEST(hostile_file)
{
    kd_context *ctx = kd_test_ctx();
    char path[] = "/tmp/kd_test_st_hostile_XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    const char *json = "{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";
    size_t size;
    unsigned char *buf = build(json, strlen(json), 4, &size);
    ck_assert_int_eq(write(fd, buf, size), (ssize_t)size);
    close(fd);
    kd_safetensors *st;
    ck_assert_int_eq(kd_safetensors_open_file(ctx, path, &st), KD_E_FORMAT);
    ck_assert(strstr(kd_context_last_error(ctx), path) != NULL);
    ck_assert(strstr(kd_context_last_error(ctx), "run past") != NULL);
    unlink(path);
    free(buf);
    kd_context_destroy(ctx);
}
END_TEST

Suite *kd_test_suite(void)
{
    Suite *s = suite_create("safetensors_hostile");
    TCase *tc = tcase_create("hostile");
    tcase_add_test(tc, hostile_headers);
    tcase_add_test(tc, hostile_lengths);
    tcase_add_test(tc, valid_edge_cases);
    tcase_add_test(tc, escaped_names_decode);
    tcase_add_test(tc, truncations_and_corruptions);
    tcase_add_test(tc, hostile_file);
    suite_add_tcase(s, tc);
    return s;
}
