/* test_moe_compress.c - MoE-fication of a dense FFN (exact at k = E,
 * recovered by layer-wise distillation at lower k), HC-SMoE merging
 * (duplicate experts cluster together and merge without changing the
 * output), Knowledge Augmentation, and MoE statistics / k of a model layer. */
#include <string.h>

#include "kd_test.h"

static void dense_ffn(const float *w1, const float *w2, size_t h, size_t d, const float *x,
                      size_t n, float *y)
{
    for (size_t t = 0; t < n; t++)
        for (size_t j = 0; j < d; j++) y[t * d + j] = 0;
    for (size_t t = 0; t < n; t++)
        for (size_t r = 0; r < h; r++) {
            float a = 0;
            for (size_t j = 0; j < d; j++) a += w1[r * d + j] * x[t * d + j];
            if (a <= 0) continue;
            for (size_t j = 0; j < d; j++) y[t * d + j] += w2[j * h + r] * a;
        }
}

START_TEST(test_moefication)
{
    kd_context *ctx = kd_test_ctx();
    size_t E = 4, f = 6, d = 8, h = E * f, n = 64;
    float *w1 = malloc(h * d * 4), *w2 = malloc(h * d * 4), *x = malloc(n * d * 4);
    float *yd = malloc(n * d * 4), *y = malloc(n * d * 4);
    kd_test_fill(w1, h * d, -0.5f, 0.5f, 1);
    kd_test_fill(w2, h * d, -0.5f, 0.5f, 2);
    kd_test_fill(x, n * d, -1, 1, 3);
    dense_ffn(w1, w2, h, d, x, n, yd);
    kd_moe_config c;
    kd_moe_config_default(&c);
    c.n_experts = E, c.top_k = E, c.d_model = d, c.d_ff = f;
    c.router.kind = KD_ROUTER_TOPK_SELECT;
    kd_moe *m;
    ck_assert_int_eq(kd_moe_from_dense(ctx, &c, w1, NULL, w2, &m), KD_OK);
    ck_assert_int_eq(kd_moe_forward(m, KD_MODE_INFER, x, n, y), KD_OK);
    kd_assert_close(y, yd, n * d, 1e-5, 1e-4); /* k = E: exactly the dense layer */
    /* every hidden unit lands in exactly one expert */
    float *W1;
    ck_assert_int_eq(kd_moe_tensor(m, 1, NULL, &W1, NULL, NULL, NULL), KD_OK);
    for (size_t r = 0; r < h; r++) {
        int found = 0;
        for (size_t q = 0; q < h; q++) found += memcmp(W1 + q * d, w1 + r * d, d * 4) == 0;
        ck_assert_int_eq(found, 1);
    }
    /* k = 2 of 4: an error, which layer-wise distillation reduces */
    ck_assert_int_eq(kd_moe_set_top_k(m, 2), KD_OK);
    float before, after;
    ck_assert_int_eq(kd_moe_fit(m, x, yd, n, 1e-3f, 0, &before), KD_OK);
    ck_assert_float_gt(before, 1e-4f);
    ck_assert_int_eq(kd_moe_fit(m, x, yd, n, 3e-3f, 150, &after), KD_OK);
    ck_assert_msg(after < 0.6f * before, "mse %g -> %g", before, after);
    ck_assert_int_eq(kd_moe_fit(m, x, yd, 0, 1e-3f, 1, NULL), KD_E_INVALID);
    ck_assert_int_eq(kd_moe_fit(m, x, yd, n, NAN, 1, NULL), KD_E_INVALID);
    kd_moe_destroy(m);
    c.activation = KD_MOE_SWIGLU;
    ck_assert_int_eq(kd_moe_from_dense(ctx, &c, w1, NULL, w2, &m), KD_E_INVALID);
    c.activation = KD_MOE_RELU;
    c.n_shared = 1;
    ck_assert_int_eq(kd_moe_from_dense(ctx, &c, w1, NULL, w2, &m), KD_E_UNSUPPORTED);
    ck_assert_int_eq(kd_moe_from_dense(ctx, &c, NULL, NULL, w2, &m), KD_E_INVALID);
    free(w1), free(w2), free(x), free(yd), free(y);
    kd_context_destroy(ctx);
}
END_TEST

START_TEST(test_hc_smoe_merge)
{
    kd_context *ctx = kd_test_ctx();
    size_t E = 6, d = 5, f = 4, n = 40;
    kd_moe_config c;
    kd_moe_config_default(&c);
    c.n_experts = E, c.top_k = 1, c.d_model = d, c.d_ff = f;
    c.activation = KD_MOE_GELU;
    c.n_shared = 1;
    kd_moe *m;
    ck_assert_int_eq(kd_moe_create(ctx, &c, &m), KD_OK);
    /* experts 3, 4, 5 duplicate 0, 1, 2 (weights and gate rows) */
    for (size_t i = 0; i < kd_moe_tensor_count(m); i++) {
        const char *nm;
        float *p;
        size_t shape[4];
        kd_moe_tensor(m, i, &nm, &p, NULL, shape, NULL);
        if (strncmp(nm, "shared", 6) == 0) continue;
        size_t per = strcmp(nm, "gate.weight") == 0 ? d : f * d;
        memcpy(p + 3 * per, p, 3 * per * sizeof(float));
    }
    float *x = malloc(n * d * 4), *y0 = malloc(n * d * 4), *y1 = malloc(n * d * 4);
    kd_test_fill(x, n * d, -1, 1, 4);
    ck_assert_int_eq(kd_moe_forward(m, KD_MODE_INFER, x, n, y0), KD_OK);
    size_t cl[6];
    ck_assert_int_eq(kd_moe_merge_experts(m, x, n, 3, cl), KD_OK);
    ck_assert_uint_eq(kd_moe_expert_count(m), 3);
    for (int e = 0; e < 3; e++) {
        ck_assert_uint_eq(cl[e], cl[e + 3]);
        ck_assert_uint_lt(cl[e], 3);
        for (int q = 0; q < e; q++) ck_assert_uint_ne(cl[e], cl[q]);
    }
    ck_assert_int_eq(kd_moe_forward(m, KD_MODE_INFER, x, n, y1), KD_OK);
    kd_assert_close(y1, y0, n * d, 1e-5, 1e-4);
    /* merging further changes the output but keeps it finite */
    ck_assert_int_eq(kd_moe_merge_experts(m, x, n, 2, NULL), KD_OK);
    ck_assert_int_eq(kd_moe_forward(m, KD_MODE_INFER, x, n, y1), KD_OK);
    for (size_t i = 0; i < n * d; i++) ck_assert(isfinite(y1[i]));
    ck_assert_int_eq(kd_moe_merge_experts(m, x, n, 0, NULL), KD_E_INVALID);
    ck_assert_int_eq(kd_moe_merge_experts(m, x, n, 3, NULL), KD_E_INVALID);
    ck_assert_int_eq(kd_moe_merge_experts(m, NULL, n, 2, NULL), KD_E_INVALID);
    kd_moe_destroy(m);
    free(x), free(y0), free(y1);
    kd_context_destroy(ctx);
}
END_TEST

START_TEST(test_knowledge_augmentation)
{
    kd_context *ctx = kd_test_ctx();
    size_t E = 4, d = 6, n = 10;
    kd_moe_config c;
    kd_moe_config_default(&c);
    c.n_experts = E, c.top_k = E, c.d_model = d, c.d_ff = 5;
    kd_moe *m;
    ck_assert_int_eq(kd_moe_create(ctx, &c, &m), KD_OK);
    float x[60], y[60], yk[60], yk2[60];
    kd_test_fill(x, 60, -1, 1, 5);
    ck_assert_int_eq(kd_moe_forward(m, KD_MODE_INFER, x, n, y), KD_OK);
    /* k = E: every sample holds all experts, so KA equals the plain forward */
    ck_assert_int_eq(kd_moe_forward_ka(m, x, n, 3, yk), KD_OK);
    kd_assert_close(yk, y, 60, 1e-6, 1e-5);
    /* k = 1: average over samples of single experts; with many samples it
     * approaches sum_e p_e FFN_e(x) = the top-4 (k = E) output */
    ck_assert_int_eq(kd_moe_set_top_k(m, 1), KD_OK);
    ck_assert_int_eq(kd_moe_forward_ka(m, x, n, 1, yk), KD_OK);
    ck_assert_int_eq(kd_moe_forward_ka(m, x, n, 4000, yk2), KD_OK);
    double e1 = 0, e2 = 0;
    for (int i = 0; i < 60; i++) e1 += fabs(yk[i] - y[i]), e2 += fabs(yk2[i] - y[i]);
    ck_assert_msg(e2 < 0.2 * e1, "KA error %g (1 sample) vs %g (4000)", e1, e2);
    ck_assert_int_eq(kd_moe_forward_ka(m, x, n, 0, yk), KD_E_INVALID);
    ck_assert_int_eq(kd_moe_forward_ka(NULL, x, n, 1, yk), KD_E_INVALID);
    /* the configured router is back */
    ck_assert_int_eq(kd_moe_forward(m, KD_MODE_TRAIN, x, n, yk), KD_OK);
    ck_assert_int_eq(kd_moe_backward(m, y, NULL), KD_OK);
    kd_moe_destroy(m);
    kd_context_destroy(ctx);
}
END_TEST

START_TEST(test_model_layer_stats_and_k)
{
    kd_context *ctx = kd_test_ctx();
    kd_model *m;
    ck_assert_int_eq(kd_model_create_from_spec(ctx, "input 2x6; linear 6; moe 4 2 5 capacity 1", &m), KD_OK);
    float x[8 * 12];
    kd_test_fill(x, 96, -1, 1, 6);
    const float *y;
    ck_assert_int_eq(kd_model_forward(m, KD_MODE_INFER, x, 96, 8, &y), KD_OK);
    size_t routed[4], dropped[4], tot = 0, kept = 0;
    float ent;
    ck_assert_int_eq(kd_model_moe_stats(m, 1, routed, dropped, NULL, &ent), KD_OK);
    for (int e = 0; e < 4; e++) tot += routed[e], kept += routed[e] - dropped[e];
    ck_assert_uint_eq(tot, 16 * 2);
    for (int e = 0; e < 4; e++) ck_assert_uint_le(routed[e] - dropped[e], 8); /* C = 8 */
    ck_assert(ent > 0 && ent <= logf(4.0f) + 1e-5f);
    ck_assert_int_eq(kd_model_moe_stats(m, 0, routed, NULL, NULL, NULL), KD_E_INVALID);
    ck_assert_int_eq(kd_model_moe_stats(m, 9, routed, NULL, NULL, NULL), KD_E_INVALID);
    ck_assert_int_eq(kd_model_moe_set_top_k(m, 1, 3), KD_E_INVALID);
    ck_assert_int_eq(kd_model_moe_set_top_k(m, 1, 1), KD_OK);
    ck_assert_int_eq(kd_model_forward(m, KD_MODE_TRAIN, x, 96, 8, &y), KD_OK);
    ck_assert_int_eq(kd_model_moe_stats(m, 1, routed, NULL, NULL, NULL), KD_OK);
    tot = 0;
    for (int e = 0; e < 4; e++) tot += routed[e];
    ck_assert_uint_eq(tot, 16);
    float bal, zl;
    ck_assert_int_eq(kd_model_moe_aux_losses(m, 1, &bal, &zl), KD_OK);
    ck_assert(bal >= 1.0f - 1e-5f && bal <= 4.0f); /* >= 1 when f = P; here f is one-hot-ish */
    char buf[128];
    ck_assert_int_eq(kd_model_spec(m, buf, sizeof buf, NULL), KD_OK);
    ck_assert_str_eq(buf, "input 2x6; linear 6; moe 4 2 5 relu capacity 1");
    ck_assert_int_eq(kd_model_moe_stats(NULL, 1, routed, NULL, NULL, NULL), KD_E_INVALID);
    kd_model_destroy(m);
    kd_context_destroy(ctx);
}
END_TEST

static kd_status alloc_body(kd_context *ctx, void *user)
{
    (void)user;
    float w1[8 * 3], w2[3 * 8], x[5 * 3] = {0.5f, -1, 2, 1, 0, -0.5f, 0.25f, 1, 1, -1, -1, 0, 2, 1, 0};
    float y[15];
    for (int i = 0; i < 24; i++) w1[i] = 0.1f * (float)(i % 7) - 0.3f, w2[i] = 0.05f * (float)(i % 5);
    kd_moe_config c;
    kd_moe_config_default(&c);
    c.n_experts = 4, c.top_k = 2, c.d_model = 3, c.d_ff = 2;
    kd_moe *m;
    kd_status st = kd_moe_from_dense(ctx, &c, w1, NULL, w2, &m);
    if (st != KD_OK) return st;
    st = kd_moe_fit(m, x, x, 5, 1e-3f, 2, NULL);
    if (st == KD_OK) st = kd_moe_forward_ka(m, x, 5, 2, y);
    if (st == KD_OK) st = kd_moe_merge_experts(m, x, 5, 2, NULL);
    if (st == KD_OK) st = kd_moe_forward(m, KD_MODE_INFER, x, 5, y);
    kd_moe_destroy(m);
    return st;
}

/* Every allocation of MoE-fication, fitting, KA and merging may fail cleanly. */
START_TEST(test_alloc_failures)
{
    ck_assert_int_gt(kd_test_alloc_failures(alloc_body, NULL), 5);
}
END_TEST

Suite *kd_test_suite(void)
{
    Suite *s = suite_create("moe_compress");
    TCase *tc = tcase_create("compress");
    tcase_add_test(tc, test_moefication);
    tcase_add_test(tc, test_hc_smoe_merge);
    tcase_add_test(tc, test_knowledge_augmentation);
    tcase_add_test(tc, test_model_layer_stats_and_k);
    tcase_add_test(tc, test_alloc_failures);
    suite_add_tcase(s, tc);
    return s;
}
