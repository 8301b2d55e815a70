/* test_nn_grad.c - finite-difference gradient checks (central differences,
 * loss accumulated in double) for every layer and for composed models. */
#include <string.h>

#include "kd_test.h"

static size_t nx_of(kd_model *m, size_t batch)
{
    size_t shape[4], n = batch;
    uint32_t rank;
    kd_model_input_shape(m, shape, &rank, NULL);
    for (uint32_t i = 0; i < rank; i++) n *= shape[i];
    return n;
}

/* L = sum_i y_i * w_i (w fixed), so dL/dy = w. */
static double loss(kd_model *m, const float *x, const int32_t *ids, size_t n_ids,
                   const int32_t *off, size_t batch, const float *w, size_t ny)
{
    const float *y;
    kd_status st = x ? kd_model_forward(m, KD_MODE_TRAIN, x, nx_of(m, batch), batch, &y)
                     : kd_model_forward_ids(m, KD_MODE_TRAIN, ids, n_ids, off, batch, &y);
    ck_assert_int_eq(st, KD_OK);
    double s = 0;
    for (size_t i = 0; i < ny; i++) s += (double)y[i] * w[i];
    return s;
}


/* Compares dL/dv (analytic a) with central differences at h and h/4. 1: ok,
 * 0: mismatch, 2: a kink (ReLU / max-pool) sits within h of v. */
static int coord_ok(kd_model *m, float *v, const float *x, const int32_t *ids, size_t n_ids,
                    const int32_t *off, size_t batch, const float *w, size_t ny, double l0,
                    double a, double lim, double *num_out)
{
    static const float hs[2] = {1e-2f, 2.5e-3f};
    double lp = 0, lm = 0;
    for (int k = 0; k < 2; k++) {
        float old = *v, h = hs[k];
        *v = old + h;
        lp = loss(m, x, ids, n_ids, off, batch, w, ny);
        *v = old - h;
        lm = loss(m, x, ids, n_ids, off, batch, w, ny);
        *v = old;
        double num = (lp - lm) / (2.0 * h);
        *num_out = num;
        if (fabs(num - a) <= lim) return 1;
    }
    return fabs((lp - l0) - (l0 - lm)) / hs[1] > lim ? 2 : 0;
}

/* Checks the analytic gradient a of the n coordinates v (parameters or
 * inputs, named what) against central differences on up to 120 of them,
 * within tol relative to the largest |a|; counts the checked coordinates and
 * those on kinks. */
static void check_coords(const char *spec, const char *what, float *v, const float *a, size_t n,
                         kd_model *m, const float *x, const int32_t *ids, size_t n_ids,
                         const int32_t *off, size_t batch, const float *w, size_t ny, double l0,
                         double tol, size_t *checked, size_t *kinks)
{
    size_t step = n > 120 ? n / 120 : 1;
    double maxa = 1e-3;
    for (size_t i = 0; i < n; i++) maxa = fmax(maxa, fabs(a[i]));
    for (size_t i = 0; i < n; i += step) {
        double num;
        int r = coord_ok(m, &v[i], x, ids, n_ids, off, batch, w, ny, l0, a[i], tol * fmax(1.0, maxa), &num);
        (*checked)++;
        *kinks += r == 2;
        ck_assert_msg(r != 0, "%s: %s %zu: numeric %.6g analytic %.6g", spec, what, i, num, a[i]);
    }
}

/* Checks d loss / d (params and inputs) against central differences on up
 * to 120 coordinates of each. */
static void gradcheck_ids(const char *spec, size_t batch, const int32_t *ids, size_t n_ids,
                          const int32_t *off, double tol)
{
    kd_context *ctx = kd_test_ctx();
    kd_model *m;
    ck_assert_msg(kd_model_create_from_spec(ctx, spec, &m) == KD_OK, "%s: %s", spec,
                  kd_context_last_error(ctx));
    size_t in_shape[4], out_numel, in_numel = 1;
    uint32_t rank;
    int is_ids;
    ck_assert_int_eq(kd_model_input_shape(m, in_shape, &rank, &is_ids), KD_OK);
    for (uint32_t i = 0; i < rank; i++) in_numel *= in_shape[i];
    ck_assert_int_eq(kd_model_output_shape(m, NULL, NULL, &out_numel), KD_OK);
    size_t nx = is_ids ? 0 : batch * in_numel, ny = batch * out_numel;
    float *x = is_ids ? NULL : malloc(nx * sizeof(float));
    float *dx = is_ids ? NULL : malloc(nx * sizeof(float));
    float *w = malloc(ny * sizeof(float));
    if (x) kd_test_fill(x, nx, -1, 1, 11);
    kd_test_fill(w, ny, -1, 1, 12);
    float *p, *g;
    size_t np;
    ck_assert_int_eq(kd_model_blocks(m, &p, &g, &np), KD_OK);
    /* Norm layers: make weights non-trivial so their gradients matter. */
    for (size_t t = 0; t < kd_model_tensor_count(m); t++) {
        const char *name;
        float *d;
        size_t n;
        int tr;
        kd_model_tensor_name(m, t, &name);
        kd_model_tensor(m, t, &d, &n, NULL, NULL, &tr);
        uint32_t r;
        kd_model_tensor(m, t, NULL, NULL, NULL, &r, NULL);
        if (tr && r == 1 && strstr(name, "weight")) kd_test_fill(d, n, 0.5f, 1.5f, 13 + t);
    }
    ck_assert_int_eq(kd_model_zero_grad(m), KD_OK);
    loss(m, x, ids, n_ids, off, batch, w, ny);
    ck_assert_int_eq(kd_model_backward(m, w, ny, dx, nx), KD_OK);
    float *ga = malloc((np ? np : 1) * sizeof(float));
    memcpy(ga, g, np * sizeof(float));
    double l0 = loss(m, x, ids, n_ids, off, batch, w, ny);
    size_t checked = 0, kinks = 0;
    check_coords(spec, "param", p, ga, np, m, x, ids, n_ids, off, batch, w, ny, l0, tol, &checked, &kinks);
    if (x) check_coords(spec, "input", x, dx, nx, m, x, ids, n_ids, off, batch, w, ny, l0, tol, &checked, &kinks);
    ck_assert_msg(kinks * 10 <= checked, "%s: %zu of %zu coordinates sit on kinks", spec, kinks, checked);
    free(ga);
    free(w);
    free(dx);
    free(x);
    kd_model_destroy(m);
    kd_context_destroy(ctx);
}

static void gradcheck(const char *spec, size_t batch, double tol)
{
    gradcheck_ids(spec, batch, NULL, 0, NULL, tol);
}

static const char *const dense_specs[] = {
    "input 6; linear 5",
    "input 3x6; linear 4 nobias",
    "input 2x5x5; conv 3 3 stride 1 pad 1",
    "input 2x7x6; conv 3 3 stride 2 pad 1 nobias",
    "input 1x6x6; conv 2 1 stride 1 pad 0",
    "input 2x6x6; maxpool 2",
    "input 2x7x7; maxpool 3 stride 2",
    "input 2x6x6; avgpool 2",
    "input 2x7x7; avgpool 3 stride 2",
    "input 2x3x2; flatten; linear 3",
    "input 9; relu",
    "input 9; gelu",
    "input 9; gelu tanh",
    "input 9; silu",
    "input 9; tanh",
    "input 9; sigmoid",
    "input 9; identity",
    "input 3x7; layernorm",
    "input 5; batchnorm",
    "input 3x3x3; batchnorm momentum 0.5",
    "input 6; residual { linear 6; tanh; linear 6 }",
    "input 6; residual { linear 6; residual { silu; linear 6 } }; layernorm",
    /* composed: MLP, small CNN, residual MLP */
    "input 8; linear 16; relu; linear 16; gelu; linear 4",
    "input 1x8x8; conv 3 3 stride 1 pad 1; relu; maxpool 2; conv 4 3 stride 1 pad 1; tanh; avgpool 2; flatten; linear 5",
    "input 2x6x6; conv 4 3 stride 1 pad 1 nobias; batchnorm; relu; maxpool 2; flatten; linear 3",
    "input 10; linear 12; layernorm; residual { linear 12; gelu; linear 12 }; sigmoid; linear 3",
};

START_TEST(test_gradcheck_dense)
{
    gradcheck(dense_specs[_i], 3, 2e-2);
}
END_TEST

START_TEST(test_gradcheck_ids)
{
    int32_t ids[8] = {1, 4, 0, 4, 6, 2, 3, 1};
    gradcheck_ids("input ids 4; embedding 7 3; layernorm; linear 2", 2, ids, 8, NULL, 2e-2);
    gradcheck_ids("input ids 2; embedding 7 3; flatten; linear 4; tanh", 4, ids, 8, NULL, 2e-2);
    int32_t off[4] = {0, 3, 3, 8};
    gradcheck_ids("input bags; embeddingbag 7 3 sum; linear 2", 3, ids, 8, off, 2e-2);
    gradcheck_ids("input bags; embeddingbag 7 3 mean; relu; linear 2", 3, ids, 8, off, 2e-2);
}
END_TEST

/* Dropout is random per forward: check it against its own mask. With
 * y = x * mask, dx must equal dy * mask = dy * y / x elementwise. */
START_TEST(test_dropout_backward)
{
    kd_context *ctx = kd_test_ctx();
    kd_model *m;
    ck_assert_int_eq(kd_model_create_from_spec(ctx, "input 1000; dropout 0.25", &m), KD_OK);
    float *x = malloc(2000 * sizeof(float)), *dy = malloc(2000 * sizeof(float)),
          *dx = malloc(2000 * sizeof(float));
    kd_test_fill(x, 2000, 0.5f, 1.5f, 3);
    kd_test_fill(dy, 2000, -1, 1, 4);
    const float *y;
    ck_assert_int_eq(kd_model_forward(m, KD_MODE_TRAIN, x, 2000, 2, &y), KD_OK);
    ck_assert_int_eq(kd_model_backward(m, dy, 2000, dx, 2000), KD_OK);
    size_t dropped = 0;
    for (size_t i = 0; i < 2000; i++) {
        float mask = y[i] / x[i];
        ck_assert(fabsf(mask) < 1e-6f || fabsf(mask - 1.0f / 0.75f) < 1e-5f);
        if (mask == 0) dropped++;
        ck_assert_float_eq_tol(dx[i], dy[i] * mask, 1e-6);
    }
    ck_assert_uint_gt(dropped, 400);
    ck_assert_uint_lt(dropped, 600);
    /* inference: identity */
    ck_assert_int_eq(kd_model_forward(m, KD_MODE_INFER, x, 2000, 2, &y), KD_OK);
    ck_assert_mem_eq(y, x, 2000 * sizeof(float));
    free(x);
    free(dy);
    free(dx);
    kd_model_destroy(m);
    kd_context_destroy(ctx);
}
END_TEST

Suite *kd_test_suite(void)
{
    Suite *s = suite_create("nn_grad");
    TCase *tc = tcase_create("grad");
    tcase_add_loop_test(tc, test_gradcheck_dense, 0, (int)(sizeof dense_specs / sizeof dense_specs[0]));
    tcase_add_test(tc, test_gradcheck_ids);
    tcase_add_test(tc, test_dropout_backward);
    suite_add_tcase(s, tc);
    return s;
}
