/* test_nn_model.c - the model handle: specs (round trips, hostile text),
 * names, hostile arguments, allocation failures, no allocation per step,
 * batch-norm folding, determinism, NaN/Inf, arenas. */
#include <stdio.h>
#include <string.h>

#include "kd_test.h"

static size_t in_numel(kd_model *m)
{
    size_t s[4], n = 1;
    uint32_t r;
    kd_model_input_shape(m, s, &r, NULL);
    for (uint32_t i = 0; i < r; i++) n *= s[i];
    return n;
}

static size_t out_numel(kd_model *m)
{
    size_t n;
    kd_model_output_shape(m, NULL, NULL, &n);
    return n;
}

/* spec -> canonical print */
static const char *const round_trips[][2] = {
    {"input 1x28x28; conv 32 3 stride 1 pad 1; relu; maxpool 2; flatten; linear 10",
     "input 1x28x28; conv 32 3 stride 1 pad 1; relu; maxpool 2; flatten; linear 10"},
    {"input 784;linear 128;relu;linear 10;", "input 784; linear 128; relu; linear 10"},
    {"  input 3x8x8 ; conv 4 3 ; maxpool 3 stride 2 ; avgpool 1", "input 3x8x8; conv 4 3 stride 1 pad 0; maxpool 3 stride 2; avgpool 1"},
    {"input 16; layernorm; batchnorm eps 0.001 momentum 0.01; dropout 0.1; gelu tanh; gelu; silu; tanh; sigmoid; identity",
     "input 16; layernorm eps 1e-5; batchnorm eps 0.001 momentum 0.01; dropout 0.1; gelu tanh; gelu; silu; tanh; sigmoid; identity"},
    {"input ids 12; embedding 1000 16; layernorm eps 1e-6; linear 4 nobias",
     "input ids 12; embedding 1000 16; layernorm eps 1e-6; linear 4 nobias"},
    {"input bags; embeddingbag 50 8; linear 2", "input bags; embeddingbag 50 8 sum; linear 2"},
    {"input 8; residual {linear 8; relu; residual{linear 8}}; linear 2",
     "input 8; residual { linear 8; relu; residual { linear 8 } }; linear 2"},
    {"input 4", "input 4"},
    {"input 2x3; dropout 1; dropout 0; dropout 0.333333343", "input 2x3; dropout 1; dropout 0; dropout 0.33333334"},
};

START_TEST(test_spec_round_trip)
{
    kd_context *ctx = kd_test_ctx();
    for (size_t i = 0; i < sizeof round_trips / sizeof round_trips[0]; i++) {
        kd_model *m, *m2;
        char buf[512], buf2[512];
        size_t need;
        ck_assert_msg(kd_model_create_from_spec(ctx, round_trips[i][0], &m) == KD_OK, "%s: %s",
                      round_trips[i][0], kd_context_last_error(ctx));
        ck_assert_int_eq(kd_model_spec(m, buf, sizeof buf, &need), KD_OK);
        ck_assert_str_eq(buf, round_trips[i][1]);
        ck_assert_uint_eq(need, strlen(buf));
        ck_assert_int_eq(kd_model_create_from_spec(ctx, buf, &m2), KD_OK);
        ck_assert_int_eq(kd_model_spec(m2, buf2, sizeof buf2, NULL), KD_OK);
        ck_assert_str_eq(buf, buf2);
        ck_assert_uint_eq(kd_model_param_count(m), kd_model_param_count(m2));
        /* too small a buffer: overflow, needed size, truncated NUL-terminated */
        char small[8];
        ck_assert_int_eq(kd_model_spec(m, small, sizeof small, &need),
                         strlen(buf) < sizeof small ? KD_OK : KD_E_OVERFLOW);
        ck_assert_uint_eq(need, strlen(buf));
        ck_assert_uint_eq(strlen(small), strlen(buf) < 7 ? strlen(buf) : 7);
        ck_assert_int_eq(kd_model_spec(m, NULL, 0, &need), KD_E_OVERFLOW);
        kd_model_destroy(m);
        kd_model_destroy(m2);
    }
    kd_context_destroy(ctx);
}
END_TEST

static const char *const hostile_specs[] = {
    "", " ", ";", "linear 10", "input", "input ;", "input 0", "input x", "input 1x", "input x1",
    "input 1xx2", "input 1x2x3x4x5", "input -1", "input 99999999999999999999999", "input 65536x65536",
    "input 4 linear 3", "input 4;; linear 3", "input 4; linear", "input 4; linear 0", "input 4; linear -3",
    "input 4; linear 3 bias", "input 4; linear 3.5", "input 4; linear 18446744073709551617",
    "input 4; linear 2147483647", "input 65536; linear 65536", "input 4; frobnicate", "input 4; conv 3 3",
    "input 1x4x4; conv 3 5", "input 1x4x4; conv 3 3 pad 3", "input 1x4x4; conv 3 3 stride 0",
    "input 1x4x4; conv 3 3 stride", "input 1x4x4; conv 3 3 pad -1", "input 1x4x4; maxpool 5",
    "input 4; maxpool 2", "input 1x4x4; avgpool 0", "input 4; dropout", "input 4; dropout 1.5",
    "input 4; dropout -0.1", "input 4; dropout nan", "input 4; dropout 1e999", "input 4; dropout 0.5.5",
    "input 4; layernorm eps 0", "input 4; layernorm eps", "input 4; batchnorm momentum 2",
    "input 4; embedding 10 3", "input ids 4; linear 3", "input ids 4; embedding 10", "input bags; relu",
    "input bags; embedding 10 3", "input ids 4; embeddingbag 10 3", "input ids 4; embedding 10 3; embedding 10 3",
    "input ids 0; embedding 4 4", "input ids 4; embedding 2147483648 1",
    "input 4; residual", "input 4; residual {", "input 4; residual { }", "input 4; residual { linear 3 }",
    "input 4; residual { linear 4", "input 4; residual linear 4 }", "input 4; }", "input 4; residual { linear 4 }}",
    "input 4; residual { residual { residual { residual { residual { residual { residual { residual { residual { relu } } } } } } } } }",
    "input 4; relu extra", "input 4; relu\x01", "input 4; rel\xffu", "input 4 # comment", "input 4; gelu erf",
    "input 2x2; flatten; conv 1 1", "input 4; linear 3 nobias nobias",
};

START_TEST(test_spec_hostile)
{
    kd_context *ctx = kd_test_ctx();
    for (size_t i = 0; i < sizeof hostile_specs / sizeof hostile_specs[0]; i++) {
        kd_model *m = (kd_model *)0x1;
        kd_status st = kd_model_create_from_spec(ctx, hostile_specs[i], &m);
        ck_assert_msg(st == KD_E_FORMAT, "'%s' gave %d", hostile_specs[i], st);
        ck_assert_ptr_eq(m, (kd_model *)0x1);
        ck_assert_msg(strlen(kd_context_last_error(ctx)) > 10, "no reason for '%s'", hostile_specs[i]);
    }
    /* too long */
    size_t n = KD_SPEC_MAX_LEN + 10;
    char *big = malloc(n + 1);
    memset(big, ' ', n);
    memcpy(big, "input 4", 7);
    big[n] = 0;
    kd_model *m;
    ck_assert_int_eq(kd_model_create_from_spec(ctx, big, &m), KD_E_FORMAT);
    /* too many layers */
    size_t k = 0;
    k += (size_t)sprintf(big, "input 4");
    for (int i = 0; i < 5000 && k + 8 < n; i++) k += (size_t)sprintf(big + k, ";relu");
    ck_assert_int_eq(kd_model_create_from_spec(ctx, big, &m), KD_E_FORMAT);
    free(big);
    kd_context_destroy(ctx);
}
END_TEST

/* Random mutations of valid specs and random bytes: FORMAT or OK, never a crash. */
START_TEST(test_spec_fuzz)
{
    kd_context *ctx = kd_test_ctx();
    kd_rng r;
    kd_rng_seed(&r, 99, 1);
    static const char alphabet[] = "input xlinear conv{};0123456789 .e-+relu pad stride\x80\t";
    for (int it = 0; it < 3000; it++) {
        char s[160];
        const char *base = round_trips[kd_rng_below(&r, sizeof round_trips / sizeof round_trips[0])][0];
        size_t len = strlen(base);
        if (len >= sizeof s) len = sizeof s - 1;
        memcpy(s, base, len);
        s[len] = 0;
        int muts = 1 + (int)kd_rng_below(&r, 4);
        for (int k = 0; k < muts && len; k++) {
            size_t pos = kd_rng_below(&r, (uint32_t)len);
            switch (kd_rng_below(&r, 3)) {
            case 0: s[pos] = alphabet[kd_rng_below(&r, sizeof alphabet - 1)]; break;
            case 1: s[pos] = (char)(1 + kd_rng_below(&r, 255)); break;
            default: s[pos] = 0; len = pos; break;
            }
        }
        kd_model *m = NULL;
        kd_status st = kd_model_create_from_spec(ctx, s, &m);
        ck_assert_msg(st == KD_OK || st == KD_E_FORMAT, "'%s' gave %d", s, st);
        if (st == KD_OK) {
            char buf[1024];
            ck_assert_int_eq(kd_model_spec(m, buf, sizeof buf, NULL), KD_OK);
            kd_model *m2;
            ck_assert_msg(kd_model_create_from_spec(ctx, buf, &m2) == KD_OK, "reprint '%s' of '%s'", buf, s);
            kd_model_destroy(m2);
            kd_model_destroy(m);
        }
    }
    kd_context_destroy(ctx);
}
END_TEST

START_TEST(test_names)
{
    kd_context *ctx = kd_test_ctx();
    kd_model *m;
    ck_assert_int_eq(kd_model_create_from_spec(ctx,
        "input 1x6x6; conv 2 3 stride 1 pad 1; batchnorm; relu; flatten; residual { linear 72; relu; linear 72 nobias }; linear 3", &m), KD_OK);
    static const char *const want[] = {"0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean",
        "1.running_var", "1.num_batches_tracked", "4.body.0.weight", "4.body.0.bias", "4.body.2.weight",
        "5.weight", "5.bias"};
    ck_assert_uint_eq(kd_model_tensor_count(m), 12);
    for (size_t i = 0; i < 12; i++) {
        const char *name;
        size_t idx;
        ck_assert_int_eq(kd_model_tensor_name(m, i, &name), KD_OK);
        ck_assert_str_eq(name, want[i]);
        ck_assert_int_eq(kd_model_tensor_find(m, want[i], &idx), KD_OK);
        ck_assert_uint_eq(idx, i);
    }
    size_t shape[4], numel, idx;
    uint32_t rank;
    int tr;
    float *d;
    ck_assert_int_eq(kd_model_tensor(m, 0, &d, &numel, shape, &rank, &tr), KD_OK);
    ck_assert_uint_eq(rank, 4);
    ck_assert_uint_eq(shape[0], 2);
    ck_assert_uint_eq(shape[1], 1);
    ck_assert_uint_eq(shape[2], 3);
    ck_assert_uint_eq(numel, 18);
    ck_assert_int_eq(tr, 1);
    ck_assert_int_eq(kd_model_tensor(m, 6, NULL, &numel, NULL, &rank, &tr), KD_OK);
    ck_assert_uint_eq(rank, 0);
    ck_assert_uint_eq(numel, 1);
    ck_assert_int_eq(tr, 0);
    ck_assert_int_eq(kd_model_tensor_grad(m, 6, &d, &numel), KD_E_INVALID);
    ck_assert_int_eq(kd_model_tensor_find(m, "9.weight", &idx), KD_E_NOT_FOUND);
    const char *nm;
    ck_assert_int_eq(kd_model_tensor_name(m, 12, &nm), KD_E_INVALID);
    ck_assert_uint_eq(kd_model_param_count(m), 18 + 2 + 2 + 2 + 72 * 72 * 2 + 72 + 72 * 3 + 3);
    /* the parameter block is laid out in tensor order */
    float *p, *g, *t;
    size_t np;
    ck_assert_int_eq(kd_model_blocks(m, &p, &g, &np), KD_OK);
    ck_assert_int_eq(kd_model_tensor(m, 7, &t, NULL, NULL, NULL, NULL), KD_OK);
    ck_assert_ptr_eq(t, p + 18 + 2 + 2 + 2);
    ck_assert_int_eq(kd_model_tensor_grad(m, 7, &t, NULL), KD_OK);
    ck_assert_ptr_eq(t, g + 18 + 2 + 2 + 2);
    kd_model_destroy(m);
    kd_context_destroy(ctx);
}
END_TEST

START_TEST(test_append)
{
    kd_context *ctx = kd_test_ctx();
    kd_model *m;
    ck_assert_int_eq(kd_model_create_from_spec(ctx, "input 1x8x8", &m), KD_OK);
    ck_assert_int_eq(kd_model_append(m, "conv 4 3 pad 1"), KD_OK);
    ck_assert_int_eq(kd_model_append(m, "relu; maxpool 2"), KD_OK);
    ck_assert_int_eq(kd_model_append(m, "embedding 3 3"), KD_E_FORMAT);
    ck_assert_uint_eq(kd_model_layer_count(m), 3);
    ck_assert_int_eq(kd_model_append(m, "flatten; bogus"), KD_E_FORMAT);
    ck_assert_uint_eq(kd_model_layer_count(m), 3);
    ck_assert_int_eq(kd_model_append(m, "flatten"), KD_OK);
    ck_assert_int_eq(kd_model_append(m, "linear 3"), KD_OK);
    char buf[256];
    ck_assert_int_eq(kd_model_spec(m, buf, sizeof buf, NULL), KD_OK);
    ck_assert_str_eq(buf, "input 1x8x8; conv 4 3 stride 1 pad 1; relu; maxpool 2; flatten; linear 3");
    ck_assert_uint_eq(kd_model_param_count(m), 4 * 9 + 4 + 64 * 3 + 3);
    float *pp;
    ck_assert_int_eq(kd_model_blocks(m, &pp, NULL, NULL), KD_OK); /* first use */
    ck_assert_int_eq(kd_model_append(m, "relu"), KD_E_STATE);
    ck_assert_int_eq(kd_model_append(NULL, "relu"), KD_E_INVALID);
    ck_assert_int_eq(kd_model_append(m, NULL), KD_E_INVALID);
    kd_model_destroy(m);
    kd_context_destroy(ctx);
}
END_TEST

START_TEST(test_hostile_args)
{
    kd_context *ctx = kd_test_ctx();
    kd_model *m;
    const float *y;
    float x[8] = {0}, dy[6] = {0}, dx[8];
    size_t n;
    ck_assert_int_eq(kd_model_create_from_spec(NULL, "input 4", &m), KD_E_INVALID);
    ck_assert_int_eq(kd_model_create_from_spec(ctx, NULL, &m), KD_E_INVALID);
    ck_assert_int_eq(kd_model_create_from_spec(ctx, "input 4", NULL), KD_E_INVALID);
    kd_model_destroy(NULL);
    ck_assert_int_eq(kd_model_spec(NULL, NULL, 0, NULL), KD_E_INVALID);
    ck_assert_uint_eq(kd_model_param_count(NULL), 0);
    ck_assert_uint_eq(kd_model_tensor_count(NULL), 0);
    ck_assert_uint_eq(kd_model_layer_count(NULL), 0);
    ck_assert_int_eq(kd_model_forward(NULL, KD_MODE_INFER, x, 8, 2, &y), KD_E_INVALID);
    ck_assert_int_eq(kd_model_forward_ids(NULL, KD_MODE_INFER, NULL, 0, NULL, 1, &y), KD_E_INVALID);
    ck_assert_int_eq(kd_model_backward(NULL, dy, 6, NULL, 0), KD_E_INVALID);
    ck_assert_int_eq(kd_model_zero_grad(NULL), KD_E_INVALID);
    ck_assert_int_eq(kd_model_blocks(NULL, NULL, NULL, NULL), KD_E_INVALID);
    ck_assert_int_eq(kd_model_tensor(NULL, 0, NULL, NULL, NULL, NULL, NULL), KD_E_INVALID);
    ck_assert_int_eq(kd_model_tensor_grad(NULL, 0, NULL, NULL), KD_E_INVALID);
    ck_assert_int_eq(kd_model_tensor_name(NULL, 0, NULL), KD_E_INVALID);
    ck_assert_int_eq(kd_model_tensor_find(NULL, "x", &n), KD_E_INVALID);
    ck_assert_int_eq(kd_model_input_shape(NULL, NULL, NULL, NULL), KD_E_INVALID);
    ck_assert_int_eq(kd_model_output_shape(NULL, NULL, NULL, NULL), KD_E_INVALID);
    ck_assert_int_eq(kd_model_fold_batchnorm(NULL, NULL), KD_E_INVALID);
    ck_assert_int_eq(kd_model_clip_grad_norm(NULL, 1, NULL), KD_E_INVALID);
    ck_assert_int_eq(kd_model_workspace_size(NULL, KD_MODE_INFER, 1, &n), KD_E_INVALID);

    /* an input-only model has no layers to run */
    ck_assert_int_eq(kd_model_create_from_spec(ctx, "input 4", &m), KD_OK);
    ck_assert_int_eq(kd_model_forward(m, KD_MODE_INFER, x, 8, 2, &y), KD_E_STATE);
    kd_model_destroy(m);

    ck_assert_int_eq(kd_model_create_from_spec(ctx, "input 4; linear 3", &m), KD_OK);
    ck_assert_int_eq(kd_model_forward(m, KD_MODE_INFER, NULL, 8, 2, &y), KD_E_INVALID);
    ck_assert_int_eq(kd_model_forward(m, KD_MODE_INFER, x, 8, 2, NULL), KD_E_INVALID);
    ck_assert_int_eq(kd_model_forward(m, (kd_mode)7, x, 8, 2, &y), KD_E_INVALID);
    ck_assert_int_eq(kd_model_forward(m, KD_MODE_INFER, x, 0, 0, &y), KD_E_INVALID);
    ck_assert_int_eq(kd_model_forward(m, KD_MODE_INFER, x, 7, 2, &y), KD_E_SHAPE);
    ck_assert_str_ne(kd_context_last_error(ctx), "");
    ck_assert_int_eq(kd_model_forward(m, KD_MODE_INFER, x, 8, SIZE_MAX / 2, &y), KD_E_OVERFLOW);
    ck_assert_int_eq(kd_model_forward(m, KD_MODE_INFER, x, (SIZE_MAX / 8) * 4, SIZE_MAX / 8, &y), KD_E_OVERFLOW);
    ck_assert_int_eq(kd_model_forward_ids(m, KD_MODE_INFER, NULL, 0, NULL, 1, &y), KD_E_INVALID);
    ck_assert_int_eq(kd_model_backward(m, dy, 6, NULL, 0), KD_E_STATE);
    ck_assert_int_eq(kd_model_forward(m, KD_MODE_TRAIN, x, 8, 2, &y), KD_OK);
    ck_assert_int_eq(kd_model_backward(m, NULL, 6, NULL, 0), KD_E_INVALID);
    ck_assert_int_eq(kd_model_backward(m, dy, 5, NULL, 0), KD_E_SHAPE);
    ck_assert_int_eq(kd_model_backward(m, dy, 6, dx, 7), KD_E_SHAPE);
    ck_assert_int_eq(kd_model_backward(m, dy, 6, dx, 8), KD_OK);
    ck_assert_int_eq(kd_model_clip_grad_norm(m, 0, NULL), KD_E_INVALID);
    ck_assert_int_eq(kd_model_clip_grad_norm(m, NAN, NULL), KD_E_INVALID);
    ck_assert_int_eq(kd_model_tensor_find(m, NULL, &n), KD_E_INVALID);
    ck_assert_int_eq(kd_model_tensor_name(m, 0, NULL), KD_E_INVALID);
    ck_assert_int_eq(kd_model_tensor(m, 99, NULL, NULL, NULL, NULL, NULL), KD_E_INVALID);
    ck_assert_int_eq(kd_model_workspace_size(m, KD_MODE_INFER, 0, &n), KD_E_INVALID);
    ck_assert_int_eq(kd_model_workspace_size(m, KD_MODE_INFER, SIZE_MAX / 4, &n), KD_E_OVERFLOW);
    kd_model_destroy(m);

    /* id models */
    ck_assert_int_eq(kd_model_create_from_spec(ctx, "input ids 2; embedding 5 3", &m), KD_OK);
    int32_t ids[4] = {0, 1, 4, 2}, bad[4] = {0, 5, 1, 1}, neg[4] = {0, -1, 1, 1};
    ck_assert_int_eq(kd_model_forward(m, KD_MODE_INFER, x, 4, 2, &y), KD_E_INVALID);
    ck_assert_int_eq(kd_model_forward_ids(m, KD_MODE_INFER, ids, 4, NULL, 2, &y), KD_OK);
    ck_assert_int_eq(kd_model_forward_ids(m, KD_MODE_INFER, ids, 3, NULL, 2, &y), KD_E_SHAPE);
    ck_assert_int_eq(kd_model_forward_ids(m, KD_MODE_INFER, bad, 4, NULL, 2, &y), KD_E_INVALID);
    ck_assert_int_eq(kd_model_forward_ids(m, KD_MODE_INFER, neg, 4, NULL, 2, &y), KD_E_INVALID);
    int32_t off[3] = {0, 2, 4};
    ck_assert_int_eq(kd_model_forward_ids(m, KD_MODE_INFER, ids, 4, off, 2, &y), KD_E_INVALID);
    ck_assert_int_eq(kd_model_forward_ids(m, KD_MODE_TRAIN, ids, 4, NULL, 2, &y), KD_OK);
    ck_assert_int_eq(kd_model_backward(m, dy, 12, dx, 8), KD_E_INVALID);
    kd_model_destroy(m);
    ck_assert_int_eq(kd_model_create_from_spec(ctx, "input bags; embeddingbag 5 3 mean", &m), KD_OK);
    int32_t off_bad1[3] = {1, 2, 4}, off_bad2[3] = {0, 3, 2}, off_bad3[3] = {0, 2, 3};
    ck_assert_int_eq(kd_model_forward_ids(m, KD_MODE_INFER, ids, 4, NULL, 2, &y), KD_E_INVALID);
    ck_assert_int_eq(kd_model_forward_ids(m, KD_MODE_INFER, ids, 4, off_bad1, 2, &y), KD_E_INVALID);
    ck_assert_int_eq(kd_model_forward_ids(m, KD_MODE_INFER, ids, 4, off_bad2, 2, &y), KD_E_INVALID);
    ck_assert_int_eq(kd_model_forward_ids(m, KD_MODE_INFER, ids, 4, off_bad3, 2, &y), KD_E_INVALID);
    ck_assert_int_eq(kd_model_forward_ids(m, KD_MODE_INFER, ids, 4, off, 2, &y), KD_OK);
    int32_t off_empty[3] = {0, 0, 0};
    ck_assert_int_eq(kd_model_forward_ids(m, KD_MODE_INFER, NULL, 0, off_empty, 2, &y), KD_OK);
    for (int i = 0; i < 6; i++) ck_assert_float_eq(y[i], 0.0f);
    kd_model_destroy(m);
    kd_context_destroy(ctx);
}
END_TEST

/* create -> forward/backward (train and infer) -> optimizer -> destroy */
static kd_status lifecycle(kd_context *ctx, void *user)
{
    const char *spec = (const char *)user;
    kd_model *m;
    kd_status st = kd_model_create_from_spec(ctx, spec, &m);
    if (st != KD_OK) return st;
    size_t ni = in_numel(m), no = out_numel(m), b = 3;
    float *x = calloc(b * ni, sizeof(float)), *dy = calloc(b * no, sizeof(float));
    const float *y;
    kd_optimizer *opt = NULL;
    kd_optimizer_config cfg;
    kd_optimizer_config_default(&cfg, KD_OPTIM_ADAMW);
    st = kd_model_forward(m, KD_MODE_INFER, x, b * ni, b, &y);
    if (st == KD_OK) st = kd_model_forward(m, KD_MODE_TRAIN, x, b * ni, b, &y);
    if (st == KD_OK) st = kd_model_backward(m, dy, b * no, NULL, 0);
    if (st == KD_OK) st = kd_optimizer_create(m, &cfg, &opt);
    if (st == KD_OK) st = kd_optimizer_step(opt);
    if (st == KD_OK) st = kd_model_fold_batchnorm(m, NULL);
    kd_optimizer_destroy(opt);
    kd_model_destroy(m);
    free(x);
    free(dy);
    return st;
}

START_TEST(test_alloc_failures)
{
    long n = kd_test_alloc_failures(lifecycle, (void *)"input 1x6x6; conv 2 3 stride 1 pad 1 nobias; batchnorm; relu; maxpool 2; "
                                                      "flatten; residual { linear 18; dropout 0.5; linear 18 }; layernorm; linear 3");
    ck_assert_int_gt(n, 8);
    n = kd_test_alloc_failures(lifecycle, (void *)"input 4; linear 4; batchnorm; gelu; linear 2");
    ck_assert_int_gt(n, 5);
}
END_TEST

START_TEST(test_no_alloc_per_step)
{
    kd_test_alloc ta = {0, 0, 0, 0};
    kd_context *ctx = kd_test_ctx_counting(&ta);
    kd_model *m;
    ck_assert_int_eq(kd_model_create_from_spec(ctx,
        "input 1x8x8; conv 3 3 stride 1 pad 1; batchnorm; relu; maxpool 2; flatten; residual { linear 48; dropout 0.2; linear 48 }; linear 4", &m), KD_OK);
    float x[8 * 64], dy[8 * 4];
    kd_test_fill(x, sizeof x / sizeof x[0], -1, 1, 5);
    kd_test_fill(dy, sizeof dy / sizeof dy[0], -1, 1, 6);
    kd_optimizer_config cfg;
    kd_optimizer_config_default(&cfg, KD_OPTIM_SGD);
    cfg.momentum = 0.9f;
    kd_optimizer *opt;
    ck_assert_int_eq(kd_optimizer_create(m, &cfg, &opt), KD_OK);
    const float *y;
    ck_assert_int_eq(kd_model_forward(m, KD_MODE_TRAIN, x, 8 * 64, 8, &y), KD_OK);
    ck_assert_int_eq(kd_model_backward(m, dy, 8 * 4, NULL, 0), KD_OK);
    ck_assert_int_eq(kd_model_forward(m, KD_MODE_INFER, x, 8 * 64, 8, &y), KD_OK);
    long calls = ta.calls;
    for (size_t b = 8; b >= 2; b -= 2) {
        ck_assert_int_eq(kd_model_zero_grad(m), KD_OK);
        ck_assert_int_eq(kd_model_forward(m, KD_MODE_TRAIN, x, b * 64, b, &y), KD_OK);
        ck_assert_int_eq(kd_model_backward(m, dy, b * 4, NULL, 0), KD_OK);
        ck_assert_int_eq(kd_model_clip_grad_norm(m, 1.0f, NULL), KD_OK);
        ck_assert_int_eq(kd_optimizer_step(opt), KD_OK);
        ck_assert_int_eq(kd_model_forward(m, KD_MODE_INFER, x, b * 64, b, &y), KD_OK);
    }
    ck_assert_int_eq(ta.calls, calls);
    /* a larger batch grows the buffers once */
    float xb[16 * 64] = {0};
    ck_assert_int_eq(kd_model_forward(m, KD_MODE_INFER, xb, 16 * 64, 16, &y), KD_OK);
    ck_assert_int_gt(ta.calls, calls);
    kd_optimizer_destroy(opt);
    kd_model_destroy(m);
    kd_context_destroy(ctx);
    ck_assert_int_eq(ta.live, 0);
}
END_TEST

START_TEST(test_fold_batchnorm)
{
    static const char *const specs[] = {
        "input 6; linear 5; batchnorm; relu; linear 3",
        "input 6; linear 5 nobias; batchnorm eps 0.001; tanh; linear 3",
        "input 2x6x6; conv 4 3 stride 1 pad 1 nobias; batchnorm; relu; maxpool 2; conv 3 3 stride 1 pad 0; batchnorm; flatten; linear 2",
    };
    for (size_t k = 0; k < 3; k++) {
        kd_context *ctx = kd_test_ctx();
        kd_model *m;
        ck_assert_int_eq(kd_model_create_from_spec(ctx, specs[k], &m), KD_OK);
        size_t ni = in_numel(m), no = out_numel(m);
        float *x = malloc(5 * ni * sizeof(float)), *ref = malloc(5 * no * sizeof(float));
        const float *y;
        /* a few training forwards give non-trivial running statistics */
        for (int s = 0; s < 4; s++) {
            kd_test_fill(x, 5 * ni, -1, 2, 40 + s);
            ck_assert_int_eq(kd_model_forward(m, KD_MODE_TRAIN, x, 5 * ni, 5, &y), KD_OK);
        }
        ck_assert_int_eq(kd_model_forward(m, KD_MODE_INFER, x, 5 * ni, 5, &y), KD_OK);
        memcpy(ref, y, 5 * no * sizeof(float));
        size_t before = kd_model_param_count(m), folded;
        size_t last_idx_before;
        char name[32];
        snprintf(name, sizeof name, "%zu.weight", kd_model_layer_count(m) - 1);
        ck_assert_int_eq(kd_model_tensor_find(m, name, &last_idx_before), KD_OK);
        ck_assert_int_eq(kd_model_fold_batchnorm(m, &folded), KD_OK);
        ck_assert_uint_eq(folded, k == 2 ? 2 : 1);
        ck_assert_uint_lt(kd_model_param_count(m), before + 1);
        size_t idx;
        ck_assert_int_eq(kd_model_tensor_find(m, name, &idx), KD_OK);
        ck_assert_int_eq(kd_model_tensor_find(m, "1.running_mean", &idx), KD_E_NOT_FOUND);
        char buf[512];
        ck_assert_int_eq(kd_model_spec(m, buf, sizeof buf, NULL), KD_OK);
        ck_assert_ptr_nonnull(strstr(buf, "; identity;"));
        ck_assert_ptr_null(strstr(buf, "batchnorm"));
        ck_assert_ptr_null(strstr(buf, "nobias"));
        ck_assert_int_eq(kd_model_forward(m, KD_MODE_INFER, x, 5 * ni, 5, &y), KD_OK);
        kd_assert_close(y, ref, 5 * no, 1e-5, 1e-4);
        free(x);
        free(ref);
        kd_model_destroy(m);
        kd_context_destroy(ctx);
    }
}
END_TEST

/* Same seed and thread count: bit-identical weights after N steps. */
static void train_run(int threads, uint64_t seed, float **out, size_t *n)
{
    kd_context_config cc;
    kd_context_config_default(&cc);
    cc.seed = seed;
    cc.threads = threads;
    kd_context *ctx;
    ck_assert_int_eq(kd_context_create(&cc, &ctx), KD_OK);
    kd_model *m;
    ck_assert_int_eq(kd_model_create_from_spec(ctx,
        "input 1x8x8; conv 4 3 stride 1 pad 1; batchnorm; relu; maxpool 2; flatten; dropout 0.3; linear 32; gelu; linear 4", &m), KD_OK);
    kd_optimizer_config oc;
    kd_optimizer_config_default(&oc, KD_OPTIM_ADAMW);
    kd_optimizer *opt;
    ck_assert_int_eq(kd_optimizer_create(m, &oc, &opt), KD_OK);
    float x[16 * 64], dy[16 * 4];
    const float *y;
    for (int s = 0; s < 6; s++) {
        kd_test_fill(x, 16 * 64, -1, 1, 100 + s);
        ck_assert_int_eq(kd_model_zero_grad(m), KD_OK);
        ck_assert_int_eq(kd_model_forward(m, KD_MODE_TRAIN, x, 16 * 64, 16, &y), KD_OK);
        for (int i = 0; i < 16 * 4; i++) dy[i] = y[i] - (float)(i % 4 == s % 4); /* MSE-like */
        ck_assert_int_eq(kd_model_backward(m, dy, 16 * 4, NULL, 0), KD_OK);
        ck_assert_int_eq(kd_optimizer_step(opt), KD_OK);
    }
    float *p;
    ck_assert_int_eq(kd_model_blocks(m, &p, NULL, n), KD_OK);
    *out = malloc(*n * sizeof(float));
    memcpy(*out, p, *n * sizeof(float));
    kd_optimizer_destroy(opt);
    kd_model_destroy(m);
    kd_context_destroy(ctx);
}

START_TEST(test_determinism)
{
    for (int threads = 1; threads <= 2; threads++) {
        float *a, *b, *c;
        size_t na, nb, nc;
        train_run(threads, 7, &a, &na);
        train_run(threads, 7, &b, &nb);
        train_run(threads, 8, &c, &nc);
        ck_assert_uint_eq(na, nb);
        ck_assert_mem_eq(a, b, na * sizeof(float));
        ck_assert_int_ne(memcmp(a, c, na * sizeof(float)), 0);
        free(a);
        free(b);
        free(c);
    }
}
END_TEST

START_TEST(test_nan_inf)
{
    kd_context *ctx = kd_test_ctx();
    kd_model *m;
    ck_assert_int_eq(kd_model_create_from_spec(ctx,
        "input 1x4x4; conv 2 3 stride 1 pad 1; relu; maxpool 2; flatten; layernorm; linear 3; softmaxless_placeholder", &m), KD_E_FORMAT);
    ck_assert_int_eq(kd_model_create_from_spec(ctx,
        "input 1x4x4; conv 2 3 stride 1 pad 1; relu; maxpool 2; flatten; layernorm; linear 3; sigmoid", &m), KD_OK);
    float x[2 * 16], dy[6] = {1, 1, 1, 1, 1, 1}, dx[32];
    kd_test_fill(x, 32, -1, 1, 9);
    x[5] = NAN;     /* sample 0 */
    x[16] = INFINITY; /* sample 1 */
    const float *y;
    ck_assert_int_eq(kd_model_forward(m, KD_MODE_INFER, x, 32, 2, &y), KD_OK);
    for (int i = 0; i < 6; i++) ck_assert(isnan(y[i]));
    ck_assert_int_eq(kd_model_forward(m, KD_MODE_TRAIN, x, 32, 2, &y), KD_OK);
    ck_assert_int_eq(kd_model_backward(m, dy, 6, dx, 32), KD_OK);
    float norm;
    ck_assert_int_eq(kd_model_clip_grad_norm(m, 1.0f, &norm), KD_E_NUMERIC);
    ck_assert(!isfinite(norm));
    /* ReLU and max-pool keep NaN */
    kd_model *r;
    ck_assert_int_eq(kd_model_create_from_spec(ctx, "input 1x2x2; relu; maxpool 2", &r), KD_OK);
    float v[4] = {1, NAN, -1, 3};
    ck_assert_int_eq(kd_model_forward(r, KD_MODE_INFER, v, 4, 1, &y), KD_OK);
    ck_assert(isnan(y[0]));
    kd_model_destroy(r);
    kd_model_destroy(m);
    kd_context_destroy(ctx);
}
END_TEST

/* Max pooling on rows wide enough for the vectorised 2x2 path, with many
 * ties and a few NaNs (those planes take the general scan): values and the
 * gradient routing must match a plain row-major scan in which the first
 * strictly larger value wins and a NaN wins over any number (PyTorch). */
static void naive_maxpool(const float *x, size_t planes, size_t h, size_t w, size_t k, size_t s,
                          float *y, const float *dy, float *dx)
{
    size_t oh = (h - k) / s + 1, ow = (w - k) / s + 1;
    memset(dx, 0, planes * h * w * sizeof(float));
    for (size_t p = 0; p < planes; p++)
        for (size_t i = 0; i < oh; i++)
            for (size_t j = 0; j < ow; j++) {
                size_t best = p * h * w + i * s * w + j * s;
                for (size_t a = 0; a < k; a++)
                    for (size_t b = 0; b < k; b++) {
                        size_t q = p * h * w + (i * s + a) * w + j * s + b;
                        if (x[q] > x[best] || (isnan(x[q]) && !isnan(x[best]))) best = q;
                    }
                y[(p * oh + i) * ow + j] = x[best];
                dx[best] += dy[(p * oh + i) * ow + j];
            }
}

START_TEST(test_maxpool_paths)
{
    static const char *const specs[] = {"input 3x6x40; maxpool 2", "input 3x5x41; maxpool 2",
                                        "input 2x4x34; maxpool 2 stride 2", "input 2x6x36; maxpool 3 stride 2"};
    static const size_t dims[][5] = {{3, 6, 40, 2, 2}, {3, 5, 41, 2, 2}, {2, 4, 34, 2, 2}, {2, 6, 36, 3, 2}};
    kd_context *ctx = kd_test_ctx();
    for (size_t t = 0; t < sizeof specs / sizeof specs[0]; t++) {
        size_t c = dims[t][0], h = dims[t][1], w = dims[t][2], k = dims[t][3], s = dims[t][4];
        size_t batch = 2, nx = batch * c * h * w, oh = (h - k) / s + 1, ow = (w - k) / s + 1;
        size_t ny = batch * c * oh * ow;
        float *x = malloc(nx * sizeof(float)), *dy = malloc(ny * sizeof(float));
        float *dx = malloc(nx * sizeof(float)), *rdx = malloc(nx * sizeof(float));
        float *ry = malloc(ny * sizeof(float));
        kd_test_fill(x, nx, 0, 4, 77 + t);
        for (size_t i = 0; i < nx; i++) x[i] = floorf(x[i]) - 1.0f; /* -1..2: many ties */
        x[h * w + 5] = NAN;                                          /* plane 1 */
        x[h * w + w + 7] = NAN;
        x[(2 * c - 1) * h * w + 2] = NAN; /* last plane */
        for (size_t i = 0; i < ny; i++) dy[i] = (float)(i % 97) + 1.0f;
        naive_maxpool(x, batch * c, h, w, k, s, ry, dy, rdx);
        kd_model *m;
        ck_assert_int_eq(kd_model_create_from_spec(ctx, specs[t], &m), KD_OK);
        const float *y;
        for (int mode = 0; mode < 2; mode++) {
            ck_assert_int_eq(kd_model_forward(m, mode ? KD_MODE_TRAIN : KD_MODE_INFER, x, nx, batch, &y), KD_OK);
            for (size_t i = 0; i < ny; i++)
                ck_assert_msg((isnan(y[i]) && isnan(ry[i])) || y[i] == ry[i], "%s: y[%zu] = %g, want %g",
                              specs[t], i, y[i], ry[i]);
        }
        ck_assert_int_eq(kd_model_backward(m, dy, ny, dx, nx), KD_OK);
        for (size_t i = 0; i < nx; i++)
            ck_assert_msg(dx[i] == rdx[i], "%s: dx[%zu] = %g, want %g", specs[t], i, dx[i], rdx[i]);
        kd_model_destroy(m);
        free(x);
        free(dy);
        free(dx);
        free(rdx);
        free(ry);
    }
    kd_context_destroy(ctx);
}
END_TEST

/* The vectorised 2x2 path compares floats through integer order keys and
 * finds NaN planes from the bit patterns: ties between -0 and +0 (the first
 * one in scan order wins, sign kept), infinities, the largest and the
 * subnormal magnitudes, and NaNs of either sign or with a signalling payload
 * (the plane must take the NaN scan) must give the plain scan's values bit
 * for bit and route the gradient to the same positions. */
static float bits_float(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

START_TEST(test_maxpool_special_values)
{
    const float vals[] = {-INFINITY, -3.4028235e38f, -1.0f, -1.4e-45f, -0.0f, 0.0f,
                          1.4e-45f, 1.0f, 3.4028235e38f, INFINITY};
    const size_t nv = sizeof vals / sizeof vals[0];
    const size_t batch = 2, c = 3, h = 6, w = 40, oh = 3, ow = 20;
    const size_t nx = batch * c * h * w, ny = batch * c * oh * ow;
    float *x = malloc(nx * sizeof(float)), *dy = malloc(ny * sizeof(float));
    float *dx = malloc(nx * sizeof(float)), *rdx = malloc(nx * sizeof(float));
    float *ry = malloc(ny * sizeof(float));
    ck_assert_ptr_nonnull(x);
    ck_assert_ptr_nonnull(dy);
    ck_assert_ptr_nonnull(dx);
    ck_assert_ptr_nonnull(rdx);
    ck_assert_ptr_nonnull(ry);
    uint32_t s = 12345;
    for (size_t i = 0; i < nx; i++) {
        s = s * 1664525u + 1013904223u;
        size_t plane = i / (h * w);
        /* plane 0: only -0 and +0 (every window a tie); plane 3: no negative
         * number (its NaN is the only value with the sign bit); the others
         * all values */
        x[i] = plane == 0   ? vals[4 + (s >> 28) % 2]
               : plane == 3 ? vals[5 + (s >> 24) % (nv - 5)]
                            : vals[(s >> 24) % nv];
    }
    x[0] = 0.0f; /* plane 0's first window: +0 first, so +0 must win over later -0 */
    x[1] = -0.0f;
    x[w] = -0.0f;
    x[w + 1] = 0.0f;
    x[3 * h * w + 7] = bits_float(0xffc00000u);         /* plane 3: a negative NaN */
    x[4 * h * w + w + 9] = bits_float(0x7f800001u);     /* plane 4: signalling payload */
    x[5 * h * w + 2 * w + 3] = bits_float(0xff800001u); /* plane 5: both */
    for (size_t i = 0; i < ny; i++) dy[i] = (float)(i % 89) + 1.0f;
    naive_maxpool(x, batch * c, h, w, 2, 2, ry, dy, rdx);
    /* the reference itself: sign of zero and NaN planes as intended */
    ck_assert(signbit(ry[0]) == 0);
    ck_assert(isnan(ry[3 * oh * ow + 3]));
    kd_context *ctx = kd_test_ctx();
    kd_model *m;
    ck_assert_int_eq(kd_model_create_from_spec(ctx, "input 3x6x40; maxpool 2", &m), KD_OK);
    const float *y;
    for (int mode = 0; mode < 2; mode++) {
        ck_assert_int_eq(kd_model_forward(m, mode ? KD_MODE_TRAIN : KD_MODE_INFER, x, nx, batch, &y), KD_OK);
        for (size_t i = 0; i < ny; i++) {
            uint32_t got, want;
            memcpy(&got, y + i, sizeof got);
            memcpy(&want, ry + i, sizeof want);
            ck_assert_msg(got == want, "mode %d: y[%zu] = %g (0x%08x), want %g (0x%08x)", mode, i,
                          (double)y[i], (unsigned)got, (double)ry[i], (unsigned)want);
        }
    }
    ck_assert_int_eq(kd_model_backward(m, dy, ny, dx, nx), KD_OK);
    for (size_t i = 0; i < nx; i++)
        ck_assert_msg(dx[i] == rdx[i], "dx[%zu] = %g, want %g", i, (double)dx[i], (double)rdx[i]);
    kd_model_destroy(m);
    kd_context_destroy(ctx);
    free(x);
    free(dy);
    free(dx);
    free(rdx);
    free(ry);
}
END_TEST

/* Convolution runs one GEMM per chunk of samples (the whole batch unless the
 * column buffer would pass kd__conv_chunk_floats). With the limit lowered so
 * that a chunk holds two samples, batch 5 runs chunks of 2, 2 and 1: outputs
 * and gradients must equal those of five batch-1 calls (which take the path
 * without the transposing copies). */
extern size_t kd__conv_chunk_floats;

START_TEST(test_conv_chunks)
{
    static const char *const specs[] = {"input 2x10x9; conv 3 3 stride 1 pad 1",
                                        "input 3x11x10; conv 4 3 stride 2 pad 2 nobias"};
    size_t saved_limit = kd__conv_chunk_floats;
    for (size_t t = 0; t < 2; t++) {
        kd_context *ctx = kd_test_ctx();
        kd_model *m;
        ck_assert_int_eq(kd_model_create_from_spec(ctx, specs[t], &m), KD_OK);
        size_t s[4], rank_n = 1, n_out;
        uint32_t rank;
        ck_assert_int_eq(kd_model_input_shape(m, s, &rank, NULL), KD_OK);
        for (uint32_t i = 0; i < rank; i++) rank_n *= s[i];
        ck_assert_int_eq(kd_model_output_shape(m, NULL, NULL, &n_out), KD_OK);
        size_t n_in = rank_n, batch = 5, ckk = s[0] * 9, oc = t ? 4 : 3, ohw = n_out / oc;
        kd__conv_chunk_floats = 2 * (ckk + oc) * ohw + 7; /* two samples per chunk */
        float *x = malloc(batch * n_in * sizeof(float)), *dy = malloc(batch * n_out * sizeof(float));
        float *dx = malloc(batch * n_in * sizeof(float)), *dx1 = malloc(n_in * sizeof(float));
        float *yb = malloc(batch * n_out * sizeof(float));
        kd_test_fill(x, batch * n_in, -1, 1, 5 + t);
        kd_test_fill(dy, batch * n_out, -1, 1, 6 + t);
        const float *y;
        float *g, gb[128], gs[128] = {0};
        size_t ng, nt = kd_model_tensor_count(m), tot = 0;
        ck_assert_int_eq(kd_model_zero_grad(m), KD_OK);
        ck_assert_int_eq(kd_model_forward(m, KD_MODE_TRAIN, x, batch * n_in, batch, &y), KD_OK);
        memcpy(yb, y, batch * n_out * sizeof(float));
        ck_assert_int_eq(kd_model_backward(m, dy, batch * n_out, dx, batch * n_in), KD_OK);
        for (size_t i = 0; i < nt; i++) {
            ck_assert_int_eq(kd_model_tensor_grad(m, i, &g, &ng), KD_OK);
            ck_assert_uint_le(tot + ng, 128);
            memcpy(gb + tot, g, ng * sizeof(float));
            tot += ng;
        }
        for (size_t n = 0; n < batch; n++) {
            ck_assert_int_eq(kd_model_zero_grad(m), KD_OK);
            ck_assert_int_eq(kd_model_forward(m, KD_MODE_TRAIN, x + n * n_in, n_in, 1, &y), KD_OK);
            kd_assert_close(y, yb + n * n_out, n_out, 1e-6, 1e-5);
            ck_assert_int_eq(kd_model_backward(m, dy + n * n_out, n_out, dx1, n_in), KD_OK);
            kd_assert_close(dx1, dx + n * n_in, n_in, 1e-6, 1e-5);
            for (size_t i = 0, o = 0; i < nt; i++) {
                ck_assert_int_eq(kd_model_tensor_grad(m, i, &g, &ng), KD_OK);
                for (size_t j = 0; j < ng; j++) gs[o + j] += g[j];
                o += ng;
            }
        }
        kd_assert_close(gb, gs, tot, 1e-4, 1e-4);
        kd_model_destroy(m);
        kd_context_destroy(ctx);
        kd__conv_chunk_floats = saved_limit;
        free(x);
        free(dy);
        free(dx);
        free(dx1);
        free(yb);
    }
}
END_TEST

/* Inference from a fixed arena: no malloc; workspace_size is enough. */
START_TEST(test_arena)
{
    static unsigned char arena[1 << 20];
    kd_context_config cc;
    kd_context_config_default(&cc);
    cc.arena = arena;
    cc.arena_size = sizeof arena;
    cc.gemm = KD_GEMM_REFERENCE;
    kd_context *ctx;
    ck_assert_int_eq(kd_context_create(&cc, &ctx), KD_OK);
    kd_model *m;
    ck_assert_int_eq(kd_model_create_from_spec(ctx, "input 784; linear 32; relu; linear 10", &m), KD_OK);
    size_t need, used, peak;
    ck_assert_int_eq(kd_model_workspace_size(m, KD_MODE_INFER, 4, &need), KD_OK);
    ck_assert_int_eq(kd_context_arena_usage(ctx, &used, &peak), KD_OK);
    float x[4 * 784] = {0};
    const float *y;
    ck_assert_int_eq(kd_model_forward(m, KD_MODE_INFER, x, 4 * 784, 4, &y), KD_OK);
    size_t used2;
    ck_assert_int_eq(kd_context_arena_usage(ctx, &used2, &peak), KD_OK);
    ck_assert_uint_le(used2 - used, need);
    ck_assert_uint_ge(used2 - used, (784 * 32 + 32 * 10) * sizeof(float));
    kd_model_destroy(m);
    kd_context_destroy(ctx);

    /* an arena sized exactly by the estimate suffices */
    static unsigned char small[200000];
    cc.arena = small;
    cc.arena_size = sizeof small;
    ck_assert_int_eq(kd_context_create(&cc, &ctx), KD_OK);
    ck_assert_int_eq(kd_model_create_from_spec(ctx, "input 64; linear 32; relu; linear 10", &m), KD_OK);
    ck_assert_int_eq(kd_model_workspace_size(m, KD_MODE_INFER, 2, &need), KD_OK);
    ck_assert_int_eq(kd_context_arena_usage(ctx, &used, &peak), KD_OK);
    kd_model_destroy(m);
    kd_context_destroy(ctx);
    cc.arena_size = used + need + 256;
    ck_assert_int_eq(kd_context_create(&cc, &ctx), KD_OK);
    ck_assert_int_eq(kd_model_create_from_spec(ctx, "input 64; linear 32; relu; linear 10", &m), KD_OK);
    float xs[128] = {0};
    ck_assert_int_eq(kd_model_forward(m, KD_MODE_INFER, xs, 128, 2, &y), KD_OK);
    kd_model_destroy(m);
    kd_context_destroy(ctx);
}
END_TEST

Suite *kd_test_suite(void)
{
    Suite *s = suite_create("nn_model");
    TCase *tc = tcase_create("model");
    tcase_add_test(tc, test_spec_round_trip);
    tcase_add_test(tc, test_spec_hostile);
    tcase_add_test(tc, test_spec_fuzz);
    tcase_add_test(tc, test_names);
    tcase_add_test(tc, test_append);
    tcase_add_test(tc, test_hostile_args);
    tcase_add_test(tc, test_alloc_failures);
    tcase_add_test(tc, test_no_alloc_per_step);
    tcase_add_test(tc, test_fold_batchnorm);
    tcase_add_test(tc, test_determinism);
    tcase_add_test(tc, test_nan_inf);
    tcase_add_test(tc, test_arena);
    tcase_add_test(tc, test_maxpool_paths);
    tcase_add_test(tc, test_maxpool_special_values);
    tcase_add_test(tc, test_conv_chunks);
    suite_add_tcase(s, tc);
    return s;
}
