/*
 * st_expect.h - what the safetensors interop files contain, for
 * tests/test_safetensors.c and tests/io/st_interop.c. The same contents are
 * described in tests/ref/st_torch.py: change both together.
 *
 * Checkers return NULL on success or a reason (static buffer).
 */
#ifndef ST_EXPECT_H
#define ST_EXPECT_H

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "kd/kd.h"

static char st_why[512];

#define ST_REQUIRE(cond, ...)                                         \
    do {                                                              \
        if (!(cond)) {                                                \
            snprintf(st_why, sizeof st_why, __VA_ARGS__);             \
            return st_why;                                            \
        }                                                             \
    } while (0)

static uint32_t st_f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static float st_bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* Independent decoders (ldexp-based), the oracle for the library's bit code. */
static float st_ref_f16(uint16_t h)
{
    int s = h >> 15, e = (h >> 10) & 31, m = h & 1023;
    float v;
    if (e == 31) {
        if (m == 0) return s ? -INFINITY : INFINITY;
        return st_bits_f32((uint32_t)s << 31 | 0x7F800000u | (uint32_t)m << 13);
    }
    v = e == 0 ? ldexpf((float)m, -24) : ldexpf((float)(m + 1024), e - 25);
    return s ? -v : v;
}

static float st_ref_bf16(uint16_t h)
{
    int s = h >> 15, e = (h >> 7) & 255, m = h & 127;
    float v;
    if (e == 255) {
        if (m == 0) return s ? -INFINITY : INFINITY;
        return st_bits_f32((uint32_t)s << 31 | 0x7F800000u | (uint32_t)m << 16);
    }
    v = e == 0 ? ldexpf((float)m, -133) : ldexpf((float)(m + 128), e - 134);
    return s ? -v : v;
}

/* Same float, bit for bit (so -0 != +0 and NaN payloads must agree). */
static int st_same(float a, float b) { return st_f32_bits(a) == st_f32_bits(b); }

static inline const char *st_read(kd_safetensors *st, const char *name, kd_st_dtype dtype,
                           uint32_t rank, const size_t *shape, float *out, size_t n)
{
    size_t idx;
    ST_REQUIRE(kd_safetensors_find(st, name, &idx) == KD_OK, "tensor '%s' missing", name);
    kd_safetensors_tensor_info info;
    info.struct_size = sizeof info;
    ST_REQUIRE(kd_safetensors_info(st, idx, &info) == KD_OK, "info '%s'", name);
    ST_REQUIRE(strcmp(info.name, name) == 0, "name '%s' vs '%s'", info.name, name);
    ST_REQUIRE(info.dtype == dtype, "'%s': dtype %s", name, kd_st_dtype_name(info.dtype));
    ST_REQUIRE(info.rank == rank, "'%s': rank %u, want %u", name, info.rank, rank);
    for (uint32_t i = 0; i < rank; i++)
        ST_REQUIRE(info.shape[i] == shape[i], "'%s': dim %u is %zu, want %zu", name, i,
                   info.shape[i], shape[i]);
    ST_REQUIRE(info.numel == n, "'%s': numel %zu, want %zu", name, info.numel, n);
    if (out) {
        kd_status s = kd_safetensors_read_f32(st, idx, out, n);
        ST_REQUIRE(s == KD_OK, "'%s': read_f32 gave %d", name, s);
    }
    return NULL;
}

static const uint32_t st_f32_special[6] = {0x80000000u, 0x7F800000u, 0xFF800000u,
                                           0x7FC00000u, 0x00000001u, 0x7F7FFFFFu};
static const uint16_t st_f16_special[10] = {0x0001, 0x03FF, 0x0400, 0x7BFF, 0xFBFF,
                                            0x7C00, 0xFC00, 0x7E00, 0x8000, 0x8001};
static const uint16_t st_bf16_special[6] = {0x0001, 0x7F7F, 0x7F80, 0xFF80, 0x7FC0, 0x8000};

/* tests/data/torch_mixed.safetensors, st_torch.py write-mixed. */
static inline const char *st_expect_mixed(kd_safetensors *st)
{
    const char *why;
    float v[20];
    ST_REQUIRE(kd_safetensors_count(st) == 6, "%zu tensors, want 6", kd_safetensors_count(st));

    const size_t s_w[2] = {3, 4};
    if ((why = st_read(st, "w.f32", KD_ST_F32, 2, s_w, v, 12))) return why;
    for (int i = 0; i < 12; i++) {
        float want = i < 6 ? st_bits_f32(st_f32_special[i]) : (float)((i - 5) * 0.375);
        ST_REQUIRE(st_same(v[i], want), "w.f32[%d] = %a, want %a", i, v[i], want);
    }
    const size_t s_h[3] = {2, 5, 2};
    if ((why = st_read(st, "h.f16", KD_ST_F16, 3, s_h, v, 20))) return why;
    for (int i = 0; i < 20; i++) {
        float want = i < 10 ? st_ref_f16(st_f16_special[i]) : (float)((i - 12) * 0.125);
        ST_REQUIRE(st_same(v[i], want), "h.f16[%d] = %a, want %a", i, v[i], want);
    }
    ST_REQUIRE(v[0] == ldexpf(1, -24) && v[3] == 65504.0f && isinf(v[5]) && isnan(v[7]) &&
                   signbit(v[8]) && v[8] == 0,
               "f16 specials");
    const size_t s_b[2] = {2, 4};
    if ((why = st_read(st, "b.bf16", KD_ST_BF16, 2, s_b, v, 8))) return why;
    for (int i = 0; i < 8; i++) {
        float want = i < 6 ? st_ref_bf16(st_bf16_special[i]) : (float)((i - 3) * 0.5);
        ST_REQUIRE(st_same(v[i], want), "b.bf16[%d] = %a, want %a", i, v[i], want);
    }
    if ((why = st_read(st, "scalar", KD_ST_F32, 0, NULL, v, 1))) return why;
    ST_REQUIRE(v[0] == 2.5f, "scalar = %g", v[0]);
    const size_t s_e[2] = {0, 3};
    if ((why = st_read(st, "empty", KD_ST_F32, 2, s_e, v, 0))) return why;
    if ((why = st_read(st, "steps", KD_ST_I64, 0, NULL, NULL, 1))) return why;
    size_t idx;
    kd_safetensors_find(st, "steps", &idx);
    kd_safetensors_tensor_info info;
    info.struct_size = sizeof info;
    kd_safetensors_info(st, idx, &info);
    const unsigned char *b = (const unsigned char *)info.data;
    ST_REQUIRE(info.nbytes == 8 && b[0] == 7 && b[1] == 0 && b[7] == 0, "steps bytes");
    ST_REQUIRE(kd_safetensors_read_f32(st, idx, v, 1) == KD_OK && v[0] == 7.0f, "I64 to float");

    const char *val;
    ST_REQUIRE(kd_safetensors_metadata_count(st) == 3, "metadata count");
    ST_REQUIRE(kd_safetensors_metadata_get(st, "format", &val) == KD_OK && !strcmp(val, "pt"),
               "format");
    ST_REQUIRE(kd_safetensors_metadata_get(st, "arch", &val) == KD_OK &&
                   !strcmp(val, "{\"layers\":[784,32,10]}"),
               "arch");
    ST_REQUIRE(kd_safetensors_metadata_get(st, "note", &val) == KD_OK &&
                   !strcmp(val, "\xc3\xbcn\xc3\xaf" "c\xc3\xb8" "d\xc3\xa9 \xe2\x9c\x93 "
                                "\xf0\x9d\x84\x9e \"q\"\t\\"),
               "note = '%s'", val);
    return NULL;
}

/* tests/data/torch_mlp.safetensors, st_torch.py write-mlp: a torch
 * Linear(4,3)-ReLU-Linear(3,2) with its input and logits. */
static inline const char *st_expect_mlp(kd_safetensors *st)
{
    const char *why;
    float w1[12], b1[3], w2[6], b2[2], x[20], y[10];
    const size_t s_w1[2] = {3, 4}, s_b1[1] = {3}, s_w2[2] = {2, 3}, s_b2[1] = {2},
                 s_x[2] = {5, 4}, s_y[2] = {5, 2};
    if ((why = st_read(st, "0.weight", KD_ST_F32, 2, s_w1, w1, 12))) return why;
    if ((why = st_read(st, "0.bias", KD_ST_F32, 1, s_b1, b1, 3))) return why;
    if ((why = st_read(st, "2.weight", KD_ST_F32, 2, s_w2, w2, 6))) return why;
    if ((why = st_read(st, "2.bias", KD_ST_F32, 1, s_b2, b2, 2))) return why;
    if ((why = st_read(st, "input", KD_ST_F32, 2, s_x, x, 20))) return why;
    if ((why = st_read(st, "logits", KD_ST_F32, 2, s_y, y, 10))) return why;
    for (int r = 0; r < 5; r++) {
        double h[3];
        for (int o = 0; o < 3; o++) {
            double acc = b1[o];
            for (int i = 0; i < 4; i++) acc += (double)w1[o * 4 + i] * x[r * 4 + i];
            h[o] = acc > 0 ? acc : 0;
        }
        for (int o = 0; o < 2; o++) {
            double acc = b2[o];
            for (int i = 0; i < 3; i++) acc += (double)w2[o * 3 + i] * h[i];
            ST_REQUIRE(fabs(acc - y[r * 2 + o]) <= 1e-5, "logit [%d,%d]: %g vs torch %g", r, o,
                       acc, (double)y[r * 2 + o]);
        }
    }
    const char *val;
    ST_REQUIRE(kd_safetensors_metadata_get(st, "arch", &val) == KD_OK &&
                   !strcmp(val, "linear(4,3) relu linear(3,2)"),
               "arch");
    return NULL;
}

/* The checkpoint libkd writes for st_torch.py verify (its kd_expected()). */
static float st_kd_a[6], st_kd_big[64 * 33], st_kd_special[6];

static inline kd_status st_kd_writer(kd_context *ctx, kd_safetensors_writer **out)
{
    for (int i = 0; i < 6; i++) st_kd_a[i] = (float)i * 0.25f - 0.5f;
    for (int i = 0; i < 64 * 33; i++) st_kd_big[i] = (float)(i % 97) * 0.0625f - 3.0f;
    for (int i = 0; i < 6; i++) st_kd_special[i] = st_bits_f32(st_f32_special[i]);
    kd_safetensors_writer *w;
    kd_status s = kd_safetensors_writer_create(ctx, &w);
    if (s != KD_OK) return s;
    const size_t s_a[2] = {2, 3}, s_big[2] = {64, 33}, s_sp[1] = {6}, s_e[1] = {0};
    const float scalar = 42.0f;
    /* insertion order differs from file order on purpose */
    if (s == KD_OK) s = kd_safetensors_writer_add_f32(w, "z.scalar", 0, NULL, &scalar, KD_ST_COPY);
    if (s == KD_OK) s = kd_safetensors_writer_add_f32(w, "specials", 1, s_sp, st_kd_special, KD_ST_BORROW);
    if (s == KD_OK) s = kd_safetensors_writer_add_f32(w, "big", 2, s_big, st_kd_big, KD_ST_BORROW);
    if (s == KD_OK) s = kd_safetensors_writer_add_f32(w, "empty", 1, s_e, NULL, KD_ST_BORROW);
    if (s == KD_OK) s = kd_safetensors_writer_add_f32(w, "a", 2, s_a, st_kd_a, KD_ST_COPY);
    if (s == KD_OK) s = kd_safetensors_writer_set_metadata(w, "unicode", "\xc3\xbc\xe2\x9c\x93\xf0\x9d\x84\x9e");
    if (s == KD_OK) s = kd_safetensors_writer_set_metadata(w, "arch", "placeholder");
    if (s == KD_OK) s = kd_safetensors_writer_set_metadata(w, "ctrl", "tab\there\nnewline \"q\" \\");
    if (s == KD_OK) s = kd_safetensors_writer_set_metadata(w, "arch", "{\"kind\":\"mlp\",\"sizes\":[4,3,2]}");
    if (s != KD_OK) {
        kd_safetensors_writer_destroy(w);
        return s;
    }
    *out = w;
    return KD_OK;
}

#endif /* ST_EXPECT_H */
