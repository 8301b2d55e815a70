/* test_safetensors.c - safetensors reader and writer: round trips, torch-written
 * files, exact F16/BF16 conversion, API misuse, arena use, file writes with
 * injected I/O faults, and allocation-failure walks. Hostile inputs are in
 * test_safetensors_hostile.c. */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "kd_internal.h"
#include "kd_test.h"
#include "st_expect.h"

static char dir[64];
static char path[128];

static void setup(void)
{
    kd_test_tmpdir(dir, sizeof dir, "st");
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
}

static void teardown(void) { kd_test_rmdir(dir); }

static int count_entries(void) { return kd_test_dir_entries(dir); }

/* tests/data/NAME: meson runs tests from the build root and compiles with
 * source paths relative to it, so __FILE__'s folder is the tests folder. */
static void data_path(char *out, size_t cap, const char *name)
{
    const char *env = getenv("KD_TEST_DATA_DIR");
    if (env) {
        snprintf(out, cap, "%s/%s", env, name);
        return;
    }
    const char *f = __FILE__, *slash = strrchr(f, '/');
    int n = slash ? (int)(slash - f) : 1;
    snprintf(out, cap, "%.*s/data/%s", n, slash ? f : ".", name);
}

static unsigned char *write_to_memory(kd_safetensors_writer *w, size_t *size)
{
    ck_assert_int_eq(kd_safetensors_writer_size(w, size), KD_OK);
    unsigned char *buf = malloc(*size);
    size_t written = 0;
    ck_assert_int_eq(kd_safetensors_writer_write_memory(w, buf, *size, &written), KD_OK);
    ck_assert_uint_eq(written, *size);
    return buf;
}

START_TEST(header_is_canonical)
{
    kd_context *ctx = kd_test_ctx();
    kd_safetensors_writer *w;
    ck_assert_int_eq(kd_safetensors_writer_create(ctx, &w), KD_OK);
    const float x[2] = {1.0f, -2.0f};
    const size_t shape[1] = {2};
    ck_assert_int_eq(kd_safetensors_writer_add_f32(w, "x", 1, shape, x, KD_ST_BORROW), KD_OK);
    ck_assert_int_eq(kd_safetensors_writer_set_metadata(w, "k", "v"), KD_OK);
    size_t size;
    unsigned char *buf = write_to_memory(w, &size);
    const char *want =
        "{\"__metadata__\":{\"k\":\"v\"},\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";
    size_t wl = strlen(want), n = (wl + 7) / 8 * 8;
    ck_assert_uint_eq(size, 8 + n + 8);
    ck_assert_uint_eq(buf[0], n);
    for (int i = 1; i < 8; i++) ck_assert_uint_eq(buf[i], 0);
    ck_assert(memcmp(buf + 8, want, wl) == 0);
    for (size_t i = wl; i < n; i++) ck_assert_uint_eq(buf[8 + i], ' ');
    ck_assert(memcmp(buf + 8 + n, x, 8) == 0); /* little-endian host */
    free(buf);
    kd_safetensors_writer_destroy(w);
    kd_context_destroy(ctx);
}
END_TEST

START_TEST(roundtrip_memory)
{
    kd_context *ctx = kd_test_ctx();
    kd_safetensors_writer *w;
    ck_assert_int_eq(st_kd_writer(ctx, &w), KD_OK);
    size_t size;
    unsigned char *buf = write_to_memory(w, &size);
    ck_assert_uint_eq((buf[0] | buf[1] << 8) % 8, 0); /* header padded to 8 */

    /* Same contents added in another order: byte-identical output. */
    kd_safetensors_writer *w2;
    ck_assert_int_eq(kd_safetensors_writer_create(ctx, &w2), KD_OK);
    const size_t s_a[2] = {2, 3}, s_big[2] = {64, 33}, s_sp[1] = {6}, s_e[1] = {0};
    const float scalar = 42.0f;
    ck_assert_int_eq(kd_safetensors_writer_set_metadata(w2, "ctrl", "tab\there\nnewline \"q\" \\"), KD_OK);
    ck_assert_int_eq(kd_safetensors_writer_add_f32(w2, "a", 2, s_a, st_kd_a, KD_ST_BORROW), KD_OK);
    ck_assert_int_eq(kd_safetensors_writer_add_f32(w2, "big", 2, s_big, st_kd_big, KD_ST_COPY), KD_OK);
    ck_assert_int_eq(kd_safetensors_writer_set_metadata(w2, "arch", "{\"kind\":\"mlp\",\"sizes\":[4,3,2]}"), KD_OK);
    ck_assert_int_eq(kd_safetensors_writer_add_f32(w2, "empty", 1, s_e, NULL, KD_ST_COPY), KD_OK);
    ck_assert_int_eq(kd_safetensors_writer_add_f32(w2, "specials", 1, s_sp, st_kd_special, KD_ST_COPY), KD_OK);
    ck_assert_int_eq(kd_safetensors_writer_add_f32(w2, "z.scalar", 0, NULL, &scalar, KD_ST_BORROW), KD_OK);
    ck_assert_int_eq(kd_safetensors_writer_set_metadata(w2, "unicode", "\xc3\xbc\xe2\x9c\x93\xf0\x9d\x84\x9e"), KD_OK);
    size_t size2;
    unsigned char *buf2 = write_to_memory(w2, &size2);
    ck_assert_uint_eq(size2, size);
    ck_assert(memcmp(buf, buf2, size) == 0);
    free(buf2);
    kd_safetensors_writer_destroy(w2);

    /* Copied data no longer depends on the caller's buffer. */
    kd_safetensors *st;
    ck_assert_int_eq(kd_safetensors_open_memory(ctx, buf, size, &st), KD_OK);
    ck_assert_uint_eq(kd_safetensors_count(st), 5);
    const char *names[5] = {"a", "big", "empty", "specials", "z.scalar"};
    for (size_t i = 0; i < 5; i++) {
        kd_safetensors_tensor_info info;
        info.struct_size = sizeof info;
        ck_assert_int_eq(kd_safetensors_info(st, i, &info), KD_OK);
        ck_assert_str_eq(info.name, names[i]);
        ck_assert_uint_eq(info.name_len, strlen(names[i]));
        ck_assert_int_eq(info.dtype, KD_ST_F32);
        ck_assert_uint_eq(info.nbytes, info.numel * 4);
        size_t idx;
        ck_assert_int_eq(kd_safetensors_find(st, names[i], &idx), KD_OK);
        ck_assert_uint_eq(idx, i);
    }
    float v[64 * 33];
    const float *zc;
    ck_assert_ptr_null(st_read(st, "big", KD_ST_F32, 2, (const size_t[]){64, 33}, v, 64 * 33));
    ck_assert(memcmp(v, st_kd_big, sizeof v) == 0);
    ck_assert_int_eq(kd_safetensors_data_f32(st, 1, &zc), KD_OK);
    ck_assert(zc >= (const float *)(const void *)buf &&
              (const unsigned char *)zc < buf + size); /* zero-copy: points into buf */
    ck_assert(memcmp(zc, st_kd_big, sizeof v) == 0);
    ck_assert_ptr_null(st_read(st, "specials", KD_ST_F32, 1, (const size_t[]){6}, v, 6));
    for (int i = 0; i < 6; i++) ck_assert_uint_eq(st_f32_bits(v[i]), st_f32_special[i]);
    ck_assert_ptr_null(st_read(st, "z.scalar", KD_ST_F32, 0, NULL, v, 1));
    ck_assert(v[0] == 42.0f);
    ck_assert_ptr_null(st_read(st, "empty", KD_ST_F32, 1, (const size_t[]){0}, NULL, 0));
    ck_assert_int_eq(kd_safetensors_read_f32(st, 2, NULL, 0), KD_OK);

    const char *key, *val;
    ck_assert_uint_eq(kd_safetensors_metadata_count(st), 3);
    ck_assert_int_eq(kd_safetensors_metadata_at(st, 0, &key, &val), KD_OK);
    ck_assert_str_eq(key, "arch");
    ck_assert_str_eq(val, "{\"kind\":\"mlp\",\"sizes\":[4,3,2]}");
    ck_assert_int_eq(kd_safetensors_metadata_get(st, "ctrl", &val), KD_OK);
    ck_assert_str_eq(val, "tab\there\nnewline \"q\" \\");
    ck_assert_int_eq(kd_safetensors_metadata_get(st, "unicode", &val), KD_OK);
    ck_assert_str_eq(val, "\xc3\xbc\xe2\x9c\x93\xf0\x9d\x84\x9e");
    ck_assert_int_eq(kd_safetensors_metadata_get(st, "nope", &val), KD_E_NOT_FOUND);
    ck_assert_int_eq(kd_safetensors_find(st, "missing.weight", &(size_t){0}), KD_E_NOT_FOUND);
    ck_assert(strstr(kd_context_last_error(ctx), "missing.weight") != NULL);
    ck_assert_int_eq(kd_safetensors_find(st, "", &(size_t){0}), KD_E_NOT_FOUND);
    kd_safetensors_close(st);

    free(buf);
    kd_safetensors_writer_destroy(w);
    kd_context_destroy(ctx);
}
END_TEST

START_TEST(torch_written_files)
{
    kd_context *ctx = kd_test_ctx();
    char p[512];
    kd_safetensors *st;
    const char *why;

    data_path(p, sizeof p, "torch_mixed.safetensors");
    ck_assert_msg(kd_safetensors_open_file(ctx, p, &st) == KD_OK, "%s: %s", p, kd_context_last_error(ctx));
    why = st_expect_mixed(st);
    ck_assert_msg(why == NULL, "%s", why);
    /* torch's layout puts the F16 tensor at an offset the F32 view cannot use,
     * but F32 "w.f32" starts 4-byte aligned: zero-copy works for it */
    size_t idx;
    const float *zc;
    ck_assert_int_eq(kd_safetensors_find(st, "w.f32", &idx), KD_OK);
    ck_assert_int_eq(kd_safetensors_data_f32(st, idx, &zc), KD_OK);
    ck_assert(zc[6] == 0.375f);
    ck_assert_int_eq(kd_safetensors_find(st, "h.f16", &idx), KD_OK);
    ck_assert_int_eq(kd_safetensors_data_f32(st, idx, &zc), KD_E_UNSUPPORTED);
    kd_safetensors_close(st);

    data_path(p, sizeof p, "torch_mlp.safetensors");
    ck_assert_msg(kd_safetensors_open_file(ctx, p, &st) == KD_OK, "%s: %s", p, kd_context_last_error(ctx));
    why = st_expect_mlp(st);
    ck_assert_msg(why == NULL, "%s", why);
    kd_safetensors_close(st);
    kd_context_destroy(ctx);
}
END_TEST

/* Every one of the 65536 F16 and BF16 values converts exactly. */
START_TEST(f16_bf16_exhaustive)
{
    kd_context *ctx = kd_test_ctx();
    char hdr[256];
    int hl = snprintf(hdr, sizeof hdr,
                      "{\"b\":{\"dtype\":\"BF16\",\"shape\":[65536],\"data_offsets\":[0,131072]},"
                      "\"h\":{\"dtype\":\"F16\",\"shape\":[256,256],\"data_offsets\":[131072,262144]}}");
    size_t size = 8 + (size_t)hl + 262144;
    unsigned char *buf = malloc(size);
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)((uint64_t)hl >> (8 * i));
    memcpy(buf + 8, hdr, (size_t)hl);
    unsigned char *d = buf + 8 + hl;
    for (uint32_t i = 0; i < 65536; i++) {
        d[2 * i] = d[131072 + 2 * i] = (unsigned char)i;
        d[2 * i + 1] = d[131072 + 2 * i + 1] = (unsigned char)(i >> 8);
    }
    kd_safetensors *st;
    ck_assert_int_eq(kd_safetensors_open_memory(ctx, buf, size, &st), KD_OK);
    float *v = malloc(65536 * sizeof(float));
    ck_assert_int_eq(kd_safetensors_read_f32(st, 0, v, 65536), KD_OK);
    for (uint32_t i = 0; i < 65536; i++)
        ck_assert_msg(st_same(v[i], st_ref_bf16((uint16_t)i)), "bf16 0x%04x -> %a", i, v[i]);
    ck_assert_int_eq(kd_safetensors_read_f32(st, 1, v, 65536), KD_OK);
    for (uint32_t i = 0; i < 65536; i++)
        ck_assert_msg(st_same(v[i], st_ref_f16((uint16_t)i)), "f16 0x%04x -> %a", i, v[i]);
    ck_assert(v[1] == ldexpf(1, -24) && v[0x3FF] == ldexpf(1023, -24) && v[0x7BFF] == 65504.0f);
    ck_assert(isinf(v[0x7C00]) && v[0xFC00] < 0 && isnan(v[0x7E01]));
    /* Unaligned F32 is refused for zero-copy, copied fine; dtype mismatch refused. */
    const float *zc;
    ck_assert_int_eq(kd_safetensors_data_f32(st, 1, &zc), KD_E_UNSUPPORTED);
    kd_safetensors_close(st);
    free(v);
    free(buf);
    kd_context_destroy(ctx);
}
END_TEST

/* A header whose length is not a multiple of 4 leaves F32 data unaligned. */
START_TEST(unaligned_f32)
{
    kd_context *ctx = kd_test_ctx();
    const char *hdr = "{\"t\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}";
    size_t hl = strlen(hdr);
    ck_assert_uint_ne(hl % 4, 0);
    unsigned char *buf = malloc(8 + hl + 8);
    memset(buf, 0, 8);
    buf[0] = (unsigned char)hl;
    memcpy(buf + 8, hdr, hl);
    const float x[2] = {1.5f, -3.25f};
    memcpy(buf + 8 + hl, x, 8);
    kd_safetensors *st;
    ck_assert_int_eq(kd_safetensors_open_memory(ctx, buf, 8 + hl + 8, &st), KD_OK);
    const float *zc;
    ck_assert_int_eq(kd_safetensors_data_f32(st, 0, &zc), KD_E_UNSUPPORTED);
    ck_assert(strstr(kd_context_last_error(ctx), "aligned") != NULL);
    float v[2];
    ck_assert_int_eq(kd_safetensors_read_f32(st, 0, v, 2), KD_OK);
    ck_assert(v[0] == 1.5f && v[1] == -3.25f);
    kd_safetensors_close(st);
    free(buf);
    kd_context_destroy(ctx);
}
END_TEST

START_TEST(api_misuse)
{
    kd_context *ctx = kd_test_ctx();
    kd_safetensors *st = (kd_safetensors *)0x1;
    ck_assert_int_eq(kd_safetensors_open_memory(NULL, "", 0, &st), KD_E_INVALID);
    ck_assert_int_eq(kd_safetensors_open_memory(ctx, NULL, 10, &st), KD_E_INVALID);
    ck_assert_ptr_null(st);
    ck_assert_int_eq(kd_safetensors_open_memory(ctx, NULL, 0, &st), KD_E_FORMAT);
    ck_assert_int_eq(kd_safetensors_open_memory(ctx, "", 0, NULL), KD_E_INVALID);
    ck_assert_int_eq(kd_safetensors_open_file(ctx, NULL, &st), KD_E_INVALID);
    ck_assert_int_eq(kd_safetensors_open_file(ctx, "/nonexistent/model.safetensors", &st), KD_E_NOT_FOUND);
    ck_assert_ptr_null(st);
    kd_safetensors_close(NULL);
    kd_safetensors_writer_destroy(NULL);
    ck_assert_uint_eq(kd_safetensors_count(NULL), 0);
    ck_assert_uint_eq(kd_safetensors_metadata_count(NULL), 0);
    ck_assert_int_eq(kd_safetensors_find(NULL, "x", &(size_t){0}), KD_E_INVALID);
    ck_assert_str_eq(kd_st_dtype_name(KD_ST_BF16), "BF16");
    ck_assert_str_eq(kd_st_dtype_name((kd_st_dtype)99), "");
    ck_assert_uint_eq(kd_st_dtype_size(KD_ST_F64), 8);
    ck_assert_uint_eq(kd_st_dtype_size(KD_ST_INVALID), 0);

    kd_safetensors_writer *w;
    ck_assert_int_eq(kd_safetensors_writer_create(NULL, &w), KD_E_INVALID);
    ck_assert_int_eq(kd_safetensors_writer_create(ctx, &w), KD_OK);
    const size_t shape[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1};
    const float one = 1.0f;
    ck_assert_int_eq(kd_safetensors_writer_add_f32(w, NULL, 1, shape, &one, 0), KD_E_INVALID);
    ck_assert_int_eq(kd_safetensors_writer_add_f32(w, "", 1, shape, &one, 0), KD_E_INVALID);
    ck_assert_int_eq(kd_safetensors_writer_add_f32(w, "__metadata__", 1, shape, &one, 0), KD_E_INVALID);
    ck_assert_int_eq(kd_safetensors_writer_add_f32(w, "bad\xff", 1, shape, &one, 0), KD_E_INVALID);
    ck_assert_int_eq(kd_safetensors_writer_add_f32(w, "r9", 9, shape, &one, 0), KD_E_INVALID);
    ck_assert_int_eq(kd_safetensors_writer_add_f32(w, "ns", 1, NULL, &one, 0), KD_E_INVALID);
    ck_assert_int_eq(kd_safetensors_writer_add_f32(w, "nd", 1, shape, NULL, 0), KD_E_INVALID);
    ck_assert_int_eq(kd_safetensors_writer_add_f32(w, "fl", 1, shape, &one, 4), KD_E_INVALID);
    const size_t huge[2] = {SIZE_MAX / 2, 3};
    ck_assert_int_eq(kd_safetensors_writer_add_f32(w, "huge", 2, huge, &one, 0), KD_E_OVERFLOW);
    const size_t quarter[1] = {SIZE_MAX / 4 + 1};
    ck_assert_int_eq(kd_safetensors_writer_add_f32(w, "bytes", 1, quarter, &one, 0), KD_E_OVERFLOW);
    ck_assert_int_eq(kd_safetensors_writer_add_f32(w, "ok", 8, shape, &one, 0), KD_OK);
    ck_assert_int_eq(kd_safetensors_writer_add_f32(w, "ok", 1, shape, &one, 0), KD_E_INVALID);
    ck_assert(strstr(kd_context_last_error(ctx), "twice") != NULL);
    ck_assert_int_eq(kd_safetensors_writer_set_metadata(w, NULL, "v"), KD_E_INVALID);
    ck_assert_int_eq(kd_safetensors_writer_set_metadata(w, "k", "\xc0\xaf"), KD_E_INVALID);
    size_t size, written;
    unsigned char small[16];
    ck_assert_int_eq(kd_safetensors_writer_size(w, &size), KD_OK);
    ck_assert_int_eq(kd_safetensors_writer_write_memory(w, small, sizeof small, &written), KD_E_INVALID);
    ck_assert(strstr(kd_context_last_error(ctx), "needs") != NULL);
    ck_assert_int_eq(kd_safetensors_writer_write_file(w, NULL), KD_E_INVALID);
    ck_assert_int_eq(kd_safetensors_writer_write_file(w, "/nonexistent-dir/x.safetensors"), KD_E_IO);

    unsigned char *buf = write_to_memory(w, &size);
    ck_assert_int_eq(kd_safetensors_open_memory(ctx, buf, size, &st), KD_OK);
    kd_safetensors_tensor_info info;
    info.struct_size = 4;
    ck_assert_int_eq(kd_safetensors_info(st, 0, &info), KD_E_VERSION);
    info.struct_size = sizeof info;
    ck_assert_int_eq(kd_safetensors_info(st, 1, &info), KD_E_INVALID);
    ck_assert_int_eq(kd_safetensors_info(st, 0, NULL), KD_E_INVALID);
    ck_assert_int_eq(kd_safetensors_info(st, 0, &info), KD_OK);
    ck_assert_uint_eq(info.rank, 8);
    float v[2];
    ck_assert_int_eq(kd_safetensors_read_f32(st, 0, v, 2), KD_E_SHAPE);
    ck_assert_int_eq(kd_safetensors_read_f32(st, 0, NULL, 1), KD_E_INVALID);
    ck_assert_int_eq(kd_safetensors_read_f32(st, 5, v, 1), KD_E_INVALID);
    ck_assert_int_eq(kd_safetensors_data_f32(st, 0, NULL), KD_E_INVALID);
    ck_assert_int_eq(kd_safetensors_metadata_at(st, 0, NULL, NULL), KD_E_INVALID);
    ck_assert_int_eq(kd_safetensors_metadata_get(st, NULL, NULL), KD_E_INVALID);
    kd_safetensors_close(st);
    free(buf);
    kd_safetensors_writer_destroy(w);
    kd_context_destroy(ctx);
}
END_TEST

/* NaN and infinities pass through write and read bit-exactly (documented). */
START_TEST(nan_inf_preserved)
{
    kd_context *ctx = kd_test_ctx();
    const float x[5] = {NAN, -NAN, INFINITY, -INFINITY, st_bits_f32(0x7FA00001u) /* signalling */};
    kd_safetensors_writer *w;
    ck_assert_int_eq(kd_safetensors_writer_create(ctx, &w), KD_OK);
    ck_assert_int_eq(kd_safetensors_writer_add_f32(w, "x", 1, (const size_t[]){5}, x, KD_ST_COPY), KD_OK);
    size_t size;
    unsigned char *buf = write_to_memory(w, &size);
    kd_safetensors *st;
    ck_assert_int_eq(kd_safetensors_open_memory(ctx, buf, size, &st), KD_OK);
    float v[5];
    ck_assert_int_eq(kd_safetensors_read_f32(st, 0, v, 5), KD_OK);
    for (int i = 0; i < 5; i++) ck_assert_uint_eq(st_f32_bits(v[i]), st_f32_bits(x[i]));
    kd_safetensors_close(st);
    free(buf);
    kd_safetensors_writer_destroy(w);
    kd_context_destroy(ctx);
}
END_TEST

/* A zero dimension makes the element count 0 whatever the others, in the
 * writer as in the reader, so whatever the reader accepts can be written back
 * (the fuzzer checks that property). */
START_TEST(zero_dimension_shapes)
{
    kd_context *ctx = kd_test_ctx();
    kd_safetensors_writer *w;
    ck_assert_int_eq(kd_safetensors_writer_create(ctx, &w), KD_OK);
    const size_t shape[3] = {SIZE_MAX, 0, SIZE_MAX};
    ck_assert_int_eq(kd_safetensors_writer_add_f32(w, "z", 3, shape, NULL, KD_ST_COPY), KD_OK);
    size_t size;
    unsigned char *buf = write_to_memory(w, &size);
    kd_safetensors *st;
    ck_assert_int_eq(kd_safetensors_open_memory(ctx, buf, size, &st), KD_OK);
    ck_assert_ptr_null(st_read(st, "z", KD_ST_F32, 3, shape, NULL, 0));
    kd_safetensors_close(st);
    free(buf);
    kd_safetensors_writer_destroy(w);
    kd_context_destroy(ctx);
}
END_TEST

/* Firmware path: an arena context, a const checkpoint, one allocation. */
START_TEST(arena_open_memory)
{
    static unsigned char arena[1 << 16];
    kd_context_config cfg;
    kd_context_config_default(&cfg);
    cfg.arena = arena;
    cfg.arena_size = sizeof arena;
    kd_context *ctx;
    ck_assert_int_eq(kd_context_create(&cfg, &ctx), KD_OK);
    size_t used0, used1, peak;
    kd_safetensors_writer *w;
    ck_assert_int_eq(kd_safetensors_writer_create(ctx, &w), KD_OK);
    const float x[3] = {1, 2, 3};
    ck_assert_int_eq(kd_safetensors_writer_add_f32(w, "x", 1, (const size_t[]){3}, x, KD_ST_COPY), KD_OK);
    ck_assert_int_eq(kd_safetensors_writer_set_metadata(w, "arch", "mlp"), KD_OK);
    static unsigned char file[256];
    size_t n;
    ck_assert_int_eq(kd_safetensors_writer_write_memory(w, file, sizeof file, &n), KD_OK);
    kd_safetensors_writer_destroy(w);

    /* The reader is a single block: closing it returns the arena to where it was. */
    ck_assert_int_eq(kd_context_arena_usage(ctx, &used0, &peak), KD_OK);
    kd_safetensors *st;
    ck_assert_int_eq(kd_safetensors_open_memory(ctx, file, n, &st), KD_OK);
    const float *zc;
    ck_assert_int_eq(kd_safetensors_data_f32(st, 0, &zc), KD_OK);
    ck_assert(zc[2] == 3.0f && (const unsigned char *)zc > file);
    kd_safetensors_close(st);
    ck_assert_int_eq(kd_context_arena_usage(ctx, &used1, &peak), KD_OK);
    ck_assert_uint_eq(used1, used0);
    kd_context_destroy(ctx);
}
END_TEST

START_TEST(roundtrip_file)
{
    kd_context *ctx = kd_test_ctx();
    kd_safetensors_writer *w;
    ck_assert_int_eq(st_kd_writer(ctx, &w), KD_OK);
    ck_assert_int_eq(kd_safetensors_writer_write_file(w, path), KD_OK);
    size_t mem_size;
    unsigned char *mem = write_to_memory(w, &mem_size);
    kd_safetensors_writer_destroy(w);
    ck_assert_int_eq(count_entries(), 1);

    FILE *f = fopen(path, "rb");
    unsigned char *disk = malloc(mem_size + 1);
    ck_assert_uint_eq(fread(disk, 1, mem_size + 1, f), mem_size);
    fclose(f);
    ck_assert(memcmp(disk, mem, mem_size) == 0); /* file == memory output */
    free(disk);
    free(mem);

    kd_safetensors *st;
    ck_assert_int_eq(kd_safetensors_open_file(ctx, path, &st), KD_OK);
    float v[6];
    ck_assert_ptr_null(st_read(st, "a", KD_ST_F32, 2, (const size_t[]){2, 3}, v, 6));
    ck_assert(memcmp(v, st_kd_a, sizeof v) == 0);
    kd_safetensors_close(st);

    /* An empty file is a format error, not a crash. */
    f = fopen(path, "wb");
    fclose(f);
    ck_assert_int_eq(kd_safetensors_open_file(ctx, path, &st), KD_E_FORMAT);
    ck_assert(strstr(kd_context_last_error(ctx), path) != NULL);
    kd_context_destroy(ctx);
}
END_TEST

static const char *fail_op;
static int fail_errno;
static int fault(const char *op) { return strcmp(op, fail_op) == 0 ? fail_errno : 0; }

/* A failed write (ENOSPC, EIO at fsync, failed rename) leaves the previous
 * checkpoint under the final name, still loadable, and no temporary file. */
START_TEST(write_faults_keep_old_file)
{
    kd_context *ctx = kd_test_ctx();
    kd_safetensors_writer *old_w, *new_w;
    ck_assert_int_eq(kd_safetensors_writer_create(ctx, &old_w), KD_OK);
    const float old_x[2] = {7, 8};
    ck_assert_int_eq(kd_safetensors_writer_add_f32(old_w, "x", 1, (const size_t[]){2}, old_x, 0), KD_OK);
    ck_assert_int_eq(kd_safetensors_writer_set_metadata(old_w, "version", "old"), KD_OK);
    ck_assert_int_eq(kd_safetensors_writer_write_file(old_w, path), KD_OK);
    ck_assert_int_eq(st_kd_writer(ctx, &new_w), KD_OK);

    const char *ops[3] = {"write", "fsync", "rename"};
    const int errs[3] = {ENOSPC, EIO, EXDEV};
    for (int i = 0; i < 3; i++) {
        fail_op = ops[i];
        fail_errno = errs[i];
        kd__io_fault_hook = fault;
        ck_assert_int_eq(kd_safetensors_writer_write_file(new_w, path), KD_E_IO);
        kd__io_fault_hook = NULL;
        ck_assert(strstr(kd_context_last_error(ctx), strerror(errs[i])) != NULL);
        ck_assert_int_eq(count_entries(), 1);
        kd_safetensors *st;
        ck_assert_int_eq(kd_safetensors_open_file(ctx, path, &st), KD_OK);
        const char *val;
        ck_assert_int_eq(kd_safetensors_metadata_get(st, "version", &val), KD_OK);
        ck_assert_str_eq(val, "old");
        float v[2];
        ck_assert_int_eq(kd_safetensors_read_f32(st, 0, v, 2), KD_OK);
        ck_assert(v[0] == 7 && v[1] == 8);
        kd_safetensors_close(st);
    }
    /* Without faults the new checkpoint replaces the old one. */
    ck_assert_int_eq(kd_safetensors_writer_write_file(new_w, path), KD_OK);
    kd_safetensors *st;
    ck_assert_int_eq(kd_safetensors_open_file(ctx, path, &st), KD_OK);
    ck_assert_uint_eq(kd_safetensors_count(st), 5);
    kd_safetensors_close(st);
    kd_safetensors_writer_destroy(old_w);
    kd_safetensors_writer_destroy(new_w);
    kd_context_destroy(ctx);
}
END_TEST

/* ---- allocation-failure walks ----------------------------------------- */

typedef struct {
    const unsigned char *buf;
    size_t size;
} mem_arg;

static kd_status open_body(kd_context *ctx, void *user)
{
    mem_arg *m = (mem_arg *)user;
    kd_safetensors *st = NULL;
    kd_status s = kd_safetensors_open_memory(ctx, m->buf, m->size, &st);
    if (s != KD_OK) return s;
    float v[64 * 33];
    for (size_t i = 0; i < kd_safetensors_count(st) && s == KD_OK; i++) {
        kd_safetensors_tensor_info info;
        info.struct_size = sizeof info;
        s = kd_safetensors_info(st, i, &info);
        if (s == KD_OK && info.numel <= 64 * 33) s = kd_safetensors_read_f32(st, i, v, info.numel);
    }
    kd_safetensors_close(st);
    return s;
}

START_TEST(open_memory_allocation_failures)
{
    kd_context *ctx = kd_test_ctx();
    kd_safetensors_writer *w;
    ck_assert_int_eq(st_kd_writer(ctx, &w), KD_OK);
    size_t size;
    unsigned char *buf = write_to_memory(w, &size);
    mem_arg m = {buf, size};
    ck_assert_int_eq(kd_test_alloc_failures(open_body, &m), 1); /* one block */
    free(buf);
    kd_safetensors_writer_destroy(w);
    kd_context_destroy(ctx);
}
END_TEST

static kd_status write_memory_body(kd_context *ctx, void *user)
{
    (void)user;
    kd_safetensors_writer *w = NULL;
    kd_status s = st_kd_writer(ctx, &w);
    if (s != KD_OK) return s;
    size_t size = 0, n = 0;
    s = kd_safetensors_writer_size(w, &size);
    unsigned char *buf = s == KD_OK ? malloc(size) : NULL;
    if (s == KD_OK) s = kd_safetensors_writer_write_memory(w, buf, size, &n);
    kd_safetensors *st = NULL;
    if (s == KD_OK) s = kd_safetensors_open_memory(ctx, buf, n, &st);
    if (s == KD_OK && kd_safetensors_count(st) != 5) s = KD_E_INTERNAL;
    kd_safetensors_close(st);
    free(buf);
    kd_safetensors_writer_destroy(w);
    return s;
}

START_TEST(writer_allocation_failures)
{
    /* create + 5 tensors + 4 metadata sets + size plan + write plan + open */
    ck_assert_int_eq(kd_test_alloc_failures(write_memory_body, NULL), 13);
}
END_TEST

static kd_status write_file_body(kd_context *ctx, void *user)
{
    (void)user;
    kd_safetensors_writer *w = NULL;
    kd_status s = st_kd_writer(ctx, &w);
    if (s == KD_OK) s = kd_safetensors_writer_write_file(w, path);
    kd_safetensors *st = NULL;
    if (s == KD_OK) s = kd_safetensors_open_file(ctx, path, &st);
    kd_safetensors_close(st);
    kd_safetensors_writer_destroy(w);
    if (count_entries() > 1) return KD_E_INTERNAL; /* a temporary file was left */
    return s;
}

START_TEST(write_file_allocation_failures)
{
    long n = kd_test_alloc_failures(write_file_body, NULL);
    ck_assert_int_ge(n, 13);
}
END_TEST

Suite *kd_test_suite(void)
{
    Suite *s = suite_create("safetensors");
    TCase *tc = tcase_create("safetensors");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, header_is_canonical);
    tcase_add_test(tc, roundtrip_memory);
    tcase_add_test(tc, torch_written_files);
    tcase_add_test(tc, f16_bf16_exhaustive);
    tcase_add_test(tc, unaligned_f32);
    tcase_add_test(tc, api_misuse);
    tcase_add_test(tc, nan_inf_preserved);
    tcase_add_test(tc, zero_dimension_shapes);
    tcase_add_test(tc, arena_open_memory);
    tcase_add_test(tc, roundtrip_file);
    tcase_add_test(tc, write_faults_keep_old_file);
    tcase_add_test(tc, open_memory_allocation_failures);
    tcase_add_test(tc, writer_allocation_failures);
    tcase_add_test(tc, write_file_allocation_failures);
    suite_add_tcase(s, tc);
    return s;
}
