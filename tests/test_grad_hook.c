/* test_grad_hook.c - kd_student_set_grad_hook: the point where libkd_mpi averages
 * gradients (after backward, before clipping and the update). */
#include <string.h>

#include "kd_test.h"

typedef struct {
    int calls;
    size_t batch;
    double loss;
    float scale;      /* multiplies every gradient */
    int fail;         /* nonzero: report failure */
    float norm_seen;  /* gradient norm before scaling */
} hook_state;

static int hook(void *user, kd_model *m, size_t batch, double loss)
{
    hook_state *h = (hook_state *)user;
    h->calls++;
    h->batch = batch;
    h->loss = loss;
    float *g = NULL;
    size_t n = 0;
    if (kd_model_blocks(m, NULL, &g, &n) != KD_OK) return 1;
    double s = 0;
    for (size_t i = 0; i < n; i++) {
        s += (double)g[i] * g[i];
        g[i] *= h->scale;
    }
    h->norm_seen = (float)sqrt(s);
    return h->fail;
}

typedef struct {
    kd_context *ctx;
    kd_model *m;
    kd_optimizer *opt;
    kd_loss *ce;
    kd_student *s;
} rig;

static void rig_make(rig *r, float max_norm)
{
    r->ctx = kd_test_ctx();
    ck_assert_int_eq(kd_model_create_from_spec(r->ctx, "input 4; linear 3", &r->m), KD_OK);
    kd_optimizer_config oc;
    kd_optimizer_config_default(&oc, KD_OPTIM_SGD);
    oc.lr = 0.1f;
    ck_assert_int_eq(kd_optimizer_create(r->m, &oc, &r->opt), KD_OK);
    kd_student_config sc;
    kd_student_config_default(&sc);
    sc.max_grad_norm = max_norm;
    ck_assert_int_eq(kd_student_create(r->ctx, r->m, r->opt, &sc, &r->s), KD_OK);
    ck_assert_int_eq(kd_loss_create(r->ctx, kd_loss_cross_entropy(), NULL, &r->ce), KD_OK);
    ck_assert_int_eq(kd_student_add_loss(r->s, r->ce, 2.0f, 0), KD_OK);
}

static void rig_free(rig *r)
{
    kd_student_destroy(r->s);
    kd_loss_destroy(r->ce);
    kd_optimizer_destroy(r->opt);
    kd_model_destroy(r->m);
    kd_context_destroy(r->ctx);
}

static const float X[12] = {0.5f, -1, 2, 0.25f, 1, 1, -0.5f, 0, -2, 0.5f, 1, 1.5f};
static const int32_t Y[3] = {0, 2, 1};

START_TEST(grad_hook_sees_step_and_rewrites_gradients)
{
    /* Reference step without a hook, and the same step with a hook that halves every
     * gradient: SGD's update halves exactly, and the hook saw the batch and the loss. */
    rig a, b;
    rig_make(&a, 0.0f);
    rig_make(&b, 0.0f);
    float *pa, *pb, before[15];
    size_t n;
    ck_assert_int_eq(kd_model_blocks(a.m, &pa, NULL, &n), KD_OK);
    ck_assert_int_eq(kd_model_blocks(b.m, &pb, NULL, &n), KD_OK);
    ck_assert_uint_eq(n, 15);
    memcpy(before, pa, sizeof before);
    kd_assert_close(pb, pa, n, 0, 0); /* same seed, same weights */
    kd_step_report ra = {.struct_size = sizeof ra}, rb = {.struct_size = sizeof rb};
    ck_assert_int_eq(kd_student_step(a.s, X, 3, Y, NULL, &ra), KD_OK);
    hook_state h = {0, 0, 0, 0.5f, 0, 0};
    ck_assert_int_eq(kd_student_set_grad_hook(b.s, hook, &h), KD_OK);
    ck_assert_int_eq(kd_student_step(b.s, X, 3, Y, NULL, &rb), KD_OK);
    ck_assert_int_eq(h.calls, 1);
    ck_assert_uint_eq(h.batch, 3);
    ck_assert_double_eq_tol(h.loss, ra.total, 1e-12);
    ck_assert_float_eq_tol(h.norm_seen, ra.grad_norm, 1e-6f);
    ck_assert_float_eq_tol(rb.grad_norm, 0.5f * ra.grad_norm, 1e-6f); /* the norm is taken after the hook */
    for (size_t i = 0; i < n; i++)
        ck_assert_float_eq_tol(pb[i] - before[i], 0.5f * (pa[i] - before[i]), 1e-6f);
    /* Cleared: the next step runs without it. */
    ck_assert_int_eq(kd_student_set_grad_hook(b.s, NULL, &h), KD_OK);
    ck_assert_int_eq(kd_student_step(b.s, X, 3, Y, NULL, NULL), KD_OK);
    ck_assert_int_eq(h.calls, 1);
    rig_free(&a);
    rig_free(&b);
}
END_TEST

START_TEST(grad_hook_failure_blocks_the_update)
{
    rig r;
    rig_make(&r, 1.0f);
    float *p, before[15];
    size_t n;
    ck_assert_int_eq(kd_model_blocks(r.m, &p, NULL, &n), KD_OK);
    memcpy(before, p, sizeof before);
    hook_state h = {0, 0, 0, 1.0f, 1, 0};
    ck_assert_int_eq(kd_student_set_grad_hook(r.s, hook, &h), KD_OK);
    ck_assert_int_eq(kd_student_step(r.s, X, 3, Y, NULL, NULL), KD_E_CALLBACK);
    ck_assert_ptr_nonnull(strstr(kd_context_last_error(r.ctx), "gradient hook"));
    ck_assert_int_eq(memcmp(before, p, sizeof before), 0);
    ck_assert_uint_eq(kd_optimizer_steps(r.opt), 0);
    /* A hook that poisons the gradients: clipping reports it, still no update. */
    h.fail = 0;
    h.scale = NAN;
    ck_assert_int_eq(kd_student_step(r.s, X, 3, Y, NULL, NULL), KD_E_NUMERIC);
    ck_assert_int_eq(memcmp(before, p, sizeof before), 0);
    ck_assert_int_eq(kd_student_set_grad_hook(NULL, hook, &h), KD_E_INVALID);
    rig_free(&r);
}
END_TEST

Suite *kd_test_suite(void)
{
    Suite *s = suite_create("grad_hook");
    TCase *tc = tcase_create("grad_hook");
    tcase_add_test(tc, grad_hook_sees_step_and_rewrites_gradients);
    tcase_add_test(tc, grad_hook_failure_blocks_the_update);
    suite_add_tcase(s, tc);
    return s;
}
