/* test_loss_stats.c - analytic checks where finite differences say nothing:
 * TAID's interpolation schedule and PHI-S standardisation. */
#include <string.h>

#include "kd_test.h"

/* ---- TAID schedule --------------------------------------------------------- */

typedef struct {
    kd_context *ctx;
    kd_loss *loss;
    float s[3 * 5], t[3 * 5];
    kd_loss_batch b;
} taid_fixture;

static void taid_setup(taid_fixture *f, const kd_loss_taid_config *cfg)
{
    f->ctx = kd_test_ctx();
    ck_assert_int_eq(kd_loss_create(f->ctx, kd_loss_taid(), cfg, &f->loss), KD_OK);
    kd_test_fill(f->t, 15, -3, 3, 5);
    kd_test_fill(f->s, 15, -3, 3, 6);
    kd_loss_batch_default(&f->b);
    f->b.rows = 3;
    f->b.classes = 5;
    f->b.student_logits = f->s;
    f->b.teacher_logits = f->t;
}

/* One training step: the student moves a fraction `move` toward (or, negative,
 * away from) the teacher, the loss is evaluated, then kd_loss_step. */
static double taid_step(taid_fixture *f, uint64_t n, float move)
{
    for (int i = 0; i < 15; i++) f->s[i] += move * (f->t[i] - f->s[i]);
    double v;
    ck_assert_int_eq(kd_loss_compute(f->loss, &f->b, &v, NULL), KD_OK);
    ck_assert_int_eq(kd_loss_step(f->loss, n), KD_OK);
    double t;
    ck_assert_int_eq(kd_loss_taid_t(f->loss, &t), KD_OK);
    return t;
}

START_TEST(taid_schedule_monotone_and_bounded)
{
    kd_loss_taid_config cfg;
    kd_loss_taid_config_default(&cfg);
    cfg.total_steps = 200;
    cfg.alpha = 0.05f;
    for (int mode = 0; mode < 3; mode++) {
        taid_fixture f;
        taid_setup(&f, &cfg);
        double prev, t0;
        ck_assert_int_eq(kd_loss_taid_t(f.loss, &t0), KD_OK);
        ck_assert(fabs(t0 - 0.4) < 1e-7);
        prev = t0;
        for (uint64_t n = 1; n <= 250; n++) {
            /* loss falling, rising, or oscillating */
            float move = mode == 0 ? 0.02f : mode == 1 ? -0.01f : (n % 2 ? 0.1f : -0.1f);
            double t = taid_step(&f, n, move);
            ck_assert_msg(t >= prev, "t decreased at step %d: %g -> %g", (int)n, prev, t);
            ck_assert(t >= 0.4 - 1e-7 && t <= 1.0);
            double lin = 0.4 + 0.6 * (double)(n < 200 ? n : 200) / 200.0;
            ck_assert_msg(t >= lin - 1e-9, "below the linear floor at %d", (int)n);
            prev = t;
        }
        ck_assert(prev == 1.0); /* reached t_end */
        kd_loss_destroy(f.loss);
        kd_context_destroy(f.ctx);
    }
}
END_TEST

/* With a constant (zero) loss, delta = 0 and m stays 0 (sigmoid 1/2):
 * t_n = 1 - (1 - t_0)(1 - alpha/2)^n exactly, when no linear floor. */
START_TEST(taid_schedule_closed_form)
{
    kd_loss_taid_config cfg;
    kd_loss_taid_config_default(&cfg);
    cfg.alpha = 0.1f;
    taid_fixture f;
    taid_setup(&f, &cfg);
    memcpy(f.s, f.t, sizeof f.s); /* student == teacher: the loss is 0 at every t */
    for (uint64_t n = 1; n <= 50; n++) {
        double t = taid_step(&f, n, 0.0f);
        double want = 1.0 - (1.0 - 0.4f) * pow(1.0 - 0.1f / 2.0, (double)n);
        ck_assert_msg(fabs(t - want) < 1e-9, "step %d: %.12g vs %.12g", (int)n, t, want);
    }
    kd_loss_destroy(f.loss);
    kd_context_destroy(f.ctx);
}
END_TEST

/* A falling loss (positive momentum) raises t faster than a rising one;
 * adaptive = 0 follows the linear schedule exactly. */
START_TEST(taid_schedule_adapts)
{
    kd_loss_taid_config cfg;
    kd_loss_taid_config_default(&cfg);
    cfg.alpha = 0.05f;
    cfg.beta = 0.5f;
    double t_fall = 0, t_rise = 0;
    for (int mode = 0; mode < 2; mode++) {
        taid_fixture f;
        taid_setup(&f, &cfg);
        double t = 0;
        for (uint64_t n = 1; n <= 30; n++) t = taid_step(&f, n, mode == 0 ? 0.05f : -0.05f);
        if (mode == 0) t_fall = t;
        else t_rise = t;
        kd_loss_destroy(f.loss);
        kd_context_destroy(f.ctx);
    }
    ck_assert_msg(t_fall > t_rise + 0.01, "falling %g vs rising %g", t_fall, t_rise);

    cfg.adaptive = 0;
    cfg.total_steps = 40;
    taid_fixture f;
    taid_setup(&f, &cfg);
    for (uint64_t n = 1; n <= 45; n++) {
        double t = taid_step(&f, n, 0.05f);
        double lin = 0.4f + (1.0f - 0.4f) * (double)(n < 40 ? n : 40) / 40.0;
        ck_assert(fabs(t - lin) < 1e-7);
    }
    kd_loss_destroy(f.loss);
    kd_context_destroy(f.ctx);
}
END_TEST

START_TEST(taid_state_errors)
{
    kd_context *ctx = kd_test_ctx();
    kd_loss *loss = NULL, *other = NULL;
    ck_assert_int_eq(kd_loss_create(ctx, kd_loss_taid(), NULL, &loss), KD_OK);
    ck_assert_int_eq(kd_loss_step(loss, 1), KD_E_STATE);
    ck_assert(strstr(kd_context_last_error(ctx), "before any") != NULL);
    double t;
    ck_assert_int_eq(kd_loss_taid_t(loss, NULL), KD_E_INVALID);
    ck_assert_int_eq(kd_loss_taid_t(NULL, &t), KD_E_INVALID);
    ck_assert_int_eq(kd_loss_create(ctx, kd_loss_hinton(), NULL, &other), KD_OK);
    ck_assert_int_eq(kd_loss_taid_t(other, &t), KD_E_INVALID);
    ck_assert_int_eq(kd_loss_step(other, 1), KD_OK); /* no schedule: no-op */
    ck_assert_int_eq(kd_loss_step(NULL, 1), KD_E_INVALID);
    kd_loss_destroy(loss);
    kd_loss_destroy(other);
    kd_context_destroy(ctx);
}
END_TEST

/* ---- PHI-S --------------------------------------------------------------------- */

/* n x d anisotropic, correlated, off-centre data: x = A z + c. */
static float *phis_data(size_t n, size_t d, uint64_t seed)
{
    float *x = malloc(n * d * sizeof *x), *a = malloc(d * d * sizeof *a);
    kd_rng r;
    kd_rng_seed(&r, seed, 1);
    for (size_t i = 0; i < d * d; i++) a[i] = kd_rng_normal(&r) * (float)(1 + (i / d)) * 0.5f;
    for (size_t i = 0; i < n; i++) {
        float z[64];
        for (size_t k = 0; k < d; k++) z[k] = kd_rng_normal(&r);
        for (size_t k = 0; k < d; k++) {
            double acc = 3.0 * (double)k - 7.0;
            for (size_t j = 0; j < d; j++) acc += a[k * d + j] * z[j];
            x[i * d + k] = (float)acc;
        }
    }
    free(a);
    return x;
}

START_TEST(phis_unit_scalar_variance)
{
    const size_t n = 600, d = 16;
    kd_context *ctx = kd_test_ctx();
    float *x = phis_data(n, d, 3), *y = malloc(n * d * sizeof *y), *back = malloc(n * d * sizeof *back);
    kd_phis *p = NULL;
    ck_assert_int_eq(kd_phis_fit(ctx, x, n, d, &p), KD_OK);
    ck_assert_int_eq(kd_phis_apply(p, x, n, y), KD_OK);
    /* Every output dimension: mean 0, variance 1 (on the calibration data). */
    double min_in = 1e300, max_in = 0;
    for (size_t k = 0; k < d; k++) {
        double m = 0, v = 0, mi = 0, vi = 0;
        for (size_t i = 0; i < n; i++) {
            m += y[i * d + k];
            mi += x[i * d + k];
        }
        m /= n;
        mi /= n;
        for (size_t i = 0; i < n; i++) {
            v += (y[i * d + k] - m) * (y[i * d + k] - m);
            vi += (x[i * d + k] - mi) * (x[i * d + k] - mi);
        }
        v /= n;
        vi /= n;
        min_in = fmin(min_in, vi);
        max_in = fmax(max_in, vi);
        ck_assert_msg(fabs(m) < 1e-4, "dim %zu mean %g", k, m);
        ck_assert_msg(fabs(v - 1.0) < 1e-3, "dim %zu variance %g", k, v);
    }
    ck_assert(max_in / min_in > 10); /* the input really was unbalanced */
    /* The rotation is orthogonal and the map inverts. */
    const float *rot, *mean;
    float sigma;
    size_t dim;
    ck_assert_int_eq(kd_phis_get(p, &mean, &rot, &sigma, &dim), KD_OK);
    ck_assert_uint_eq(dim, d);
    ck_assert(sigma > 0);
    for (size_t i = 0; i < d; i++)
        for (size_t j = 0; j < d; j++) {
            double acc = 0;
            for (size_t k = 0; k < d; k++) acc += (double)rot[i * d + k] * rot[j * d + k];
            ck_assert_msg(fabs(acc - (i == j)) < 1e-5, "R R^T (%zu,%zu) = %g", i, j, acc);
        }
    ck_assert_int_eq(kd_phis_invert(p, y, n, back), KD_OK);
    for (size_t i = 0; i < n * d; i++)
        ck_assert_msg(fabs(back[i] - x[i]) <= 1e-3 * (1 + fabs(x[i])), "%zu: %g vs %g", i, back[i], x[i]);
    /* sigma^2 is the mean variance: trace / D. */
    double tr = 0;
    for (size_t k = 0; k < d; k++) {
        double m = 0, v = 0;
        for (size_t i = 0; i < n; i++) m += x[i * d + k];
        m /= n;
        for (size_t i = 0; i < n; i++) v += (x[i * d + k] - m) * (x[i * d + k] - m);
        tr += v / n;
    }
    ck_assert(fabs((double)sigma * sigma - tr / d) < 1e-4 * tr / d);
    kd_phis_destroy(p);
    free(x);
    free(y);
    free(back);
    kd_context_destroy(ctx);
}
END_TEST

START_TEST(phis_hostile)
{
    kd_context *ctx = kd_test_ctx();
    float x[4 * 8];
    kd_test_fill(x, 32, -1, 1, 9);
    kd_phis *p = NULL;
    ck_assert_int_eq(kd_phis_fit(NULL, x, 4, 8, &p), KD_E_INVALID);
    ck_assert_int_eq(kd_phis_fit(ctx, NULL, 4, 8, &p), KD_E_INVALID);
    ck_assert_int_eq(kd_phis_fit(ctx, x, 4, 8, NULL), KD_E_INVALID);
    ck_assert_int_eq(kd_phis_fit(ctx, x, 1, 8, &p), KD_E_INVALID);
    ck_assert_int_eq(kd_phis_fit(ctx, x, 4, 6, &p), KD_E_UNSUPPORTED);
    ck_assert(strstr(kd_context_last_error(ctx), "power of two") != NULL);
    ck_assert_int_eq(kd_phis_fit(ctx, x, 4, 0, &p), KD_E_UNSUPPORTED);
    ck_assert_int_eq(kd_phis_fit(ctx, x, SIZE_MAX / 4, 8, &p), KD_E_OVERFLOW);
    ck_assert_int_eq(kd_phis_fit(ctx, x, 4, (size_t)1 << 62, &p), KD_E_OVERFLOW);
    float c[4 * 8];
    for (int i = 0; i < 32; i++) c[i] = 2.0f;
    ck_assert_int_eq(kd_phis_fit(ctx, c, 4, 8, &p), KD_E_NUMERIC);
    c[5] = NAN;
    ck_assert_int_eq(kd_phis_fit(ctx, c, 4, 8, &p), KD_E_NUMERIC);
    ck_assert_ptr_null(p);
    ck_assert_int_eq(kd_phis_fit(ctx, x, 4, 8, &p), KD_OK);
    float y[32];
    ck_assert_int_eq(kd_phis_apply(NULL, x, 4, y), KD_E_INVALID);
    ck_assert_int_eq(kd_phis_apply(p, NULL, 4, y), KD_E_INVALID);
    ck_assert_int_eq(kd_phis_apply(p, x, 4, NULL), KD_E_INVALID);
    ck_assert_int_eq(kd_phis_apply(p, x, 4, x + 1), KD_E_INVALID); /* overlap */
    ck_assert_int_eq(kd_phis_apply(p, x, SIZE_MAX / 2, y), KD_E_OVERFLOW);
    ck_assert_int_eq(kd_phis_invert(p, x, SIZE_MAX / 2, y), KD_E_OVERFLOW);
    ck_assert_int_eq(kd_phis_apply(p, x, 0, y), KD_OK);
    ck_assert_int_eq(kd_phis_get(NULL, NULL, NULL, NULL, NULL), KD_E_INVALID);
    ck_assert_int_eq(kd_phis_get(p, NULL, NULL, NULL, NULL), KD_OK);
    kd_phis_destroy(p);
    kd_phis_destroy(NULL);
    kd_context_destroy(ctx);
}
END_TEST

static kd_status phis_body(kd_context *ctx, void *user)
{
    float *x = (float *)user;
    kd_phis *p = NULL;
    kd_status st = kd_phis_fit(ctx, x, 8, 4, &p);
    kd_phis_destroy(p);
    return st;
}

START_TEST(phis_alloc_failures)
{
    float x[32];
    kd_test_fill(x, 32, -1, 1, 4);
    ck_assert_int_ge(kd_test_alloc_failures(phis_body, x), 3);
}
END_TEST

Suite *kd_test_suite(void)
{
    Suite *s = suite_create("loss_stats");
    TCase *tc = tcase_create("stats");
    tcase_add_test(tc, taid_schedule_monotone_and_bounded);
    tcase_add_test(tc, taid_schedule_closed_form);
    tcase_add_test(tc, taid_schedule_adapts);
    tcase_add_test(tc, taid_state_errors);
    tcase_add_test(tc, phis_unit_scalar_variance);
    tcase_add_test(tc, phis_hostile);
    tcase_add_test(tc, phis_alloc_failures);
    suite_add_tcase(s, tc);
    return s;
}
