/* test_nn_optim.c - schedules against hand-computed values, optimizer
 * configuration checks, and a short training run that must learn. */
#include <string.h>

#include "kd_test.h"

START_TEST(test_schedules)
{
    kd_context *ctx = kd_test_ctx();
    kd_schedule_config c;
    kd_schedule_config_default(&c);
    float lr;
    ck_assert_int_eq(kd_schedule_lr(ctx, &c, 0, &lr), KD_OK);
    ck_assert_float_eq(lr, 1e-3f);
    ck_assert_int_eq(kd_schedule_lr(ctx, &c, 123456789, &lr), KD_OK);
    ck_assert_float_eq(lr, 1e-3f);
    /* step: 0.1 * 0.5^floor((s - 10) / 20) after 10 warm-up steps */
    c.kind = KD_SCHEDULE_STEP;
    c.base_lr = 0.1f;
    c.gamma = 0.5f;
    c.step_size = 20;
    c.warmup_steps = 10;
    ck_assert_int_eq(kd_schedule_lr(ctx, &c, 0, &lr), KD_OK);
    ck_assert_float_eq_tol(lr, 0.01f, 1e-7);
    ck_assert_int_eq(kd_schedule_lr(ctx, &c, 4, &lr), KD_OK);
    ck_assert_float_eq_tol(lr, 0.05f, 1e-7);
    ck_assert_int_eq(kd_schedule_lr(ctx, &c, 10, &lr), KD_OK);
    ck_assert_float_eq_tol(lr, 0.1f, 1e-7);
    ck_assert_int_eq(kd_schedule_lr(ctx, &c, 29, &lr), KD_OK);
    ck_assert_float_eq_tol(lr, 0.1f, 1e-7);
    ck_assert_int_eq(kd_schedule_lr(ctx, &c, 30, &lr), KD_OK);
    ck_assert_float_eq_tol(lr, 0.05f, 1e-7);
    ck_assert_int_eq(kd_schedule_lr(ctx, &c, 75, &lr), KD_OK);
    ck_assert_float_eq_tol(lr, 0.0125f, 1e-7); /* floor(65 / 20) = 3 */
    /* cosine with warm-up 100, total 1100, min 0.001 */
    c.kind = KD_SCHEDULE_COSINE;
    c.base_lr = 0.1f;
    c.min_lr = 0.001f;
    c.warmup_steps = 100;
    c.total_steps = 1100;
    ck_assert_int_eq(kd_schedule_lr(ctx, &c, 49, &lr), KD_OK);
    ck_assert_float_eq_tol(lr, 0.05f, 1e-7);
    ck_assert_int_eq(kd_schedule_lr(ctx, &c, 100, &lr), KD_OK);
    ck_assert_float_eq_tol(lr, 0.1f, 1e-7);
    ck_assert_int_eq(kd_schedule_lr(ctx, &c, 600, &lr), KD_OK);
    ck_assert_float_eq_tol(lr, 0.0505f, 1e-6);
    ck_assert_int_eq(kd_schedule_lr(ctx, &c, 350, &lr), KD_OK);
    ck_assert_float_eq_tol(lr, 0.001 + 0.099 * 0.5 * (1 + cos(3.14159265358979323846 * 0.25)), 1e-6);
    ck_assert_int_eq(kd_schedule_lr(ctx, &c, 1100, &lr), KD_OK);
    ck_assert_float_eq_tol(lr, 0.001f, 1e-7);
    ck_assert_int_eq(kd_schedule_lr(ctx, &c, UINT64_MAX, &lr), KD_OK);
    ck_assert_float_eq_tol(lr, 0.001f, 1e-7);
    /* hostile */
    ck_assert_int_eq(kd_schedule_lr(ctx, NULL, 0, &lr), KD_E_INVALID);
    ck_assert_int_eq(kd_schedule_lr(NULL, &c, 0, NULL), KD_E_INVALID);
    kd_schedule_config bad = c;
    bad.total_steps = 100;
    ck_assert_int_eq(kd_schedule_lr(ctx, &bad, 200, &lr), KD_E_INVALID);
    bad = c;
    bad.base_lr = NAN;
    ck_assert_int_eq(kd_schedule_lr(ctx, &bad, 200, &lr), KD_E_INVALID);
    bad = c;
    bad.kind = (kd_schedule_kind)9;
    ck_assert_int_eq(kd_schedule_lr(ctx, &bad, 200, &lr), KD_E_INVALID);
    bad = c;
    bad.kind = KD_SCHEDULE_STEP;
    bad.step_size = 0;
    ck_assert_int_eq(kd_schedule_lr(ctx, &bad, 200, &lr), KD_E_INVALID);
    bad = c;
    bad.struct_size = 3;
    ck_assert_int_eq(kd_schedule_lr(ctx, &bad, 200, &lr), KD_E_VERSION);
    kd_schedule_config_default(NULL);
    kd_context_destroy(ctx);
}
END_TEST

START_TEST(test_optimizer_hostile)
{
    kd_context *ctx = kd_test_ctx();
    kd_model *m;
    ck_assert_int_eq(kd_model_create_from_spec(ctx, "input 3; linear 2", &m), KD_OK);
    kd_optimizer_config c;
    kd_optimizer *o = NULL;
    kd_optimizer_config_default(NULL, KD_OPTIM_SGD);
    kd_optimizer_config_default(&c, KD_OPTIM_ADAMW);
    ck_assert_int_eq(kd_optimizer_create(NULL, &c, &o), KD_E_INVALID);
    ck_assert_int_eq(kd_optimizer_create(m, NULL, &o), KD_E_INVALID);
    ck_assert_int_eq(kd_optimizer_create(m, &c, NULL), KD_E_INVALID);
    kd_optimizer_config b = c;
    b.lr = -1;
    ck_assert_int_eq(kd_optimizer_create(m, &b, &o), KD_E_INVALID);
    b = c;
    b.beta1 = 1.0f;
    ck_assert_int_eq(kd_optimizer_create(m, &b, &o), KD_E_INVALID);
    b = c;
    b.eps = 0;
    ck_assert_int_eq(kd_optimizer_create(m, &b, &o), KD_E_INVALID);
    b = c;
    b.weight_decay = INFINITY;
    ck_assert_int_eq(kd_optimizer_create(m, &b, &o), KD_E_INVALID);
    b = c;
    b.kind = (kd_optimizer_kind)5;
    ck_assert_int_eq(kd_optimizer_create(m, &b, &o), KD_E_INVALID);
    b = c;
    b.struct_size = 2;
    ck_assert_int_eq(kd_optimizer_create(m, &b, &o), KD_E_VERSION);
    kd_optimizer_config_default(&b, KD_OPTIM_SGD);
    b.nesterov = 1;
    ck_assert_int_eq(kd_optimizer_create(m, &b, &o), KD_E_INVALID);
    b.momentum = 0.9f;
    b.dampening = 0.1f;
    ck_assert_int_eq(kd_optimizer_create(m, &b, &o), KD_E_INVALID);
    ck_assert_ptr_null(o);
    ck_assert_int_eq(kd_optimizer_step(NULL), KD_E_INVALID);
    ck_assert_int_eq(kd_optimizer_set_lr(NULL, 1), KD_E_INVALID);
    ck_assert_uint_eq(kd_optimizer_steps(NULL), 0);
    kd_optimizer_destroy(NULL);
    ck_assert_int_eq(kd_optimizer_create(m, &c, &o), KD_OK);
    ck_assert_int_eq(kd_optimizer_set_lr(o, NAN), KD_E_INVALID);
    ck_assert_int_eq(kd_optimizer_set_lr(o, 0.5f), KD_OK);
    ck_assert_int_eq(kd_optimizer_step(o), KD_OK);
    kd_optimizer_destroy(o);
    kd_model_destroy(m);
    kd_context_destroy(ctx);
}
END_TEST

/* A 2-16-1 MLP learns XOR-like targets with AdamW + cosine schedule + clipping. */
START_TEST(test_training_learns)
{
    kd_context *ctx = kd_test_ctx();
    kd_model *m;
    ck_assert_int_eq(kd_model_create_from_spec(ctx, "input 2; linear 16; tanh; linear 1", &m), KD_OK);
    kd_optimizer_config oc;
    kd_optimizer_config_default(&oc, KD_OPTIM_ADAMW);
    oc.weight_decay = 0;
    kd_optimizer *o;
    ck_assert_int_eq(kd_optimizer_create(m, &oc, &o), KD_OK);
    kd_schedule_config sc;
    kd_schedule_config_default(&sc);
    sc.kind = KD_SCHEDULE_COSINE;
    sc.base_lr = 0.05f;
    sc.warmup_steps = 20;
    sc.total_steps = 400;
    static const float x[8] = {0, 0, 0, 1, 1, 0, 1, 1}, t[4] = {-1, 1, 1, -1};
    float first = 0, last = 0;
    for (uint64_t s = 0; s < 400; s++) {
        const float *y;
        float dy[4], lr, l = 0;
        ck_assert_int_eq(kd_model_zero_grad(m), KD_OK);
        ck_assert_int_eq(kd_model_forward(m, KD_MODE_TRAIN, x, 8, 4, &y), KD_OK);
        for (int i = 0; i < 4; i++) {
            dy[i] = (y[i] - t[i]) / 2;
            l += (y[i] - t[i]) * (y[i] - t[i]) / 4;
        }
        if (s == 0) first = l;
        last = l;
        ck_assert_int_eq(kd_model_backward(m, dy, 4, NULL, 0), KD_OK);
        ck_assert_int_eq(kd_model_clip_grad_norm(m, 5.0f, NULL), KD_OK);
        ck_assert_int_eq(kd_schedule_lr(ctx, &sc, s, &lr), KD_OK);
        ck_assert_int_eq(kd_optimizer_set_lr(o, lr), KD_OK);
        ck_assert_int_eq(kd_optimizer_step(o), KD_OK);
    }
    ck_assert_msg(last < 0.01f && last < first / 20, "loss %g -> %g", first, last);
    kd_optimizer_destroy(o);
    kd_model_destroy(m);
    kd_context_destroy(ctx);
}
END_TEST

Suite *kd_test_suite(void)
{
    Suite *s = suite_create("nn_optim");
    TCase *tc = tcase_create("optim");
    tcase_add_test(tc, test_schedules);
    tcase_add_test(tc, test_optimizer_hostile);
    tcase_add_test(tc, test_training_learns);
    suite_add_tcase(s, tc);
    return s;
}
