/* test_moe_torch.c - the MoE layer (top-k, raw top-k with capacity drops,
 * expert choice, shared experts, balance and z-loss gradients) against an
 * independent per-token PyTorch implementation on fixed inputs (values in
 * tests/ref/moe_ref.h, made by tests/ref/gen_moe_ref.py). */
#include <string.h>

#include "kd_test.h"
#include "ref/moe_ref.h"

#define N_REFS (sizeof moe_refs / sizeof moe_refs[0])

START_TEST(test_against_torch)
{
    const moe_ref *r = &moe_refs[_i];
    kd_context *ctx = kd_test_ctx();
    kd_moe_config cfg;
    kd_moe_config_default(&cfg);
    cfg.n_experts = r->E;
    cfg.top_k = r->k;
    cfg.d_model = r->d;
    cfg.d_ff = r->f;
    cfg.n_shared = r->shared;
    cfg.activation = (kd_moe_activation)r->act;
    cfg.router.kind = (kd_router_kind)r->router;
    cfg.capacity_factor = r->capacity;
    cfg.balance_coef = r->cb;
    cfg.z_coef = r->cz;
    kd_moe *m;
    ck_assert_msg(kd_moe_create(ctx, &cfg, &m) == KD_OK, "%s", kd_context_last_error(ctx));
    float *p, *g;
    size_t np;
    ck_assert_int_eq(kd_moe_blocks(m, &p, &g, &np), KD_OK);
    ck_assert_uint_eq(np, r->n_param);
    memcpy(p, r->param, np * sizeof(float));
    size_t nd = r->n * r->d;
    float *y = malloc(nd * sizeof(float)), *dx = malloc(nd * sizeof(float));
    ck_assert_int_eq(kd_moe_forward(m, KD_MODE_TRAIN, r->x, r->n, y), KD_OK);
    kd_assert_close(y, r->y, nd, 2e-5, 1e-4);
    float bal, zl;
    ck_assert_int_eq(kd_moe_aux_losses(m, &bal, &zl), KD_OK);
    ck_assert_msg(fabsf(bal - r->balance) < 1e-4f, "%s balance %g vs %g", r->tag, bal, r->balance);
    ck_assert_msg(fabsf(zl - r->zloss) < 1e-4f * (1 + r->zloss), "%s z %g vs %g", r->tag, zl, r->zloss);
    ck_assert_int_eq(kd_moe_zero_grad(m), KD_OK);
    ck_assert_int_eq(kd_moe_backward(m, r->w, dx), KD_OK);
    kd_assert_close(dx, r->dx, nd, 2e-5, 2e-4);
    kd_assert_close(g, r->dparam, np, 2e-5, 2e-4);
    if (r->capacity > 0 && r->router != KD_ROUTER_EXPERT_CHOICE) {
        /* this case is chosen so that capacity drops something */
        size_t dropped[8], tot = 0;
        ck_assert_int_eq(kd_moe_stats(m, NULL, dropped, NULL, NULL), KD_OK);
        for (size_t e = 0; e < r->E; e++) tot += dropped[e];
        ck_assert_uint_gt(tot, 0);
    }
    free(y);
    free(dx);
    kd_moe_destroy(m);
    kd_context_destroy(ctx);
}
END_TEST

Suite *kd_test_suite(void)
{
    Suite *s = suite_create("moe_torch");
    TCase *tc = tcase_create("torch");
    tcase_add_loop_test(tc, test_against_torch, 0, (int)N_REFS);
    suite_add_tcase(s, tc);
    return s;
}
