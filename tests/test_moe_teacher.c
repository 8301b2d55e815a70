/* test_moe_teacher.c - MoE teachers ("Every Expert Matters"): Knowledge
 * Augmentation against a direct replay of its sampled routings, the
 * student-aware router's objective against finite differences and a direct
 * all-expert computation, and dense students distilled from both with kd_fit. */
#include <stdio.h>
#include <string.h>

#include "kd_test.h"
#include "ref/moe_sar_ref.h"

#define D 6
#define E 5
#define F 7

static float *tensor(kd_model *m, const char *name, size_t want)
{
    size_t idx, n;
    float *p;
    ck_assert_int_eq(kd_model_tensor_find(m, name, &idx), KD_OK);
    ck_assert_int_eq(kd_model_tensor(m, idx, &p, &n, NULL, NULL, NULL), KD_OK);
    ck_assert_uint_eq(n, want);
    return p;
}

/* One token through expert e of a relu moe layer (gate weight G, w1, w2). */
static void expert_out(kd_model *m, size_t e, const float *x, double *o)
{
    const float *w1 = tensor(m, "0.experts.w1", E * F * D), *w2 = tensor(m, "0.experts.w2", E * D * F);
    double h[F];
    for (size_t j = 0; j < F; j++) {
        double s = 0;
        for (size_t i = 0; i < D; i++) s += (double)w1[(e * F + j) * D + i] * x[i];
        h[j] = s > 0 ? s : 0;
    }
    for (size_t i = 0; i < D; i++) {
        double s = 0;
        for (size_t j = 0; j < F; j++) s += (double)w2[(e * D + i) * F + j] * h[j];
        o[i] = s;
    }
}

static void gate_logits(kd_model *m, const float *x, double *z)
{
    const float *g = tensor(m, "0.gate.weight", E * D);
    for (size_t e = 0; e < E; e++) {
        double s = 0;
        for (size_t i = 0; i < D; i++) s += (double)g[e * D + i] * x[i];
        z[e] = s;
    }
}

/* KA by hand: the documented draw order, Gumbel top-k at temperature tau,
 * softmax(z) renormalised over the sample, mean over samples. */
static void ka_replay(kd_model *m, const float *x, size_t n, size_t k, size_t S, float tau,
                      uint64_t seed, double *y)
{
    kd_rng r;
    kd_rng_seed(&r, seed, 0);
    memset(y, 0, n * D * sizeof *y);
    for (size_t s = 0; s < S; s++)
        for (size_t t = 0; t < n; t++) {
            double z[E], sc[E], o[D];
            float zf[E];
            gate_logits(m, x + t * D, z);
            for (size_t e = 0; e < E; e++) {
                double u = ((double)kd_rng_u32(&r) + 0.5) / 4294967296.0;
                zf[e] = (float)z[e];
                sc[e] = (double)(zf[e] * (1.0f / tau) - (float)log(-log(u)));
            }
            int used[E] = {0};
            size_t pick[E];
            for (size_t i = 0; i < k; i++) {
                size_t b = E;
                for (size_t e = 0; e < E; e++)
                    if (!used[e] && (b == E || sc[e] > sc[b])) b = e;
                used[b] = 1;
                pick[i] = b;
            }
            double mx = z[pick[0]], sum = 0;
            for (size_t i = 0; i < k; i++) mx = z[pick[i]] > mx ? z[pick[i]] : mx;
            for (size_t i = 0; i < k; i++) sum += exp(z[pick[i]] - mx);
            for (size_t i = 0; i < k; i++) {
                expert_out(m, pick[i], x + t * D, o);
                double w = exp(z[pick[i]] - mx) / sum;
                for (size_t j = 0; j < D; j++) y[t * D + j] += w * o[j] / (double)S;
            }
        }
}

START_TEST(test_ka_equals_replayed_sampled_routings)
{
    kd_context *ctx = kd_test_ctx();
    kd_model *m;
    ck_assert_int_eq(kd_model_create_from_spec(ctx, "input 6; moe 5 2 7 relu", &m), KD_OK);
    enum { N = 9 };
    float x[N * D], got[N * D], again[N * D], plain[N * D];
    double want[N * D];
    kd_test_fill(x, N * D, -2, 2, 3);
    const float *py;
    ck_assert_int_eq(kd_model_forward(m, KD_MODE_INFER, x, N * D, N, &py), KD_OK);
    memcpy(plain, py, sizeof plain);

    kd_moe_teacher_config c;
    kd_moe_teacher_config_default(&c);
    ck_assert_int_eq(c.samples, 4);
    c.samples = 3;
    c.temperature = 0.7f;
    c.seed = 9;
    kd_teacher *t, *t2;
    ck_assert_int_eq(kd_teacher_create_moe(ctx, m, &c, &t), KD_OK);
    ck_assert_uint_eq(kd_teacher_input_dim(t), D);
    ck_assert_uint_eq(kd_teacher_classes(t), D);
    ck_assert_int_eq(kd_teacher_logits(t, x, N, got), KD_OK);
    ka_replay(m, x, N, 2, 3, 0.7f, 9, want);
    for (size_t i = 0; i < N * D; i++) ck_assert_double_eq_tol(got[i], want[i], 2e-5);
    /* the samples differ from top-k routing (else the test shows nothing) */
    double diff = 0;
    for (size_t i = 0; i < N * D; i++) diff += fabs(got[i] - plain[i]);
    ck_assert_msg(diff > 1e-2, "KA equals top-k routing (diff %g)", diff);
    /* the stream continues: the next call draws new routings */
    ck_assert_int_eq(kd_teacher_logits(t, x, N, again), KD_OK);
    ck_assert(memcmp(again, got, sizeof got) != 0);
    /* the same seed gives the same answers; another seed others */
    ck_assert_int_eq(kd_teacher_create_moe(ctx, m, &c, &t2), KD_OK);
    ck_assert_int_eq(kd_teacher_logits(t2, x, N, again), KD_OK);
    ck_assert(memcmp(again, got, sizeof got) == 0);
    kd_teacher_destroy(t2);
    c.seed = 10;
    ck_assert_int_eq(kd_teacher_create_moe(ctx, m, &c, &t2), KD_OK);
    ck_assert_int_eq(kd_teacher_logits(t2, x, N, again), KD_OK);
    ck_assert(memcmp(again, got, sizeof got) != 0);
    kd_teacher_destroy(t2);
    /* the model's own router is back afterwards */
    ck_assert_int_eq(kd_model_forward(m, KD_MODE_INFER, x, N * D, N, &py), KD_OK);
    ck_assert(memcmp(py, plain, sizeof plain) == 0);
    /* temperature -> 0: sampling becomes top-k routing */
    c.temperature = 1e-5f;
    ck_assert_int_eq(kd_teacher_create_moe(ctx, m, &c, &t2), KD_OK);
    ck_assert_int_eq(kd_teacher_logits(t2, x, N, again), KD_OK);
    kd_assert_close(again, plain, N * D, 1e-5, 1e-5);
    kd_teacher_destroy(t2);
    /* probability averaging: log of the mean softmax of the sampled outputs */
    c.temperature = 0.7f;
    c.samples = 1;
    c.seed = 9;
    ck_assert_int_eq(kd_teacher_create_moe(ctx, m, &c, &t2), KD_OK);
    float one[N * D];
    ck_assert_int_eq(kd_teacher_logits(t2, x, N, one), KD_OK);
    kd_teacher_destroy(t2);
    c.combine = KD_ENSEMBLE_PROBS;
    ck_assert_int_eq(kd_teacher_create_moe(ctx, m, &c, &t2), KD_OK);
    ck_assert_int_eq(kd_teacher_logits(t2, x, N, again), KD_OK);
    kd_test_assert_log_softmax(again, one, N, D, 1e-5);
    kd_teacher_destroy(t2);
    kd_teacher_destroy(t);
    kd_model_destroy(m);
    kd_context_destroy(ctx);
}
END_TEST

START_TEST(test_ka_large_sample_mean)
{
    /* k = 1, temperature 1: the expected output is sum_e p_e FFN_e(x) */
    kd_context *ctx = kd_test_ctx();
    kd_model *m;
    ck_assert_int_eq(kd_model_create_from_spec(ctx, "input 6; moe 5 1 7 relu", &m), KD_OK);
    float x[2 * D], got[2 * D];
    kd_test_fill(x, 2 * D, -2, 2, 4);
    kd_moe_teacher_config c;
    kd_moe_teacher_config_default(&c);
    c.samples = 20000;
    kd_teacher *t;
    ck_assert_int_eq(kd_teacher_create_moe(ctx, m, &c, &t), KD_OK);
    ck_assert_int_eq(kd_teacher_logits(t, x, 2, got), KD_OK);
    for (size_t r = 0; r < 2; r++) {
        double z[E], mx = -1e30, s = 0, o[D], want[D] = {0};
        gate_logits(m, x + r * D, z);
        for (size_t e = 0; e < E; e++) mx = z[e] > mx ? z[e] : mx;
        for (size_t e = 0; e < E; e++) s += exp(z[e] - mx);
        for (size_t e = 0; e < E; e++) {
            expert_out(m, e, x + r * D, o);
            for (size_t j = 0; j < D; j++) want[j] += exp(z[e] - mx) / s * o[j];
        }
        for (size_t j = 0; j < D; j++) ck_assert_double_eq_tol(got[r * D + j], want[j], 0.02);
    }
    kd_teacher_destroy(t);
    kd_model_destroy(m);
    kd_context_destroy(ctx);
}
END_TEST

START_TEST(test_teacher_hostile)
{
    kd_context *ctx = kd_test_ctx();
    kd_model *m, *plain, *wrong;
    ck_assert_int_eq(kd_model_create_from_spec(ctx, "input 6; moe 5 2 7 relu; linear 3", &m), KD_OK);
    ck_assert_int_eq(kd_model_create_from_spec(ctx, "input 6; linear 3", &plain), KD_OK);
    ck_assert_int_eq(kd_model_create_from_spec(ctx, "input 6; linear 4", &wrong), KD_OK);
    kd_moe_teacher_config c;
    kd_moe_teacher_config_default(&c);
    kd_teacher *t = (kd_teacher *)&c;
    ck_assert_int_eq(kd_teacher_create_moe(NULL, m, &c, &t), KD_E_INVALID);
    ck_assert_int_eq(kd_teacher_create_moe(ctx, NULL, &c, &t), KD_E_INVALID);
    ck_assert_ptr_null(t);
    ck_assert_int_eq(kd_teacher_create_moe(ctx, m, NULL, &t), KD_E_INVALID);
    ck_assert_int_eq(kd_teacher_create_moe(ctx, m, &c, NULL), KD_E_INVALID);
    ck_assert_int_eq(kd_teacher_create_moe(ctx, plain, &c, &t), KD_E_INVALID);
    kd_moe_teacher_config b = c;
    b.samples = 0;
    ck_assert_int_eq(kd_teacher_create_moe(ctx, m, &b, &t), KD_E_INVALID);
    b = c, b.temperature = 0;
    ck_assert_int_eq(kd_teacher_create_moe(ctx, m, &b, &t), KD_E_INVALID);
    b = c, b.temperature = NAN;
    ck_assert_int_eq(kd_teacher_create_moe(ctx, m, &b, &t), KD_E_INVALID);
    b = c, b.mode = (kd_moe_teacher_mode)7;
    ck_assert_int_eq(kd_teacher_create_moe(ctx, m, &b, &t), KD_E_INVALID);
    b = c, b.combine = (kd_ensemble_mode)5;
    ck_assert_int_eq(kd_teacher_create_moe(ctx, m, &b, &t), KD_E_INVALID);
    b = c, b.mode = KD_MOE_TEACHER_SAR, b.student = wrong;
    ck_assert_int_eq(kd_teacher_create_moe(ctx, m, &b, &t), KD_E_INVALID);
    b = c, b.mode = KD_MOE_TEACHER_SAR, b.router_lr = -1;
    ck_assert_int_eq(kd_teacher_create_moe(ctx, m, &b, &t), KD_E_INVALID);
    b = c, b.mode = KD_MOE_TEACHER_SAR, b.kd_temperature = INFINITY;
    ck_assert_int_eq(kd_teacher_create_moe(ctx, m, &b, &t), KD_E_INVALID);
    b = c, b.struct_size = 0;
    ck_assert_int_eq(kd_teacher_create_moe(ctx, m, &b, &t), KD_E_VERSION);
    ck_assert_ptr_null(t);
    /* batch 0 and NULL through the teacher */
    ck_assert_int_eq(kd_teacher_create_moe(ctx, m, &c, &t), KD_OK);
    float x[6] = {0}, y[3];
    ck_assert_int_eq(kd_teacher_logits(t, x, 0, y), KD_E_INVALID);
    ck_assert_int_eq(kd_teacher_logits(t, NULL, 1, y), KD_E_INVALID);
    x[0] = NAN;
    ck_assert_int_eq(kd_teacher_logits(t, x, 1, y), KD_E_NUMERIC);
    kd_teacher_destroy(t);
    kd_teacher_destroy(NULL);
    /* the SAR objective */
    float s[3] = {0};
    double loss;
    x[0] = 0;
    ck_assert_int_eq(kd_model_moe_sar_loss(NULL, x, 1, s, 1, &loss, NULL), KD_E_INVALID);
    ck_assert_int_eq(kd_model_moe_sar_loss(m, NULL, 1, s, 1, &loss, NULL), KD_E_INVALID);
    ck_assert_int_eq(kd_model_moe_sar_loss(m, x, 0, s, 1, &loss, NULL), KD_E_INVALID);
    ck_assert_int_eq(kd_model_moe_sar_loss(m, x, 1, NULL, 1, &loss, NULL), KD_E_INVALID);
    ck_assert_int_eq(kd_model_moe_sar_loss(m, x, 1, s, 0, &loss, NULL), KD_E_INVALID);
    ck_assert_int_eq(kd_model_moe_sar_loss(m, x, 1, s, NAN, &loss, NULL), KD_E_INVALID);
    ck_assert_int_eq(kd_model_moe_sar_loss(m, x, SIZE_MAX / 2, s, 1, &loss, NULL), KD_E_OVERFLOW);
    s[1] = NAN;
    ck_assert_int_eq(kd_model_moe_sar_loss(m, x, 1, s, 1, &loss, NULL), KD_E_NUMERIC);
    /* expert choice: capacity factor below 1 leaves too little workspace for
     * sampled token-choice routings; 1 and above works */
    kd_model *ec;
    ck_assert_int_eq(kd_model_create_from_spec(ctx, "input 6; moe 5 2 7 relu router expert_choice capacity 0.5", &ec), KD_OK);
    ck_assert_int_eq(kd_teacher_create_moe(ctx, ec, &c, &t), KD_E_UNSUPPORTED);
    kd_model_destroy(ec);
    ck_assert_int_eq(kd_model_create_from_spec(ctx, "input 6; moe 5 2 7 relu router expert_choice capacity 1", &ec), KD_OK);
    ck_assert_int_eq(kd_teacher_create_moe(ctx, ec, &c, &t), KD_OK);
    float xe[6 * 7], ye[6 * 7];
    kd_test_fill(xe, 6 * 7, -1, 1, 8);
    ck_assert_int_eq(kd_teacher_logits(t, xe, 7, ye), KD_OK);
    kd_teacher_destroy(t);
    kd_model_destroy(ec);
    kd_model_destroy(wrong);
    kd_model_destroy(plain);
    kd_model_destroy(m);
    kd_context_destroy(ctx);
}
END_TEST

/* SAR objective gradient w.r.t. the gate (and an expert weight) by central
 * differences, on a model routing to every expert. */
START_TEST(test_sar_gradient)
{
    kd_context *ctx = kd_test_ctx();
    kd_model *m;
    ck_assert_int_eq(kd_model_create_from_spec(ctx, "input 6; moe 5 5 7 gelu; linear 3", &m), KD_OK);
    enum { N = 4 };
    float x[N * D], s[N * 3];
    kd_test_fill(x, N * D, -2, 2, 11);
    kd_test_fill(s, N * 3, -2, 2, 12);
    const float T = 2.0f;
    for (int which = 0; which < 2; which++) {
        const char *name = which == 0 ? "0.gate.weight" : "0.experts.w1";
        size_t idx, n;
        float *p, *g;
        ck_assert_int_eq(kd_model_tensor_find(m, name, &idx), KD_OK);
        ck_assert_int_eq(kd_model_tensor(m, idx, &p, &n, NULL, NULL, NULL), KD_OK);
        ck_assert_int_eq(kd_model_zero_grad(m), KD_OK);
        double l0;
        ck_assert_int_eq(kd_model_moe_sar_loss(m, x, N, s, T, &l0, NULL), KD_OK);
        ck_assert(l0 > 0);
        ck_assert_int_eq(kd_model_tensor_grad(m, idx, &g, &n), KD_OK);
        float *gc = (float *)malloc(n * sizeof *gc); /* later calls accumulate into g */
        memcpy(gc, g, n * sizeof *gc);
        g = gc;
        double gmax = 0;
        for (size_t i = 0; i < n; i++) gmax = fabs(g[i]) > gmax ? fabs(g[i]) : gmax;
        ck_assert(gmax > 1e-4);
        for (size_t i = 0; i < n; i += (n > 30 ? 7 : 1)) {
            float keep = p[i], h = 1e-2f;
            double lp, lm;
            p[i] = keep + h;
            ck_assert_int_eq(kd_model_moe_sar_loss(m, x, N, s, T, &lp, NULL), KD_OK);
            p[i] = keep - h;
            ck_assert_int_eq(kd_model_moe_sar_loss(m, x, N, s, T, &lm, NULL), KD_OK);
            p[i] = keep;
            double fd = (lp - lm) / (2.0 * h);
            ck_assert_msg(fabs(fd - g[i]) <= 2e-3 + 2e-2 * fabs(fd), "%s[%zu]: %g vs fd %g", name,
                          i, (double)g[i], fd);
        }
        free(gc);
    }
    /* the objective is 0 against the model's own logits */
    const float *y;
    float own[N * 3];
    ck_assert_int_eq(kd_model_forward(m, KD_MODE_INFER, x, N * D, N, &y), KD_OK);
    memcpy(own, y, sizeof own);
    double l;
    float tl[N * 3];
    ck_assert_int_eq(kd_model_moe_sar_loss(m, x, N, own, T, &l, tl), KD_OK);
    ck_assert_double_eq_tol(l, 0.0, 1e-9);
    kd_assert_close(tl, own, N * 3, 1e-6, 1e-6);
    kd_model_destroy(m);
    kd_context_destroy(ctx);
}
END_TEST

/* The SAR objective, its teacher logits and every tensor's gradient against
 * PyTorch on fixed inputs (tests/ref/gen_moe_sar_ref.py). */
START_TEST(test_sar_against_torch)
{
    kd_context *ctx = kd_test_ctx();
    kd_model *m;
    ck_assert_int_eq(kd_model_create_from_spec(ctx, SAR_SPEC, &m), KD_OK);
    static const struct { const char *name; const float *v, *g; size_t n; } ts[] = {
        {"0.gate.weight", sar_wg, sar_dwg, sizeof sar_wg / sizeof sar_wg[0]},
        {"0.experts.w1", sar_w1, sar_dw1, sizeof sar_w1 / sizeof sar_w1[0]},
        {"0.experts.w3", sar_w3, sar_dw3, sizeof sar_w3 / sizeof sar_w3[0]},
        {"0.experts.w2", sar_w2, sar_dw2, sizeof sar_w2 / sizeof sar_w2[0]},
        {"1.weight", sar_lw, sar_dlw, sizeof sar_lw / sizeof sar_lw[0]},
        {"1.bias", sar_lb, sar_dlb, sizeof sar_lb / sizeof sar_lb[0]}};
    for (size_t i = 0; i < 6; i++) memcpy(tensor(m, ts[i].name, ts[i].n), ts[i].v, ts[i].n * sizeof(float));
    ck_assert_int_eq(kd_model_zero_grad(m), KD_OK);
    double loss;
    float t[SAR_N * 3];
    ck_assert_int_eq(kd_model_moe_sar_loss(m, sar_x, SAR_N, sar_s, SAR_T, &loss, t), KD_OK);
    ck_assert_double_eq_tol(loss, sar_loss, 1e-5 * (1 + sar_loss));
    kd_assert_close(t, sar_t, SAR_N * 3, 1e-5, 1e-4);
    for (size_t i = 0; i < 6; i++) {
        size_t idx, n;
        float *g;
        ck_assert_int_eq(kd_model_tensor_find(m, ts[i].name, &idx), KD_OK);
        ck_assert_int_eq(kd_model_tensor_grad(m, idx, &g, &n), KD_OK);
        ck_assert_uint_eq(n, ts[i].n);
        kd_assert_close(g, ts[i].g, n, 2e-6, 2e-4);
    }
    kd_model_destroy(m);
    kd_context_destroy(ctx);
}
END_TEST

/* SAR routes every token to every expert with softmax weights, whatever the
 * layer's k, router, capacity or balance settings; router steps pull the
 * teacher towards the student; the borrowed model is never written. */
START_TEST(test_sar_teacher)
{
    kd_context *ctx = kd_test_ctx();
    kd_model *m, *st;
    ck_assert_int_eq(kd_model_create_from_spec(
                         ctx, "input 6; moe 5 2 7 relu router noisy 0.5 capacity 0.5 balance 0.1",
                         &m),
                     KD_OK);
    ck_assert_int_eq(kd_model_create_from_spec(ctx, "input 6; linear 6", &st), KD_OK);
    enum { N = 8 };
    float x[N * D], y[N * D], y0[N * D];
    kd_test_fill(x, N * D, -2, 2, 21);
    kd_moe_teacher_config c;
    kd_moe_teacher_config_default(&c);
    c.mode = KD_MOE_TEACHER_SAR;
    kd_teacher *t;
    ck_assert_int_eq(kd_teacher_create_moe(ctx, m, &c, &t), KD_OK);
    /* a teacher that trains as it answers (SAR with a student) says so, and
     * so does an ensemble with it; SAR without a student, KA and plain model
     * teachers do not */
    ck_assert_int_eq(kd_teacher_stateful(t), 0);
    kd_moe_teacher_config ka, sc = c;
    kd_moe_teacher_config_default(&ka);
    sc.student = st;
    kd_teacher *tk, *tm, *ts, *ens, *two[2];
    ck_assert_int_eq(kd_teacher_create_moe(ctx, m, &sc, &ts), KD_OK);
    ck_assert_int_eq(kd_teacher_stateful(ts), 1);
    ck_assert_int_eq(kd_teacher_create_moe(ctx, m, &ka, &tk), KD_OK);
    ck_assert_int_eq(kd_teacher_from_model(ctx, m, &tm), KD_OK);
    ck_assert_int_eq(kd_teacher_stateful(tk), 0);
    ck_assert_int_eq(kd_teacher_stateful(tm), 0);
    ck_assert_int_eq(kd_teacher_stateful(NULL), 0);
    two[0] = tm, two[1] = ts;
    ck_assert_int_eq(kd_teacher_ensemble(ctx, two, 2, NULL, KD_ENSEMBLE_LOGITS, &ens), KD_OK);
    ck_assert_int_eq(kd_teacher_stateful(ens), 1);
    kd_teacher_destroy(ens);
    kd_teacher_destroy(ts);
    two[1] = tk;
    ck_assert_int_eq(kd_teacher_ensemble(ctx, two, 2, NULL, KD_ENSEMBLE_LOGITS, &ens), KD_OK);
    ck_assert_int_eq(kd_teacher_stateful(ens), 0);
    kd_teacher_destroy(ens);
    kd_teacher_destroy(tk);
    kd_teacher_destroy(tm);
    ck_assert_int_eq(kd_teacher_logits(t, x, N, y), KD_OK);
    for (size_t r = 0; r < N; r++) {
        double z[E], mx = -1e30, s = 0, o[D], want[D] = {0};
        gate_logits(m, x + r * D, z);
        for (size_t e = 0; e < E; e++) mx = z[e] > mx ? z[e] : mx;
        for (size_t e = 0; e < E; e++) s += exp(z[e] - mx);
        for (size_t e = 0; e < E; e++) {
            expert_out(m, e, x + r * D, o);
            for (size_t j = 0; j < D; j++) want[j] += exp(z[e] - mx) / s * o[j];
        }
        for (size_t j = 0; j < D; j++) ck_assert_double_eq_tol(y[r * D + j], want[j], 1e-5);
    }
    memcpy(y0, y, sizeof y);
    kd_teacher_destroy(t);

    size_t np;
    float *p;
    ck_assert_int_eq(kd_model_blocks(m, &p, NULL, &np), KD_OK);
    float *copy = (float *)malloc(np * sizeof *copy);
    memcpy(copy, p, np * sizeof *copy);
    c.student = st;
    c.router_lr = 0.05f;
    ck_assert_int_eq(kd_teacher_create_moe(ctx, m, &c, &t), KD_OK);
    const float *sy;
    ck_assert_int_eq(kd_model_forward(st, KD_MODE_INFER, x, N * D, N, &sy), KD_OK);
    float s_logits[N * D];
    memcpy(s_logits, sy, sizeof s_logits);
    double first = 0, last = 0;
    for (int it = 0; it < 40; it++) {
        ck_assert_int_eq(kd_teacher_logits(t, x, N, y), KD_OK);
        if (it == 0) kd_assert_close(y, y0, N * D, 1e-5, 1e-5); /* answered before the step */
        double kl = 0;
        for (size_t r = 0; r < N; r++) {
            double pt[D], ps[D], a = -1e30, b = -1e30, sa = 0, sb = 0;
            for (size_t j = 0; j < D; j++) {
                a = y[r * D + j] > a ? y[r * D + j] : a;
                b = s_logits[r * D + j] > b ? s_logits[r * D + j] : b;
            }
            for (size_t j = 0; j < D; j++) sa += (pt[j] = exp(y[r * D + j] - a));
            for (size_t j = 0; j < D; j++) sb += (ps[j] = exp(s_logits[r * D + j] - b));
            for (size_t j = 0; j < D; j++) kl += pt[j] / sa * log((pt[j] / sa) / (ps[j] / sb));
        }
        if (it == 0) first = kl;
        last = kl;
    }
    if (getenv("KD_TEST_VERBOSE")) fprintf(stderr, "SAR KL %g -> %g\n", first, last);
    ck_assert_msg(last < 0.9 * first, "SAR objective %g -> %g", first, last);
    ck_assert(memcmp(p, copy, np * sizeof *copy) == 0);
    free(copy);
    kd_teacher_destroy(t);
    kd_model_destroy(st);
    kd_model_destroy(m);
    kd_context_destroy(ctx);
}
END_TEST

/* The SAR router trains only in training calls: kd_evaluate (directly or
 * through an ensemble) and kd_teacher_logits_mode(KD_MODE_INFER) leave it as
 * it is, so a teacher evaluated many times answers its next training call
 * exactly as an untouched twin; kd_teacher_logits and kd_fit still step it. */
START_TEST(test_sar_router_steps_only_in_training)
{
    kd_context *ctx = kd_test_ctx();
    kd_model *m, *st;
    ck_assert_int_eq(kd_model_create_from_spec(ctx, "input 6; moe 5 2 7 relu", &m), KD_OK);
    ck_assert_int_eq(kd_model_create_from_spec(ctx, "input 6; linear 6", &st), KD_OK);
    enum { N = 16 };
    float x[N * D], ya[N * D], yb[N * D], y0[N * D], y1[N * D], y2[N * D], yf[N * D];
    int32_t labels[N];
    kd_test_fill(x, N * D, -2, 2, 33);
    for (size_t r = 0; r < N; r++) labels[r] = (int32_t)(r % D);
    kd_moe_teacher_config c;
    kd_moe_teacher_config_default(&c);
    c.mode = KD_MOE_TEACHER_SAR;
    kd_teacher *frozen, *ta, *tb, *tm, *ens, *two[2];
    ck_assert_int_eq(kd_teacher_create_moe(ctx, m, &c, &frozen), KD_OK); /* no student */
    c.student = st;
    c.router_lr = 0.05f;
    ck_assert_int_eq(kd_teacher_create_moe(ctx, m, &c, &ta), KD_OK);
    ck_assert_int_eq(kd_teacher_create_moe(ctx, m, &c, &tb), KD_OK);
    ck_assert_int_eq(kd_teacher_stateful(ta), 1);

    /* an inference call answers with the untrained router's all-expert mix */
    ck_assert_int_eq(kd_teacher_logits(frozen, x, N, y0), KD_OK);
    ck_assert_int_eq(kd_teacher_logits_mode(ta, x, N, ya, KD_MODE_INFER), KD_OK);
    ck_assert(memcmp(ya, y0, sizeof ya) == 0);

    /* kd_evaluate, 4 batches of 4, directly and through an ensemble */
    kd_dataset ds = {sizeof ds, x, N, D, labels};
    kd_eval_report rep = {sizeof rep};
    ck_assert_int_eq(kd_evaluate(ctx, st, ta, &ds, 4, &rep), KD_OK);
    ck_assert_int_eq(kd_teacher_from_model(ctx, m, &tm), KD_OK);
    two[0] = tm, two[1] = ta;
    ck_assert_int_eq(kd_teacher_ensemble(ctx, two, 2, NULL, KD_ENSEMBLE_LOGITS, &ens), KD_OK);
    ck_assert_int_eq(kd_evaluate(ctx, st, ens, &ds, 4, &rep), KD_OK);
    ck_assert_int_eq(kd_teacher_logits_mode(ens, x, N, yf, KD_MODE_INFER), KD_OK);
    ck_assert_int_eq(kd_teacher_logits_mode(ta, x, N, ya, KD_MODE_INFER), KD_OK);
    ck_assert(memcmp(ya, y0, sizeof ya) == 0);
    /* the next training call of the evaluated teacher equals its twin's
     * (each answers before its step): no step was taken before */
    ck_assert_int_eq(kd_teacher_logits(ta, x, N, ya), KD_OK);
    ck_assert_int_eq(kd_teacher_logits(tb, x, N, yb), KD_OK);
    ck_assert(memcmp(ya, yb, sizeof ya) == 0);
    kd_assert_close(ya, y0, N * D, 1e-5, 1e-5);

    /* training calls step: the inference answer moves after each one, and
     * stays put between them */
    ck_assert_int_eq(kd_teacher_logits_mode(ta, x, N, y1, KD_MODE_INFER), KD_OK);
    ck_assert(memcmp(y1, y0, sizeof y1) != 0);
    ck_assert_int_eq(kd_teacher_logits_mode(ta, x, N, y2, KD_MODE_INFER), KD_OK);
    ck_assert(memcmp(y1, y2, sizeof y1) == 0);
    ck_assert_int_eq(kd_teacher_logits_mode(ta, x, N, ya, KD_MODE_TRAIN), KD_OK);
    ck_assert(memcmp(ya, y1, sizeof ya) == 0); /* answered before this step */
    ck_assert_int_eq(kd_teacher_logits_mode(ta, x, N, y2, KD_MODE_INFER), KD_OK);
    ck_assert(memcmp(y1, y2, sizeof y1) != 0);

    /* kd_fit steps it once per batch: after one epoch of 4 batches, tb
     * (one step so far) has moved */
    kd_optimizer_config oc;
    kd_optimizer_config_default(&oc, KD_OPTIM_SGD);
    oc.lr = 0.0f; /* the student stays put: only the router moves */
    kd_optimizer *opt;
    ck_assert_int_eq(kd_optimizer_create(st, &oc, &opt), KD_OK);
    kd_loss_hinton_config hc;
    kd_loss_hinton_config_default(&hc);
    hc.alpha = 1.0f;
    kd_loss *kl;
    ck_assert_int_eq(kd_loss_create(ctx, kd_loss_hinton(), &hc, &kl), KD_OK);
    kd_student *s;
    ck_assert_int_eq(kd_student_create(ctx, st, opt, NULL, &s), KD_OK);
    ck_assert_int_eq(kd_student_add_loss(s, kl, 1.0f, KD_TERM_NO_LABELS), KD_OK);
    kd_fit_config fc;
    kd_fit_config_default(&fc);
    fc.epochs = 1;
    fc.batch = 4;
    ck_assert_int_eq(kd_teacher_logits_mode(tb, x, N, y1, KD_MODE_INFER), KD_OK);
    ck_assert_int_eq(kd_fit(s, tb, &ds, &fc), KD_OK);
    ck_assert_int_eq(kd_teacher_logits_mode(tb, x, N, y2, KD_MODE_INFER), KD_OK);
    ck_assert(memcmp(y1, y2, sizeof y1) != 0);

    /* hostile */
    ck_assert_int_eq(kd_teacher_logits_mode(NULL, x, N, ya, KD_MODE_INFER), KD_E_INVALID);
    ck_assert_int_eq(kd_teacher_logits_mode(ta, x, N, ya, (kd_mode)7), KD_E_INVALID);
    ck_assert_ptr_nonnull(strstr(kd_context_last_error(ctx), "mode"));
    ck_assert_int_eq(kd_teacher_logits_mode(ta, x, 0, ya, KD_MODE_INFER), KD_E_INVALID);
    ck_assert_int_eq(kd_teacher_logits_mode(ta, NULL, N, ya, KD_MODE_TRAIN), KD_E_INVALID);

    kd_student_destroy(s);
    kd_loss_destroy(kl);
    kd_optimizer_destroy(opt);
    kd_teacher_destroy(ens);
    kd_teacher_destroy(tm);
    kd_teacher_destroy(tb);
    kd_teacher_destroy(ta);
    kd_teacher_destroy(frozen);
    kd_model_destroy(st);
    kd_model_destroy(m);
    kd_context_destroy(ctx);
}
END_TEST

/* ---- distilling an MoE teacher into a dense student with kd_fit ------------- */

#define TN 768
#define TV 384
#define TD 8
#define TC 4
static float tx[TN * TD], vx[TV * TD];
static int32_t ty[TN], vy[TV];

static void task(float *x, int32_t *y, size_t n, uint64_t seed)
{
    static float A[TC * TD];
    kd_test_fill(A, TC * TD, -1, 1, 77);
    kd_test_fill(x, n * TD, -1, 1, seed);
    for (size_t r = 0; r < n; r++) {
        const float *v = x + r * TD;
        int best = 0;
        double bs = -1e30;
        for (int c = 0; c < TC; c++) {
            double s = 0;
            for (int j = 0; j < TD; j++) s += A[c * TD + j] * v[j];
            s += 1.5 * v[c] * v[c + 4]; /* a product term: nonlinear classes */
            if (s > bs) bs = s, best = c;
        }
        y[r] = best;
    }
}

typedef struct {
    double first, last;
    size_t epochs;
} loss_track;

static int track(void *user, const kd_progress *p)
{
    loss_track *lt = (loss_track *)user;
    if (p->epoch_done) {
        if (p->epoch == 0) lt->first = p->loss;
        lt->last = p->loss;
        lt->epochs = p->epoch + 1;
    }
    return 0;
}

static kd_model *train_teacher(kd_context *ctx)
{
    kd_model *m;
    ck_assert_int_eq(kd_model_create_from_spec(ctx, "input 8; linear 32; relu; moe 4 2 32 relu; linear 4", &m), KD_OK);
    kd_optimizer_config oc;
    kd_optimizer_config_default(&oc, KD_OPTIM_ADAMW);
    oc.lr = 1e-2f;
    kd_optimizer *opt;
    ck_assert_int_eq(kd_optimizer_create(m, &oc, &opt), KD_OK);
    kd_loss_ce_config cc;
    kd_loss_ce_config_default(&cc);
    kd_loss *ce;
    ck_assert_int_eq(kd_loss_create(ctx, kd_loss_cross_entropy(), &cc, &ce), KD_OK);
    kd_student *s;
    ck_assert_int_eq(kd_student_create(ctx, m, opt, NULL, &s), KD_OK);
    ck_assert_int_eq(kd_student_add_loss(s, ce, 1.0f, 0), KD_OK);
    kd_dataset ds = {sizeof ds, tx, TN, TD, ty};
    kd_fit_config fc;
    kd_fit_config_default(&fc);
    fc.epochs = 40;
    fc.batch = 32;
    ck_assert_int_eq(kd_fit(s, NULL, &ds, &fc), KD_OK);
    kd_student_destroy(s);
    kd_loss_destroy(ce);
    kd_optimizer_destroy(opt);
    return m;
}

START_TEST(test_dense_student_from_moe_teacher)
{
    task(tx, ty, TN, 1);
    task(vx, vy, TV, 2);
    kd_context *ctx = kd_test_ctx();
    kd_model *tm = train_teacher(ctx);
    kd_dataset val = {sizeof val, vx, TV, TD, vy};
    kd_eval_report tr = {sizeof tr};
    ck_assert_int_eq(kd_evaluate(ctx, tm, NULL, &val, 128, &tr), KD_OK);
    ck_assert_msg(tr.accuracy > 0.85, "teacher accuracy %.3f", tr.accuracy);
    for (int mode = 0; mode < 2; mode++) {
        kd_test_rig rig; /* AdamW 1e-2, Hinton KD alone at T = 2 */
        kd_test_rig_make(ctx, &rig, "input 8; linear 32; relu; linear 4", 1e-2f);
        kd_model *sm = rig.model;
        kd_student *s = rig.student;
        kd_moe_teacher_config c;
        kd_moe_teacher_config_default(&c);
        if (mode == 1) {
            c.mode = KD_MOE_TEACHER_SAR;
            c.student = sm;
            c.router_lr = 1e-3f;
        }
        kd_teacher *t;
        ck_assert_int_eq(kd_teacher_create_moe(ctx, tm, &c, &t), KD_OK);
        kd_dataset unl = {sizeof unl, tx, TN, TD, NULL};
        kd_fit_config fc;
        kd_fit_config_default(&fc);
        fc.epochs = 25;
        fc.batch = 32;
        loss_track lt = {0, 0, 0};
        fc.progress = track;
        fc.progress_user = &lt;
        ck_assert_int_eq(kd_fit(s, t, &unl, &fc), KD_OK);
        ck_assert_uint_eq(lt.epochs, 25);
        ck_assert_msg(lt.last < 0.5 * lt.first, "mode %d: KD loss %g -> %g", mode, lt.first, lt.last);
        kd_eval_report r = {sizeof r};
        ck_assert_int_eq(kd_evaluate(ctx, sm, NULL, &val, 128, &r), KD_OK);
        /* bar: the student never sees a label; 0.80 on held-out rows */
        if (getenv("KD_TEST_VERBOSE"))
            fprintf(stderr, "mode %d: KD loss %.4f -> %.4f, student %.3f, teacher %.3f\n", mode,
                    lt.first, lt.last, r.accuracy, tr.accuracy);
        ck_assert_msg(r.accuracy > 0.80, "mode %d: student accuracy %.3f (teacher %.3f)", mode,
                      r.accuracy, tr.accuracy);
        kd_teacher_destroy(t);
        kd_test_rig_free(&rig);
    }
    kd_model_destroy(tm);
    kd_context_destroy(ctx);
}
END_TEST

typedef struct {
    int sar;
} alloc_case;

static kd_status alloc_body(kd_context *ctx, void *user)
{
    const alloc_case *ac = (const alloc_case *)user;
    kd_model *m = NULL, *s = NULL;
    kd_teacher *t = NULL;
    kd_status st = kd_model_create_from_spec(ctx, "input 6; moe 5 2 7 swiglu; linear 3", &m);
    if (st == KD_OK) st = kd_model_create_from_spec(ctx, "input 6; linear 3", &s);
    kd_moe_teacher_config c;
    kd_moe_teacher_config_default(&c);
    if (ac->sar) c.mode = KD_MOE_TEACHER_SAR, c.student = s;
    if (st == KD_OK) st = kd_teacher_create_moe(ctx, m, &c, &t);
    float x[12] = {0.5f, -1, 2, 0.25f, 1, -0.5f, 1, 1, 1, 1, 1, 1}, y[6];
    if (st == KD_OK) st = kd_teacher_logits(t, x, 2, y);
    kd_teacher_destroy(t);
    kd_model_destroy(s);
    kd_model_destroy(m);
    return st;
}

START_TEST(test_alloc_failures)
{
    alloc_case a = {0}, b = {1};
    ck_assert(kd_test_alloc_failures(alloc_body, &a) > 3);
    ck_assert(kd_test_alloc_failures(alloc_body, &b) > 3);
}
END_TEST

Suite *kd_test_suite(void)
{
    Suite *s = suite_create("moe_teacher");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_ka_equals_replayed_sampled_routings);
    tcase_add_test(tc, test_ka_large_sample_mean);
    tcase_add_test(tc, test_teacher_hostile);
    tcase_add_test(tc, test_sar_gradient);
    tcase_add_test(tc, test_sar_against_torch);
    tcase_add_test(tc, test_sar_teacher);
    tcase_add_test(tc, test_sar_router_steps_only_in_training);
    tcase_add_test(tc, test_dense_student_from_moe_teacher);
    tcase_add_test(tc, test_alloc_failures);
    suite_add_tcase(s, tc);
    return s;
}
