/* test_loss_ref.c - every built-in loss against PyTorch values and gradients
 * (tests/ref/loss_ref.h, written by tests/ref/gen_loss_ref.py). */
#include <stdio.h>
#include <string.h>

#include "kd_test.h"
#include "loss_ref_helpers.h"

static double max_abs(const float *x, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++) m = fmax(m, fabs(x[i]));
    return m;
}

static void check_case(const loss_ref_case *c)
{
    kd_context *ctx = kd_test_ctx();
    kd_loss *loss = make_loss(ctx, c);
    size_t n = c->rows * c->cols;
    float *g = calloc(n, sizeof *g);
    kd_loss_batch b;
    kd_loss_grad gr;
    make_batch(c, &b, &gr, g);
    if (c->proj_w) {
        kd_loss_param pw, pb;
        ck_assert_int_eq(kd_loss_get_param(loss, 0, &pw), KD_OK);
        ck_assert_int_eq(kd_loss_get_param(loss, 1, &pb), KD_OK);
        ck_assert_uint_eq(pw.count, c->tcols * c->cols);
        memcpy(pw.data, c->proj_w, pw.count * sizeof(float));
        memcpy(pb.data, c->proj_b, pb.count * sizeof(float));
    }
    double v = -1;
    kd_status st = kd_loss_compute(loss, &b, &v, &gr);
    ck_assert_msg(st == KD_OK, "%s: %s", c->name, kd_context_last_error(ctx));
    ck_assert_msg(fabs(v - c->value) <= 1e-9 + 2e-6 * fabs(c->value), "%s: value %.12g vs torch %.12g",
                  c->name, v, c->value);
    double scale = max_abs(c->grad, n);
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(fabs(g[i] - c->grad[i]) <= 1e-6 + 2e-5 * scale + 1e-5 * fabs(c->grad[i]),
                      "%s: grad[%zu] %.9g vs torch %.9g", c->name, i, g[i], c->grad[i]);
    /* Value-only call gives the same value and leaves the gradient alone. */
    double v2 = -1;
    ck_assert_int_eq(kd_loss_compute(loss, &b, &v2, NULL), KD_OK);
    ck_assert(v2 == v);
    if (c->proj_w) {
        kd_loss_param pw, pb;
        kd_loss_get_param(loss, 0, &pw);
        kd_loss_get_param(loss, 1, &pb);
        double sw = max_abs(c->grad_w, pw.count), sb = max_abs(c->grad_b, pb.count);
        for (size_t i = 0; i < pw.count; i++)
            ck_assert_msg(fabs(pw.grad[i] - c->grad_w[i]) <= 1e-6 + 2e-5 * sw, "%s: dW[%zu]", c->name, i);
        for (size_t i = 0; i < pb.count; i++)
            ck_assert_msg(fabs(pb.grad[i] - c->grad_b[i]) <= 1e-6 + 2e-5 * sb, "%s: db[%zu]", c->name, i);
    }
    free(g);
    kd_loss_destroy(loss);
    kd_context_destroy(ctx);
}

START_TEST(torch_reference)
{
    check_case(&loss_ref_cases[_i]);
}
END_TEST

/* Every loss kind has reference cases, including T in {0.5, 1, 4, 20},
 * extreme logits, masks and a single class. */
START_TEST(reference_coverage)
{
    int kinds[REF_LISTWISE + 1] = {0};
    int temps = 0, ext = 0, single = 0, mask = 0;
    for (size_t i = 0; i < LOSS_REF_COUNT; i++) {
        const loss_ref_case *c = &loss_ref_cases[i];
        kinds[c->loss]++;
        if (strstr(c->name, "_T0.5") || strstr(c->name, "_T20")) temps++;
        ext += strstr(c->name, "_ext") != NULL;
        single += c->cols == 1;
        mask += strstr(c->name, "mask") != NULL || strstr(c->name, "only") != NULL;
    }
    for (int k = 0; k <= REF_LISTWISE; k++) ck_assert_msg(kinds[k] > 0, "loss %d has no case", k);
    ck_assert_int_ge(temps, 20);
    ck_assert_int_ge(ext, 20);
    ck_assert_int_ge(single, 9);
    ck_assert_int_ge(mask, 20);
}
END_TEST

Suite *kd_test_suite(void)
{
    Suite *s = suite_create("loss_ref");
    TCase *tc = tcase_create("torch");
    tcase_add_loop_test(tc, torch_reference, 0, (int)LOSS_REF_COUNT);
    tcase_add_test(tc, reference_coverage);
    suite_add_tcase(s, tc);
    return s;
}
