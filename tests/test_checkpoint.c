/* test_checkpoint.c - kd_model <-> safetensors: round trips, strict loading, hostile files. */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "kd_test.h"

static const char *SPEC_MLP = "input 12; linear 8; relu; dropout 0.2; linear 3";
static const char *SPEC_CNN =
    "input 1x6x6; conv 4 3 pad 1; batchnorm; relu; maxpool 2; flatten; linear 5";

/* Trains m for a few steps so weights and batch-norm buffers are not initial. */
static void perturb(kd_model *m, size_t in, size_t out)
{
    kd_optimizer *opt;
    kd_optimizer_config oc;
    kd_optimizer_config_default(&oc, KD_OPTIM_ADAMW);
    oc.lr = 0.05f;
    ck_assert_int_eq(kd_optimizer_create(m, &oc, &opt), KD_OK);
    float x[4 * 36], dy[4 * 5];
    kd_test_fill(x, 4 * in, -1, 1, 3);
    kd_test_fill(dy, 4 * out, -1, 1, 4);
    for (int s = 0; s < 3; s++) {
        const float *y;
        ck_assert_int_eq(kd_model_zero_grad(m), KD_OK);
        ck_assert_int_eq(kd_model_forward(m, KD_MODE_TRAIN, x, 4 * in, 4, &y), KD_OK);
        ck_assert_int_eq(kd_model_backward(m, dy, 4 * out, NULL, 0), KD_OK);
        ck_assert_int_eq(kd_optimizer_step(opt), KD_OK);
    }
    kd_optimizer_destroy(opt);
}

static void same_outputs(kd_model *a, kd_model *b, size_t in, size_t out)
{
    float x[3 * 36], ya[3 * 5];
    kd_test_fill(x, 3 * in, -2, 2, 9);
    const float *y;
    ck_assert_int_eq(kd_model_forward(a, KD_MODE_INFER, x, 3 * in, 3, &y), KD_OK);
    memcpy(ya, y, 3 * out * sizeof *ya);
    ck_assert_int_eq(kd_model_forward(b, KD_MODE_INFER, x, 3 * in, 3, &y), KD_OK);
    ck_assert(memcmp(ya, y, 3 * out * sizeof *ya) == 0);
}

START_TEST(roundtrip_file_and_memory)
{
    kd_context *ctx = kd_test_ctx();
    const char *specs[2] = {SPEC_MLP, SPEC_CNN};
    const size_t ins[2] = {12, 36}, outs[2] = {3, 5};
    for (int k = 0; k < 2; k++) {
        kd_model *m, *f, *g;
        ck_assert_int_eq(kd_model_create_from_spec(ctx, specs[k], &m), KD_OK);
        perturb(m, ins[k], outs[k]);
        char path[] = "/tmp/kd_ckpt_XXXXXX";
        int fd = mkstemp(path);
        ck_assert_int_ge(fd, 0);
        close(fd);
        ck_assert_int_eq(kd_model_save(m, path), KD_OK);
        ck_assert_int_eq(kd_model_load(ctx, path, &f), KD_OK);
        same_outputs(m, f, ins[k], outs[k]);
        char s1[512], s2[512];
        ck_assert_int_eq(kd_model_spec(m, s1, sizeof s1, NULL), KD_OK);
        ck_assert_int_eq(kd_model_spec(f, s2, sizeof s2, NULL), KD_OK);
        ck_assert_str_eq(s1, s2);
        /* Every tensor, buffers included, comes back bit for bit. */
        ck_assert_uint_eq(kd_model_tensor_count(m), kd_model_tensor_count(f));
        for (size_t i = 0; i < kd_model_tensor_count(m); i++) {
            float *da, *db;
            size_t na, nb;
            ck_assert_int_eq(kd_model_tensor(m, i, &da, &na, NULL, NULL, NULL), KD_OK);
            ck_assert_int_eq(kd_model_tensor(f, i, &db, &nb, NULL, NULL, NULL), KD_OK);
            ck_assert_uint_eq(na, nb);
            ck_assert(memcmp(da, db, na * sizeof *da) == 0);
        }
        size_t need, written;
        ck_assert_int_eq(kd_model_save_size(m, &need), KD_OK);
        unsigned char *buf = malloc(need);
        ck_assert_int_eq(kd_model_save_memory(m, buf, need - 1, &written), KD_E_OVERFLOW);
        ck_assert_int_eq(kd_model_save_memory(m, buf, need, &written), KD_OK);
        ck_assert_uint_eq(written, need);
        ck_assert_int_eq(kd_model_load_memory(ctx, buf, need, &g), KD_OK);
        same_outputs(m, g, ins[k], outs[k]);
        /* The file and the buffer hold the same bytes. */
        FILE *fp = fopen(path, "rb");
        unsigned char *fb = malloc(need + 1);
        ck_assert_uint_eq(fread(fb, 1, need + 1, fp), need);
        fclose(fp);
        ck_assert(memcmp(fb, buf, need) == 0);
        free(fb);
        free(buf);
        unlink(path);
        kd_model_destroy(g);
        kd_model_destroy(f);
        kd_model_destroy(m);
    }
    kd_context_destroy(ctx);
}
END_TEST

static unsigned char *saved(kd_context *ctx, const char *spec, size_t *size)
{
    kd_model *m;
    ck_assert_int_eq(kd_model_create_from_spec(ctx, spec, &m), KD_OK);
    ck_assert_int_eq(kd_model_save_size(m, size), KD_OK);
    unsigned char *buf = malloc(*size);
    ck_assert_int_eq(kd_model_save_memory(m, buf, *size, NULL), KD_OK);
    kd_model_destroy(m);
    return buf;
}

START_TEST(strict_loading)
{
    kd_context *ctx = kd_test_ctx();
    size_t n;
    unsigned char *mlp = saved(ctx, SPEC_MLP, &n);
    kd_model *other, *out = (kd_model *)0x1;
    /* Same tensor names, other shapes. */
    ck_assert_int_eq(kd_model_create_from_spec(ctx, "input 12; linear 9; relu; dropout 0.2; linear 3", &other), KD_OK);
    ck_assert_int_eq(kd_model_load_weights_memory(other, mlp, n), KD_E_SHAPE);
    ck_assert(strstr(kd_context_last_error(ctx), "0.weight") != NULL);
    kd_model_destroy(other);
    /* The file lacks tensors the model has. */
    ck_assert_int_eq(kd_model_create_from_spec(ctx, "input 12; linear 8; relu; dropout 0.2; linear 3; relu; linear 2", &other), KD_OK);
    ck_assert_int_eq(kd_model_load_weights_memory(other, mlp, n), KD_E_NOT_FOUND);
    kd_model_destroy(other);
    /* The file has tensors the model lacks. */
    ck_assert_int_eq(kd_model_create_from_spec(ctx, "input 12; linear 8 nobias; relu; dropout 0.2; linear 3", &other), KD_OK);
    ck_assert_int_eq(kd_model_load_weights_memory(other, mlp, n), KD_E_FORMAT);
    ck_assert(strstr(kd_context_last_error(ctx), "0.bias") != NULL);
    kd_model_destroy(other);
    /* Weights-only safetensors (no spec): kd_model_load refuses with advice. */
    kd_safetensors_writer *w;
    ck_assert_int_eq(kd_safetensors_writer_create(ctx, &w), KD_OK);
    float v[2] = {1, 2};
    size_t shp[1] = {2};
    ck_assert_int_eq(kd_safetensors_writer_add_f32(w, "0.bias", 1, shp, v, KD_ST_COPY), KD_OK);
    unsigned char raw[512];
    size_t rn;
    ck_assert_int_eq(kd_safetensors_writer_write_memory(w, raw, sizeof raw, &rn), KD_OK);
    kd_safetensors_writer_destroy(w);
    ck_assert_int_eq(kd_model_load_memory(ctx, raw, rn, &out), KD_E_FORMAT);
    ck_assert(strstr(kd_context_last_error(ctx), "kd_model_load_weights") != NULL);
    ck_assert_ptr_null(out);
    /* A hostile spec in the metadata is a format error from the parser. */
    ck_assert_int_eq(kd_safetensors_writer_create(ctx, &w), KD_OK);
    ck_assert_int_eq(kd_safetensors_writer_set_metadata(w, "kd.spec", "input 3; linear -1"), KD_OK);
    ck_assert_int_eq(kd_safetensors_writer_write_memory(w, raw, sizeof raw, &rn), KD_OK);
    kd_safetensors_writer_destroy(w);
    ck_assert_int_eq(kd_model_load_memory(ctx, raw, rn, &out), KD_E_FORMAT);
    /* Every truncation of a valid checkpoint fails cleanly. */
    for (size_t cut = 0; cut < n; cut += (cut < 64 ? 1 : 37)) {
        unsigned char *t = malloc(cut ? cut : 1);
        memcpy(t, mlp, cut);
        ck_assert_int_ne(kd_model_load_memory(ctx, t, cut, &out), KD_OK);
        free(t);
    }
    ck_assert_int_eq(kd_model_load(ctx, "/nonexistent/x.safetensors", &out), KD_E_NOT_FOUND);
    ck_assert_int_eq(kd_model_load(NULL, "x", &out), KD_E_INVALID);
    ck_assert_int_eq(kd_model_load(ctx, "x", NULL), KD_E_INVALID);
    ck_assert_int_eq(kd_model_load_memory(ctx, NULL, 10, &out), KD_E_INVALID);
    ck_assert_int_eq(kd_model_save(NULL, "x"), KD_E_INVALID);
    ck_assert_int_eq(kd_model_save_size(NULL, &n), KD_E_INVALID);
    ck_assert_int_eq(kd_model_load_weights(NULL, "x"), KD_E_INVALID);
    ck_assert_int_eq(kd_model_load_weights_memory(NULL, mlp, n), KD_E_INVALID);
    free(mlp);
    kd_context_destroy(ctx);
}
END_TEST

/* Firmware flow: context and model live in a static arena; no malloc. */
START_TEST(load_into_arena)
{
    kd_context *hctx = kd_test_ctx();
    size_t n;
    unsigned char *buf = saved(hctx, SPEC_MLP, &n);
    static unsigned char arena[64 * 1024];
    kd_context_config cfg;
    kd_context_config_default(&cfg);
    cfg.arena = arena;
    cfg.arena_size = sizeof arena;
    cfg.gemm = KD_GEMM_REFERENCE;
    kd_context *ctx;
    ck_assert_int_eq(kd_context_create(&cfg, &ctx), KD_OK);
    kd_model *m;
    ck_assert_int_eq(kd_model_load_memory(ctx, buf, n, &m), KD_OK);
    float x[12];
    kd_test_fill(x, 12, -1, 1, 5);
    const float *y;
    ck_assert_int_eq(kd_model_forward(m, KD_MODE_INFER, x, 12, 1, &y), KD_OK);
    ck_assert(isfinite(y[0]) && isfinite(y[2]));
    size_t used, peak;
    ck_assert_int_eq(kd_context_arena_usage(ctx, &used, &peak), KD_OK);
    ck_assert(peak > 0 && peak < sizeof arena);
    kd_model_destroy(m);
    kd_context_destroy(ctx);
    free(buf);
    kd_context_destroy(hctx);
}
END_TEST

typedef struct {
    const unsigned char *buf;
    size_t n;
} blob;

static kd_status load_body(kd_context *ctx, void *user)
{
    blob *b = (blob *)user;
    kd_model *m = NULL;
    kd_status st = kd_model_load_memory(ctx, b->buf, b->n, &m);
    size_t need;
    if (st == KD_OK) st = kd_model_save_size(m, &need);
    kd_model_destroy(m);
    return st;
}

START_TEST(load_allocation_failures)
{
    kd_context *ctx = kd_test_ctx();
    blob b;
    b.buf = saved(ctx, SPEC_CNN, &b.n);
    ck_assert_int_gt(kd_test_alloc_failures(load_body, &b), 3);
    free((void *)b.buf);
    kd_context_destroy(ctx);
}
END_TEST

Suite *kd_test_suite(void)
{
    Suite *s = suite_create("checkpoint");
    TCase *tc = tcase_create("checkpoint");
    tcase_add_test(tc, roundtrip_file_and_memory);
    tcase_add_test(tc, strict_loading);
    tcase_add_test(tc, load_into_arena);
    tcase_add_test(tc, load_allocation_failures);
    suite_add_tcase(s, tc);
    return s;
}
