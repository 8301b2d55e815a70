/* test_moe_router.c - the built-in routers on their own: output invariants
 * (weights, counts, capacity, bounds, distinct experts), tie order,
 * determinism, and router backward against finite differences of
 * L = sum_a g_a * weight_a with the selection held fixed. */
#include <string.h>

#include "kd_test.h"

typedef struct {
    const kd_router_vtable *vt;
    kd_router_config rc;
    size_t n, E, k, C;
    float *z, *saved;
    kd_router_assign *a;
    size_t na, max;
    kd_rng rng;
} rt;

static void rt_init(rt *r, kd_router_kind kind, size_t n, size_t E, size_t k, size_t C)
{
    memset(r, 0, sizeof *r);
    r->vt = kd_router_builtin(kind);
    ck_assert_ptr_nonnull(r->vt);
    ck_assert_uint_eq(r->vt->abi_version, KD_ROUTER_ABI_VERSION);
    kd_router_config_default(&r->rc);
    r->rc.kind = kind;
    r->n = n, r->E = E, r->k = k, r->C = C;
    r->z = calloc(n * E + 1, sizeof(float));
    r->max = r->vt->max_assignments(&r->rc, n, E, k, C);
    r->a = calloc(r->max + 1, sizeof *r->a);
    size_t rs = r->vt->saved_size ? r->vt->saved_size(&r->rc, n, E) : 0;
    r->saved = calloc(rs + 1, sizeof(float));
    kd_rng_seed(&r->rng, 9, 9);
}

static void rt_route(rt *r, int train)
{
    kd_router_batch b = {NULL, r->z, r->n, r->E, r->k, r->C, train, &r->rng, r->saved};
    r->na = 99999;
    ck_assert_int_eq(r->vt->route(&r->rc, &b, r->a, &r->na), KD_OK);
    ck_assert_uint_le(r->na, r->max);
    for (size_t i = 0; i < r->na; i++) {
        ck_assert_uint_lt(r->a[i].token, r->n);
        ck_assert_uint_lt(r->a[i].expert, r->E);
    }
}

static void rt_free(rt *r)
{
    free(r->z);
    free(r->a);
    free(r->saved);
}

/* per-token count and weight sum; checks distinct experts per token */
static void per_token(const rt *r, size_t t, size_t *cnt, double *wsum)
{
    *cnt = 0;
    *wsum = 0;
    for (size_t i = 0; i < r->na; i++) {
        if (r->a[i].token != t) continue;
        for (size_t j = i + 1; j < r->na; j++)
            if (r->a[j].token == t) ck_assert_uint_ne(r->a[j].expert, r->a[i].expert);
        (*cnt)++;
        *wsum += r->a[i].weight;
    }
}

START_TEST(test_topk_invariants_and_ties)
{
    rt r;
    rt_init(&r, KD_ROUTER_TOPK, 50, 8, 3, 0);
    kd_test_fill(r.z, 50 * 8, -3, 3, 1);
    /* token 0: all equal -> experts 0, 1, 2 with weight 1/3 */
    for (int e = 0; e < 8; e++) r.z[e] = 0.5f;
    /* token 1: tie between experts 6 and 2 for the last slot */
    float t1[8] = {5, 0, 1, 0, 0, 0, 1, 4};
    memcpy(r.z + 8, t1, sizeof t1);
    rt_route(&r, 0);
    ck_assert_uint_eq(r.na, 150);
    for (size_t t = 0; t < 50; t++) {
        size_t c;
        double s;
        per_token(&r, t, &c, &s);
        ck_assert_uint_eq(c, 3);
        ck_assert_double_eq_tol(s, 1.0, 1e-6);
    }
    ck_assert_uint_eq(r.a[0].expert, 0);
    ck_assert_uint_eq(r.a[1].expert, 1);
    ck_assert_uint_eq(r.a[2].expert, 2);
    ck_assert_float_eq_tol(r.a[0].weight, 1.0f / 3, 1e-6f);
    ck_assert_uint_eq(r.a[3].expert, 0);
    ck_assert_uint_eq(r.a[4].expert, 7);
    ck_assert_uint_eq(r.a[5].expert, 2); /* not 6 */
    rt_free(&r);
}
END_TEST

START_TEST(test_topk_raw_weights_are_probabilities)
{
    rt r;
    rt_init(&r, KD_ROUTER_TOPK_RAW, 20, 6, 2, 0);
    kd_test_fill(r.z, 120, -2, 2, 2);
    rt_route(&r, 0);
    for (size_t i = 0; i < r.na; i++) {
        const float *z = r.z + r.a[i].token * 6;
        double s = 0;
        for (int e = 0; e < 6; e++) s += exp(z[e]);
        ck_assert_double_eq_tol(r.a[i].weight, exp(z[r.a[i].expert]) / s, 1e-6);
    }
    for (size_t t = 0; t < 20; t++) {
        size_t c;
        double s;
        per_token(&r, t, &c, &s);
        ck_assert_uint_eq(c, 2);
        ck_assert(s < 1.0 && s > 2.0 / 6);
    }
    rt_free(&r);
}
END_TEST

START_TEST(test_expert_choice_capacity)
{
    rt r;
    size_t C = _i == 0 ? 4 : 40; /* 40: capacity above the token count */
    rt_init(&r, KD_ROUTER_EXPERT_CHOICE, 13, 5, 2, C);
    kd_test_fill(r.z, 65, -2, 2, 3);
    for (int e = 0; e < 5; e++) r.z[2 * 5 + e] = r.z[7 * 5 + e] = 0; /* tokens 2, 7 tie */
    rt_route(&r, 0);
    size_t Ce = C > 13 ? 13 : C;
    ck_assert_uint_eq(r.na, 5 * Ce);
    for (size_t e = 0; e < 5; e++) {
        size_t cnt = 0;
        uint32_t last = 0;
        int first = 1;
        for (size_t i = 0; i < r.na; i++) {
            if (r.a[i].expert != e) continue;
            if (!first) ck_assert_uint_gt(r.a[i].token, last); /* distinct, token order */
            last = r.a[i].token, first = 0;
            cnt++;
        }
        ck_assert_uint_eq(cnt, Ce);
    }
    if (C == 4) {
        /* expert e's picks are its top-4 softmax scores */
        for (size_t i = 0; i < r.na; i++) {
            size_t e = r.a[i].expert, better = 0;
            for (size_t t = 0; t < 13; t++) {
                double s = 0, st = 0;
                for (int j = 0; j < 5; j++) s += exp(r.z[t * 5 + j]);
                st = exp(r.z[t * 5 + e]) / s;
                better += st > r.a[i].weight + 1e-7;
            }
            ck_assert_uint_lt(better, 4);
        }
    }
    rt_free(&r);
}
END_TEST

START_TEST(test_threshold_bounds)
{
    rt r;
    rt_init(&r, KD_ROUTER_THRESHOLD, 60, 8, 2, 0);
    r.rc.threshold = 0.6f;
    r.rc.k_max = 4;
    free(r.a);
    r.max = r.vt->max_assignments(&r.rc, 60, 8, 2, 0);
    ck_assert_uint_eq(r.max, 240);
    r.a = calloc(r.max, sizeof *r.a);
    kd_test_fill(r.z, 480, -3, 3, 4);
    for (int e = 0; e < 8; e++) r.z[e] = 0;       /* token 0: flat -> k_max */
    r.z[8] = 20;                                   /* token 1: peaked -> 1 */
    rt_route(&r, 0);
    size_t seen[5] = {0};
    for (size_t t = 0; t < 60; t++) {
        size_t c;
        double s;
        per_token(&r, t, &c, &s);
        ck_assert_uint_ge(c, 1);
        ck_assert_uint_le(c, 4);
        ck_assert_double_eq_tol(s, 1.0, 1e-6);
        seen[c]++;
        /* mass of the chosen experts reaches the threshold unless k_max stopped it */
        const float *z = r.z + t * 8;
        double tot = 0, mass = 0;
        for (int e = 0; e < 8; e++) tot += exp(z[e]);
        for (size_t i = 0; i < r.na; i++)
            if (r.a[i].token == t) mass += exp(z[r.a[i].expert]) / tot;
        if (c < 4) ck_assert(mass >= 0.6 - 1e-6);
        if (t == 0) ck_assert_uint_eq(c, 4);
        if (t == 1) ck_assert_uint_eq(c, 1);
    }
    ck_assert_uint_gt(seen[2] + seen[3], 0); /* adaptive: several counts occur */
    rt_free(&r);
}
END_TEST

START_TEST(test_hash_and_noisy)
{
    rt r, r2;
    rt_init(&r, KD_ROUTER_HASH, 30, 6, 3, 0);
    rt_init(&r2, KD_ROUTER_HASH, 30, 6, 3, 0);
    rt_route(&r, 0);
    rt_route(&r2, 1);
    ck_assert_uint_eq(r.na, 90);
    ck_assert_mem_eq(r.a, r2.a, 90 * sizeof *r.a); /* independent of logits and mode */
    for (size_t t = 0; t < 30; t++) {
        size_t c;
        double s;
        per_token(&r, t, &c, &s);
        ck_assert_uint_eq(c, 3);
        ck_assert_double_eq_tol(s, 1.0, 1e-6);
    }
    size_t hits[6] = {0};
    for (size_t i = 0; i < 90; i++) hits[r.a[i].expert]++;
    for (int e = 0; e < 6; e++) ck_assert_uint_gt(hits[e], 5);
    r2.rc.hash_seed = 5;
    rt_route(&r2, 0);
    ck_assert(memcmp(r.a, r2.a, 90 * sizeof *r.a) != 0);
    rt_free(&r);
    rt_free(&r2);

    /* noisy: inference == plain top-k; training perturbs, reproducibly */
    rt_init(&r, KD_ROUTER_NOISY_TOPK, 40, 8, 2, 0);
    rt_init(&r2, KD_ROUTER_TOPK, 40, 8, 2, 0);
    kd_test_fill(r.z, 320, -1, 1, 6);
    memcpy(r2.z, r.z, 320 * sizeof(float));
    rt_route(&r, 0);
    rt_route(&r2, 0);
    ck_assert_mem_eq(r.a, r2.a, 80 * sizeof *r.a);
    kd_rng_seed(&r.rng, 3, 3);
    rt_route(&r, 1);
    kd_router_assign *first = malloc(80 * sizeof *first);
    memcpy(first, r.a, 80 * sizeof *first);
    int differs = memcmp(r.a, r2.a, 80 * sizeof *r.a) != 0;
    ck_assert(differs);
    kd_rng_seed(&r.rng, 3, 3);
    rt_route(&r, 1);
    ck_assert_mem_eq(first, r.a, 80 * sizeof *first);
    free(first);
    rt_free(&r);
    rt_free(&r2);
}
END_TEST

/* Router backward vs central differences of sum_a g_a w_a(z), logits spread
 * apart so that the perturbation never changes the selection. */
START_TEST(test_router_backward_fd)
{
    static const kd_router_kind kinds[] = {KD_ROUTER_TOPK, KD_ROUTER_TOPK_RAW,
                                           KD_ROUTER_NOISY_TOPK, KD_ROUTER_EXPERT_CHOICE,
                                           KD_ROUTER_THRESHOLD};
    rt r;
    size_t n = 7, E = 6;
    rt_init(&r, kinds[_i], n, E, 2, 3);
    r.rc.k_max = 4;
    r.rc.threshold = 0.7f;
    r.rc.noise_std = 0.3f;
    free(r.a);
    r.max = r.vt->max_assignments(&r.rc, n, E, 2, 3);
    r.a = calloc(r.max, sizeof *r.a);
    /* distinct logit levels 0.4 apart, shuffled per token */
    for (size_t t = 0; t < n; t++)
        for (size_t e = 0; e < E; e++)
            r.z[t * E + e] = 0.4f * (float)((e * 5 + t * 3) % E) - 1.0f + 0.009f * (float)(t * e);
    kd_rng rng0 = r.rng;
    rt_route(&r, 1);
    size_t na = r.na;
    kd_router_assign *a0 = malloc(na * sizeof *a0);
    memcpy(a0, r.a, na * sizeof *a0);
    float *g = malloc(na * sizeof(float)), *dz = calloc(n * E, sizeof(float));
    kd_test_fill(g, na, -1, 1, 7);
    kd_router_batch b = {NULL, r.z, n, E, 2, 3, 1, &r.rng, r.saved};
    for (size_t i = 0; i < n * E; i++) dz[i] = 0.25f; /* backward accumulates */
    ck_assert_int_eq(r.vt->backward(&r.rc, &b, r.a, na, g, dz), KD_OK);
    for (size_t i = 0; i < n * E; i++) {
        double num[2];
        for (int s = 0; s < 2; s++) {
            float old = r.z[i];
            r.z[i] = old + (s ? -1e-3f : 1e-3f);
            r.rng = rng0;
            rt_route(&r, 1);
            ck_assert_uint_eq(r.na, na);
            double L = 0;
            for (size_t j = 0; j < na; j++) {
                ck_assert_uint_eq(r.a[j].expert, a0[j].expert); /* selection held */
                ck_assert_uint_eq(r.a[j].token, a0[j].token);
                L += (double)g[j] * r.a[j].weight;
            }
            num[s] = L;
            r.z[i] = old;
        }
        double fd = (num[0] - num[1]) / 2e-3;
        ck_assert_msg(fabs(fd - (dz[i] - 0.25)) < 2e-3, "%s logit %zu: fd %g analytic %g",
                      r.vt->name, i, fd, dz[i] - 0.25);
    }
    free(a0);
    free(g);
    free(dz);
    rt_free(&r);
}
END_TEST

Suite *kd_test_suite(void)
{
    Suite *s = suite_create("moe_router");
    TCase *tc = tcase_create("router");
    tcase_add_test(tc, test_topk_invariants_and_ties);
    tcase_add_test(tc, test_topk_raw_weights_are_probabilities);
    tcase_add_loop_test(tc, test_expert_choice_capacity, 0, 2);
    tcase_add_test(tc, test_threshold_bounds);
    tcase_add_test(tc, test_hash_and_noisy);
    tcase_add_loop_test(tc, test_router_backward_fd, 0, 5);
    suite_add_tcase(s, tc);
    return s;
}
