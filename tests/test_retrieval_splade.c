/* test_retrieval_splade.c - SPLADE head forward values, backward and the
 * regularisers against central finite differences, schedule, pruning. */
#include <math.h>
#include <string.h>

#include "kd_test.h"
#include "ref/retrieval_ref.h"

enum { B = 2, T = 3, V = 5 };

/* L = sum_j c_j * out_j with fixed c: dL/dout = c. */
static double head_loss(kd_context *ctx, const float *x, const uint8_t *mask, kd_splade_agg agg,
                        const float *c)
{
    float out[B * V];
    ck_assert_int_eq(kd_splade_forward(ctx, x, mask, B, T, V, agg, out), KD_OK);
    double l = 0;
    for (int i = 0; i < B * V; i++) l += (double)c[i] * out[i];
    return l;
}

START_TEST(head_forward_values)
{
    kd_context *ctx = kd_test_ctx();
    /* one sequence, two tokens, three terms */
    const float x[6] = {1.0f, -2.0f, 0.5f, 3.0f, -1.0f, 0.0f};
    float out[3];
    ck_assert_int_eq(kd_splade_forward(ctx, x, NULL, 1, 2, 3, KD_SPLADE_MAX, out), KD_OK);
    ck_assert_float_eq_tol(out[0], logf(4.0f), 1e-6f);
    ck_assert_float_eq(out[1], 0.0f);
    ck_assert_float_eq_tol(out[2], logf(1.5f), 1e-6f);
    ck_assert_int_eq(kd_splade_forward(ctx, x, NULL, 1, 2, 3, KD_SPLADE_SUM, out), KD_OK);
    ck_assert_float_eq_tol(out[0], logf(2.0f) + logf(4.0f), 1e-6f);
    const uint8_t m[2] = {1, 0};
    ck_assert_int_eq(kd_splade_forward(ctx, x, m, 1, 2, 3, KD_SPLADE_MAX, out), KD_OK);
    ck_assert_float_eq_tol(out[0], logf(2.0f), 1e-6f);
    const uint8_t none[2] = {0, 0};
    ck_assert_int_eq(kd_splade_forward(ctx, x, none, 1, 2, 3, KD_SPLADE_SUM, out), KD_OK);
    ck_assert_float_eq(out[0] + out[1] + out[2], 0.0f);
    float bad[6];
    memcpy(bad, x, sizeof bad);
    bad[3] = NAN;
    ck_assert_int_eq(kd_splade_forward(ctx, bad, NULL, 1, 2, 3, KD_SPLADE_MAX, out), KD_E_NUMERIC);
    ck_assert_int_eq(kd_splade_forward(ctx, x, NULL, 1, 2, 3, (kd_splade_agg)9, out), KD_E_INVALID);
    ck_assert_int_eq(kd_splade_forward(ctx, NULL, NULL, 1, 2, 3, KD_SPLADE_MAX, out), KD_E_INVALID);
    kd_context_destroy(ctx);
}
END_TEST

static void check_head_grad(kd_splade_agg agg, int use_mask)
{
    kd_context *ctx = kd_test_ctx();
    float x[B * T * V], c[B * V];
    kd_test_fill(x, B * T * V, -1.5f, 2.5f, 77 + agg);
    kd_test_fill(c, B * V, -1.0f, 1.0f, 78);
    /* keep values away from the kinks at 0 and from ties for finite differences */
    for (int i = 0; i < B * T * V; i++)
        if (fabsf(x[i]) < 0.05f) x[i] = 0.3f + 0.01f * (float)i;
    const uint8_t mask[B * T] = {1, 0, 1, 1, 1, 0};
    const uint8_t *m = use_mask ? mask : NULL;
    float dout[B * V];
    memcpy(dout, c, sizeof dout);
    float g[B * T * V];
    for (int i = 0; i < B * T * V; i++) g[i] = 0.25f; /* backward accumulates */
    ck_assert_int_eq(kd_splade_backward(ctx, x, m, B, T, V, agg, dout, g), KD_OK);
    for (int i = 0; i < B * T * V; i++) {
        const double h = 1e-3;
        float save = x[i];
        x[i] = save + (float)h;
        double lp = head_loss(ctx, x, m, agg, c);
        x[i] = save - (float)h;
        double lm = head_loss(ctx, x, m, agg, c);
        x[i] = save;
        double fd = (lp - lm) / (2 * h);
        ck_assert_msg(fabs((g[i] - 0.25) - fd) < 2e-3, "agg %d mask %d elem %d: %g vs fd %g", agg, use_mask, i,
                      g[i] - 0.25, fd);
    }
    kd_context_destroy(ctx);
}

START_TEST(head_backward_fd)
{
    check_head_grad(KD_SPLADE_MAX, 0);
    check_head_grad(KD_SPLADE_MAX, 1);
    check_head_grad(KD_SPLADE_SUM, 0);
    check_head_grad(KD_SPLADE_SUM, 1);
}
END_TEST

typedef kd_status (*reg_fn)(kd_context *, const float *, size_t, size_t, const float *, float, float *,
                            float *);
static kd_status flops_w(kd_context *c, const float *w, size_t b, size_t v, const float *aux, float s, float *l,
                         float *g)
{
    (void)aux;
    return kd_sparse_flops(c, w, b, v, s, l, g);
}
static kd_status l1_w(kd_context *c, const float *w, size_t b, size_t v, const float *aux, float s, float *l,
                      float *g)
{
    (void)aux;
    return kd_sparse_l1(c, w, b, v, s, l, g);
}

static void check_reg(reg_fn fn, const float *aux, double expect_loss_scale)
{
    kd_context *ctx = kd_test_ctx();
    enum { NB = 3, NV = 6 };
    float w[NB * NV], g[NB * NV];
    kd_test_fill(w, NB * NV, -1.0f, 2.0f, 91);
    for (int i = 0; i < NB * NV; i++)
        if (fabsf(w[i]) < 0.05f) w[i] = 0.2f;
    memset(g, 0, sizeof g);
    float loss;
    const float weight = 0.7f;
    ck_assert_int_eq(fn(ctx, w, NB, NV, aux, weight, &loss, g), KD_OK);
    ck_assert(loss > 0.0f && isfinite(loss));
    (void)expect_loss_scale;
    for (int i = 0; i < NB * NV; i++) {
        const float h = 1e-3f;
        float save = w[i], lp, lm;
        w[i] = save + h;
        ck_assert_int_eq(fn(ctx, w, NB, NV, aux, weight, &lp, NULL), KD_OK);
        w[i] = save - h;
        ck_assert_int_eq(fn(ctx, w, NB, NV, aux, weight, &lm, NULL), KD_OK);
        w[i] = save;
        double fd = ((double)lp - (double)lm) / (2.0 * h);
        ck_assert_msg(fabs(g[i] - fd) < 2e-3 + 1e-3 * fabs(fd), "elem %d: %g vs fd %g", i, (double)g[i], fd);
    }
    kd_context_destroy(ctx);
}

START_TEST(regulariser_gradients)
{
    float tw[6] = {0.5f, 1.0f, 2.0f, 0.0f, 3.0f, 1.5f};
    float idf[6] = {0.5f, 1.0f, 2.0f, 4.0f, 3.0f, 1.5f};
    check_reg(flops_w, NULL, 1);
    check_reg(l1_w, NULL, 1);
    check_reg((reg_fn)kd_sparse_flops_weighted, tw, 1);
    check_reg((reg_fn)kd_sparse_flops_idf, idf, 1);
}
END_TEST

/* Against PyTorch autograd (tests/ref/gen_retrieval_ref.py). */
START_TEST(regulariser_torch)
{
    kd_context *ctx = kd_test_ctx();
    float g[RREF_B * RREF_V], l;
    const struct {
        const float *grad;
        float loss;
        int idf;
    } cases[2] = {{rref_flops_grad, rref_flops_loss, 0}, {rref_flops_idf_grad, rref_flops_idf_loss, 1}};
    for (int c = 0; c < 2; c++) {
        for (int i = 0; i < RREF_B * RREF_V; i++) g[i] = 0.25f; /* accumulates */
        if (cases[c].idf)
            ck_assert_int_eq(kd_sparse_flops_idf(ctx, rref_w, RREF_B, RREF_V, rref_idf, RREF_WEIGHT, &l, g), KD_OK);
        else
            ck_assert_int_eq(kd_sparse_flops(ctx, rref_w, RREF_B, RREF_V, RREF_WEIGHT, &l, g), KD_OK);
        ck_assert_msg(fabsf(l - cases[c].loss) <= 1e-5f * cases[c].loss, "case %d: loss %g vs torch %g", c,
                      (double)l, (double)cases[c].loss);
        for (int i = 0; i < RREF_B * RREF_V; i++)
            ck_assert_msg(fabsf(g[i] - 0.25f - cases[c].grad[i]) <= 1e-5f + 1e-5f * fabsf(cases[c].grad[i]),
                          "case %d elem %d: %g vs torch %g", c, i, (double)(g[i] - 0.25f),
                          (double)cases[c].grad[i]);
    }
    kd_context_destroy(ctx);
}
END_TEST

START_TEST(regulariser_values)
{
    kd_context *ctx = kd_test_ctx();
    /* batch 2, vocab 2: means |w| = (1.5, 1) */
    const float w[4] = {1.0f, -2.0f, 2.0f, 0.0f};
    float l;
    ck_assert_int_eq(kd_sparse_flops(ctx, w, 2, 2, 1.0f, &l, NULL), KD_OK);
    ck_assert_float_eq_tol(l, 1.5f * 1.5f + 1.0f, 1e-6f);
    ck_assert_int_eq(kd_sparse_l1(ctx, w, 2, 2, 2.0f, &l, NULL), KD_OK);
    ck_assert_float_eq_tol(l, 2.0f * 5.0f / 2.0f, 1e-6f);
    /* IDF-aware FLOPS: sum_j (idf_j mean_i |w_ij|)^2 = (3 * 1.5)^2 + (0.5 * 1)^2 */
    const float idf[2] = {3.0f, 0.5f};
    ck_assert_int_eq(kd_sparse_flops_idf(ctx, w, 2, 2, idf, 1.0f, &l, NULL), KD_OK);
    ck_assert_float_eq_tol(l, 20.5f, 1e-5f);
    /* = per-term weighted FLOPS with idf^2 */
    const float idf2[2] = {9.0f, 0.25f};
    float lw;
    ck_assert_int_eq(kd_sparse_flops_weighted(ctx, w, 2, 2, idf2, 1.0f, &lw, NULL), KD_OK);
    ck_assert_float_eq_tol(l, lw, 1e-6f);
    /* idf 0 (a term in every document) is allowed and costs nothing */
    const float idf0[2] = {0.0f, 1.0f};
    ck_assert_int_eq(kd_sparse_flops_idf(ctx, w, 2, 2, idf0, 1.0f, &l, NULL), KD_OK);
    ck_assert_float_eq_tol(l, 1.0f, 1e-6f);
    const float bad_idf[2] = {-1.0f, 1.0f};
    ck_assert_int_eq(kd_sparse_flops_idf(ctx, w, 2, 2, bad_idf, 1.0f, &l, NULL), KD_E_INVALID);
    const float nan_idf[2] = {NAN, 1.0f};
    ck_assert_int_eq(kd_sparse_flops_idf(ctx, w, 2, 2, nan_idf, 1.0f, &l, NULL), KD_E_INVALID);
    ck_assert_int_eq(kd_sparse_flops(ctx, w, 0, 2, 1.0f, &l, NULL), KD_E_INVALID);
    /* quadratic warm-up */
    ck_assert_float_eq(kd_sparse_reg_schedule(0.8f, 0, 100), 0.0f);
    ck_assert_float_eq_tol(kd_sparse_reg_schedule(0.8f, 50, 100), 0.2f, 1e-7f);
    ck_assert_float_eq(kd_sparse_reg_schedule(0.8f, 100, 100), 0.8f);
    ck_assert_float_eq(kd_sparse_reg_schedule(0.8f, 5000, 100), 0.8f);
    ck_assert_float_eq(kd_sparse_reg_schedule(0.8f, 3, 0), 0.8f);
    kd_context_destroy(ctx);
}
END_TEST

START_TEST(prune_and_dense)
{
    kd_context *ctx = kd_test_ctx();
    uint32_t ids[6] = {9, 3, 7, 1, 5, 2};
    float w[6] = {0.5f, 2.0f, 1.0f, 2.0f, 0.1f, 1.0f};
    size_t n;
    ck_assert_int_eq(kd_sparse_topk_prune(ctx, ids, w, 6, 3, &n), KD_OK);
    ck_assert_uint_eq(n, 3);
    /* 2.0 (ids 1, 3), then 1.0 tie between 7 and 2: smaller id 2 wins */
    ck_assert_uint_eq(ids[0], 1);
    ck_assert_uint_eq(ids[1], 2);
    ck_assert_uint_eq(ids[2], 3);
    ck_assert_float_eq(w[1], 1.0f);
    ck_assert_int_eq(kd_sparse_topk_prune(ctx, ids, w, 3, 10, &n), KD_OK);
    ck_assert_uint_eq(n, 3);
    const float dense[6] = {0.0f, 0.3f, 0.0f, 1.0f, -1.0f, 0.01f};
    uint32_t oi[6];
    float ow[6];
    ck_assert_int_eq(kd_sparse_from_dense(ctx, dense, 6, 0.0f, oi, ow, 6, &n), KD_OK);
    ck_assert_uint_eq(n, 3);
    ck_assert_uint_eq(oi[2], 5);
    ck_assert_int_eq(kd_sparse_from_dense(ctx, dense, 6, 0.0f, oi, ow, 2, &n), KD_E_SHAPE);
    ck_assert_uint_eq(n, 3);
    kd_context_destroy(ctx);
}
END_TEST

/* Top-k selection against a brute-force reference on random vectors with
 * many ties: entry e is kept iff fewer than k entries beat it (larger weight,
 * or equal weight and smaller id). */
START_TEST(prune_random_vs_reference)
{
    kd_context *ctx = kd_test_ctx();
    kd_rng r;
    kd_rng_seed(&r, 42, 1);
    static uint32_t ids[600], ids0[600];
    static float w[600], w0[600];
    for (int trial = 0; trial < 200; trial++) {
        size_t n = kd_rng_below(&r, 600);
        size_t k = kd_rng_below(&r, 40);
        if (trial % 7 == 0) k = n + kd_rng_below(&r, 3);
        for (size_t i = 0; i < n; i++) {
            ids0[i] = ids[i] = (uint32_t)(i * 7919u % 100003u); /* distinct */
            w0[i] = w[i] = (float)kd_rng_below(&r, trial % 2 ? 5 : 1000) * 0.25f;
        }
        size_t out = 0;
        ck_assert_int_eq(kd_sparse_topk_prune(ctx, ids, w, n, k, &out), KD_OK);
        ck_assert_uint_eq(out, k < n ? k : n);
        size_t expect = 0;
        for (size_t e = 0; e < n; e++) {
            size_t beat = 0;
            for (size_t j = 0; j < n; j++)
                beat += w0[j] > w0[e] || (w0[j] == w0[e] && ids0[j] < ids0[e]);
            if (beat >= k) continue;
            expect++;
            int found = 0;
            for (size_t j = 0; j < out; j++) found |= ids[j] == ids0[e] && w[j] == w0[e];
            ck_assert_msg(found, "trial %d: entry %u (%g) missing", trial, ids0[e], (double)w0[e]);
        }
        ck_assert_uint_eq(expect, out);
        for (size_t j = 1; j < out; j++) ck_assert_uint_lt(ids[j - 1], ids[j]);
    }
    kd_context_destroy(ctx);
}
END_TEST

Suite *kd_test_suite(void)
{
    Suite *s = suite_create("retrieval_splade");
    TCase *tc = tcase_create("splade");
    tcase_add_test(tc, head_forward_values);
    tcase_add_test(tc, head_backward_fd);
    tcase_add_test(tc, regulariser_gradients);
    tcase_add_test(tc, regulariser_values);
    tcase_add_test(tc, regulariser_torch);
    tcase_add_test(tc, prune_and_dense);
    tcase_add_test(tc, prune_random_vs_reference);
    suite_add_tcase(s, tc);
    return s;
}
