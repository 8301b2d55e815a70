/* test_loss_grad.c - every loss's gradient against central finite
 * differences of its own value, on the reference inputs (extreme-logit cases
 * excepted: +-1e4 leaves no room for a difference quotient; PyTorch covers
 * them), including the FitNets projection parameters, gradient scaling and
 * accumulation. */
#include <stdio.h>

#include "loss_ref_helpers.h"

static double value_at(kd_loss *loss, const kd_loss_batch *b)
{
    double v = 0;
    kd_status st = kd_loss_compute(loss, b, &v, NULL);
    ck_assert_msg(st == KD_OK, "%s", kd_context_last_error(kd_loss_context(loss)));
    return v;
}

/* Central difference of the value in x[j] (x belongs to the batch). */
static double fd(kd_loss *loss, const kd_loss_batch *b, float *x, size_t j)
{
    float x0 = x[j];
    float h = 1e-3f * fmaxf(1.0f, fabsf(x0));
    x[j] = x0 + h;
    float xp = x[j];
    double vp = value_at(loss, b);
    x[j] = x0 - h;
    float xm = x[j];
    double vm = value_at(loss, b);
    x[j] = x0;
    return (vp - vm) / ((double)xp - (double)xm);
}

static void check_grad(const float *an, const double *num, size_t n, const char *what,
                       const char *name)
{
    double scale = 1e-3;
    for (size_t i = 0; i < n; i++) scale = fmax(scale, fabs(num[i]));
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(fabs(an[i] - num[i]) <= 2e-4 * scale + 1e-3 * fabs(num[i]),
                      "%s %s[%zu]: analytic %.9g, finite difference %.9g", name, what, i, an[i],
                      num[i]);
}

/* TAID's target holds the student fixed (stop-gradient), so its gradient is
 * the forward-KL gradient toward the frozen target P_t, not the derivative
 * of its value: compare with Hinton KD (alpha 1, finite-difference checked
 * itself) whose teacher logits are T log P_t. */
static void check_taid(const loss_ref_case *c)
{
    kd_context *ctx = kd_test_ctx();
    kd_loss *taid = make_loss(ctx, c);
    const size_t n = c->rows * c->cols, C = c->cols;
    const double T = c->temperature, t = c->p1;
    float *tl = malloc(n * sizeof *tl), *g1 = calloc(n, sizeof *g1), *g2 = calloc(n, sizeof *g2);
    for (size_t i = 0; i < c->rows; i++) {
        const float *s = c->s + i * C, *z = c->t + i * C;
        double ms = -INFINITY, mz = -INFINITY, mm = -INFINITY, ss = 0, sz = 0, sm = 0;
        for (size_t j = 0; j < C; j++) {
            if (!isinf(s[j])) ms = fmax(ms, s[j] / T);
            if (!isinf(z[j])) mz = fmax(mz, z[j] / T);
            if (!isinf(s[j]) && !isinf(z[j])) mm = fmax(mm, ((1 - t) * s[j] + t * z[j]) / T);
        }
        for (size_t j = 0; j < C; j++) {
            if (!isinf(s[j])) ss += exp(s[j] / T - ms);
            if (!isinf(z[j])) sz += exp(z[j] / T - mz);
            if (!isinf(s[j]) && !isinf(z[j])) sm += exp(((1 - t) * s[j] + t * z[j]) / T - mm);
        }
        for (size_t j = 0; j < C; j++) {
            double q = isinf(s[j]) ? 0 : exp(s[j] / T - ms) / ss;
            double p = isinf(z[j]) ? 0 : exp(z[j] / T - mz) / sz;
            double pt = c->flag ? ((isinf(s[j]) || isinf(z[j])) ? 0
                                   : exp(((1 - t) * s[j] + t * z[j]) / T - mm) / sm)
                                : (1 - t) * q + t * p;
            tl[i * C + j] = pt > 0 ? (float)(T * log(pt)) : -INFINITY;
        }
    }
    kd_loss_hinton_config hc;
    kd_loss_hinton_config_default(&hc);
    hc.alpha = 1.0f;
    hc.temperature = (float)T;
    kd_loss *kl = NULL;
    ck_assert_int_eq(kd_loss_create(ctx, kd_loss_hinton(), &hc, &kl), KD_OK);
    kd_loss_batch b;
    kd_loss_grad gr;
    make_batch(c, &b, &gr, g1);
    double v1, v2;
    ck_assert_int_eq(kd_loss_compute(taid, &b, &v1, &gr), KD_OK);
    b.teacher_logits = tl;
    gr.student_logits = g2;
    ck_assert_int_eq(kd_loss_compute(kl, &b, &v2, &gr), KD_OK);
    ck_assert_msg(fabs(v1 - v2) <= 1e-5 * fmax(1, fabs(v1)), "%s: value %g vs %g", c->name, v1, v2);
    double scale = 1e-3;
    for (size_t i = 0; i < n; i++) scale = fmax(scale, fabs(g2[i]));
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(fabs(g1[i] - g2[i]) <= 1e-5 * scale, "%s: grad[%zu] %g vs %g", c->name, i,
                      g1[i], g2[i]);
    free(tl);
    free(g1);
    free(g2);
    kd_loss_destroy(kl);
    kd_loss_destroy(taid);
    kd_context_destroy(ctx);
}

START_TEST(finite_differences)
{
    const loss_ref_case *c = &loss_ref_cases[_i];
    if (c->loss == REF_TAID) {
        check_taid(c);
        return;
    }
    if (strstr(c->name, "_ext")) return;
    kd_context *ctx = kd_test_ctx();
    kd_loss *loss = make_loss(ctx, c);
    size_t n = c->rows * c->cols;
    float *s = malloc(n * sizeof *s), *g = malloc(n * sizeof *g);
    double *num = malloc(n * sizeof *num);
    memcpy(s, c->s, n * sizeof *s);
    kd_loss_batch b;
    kd_loss_grad gr;
    make_batch(c, &b, &gr, g);
    if (b.student_logits) b.student_logits = s;
    if (b.student_features) b.student_features = s;
    if (b.student_scores) b.student_scores = s;
    kd_loss_param pw = {0}, pb = {0};
    if (c->proj_w) {
        kd_loss_get_param(loss, 0, &pw);
        kd_loss_get_param(loss, 1, &pb);
        memcpy(pw.data, c->proj_w, pw.count * sizeof(float));
        memcpy(pb.data, c->proj_b, pb.count * sizeof(float));
    }
    /* Accumulation with a scale: start from 1, add 2.5 x gradient. */
    for (size_t i = 0; i < n; i++) g[i] = 1.0f;
    gr.scale = 2.5f;
    double v;
    ck_assert_int_eq(kd_loss_compute(loss, &b, &v, &gr), KD_OK);
    for (size_t i = 0; i < n; i++) g[i] = (g[i] - 1.0f) / 2.5f;
    for (size_t j = 0; j < n; j++) num[j] = isinf(s[j]) ? 0.0 : fd(loss, &b, s, j);
    for (size_t j = 0; j < n; j++)
        if (isinf(s[j])) ck_assert_msg(g[j] == 0.0f, "%s: masked entry %zu got gradient", c->name, j);
    check_grad(g, num, n, "student", c->name);
    if (c->proj_w) {
        float *gw = malloc(pw.count * sizeof *gw), gb[64];
        double *nw = malloc(pw.count * sizeof *nw), nb[64];
        for (size_t i = 0; i < pw.count; i++) gw[i] = pw.grad[i] / 2.5f;
        for (size_t i = 0; i < pb.count; i++) gb[i] = pb.grad[i] / 2.5f;
        for (size_t i = 0; i < pw.count; i++) nw[i] = fd(loss, &b, pw.data, i);
        for (size_t i = 0; i < pb.count; i++) nb[i] = fd(loss, &b, pb.data, i);
        check_grad(gw, nw, pw.count, "proj.weight", c->name);
        check_grad(gb, nb, pb.count, "proj.bias", c->name);
        ck_assert_int_eq(kd_loss_zero_grad(loss), KD_OK);
        for (size_t i = 0; i < pw.count; i++) ck_assert(pw.grad[i] == 0.0f);
        free(gw);
        free(nw);
    }
    free(s);
    free(g);
    free(num);
    kd_loss_destroy(loss);
    kd_context_destroy(ctx);
}
END_TEST

/* A deliberately wrong gradient fails the comparison above (the check has teeth). */
START_TEST(wrong_gradient_is_caught)
{
    float an[3] = {1.0f, 2.0f, 3.0f};
    double num[3] = {1.0, 2.0, 3.0 * 1.01};
    int ok = 1;
    double scale = 3.03;
    for (size_t i = 0; i < 3; i++) ok &= fabs(an[i] - num[i]) <= 2e-4 * scale + 1e-3 * fabs(num[i]);
    ck_assert(!ok);
}
END_TEST

Suite *kd_test_suite(void)
{
    Suite *s = suite_create("loss_grad");
    TCase *tc = tcase_create("fd");
    tcase_add_loop_test(tc, finite_differences, 0, (int)LOSS_REF_COUNT);
    tcase_add_test(tc, wrong_gradient_is_caught);
    suite_add_tcase(s, tc);
    return s;
}
