/* test_nn_torch.c - every layer's forward and backward against PyTorch 1.13
 * on fixed inputs (values in tests/ref/nn_ref.h, made by gen_nn_ref.py). */
#include <string.h>

#include "kd_test.h"
#include "ref/nn_ref.h"

#define N_CASES (sizeof ref_cases / sizeof ref_cases[0])

static void run_case(const ref_case *c)
{
    kd_context *ctx = kd_test_ctx();
    kd_model *m = NULL;
    ck_assert_msg(kd_model_create_from_spec(ctx, c->spec, &m) == KD_OK, "%s: %s", c->tag,
                  kd_context_last_error(ctx));
    ck_assert_uint_eq(kd_model_tensor_count(m), c->n_tensors);
    for (size_t i = 0; i < c->n_tensors; i++) {
        const char *name;
        float *data;
        size_t n;
        int tr;
        ck_assert_int_eq(kd_model_tensor_name(m, i, &name), KD_OK);
        ck_assert_msg(strcmp(name, c->tensors[i].name) == 0, "%s: tensor %zu is %s, torch has %s",
                      c->tag, i, name, c->tensors[i].name);
        ck_assert_int_eq(kd_model_tensor(m, i, &data, &n, NULL, NULL, &tr), KD_OK);
        ck_assert_uint_eq(n, c->tensors[i].n);
        ck_assert_int_eq(tr, c->tensors[i].trainable);
        memcpy(data, c->tensors[i].data, n * sizeof(float));
    }
    size_t numel;
    ck_assert_int_eq(kd_model_output_shape(m, NULL, NULL, &numel), KD_OK);
    ck_assert_uint_eq(numel * c->batch, c->ny);
    kd_mode mode = c->train ? KD_MODE_TRAIN : KD_MODE_INFER;
    const float *y = NULL;
    kd_status st;
    if (c->x) {
        st = kd_model_forward(m, mode, c->x, c->nx, c->batch, &y);
    } else {
        size_t nid = c->nx;
        st = kd_model_forward_ids(m, mode, c->ids, nid, c->offsets, c->batch, &y);
    }
    ck_assert_msg(st == KD_OK, "%s: %s", c->tag, kd_context_last_error(ctx));
    kd_assert_close(y, c->y, c->ny, 2e-5, 2e-4);
    if (c->train) {
        float *dx = c->x ? calloc(c->nx, sizeof(float)) : NULL;
        ck_assert_int_eq(kd_model_zero_grad(m), KD_OK);
        ck_assert_msg(kd_model_backward(m, c->dy, c->ny, dx, c->nx) == KD_OK, "%s: %s", c->tag, kd_context_last_error(ctx));
        if (dx) kd_assert_close(dx, c->dx, c->nx, 2e-5, 2e-4);
        for (size_t i = 0; i < c->n_tensors; i++) {
            float *g;
            size_t n;
            if (c->tensors[i].trainable) {
                ck_assert_int_eq(kd_model_tensor_grad(m, i, &g, &n), KD_OK);
            } else {
                ck_assert_int_eq(kd_model_tensor(m, i, &g, &n, NULL, NULL, NULL), KD_OK);
            }
            kd_assert_close(g, c->tensors[i].grad_or_after, n, 3e-5, 3e-4);
        }
        free(dx);
    }
    kd_model_destroy(m);
    kd_context_destroy(ctx);
}

START_TEST(test_torch_case)
{
    run_case(&ref_cases[_i]);
}
END_TEST

START_TEST(test_torch_optimizers)
{
    size_t n_opt = sizeof opt_cases / sizeof opt_cases[0];
    size_t n_steps = sizeof opt_grads / sizeof opt_grads[0];
    for (size_t k = 0; k < n_opt; k++) {
        const opt_ref *o = &opt_cases[k];
        kd_context *ctx = kd_test_ctx();
        kd_model *m;
        ck_assert_int_eq(kd_model_create_from_spec(ctx, "input 4; linear 3", &m), KD_OK);
        float *p, *g;
        size_t n;
        ck_assert_int_eq(kd_model_blocks(m, &p, &g, &n), KD_OK);
        ck_assert_uint_eq(n, 15);
        memcpy(p, opt_p0, sizeof opt_p0);
        kd_optimizer_config cfg;
        kd_optimizer_config_default(&cfg, (kd_optimizer_kind)o->kind);
        cfg.lr = o->lr;
        cfg.weight_decay = o->wd;
        cfg.momentum = o->momentum;
        cfg.dampening = o->dampening;
        cfg.nesterov = o->nesterov;
        cfg.beta1 = o->beta1;
        cfg.beta2 = o->beta2;
        cfg.eps = o->eps;
        kd_optimizer *opt;
        ck_assert_int_eq(kd_optimizer_create(m, &cfg, &opt), KD_OK);
        for (size_t s = 0; s < n_steps; s++) {
            memcpy(g, opt_grads[s], 15 * sizeof(float));
            ck_assert_int_eq(kd_optimizer_step(opt), KD_OK);
            kd_assert_close(p, o->traj + s * 15, 15, 1e-6, 1e-5);
        }
        ck_assert_uint_eq(kd_optimizer_steps(opt), n_steps);
        kd_optimizer_destroy(opt);
        kd_model_destroy(m);
        kd_context_destroy(ctx);
    }
}
END_TEST

START_TEST(test_torch_clip)
{
    kd_context *ctx = kd_test_ctx();
    kd_model *m;
    ck_assert_int_eq(kd_model_create_from_spec(ctx, "input 4; linear 3", &m), KD_OK);
    float *g;
    size_t n;
    ck_assert_int_eq(kd_model_blocks(m, NULL, &g, &n), KD_OK);
    memcpy(g, clip_g, sizeof clip_g);
    float norm;
    ck_assert_int_eq(kd_model_clip_grad_norm(m, 1.5f, &norm), KD_OK);
    ck_assert_float_eq_tol(norm, clip_norm, 1e-5);
    kd_assert_close(g, clip_out, 15, 1e-6, 1e-5);
    kd_model_destroy(m);
    kd_context_destroy(ctx);
}
END_TEST

Suite *kd_test_suite(void)
{
    Suite *s = suite_create("nn_torch");
    TCase *tc = tcase_create("torch");
    tcase_add_loop_test(tc, test_torch_case, 0, (int)N_CASES);
    tcase_add_test(tc, test_torch_optimizers);
    tcase_add_test(tc, test_torch_clip);
    suite_add_tcase(s, tc);
    return s;
}
