/* test_loss_vocab.c - fused vocabulary-scale KD kernels and sparse teachers
 * (lib/distill/kd_loss_vocab.c) against a straightforward double reference. */
#include <stdlib.h>
#include <string.h>

#include "kd_test.h"
#include "../lib/distill/kd_vocab_internal.h"

/* Reference divergence of one row in double: value and dValue/dz
 * (grad_j = G_j - q_j sum G, G_j = q_j dF/dq_j). */
static double ref_row(int kind, double w, const float *s, const float *t, size_t n, double inv_t,
                      double *grad)
{
    double ms = -INFINITY, mt = -INFINITY, ss = 0, st = 0;
    for (size_t j = 0; j < n; j++) {
        if (!isinf(s[j])) ms = fmax(ms, s[j] * inv_t);
        if (!isinf(t[j])) mt = fmax(mt, t[j] * inv_t);
    }
    for (size_t j = 0; j < n; j++) {
        if (!isinf(s[j])) ss += exp(s[j] * inv_t - ms);
        if (!isinf(t[j])) st += exp(t[j] * inv_t - mt);
    }
    double ls = ms + log(ss), lt = mt + log(st), v = 0, gs = 0, mm = -INFINITY, sm = 0;
    for (size_t j = 0; j < n; j++)
        if (!isinf(s[j]) && !isinf(t[j])) mm = fmax(mm, ((1 - w) * s[j] + w * t[j]) * inv_t);
    for (size_t j = 0; j < n; j++)
        if (!isinf(s[j]) && !isinf(t[j])) sm += exp(((1 - w) * s[j] + w * t[j]) * inv_t - mm);
    const double lmix = mm + log(sm);
    double *G = calloc(n, sizeof *G);
    for (size_t j = 0; j < n; j++) {
        double lq = isinf(s[j]) ? -INFINITY : s[j] * inv_t - ls;
        double lp = isinf(t[j]) ? -INFINITY : t[j] * inv_t - lt;
        double q = exp(lq), p = exp(lp), lm;
        switch (kind) {
        case KD__DIV_FKL:
            if (p > 0) v += p * (lp - lq);
            G[j] = -p;
            break;
        case KD__DIV_RKL:
            if (q > 0) v += q * (lq - lp);
            G[j] = q > 0 ? q * (lq - lp + 1) : 0;
            break;
        case KD__DIV_JSD:
            lm = log(w * p + (1 - w) * q);
            if (p > 0) v += w * p * (lp - lm);
            if (q > 0) v += (1 - w) * q * (lq - lm);
            G[j] = q > 0 ? (1 - w) * q * (lq - lm) : 0;
            break;
        case KD__DIV_TAIDL: { /* lm: log-sum-exp of the mixed logits, below */
            double lpt = (isinf(s[j]) || isinf(t[j])) ? -INFINITY
                                                      : ((1 - w) * s[j] + w * t[j]) * inv_t - lmix;
            double pt = exp(lpt);
            if (pt > 0) v += pt * (lpt - lq);
            G[j] = -pt;
            break;
        }
        default: {
            double pt = (1 - w) * q + w * p;
            if (pt > 0) v += pt * (log(pt) - lq);
            G[j] = -pt;
        }
        }
        gs += G[j];
    }
    if (grad)
        for (size_t j = 0; j < n; j++) grad[j] = G[j] - exp(isinf(s[j]) ? -INFINITY : s[j] * inv_t - ls) * gs;
    free(G);
    return v;
}

/* The fused row against the double reference, logits uniform in
 * [-range, range] (teacher 4/3 wider); without masks also with nomask set
 * (the clamped exp kd_loss_compute uses for batches without -inf). */
static void check_dense_r(int kind, double w, size_t n, double T, int mask, uint64_t seed,
                          double range)
{
    float *s = malloc(n * sizeof *s), *t = malloc(n * sizeof *t), *g = malloc(n * sizeof *g);
    double *rg = malloc(n * sizeof *rg);
    kd_test_fill(s, n, -range, range, seed);
    kd_test_fill(t, n, -range * 4 / 3, range * 4 / 3, seed + 1);
    if (mask)
        for (size_t j = 0; j < n; j += 7) {
            t[j] = -INFINITY;
            if (kind == KD__DIV_JSD || kind == KD__DIV_RKL) s[j + 3 < n ? j + 3 : j] = -INFINITY;
        }
    if (mask && kind == KD__DIV_RKL)
        for (size_t j = 0; j < n; j++)
            if (isinf(t[j])) s[j] = -INFINITY;
    double rv = ref_row(kind, w, s, t, n, 1.0 / T, rg), gmax = 0;
    for (size_t j = 0; j < n; j++) gmax = fmax(gmax, fabs(rg[j]));
    for (int nm = 0; nm <= !mask; nm++) {
        kd__div d = {kind, 1.0 / T, w, nm};
        if (kind != KD__DIV_JSD) ck_assert_uint_eq(kd__vocab_mask_bad(&d, s, t, n), 0);
        double v = -1, coef = 0.37;
        memset(g, 0, n * sizeof *g);
        kd__vocab_dense_row(&d, s, t, n, coef, g, &v);
        ck_assert_msg(fabs(v - rv) <= 1e-5 * fabs(rv) + 1e-7,
                      "kind %d n %zu T %g nm %d: value %.9g vs %.9g", kind, n, T, nm, v, rv);
        for (size_t j = 0; j < n; j++) {
            /* 1e-5 relative to the element or to the row's largest gradient */
            ck_assert_msg(fabs(g[j] - coef * rg[j]) <= 1e-5 * coef * (fabs(rg[j]) + gmax) + 1e-12,
                          "kind %d n %zu T %g nm %d: grad[%zu] %.9g vs %.9g", kind, n, T, nm, j,
                          g[j], coef * rg[j]);
            if (isinf(s[j])) ck_assert(g[j] == 0);
        }
    }
    free(s), free(t), free(g), free(rg);
}

static void check_dense(int kind, double w, size_t n, double T, int mask, uint64_t seed)
{
    check_dense_r(kind, w, n, T, mask, seed, 6);
}

START_TEST(fused_equals_reference)
{
    const size_t sizes[] = {1, 17, 300, 1029, 32000, 32003};
    const double temps[] = {1, 4, 0.5};
    /* both code paths on any machine: the AVX-512 one (where the CPU has
     * it) and the one of the other clones */
    kd__vocab_generic = _i;
    for (int kind = 0; kind <= KD__DIV_TAIDL; kind++)
        for (size_t a = 0; a < 6; a++)
            for (size_t b = 0; b < 3; b++) {
                double w = kind == KD__DIV_JSD ? 0.3 : kind >= KD__DIV_TAID ? 0.6 : 0;
                check_dense(kind, w, sizes[a], temps[b], 0, 11 + a * 3 + b);
                if (sizes[a] >= 17) check_dense(kind, w, sizes[a], temps[b], 1, 91 + a);
            }
    /* spreads where most probabilities are below exp(-87) (z down to -320):
     * the clamped exp of unmasked rows must not disturb values or gradients */
    for (int kind = 0; kind <= KD__DIV_TAIDL; kind++)
        check_dense_r(kind, kind == KD__DIV_JSD ? 0.3 : kind >= KD__DIV_TAID ? 0.6 : 0, 4099, 0.5,
                      0, 300 + (uint64_t)kind, 60);
    /* TAID endpoints t = 0 (target = student) and t = 1 */
    check_dense(KD__DIV_TAID, 0.0, 5000, 2, 0, 7);
    check_dense(KD__DIV_TAID, 1.0, 5000, 2, 0, 8);
    check_dense(KD__DIV_TAIDL, 0.0, 5000, 2, 1, 9);
    check_dense(KD__DIV_TAIDL, 1.0, 5000, 2, 1, 10);
    /* a row the mixture masks entirely is reported, not NaN */
    float s1[20], t1[20];
    for (int j = 0; j < 20; j++) s1[j] = j % 2 ? -INFINITY : 1.0f, t1[j] = j % 2 ? 1.0f : -INFINITY;
    kd__div dl = {KD__DIV_TAIDL, 1.0, 0.5, 0};
    ck_assert_uint_eq(kd__vocab_mask_bad(&dl, s1, t1, 20), 1);
    s1[3] = 0.5f;
    ck_assert_uint_eq(kd__vocab_mask_bad(&dl, s1, t1, 20), 0);
}
END_TEST

/* The log-sum-exp pass finds each block's maximum on the float bit
 * patterns: rows entirely negative, around +-0, masked but for one entry,
 * and with partial vectors must all give the double reference. */
START_TEST(lse_on_bit_patterns)
{
    kd__vocab_generic = _i; /* both code paths, as fused_equals_reference */
    const size_t sizes[] = {1, 5, 16, 17, 1023, 1024, 1025, 3000};
    float *x = malloc(3000 * sizeof *x);
    for (size_t a = 0; a < 8; a++)
        for (int shape = 0; shape < 6; shape++) {
            size_t n = sizes[a];
            kd_test_fill(x, n, -6, 6, 40 + a);
            for (size_t j = 0; j < n; j++) {
                if (shape == 0) x[j] -= 100.0f;                   /* all negative */
                if (shape == 1) x[j] = j % 2 ? -0.0f : -1e-3f * (float)j; /* -0 is the largest */
                if (shape == 2) x[j] = j == n / 2 ? -7.0f : -INFINITY; /* one entry left */
                if (shape == 3) x[j] += 50.0f;                    /* all positive */
                if (shape == 4) x[j] *= 40.0f;            /* a spread of 480: a wrong max overflows */
                if (shape == 5) x[j] = 40.0f * x[j] - 1000.0f; /* the same, all negative */
            }
            double m = -INFINITY, s = 0;
            for (size_t j = 0; j < n; j++) m = fmax(m, x[j]);
            for (size_t j = 0; j < n; j++) s += exp(x[j] - m);
            double want = m + log(s), got = kd__vocab_lse(x, n);
            ck_assert_msg(fabs(got - want) <= 1e-6 * fmax(1.0, fabs(want)), "n %zu shape %d: %.9g vs %.9g",
                          n, shape, got, want);
        }
    for (size_t j = 0; j < 40; j++) x[j] = -INFINITY;
    ck_assert(kd__vocab_lse(x, 40) == -INFINITY);
    free(x);
}
END_TEST

/* kd_loss_compute over a batch, dense or sparse; returns value, fills g. */
static kd_status loss_run(const kd_loss_vtable *vt, const void *cfg, size_t rows, size_t c,
                          const float *s, const float *t, const kd_sparse_logits *sp, float *g,
                          double *v)
{
    kd_context *ctx = kd_test_ctx();
    kd_loss *loss;
    ck_assert_int_eq(kd_loss_create(ctx, vt, cfg, &loss), KD_OK);
    kd_loss_batch b;
    kd_loss_batch_default(&b);
    b.rows = rows, b.classes = c, b.student_logits = s, b.teacher_logits = t,
    b.teacher_sparse = sp;
    kd_loss_grad gr;
    kd_loss_grad_default(&gr);
    gr.student_logits = g;
    kd_status st = kd_loss_compute(loss, &b, v, g ? &gr : NULL);
    kd_loss_destroy(loss);
    kd_context_destroy(ctx);
    return st;
}

/* log_softmax(t) at T = 1 as LOGPROB values over all ids. */
static void full_sparse(const float *t, size_t rows, size_t c, int32_t *ids, float *vals)
{
    for (size_t i = 0; i < rows; i++) {
        double m = -INFINITY, z = 0;
        for (size_t j = 0; j < c; j++) m = fmax(m, t[i * c + j]);
        for (size_t j = 0; j < c; j++) z += exp(t[i * c + j] - m);
        for (size_t j = 0; j < c; j++) {
            ids[i * c + j] = (int32_t)((j * 7919) % c); /* any order */
            vals[i * c + j] = (float)(t[i * c + ids[i * c + j]] - m - log(z));
        }
    }
}

START_TEST(sparse_equals_dense_at_k_v)
{
    const size_t rows = 3, c = 2000; /* 7919 is prime, so j -> 7919 j mod c permutes */
    float *s = malloc(rows * c * 4), *t = malloc(rows * c * 4), *vals = malloc(rows * c * 4);
    float *g1 = calloc(rows * c, 4), *g2 = calloc(rows * c, 4);
    int32_t *ids = malloc(rows * c * 4);
    kd_test_fill(s, rows * c, -5, 5, 3);
    kd_test_fill(t, rows * c, -5, 5, 4);
    full_sparse(t, rows, c, ids, vals);
    kd_sparse_logits sp;
    kd_sparse_logits_default(&sp);
    sp.k = c, sp.ids = ids, sp.values = vals;
    kd_loss_hinton_config hc;
    kd_loss_hinton_config_default(&hc);
    hc.alpha = 1, hc.temperature = 2;
    kd_loss_divergence_config dc;
    kd_loss_divergence_config_default(&dc);
    dc.temperature = 1.5f;
    kd_loss_taid_config tc;
    kd_loss_taid_config_default(&tc);
    tc.temperature = 3;
    tc.mix = KD_TAID_MIX_PROBS; /* the mixture a sparse teacher can serve */
    const kd_loss_vtable *vts[] = {kd_loss_hinton(), kd_loss_reverse_kl(), kd_loss_jsd(), kd_loss_taid()};
    const void *cfgs[] = {&hc, &dc, &dc, &tc};
    for (int k = 0; k < 4; k++) {
        double v1 = -1, v2 = -1;
        memset(g1, 0, rows * c * 4);
        memset(g2, 0, rows * c * 4);
        ck_assert_int_eq(loss_run(vts[k], cfgs[k], rows, c, s, t, NULL, g1, &v1), KD_OK);
        ck_assert_int_eq(loss_run(vts[k], cfgs[k], rows, c, s, NULL, &sp, g2, &v2), KD_OK);
        ck_assert_msg(fabs(v1 - v2) <= 1e-5 * fabs(v1), "loss %d: dense %.9g sparse %.9g", k, v1, v2);
        double gmax = 0;
        for (size_t j = 0; j < rows * c; j++) gmax = fmax(gmax, fabs(g1[j]));
        kd_assert_close(g2, g1, rows * c, 2e-5 * gmax, 1e-4);
        /* the same with PROB values and a zero tail bucket */
        float *pv = malloc(rows * c * 4), tail[3] = {0, 0, 0};
        for (size_t j = 0; j < rows * c; j++) pv[j] = expf(vals[j]);
        kd_sparse_logits sp2 = sp;
        sp2.values = pv, sp2.value_kind = KD_SPARSE_PROB, sp2.tail_mass = tail;
        memset(g2, 0, rows * c * 4);
        ck_assert_int_eq(loss_run(vts[k], cfgs[k], rows, c, s, NULL, &sp2, g2, &v2), KD_OK);
        ck_assert_msg(fabs(v1 - v2) <= 1e-4 * fabs(v1), "loss %d prob: %.9g vs %.9g", k, v1, v2);
        kd_assert_close(g2, g1, rows * c, 1e-4 * gmax, 1e-3);
        free(pv);
    }
    free(s), free(t), free(vals), free(g1), free(g2), free(ids);
}
END_TEST

/* Top-k with a tail bucket: gradient matches central finite differences of
 * the value, and the gradient sums to zero (softmax invariance). */
START_TEST(topk_tail_finite_differences)
{
    const size_t c = 300, k = 20;
    float s[300], t[300], g[300] = {0}, vals[20], tail[1];
    int32_t ids[20];
    kd_test_fill(s, c, -2, 2, 5);
    kd_test_fill(t, c, -3, 3, 6);
    double m = -INFINITY, z = 0, top = 0;
    for (size_t j = 0; j < c; j++) m = fmax(m, t[j]);
    for (size_t j = 0; j < c; j++) z += exp(t[j] - m);
    for (size_t i = 0; i < k; i++) { /* ids: the k largest teacher logits */
        size_t best = 0;
        for (size_t j = 0; j < c; j++) {
            int taken = 0;
            for (size_t q = 0; q < i; q++) taken |= ids[q] == (int32_t)j;
            if (!taken && (best == 0 || t[j] > t[best - 1])) best = j + 1;
        }
        ids[i] = (int32_t)(best - 1);
        vals[i] = (float)(t[best - 1] - m - log(z));
        top += exp(vals[i]);
    }
    tail[0] = (float)(1 - top);
    kd_sparse_logits sp;
    kd_sparse_logits_default(&sp);
    sp.k = k, sp.ids = ids, sp.values = vals, sp.tail_mass = tail;
    kd_loss_divergence_config dc;
    kd_loss_divergence_config_default(&dc);
    dc.temperature = 2;
    kd_loss_hinton_config hc;
    kd_loss_hinton_config_default(&hc);
    hc.alpha = 1, hc.temperature = 2;
    const kd_loss_vtable *vts[] = {kd_loss_hinton(), kd_loss_reverse_kl(), kd_loss_jsd()};
    const void *cfgs[] = {&hc, &dc, &dc};
    for (int L = 0; L < 3; L++) {
        double v;
        memset(g, 0, sizeof g);
        ck_assert_int_eq(loss_run(vts[L], cfgs[L], 1, c, s, NULL, &sp, g, &v), KD_OK);
        ck_assert(v > 0);
        double sum = 0;
        for (size_t j = 0; j < c; j++) sum += g[j];
        ck_assert_msg(fabs(sum) < 1e-5, "loss %d: gradient sum %g", L, sum);
        const size_t probe[] = {(size_t)ids[0], (size_t)ids[5], 1, 150, 299};
        for (size_t q = 0; q < 5; q++) {
            size_t j = probe[q];
            float keep = s[j];
            double vp, vm, h = 1e-2;
            s[j] = keep + (float)h;
            loss_run(vts[L], cfgs[L], 1, c, s, NULL, &sp, NULL, &vp);
            s[j] = keep - (float)h;
            loss_run(vts[L], cfgs[L], 1, c, s, NULL, &sp, NULL, &vm);
            s[j] = keep;
            double fd = (vp - vm) / (2 * h);
            ck_assert_msg(fabs(fd - g[j]) <= 2e-3 * fabs(g[j]) + 2e-5, "loss %d j %zu: fd %.7g grad %.7g",
                          L, j, fd, g[j]);
        }
    }
}
END_TEST

/* Random-sampling KD: averaged over many draws, the sampled gradient is the
 * dense forward-KL gradient (with and without a proposal). */
START_TEST(sampled_estimator_unbiased)
{
    const size_t c = 64, draws = 8, trials = 20000;
    float s[64], t[64];
    double p[64], r[64], mean[2][64] = {{0}}, sq[2][64] = {{0}}, vmean[2] = {0};
    kd_test_fill(s, c, -2, 2, 8);
    kd_test_fill(t, c, -3, 3, 9);
    double m = -INFINITY, z = 0;
    for (size_t j = 0; j < c; j++) m = fmax(m, t[j]);
    for (size_t j = 0; j < c; j++) z += exp(t[j] - m);
    for (size_t j = 0; j < c; j++) {
        p[j] = exp(t[j] - m) / z;
        r[j] = 0.5 * p[j] + 0.5 / (double)c; /* a flatter proposal */
    }
    kd_loss_hinton_config hc;
    kd_loss_hinton_config_default(&hc);
    hc.alpha = 1, hc.temperature = 1;
    float dense_g[64] = {0};
    double dense_v;
    ck_assert_int_eq(loss_run(kd_loss_hinton(), &hc, 1, c, s, t, NULL, dense_g, &dense_v), KD_OK);
    kd_rng rng;
    kd_rng_seed(&rng, 1234, 0);
    for (int prop = 0; prop < 2; prop++) {
        const double *dist = prop ? r : p;
        for (size_t trial = 0; trial < trials; trial++) {
            int32_t ids[8];
            float vals[8], cnt[8], pr[8];
            size_t k = 0;
            for (size_t d = 0; d < draws; d++) {
                double u = kd_rng_uniform(&rng), acc = 0;
                size_t j = 0;
                for (; j + 1 < c; j++) {
                    acc += dist[j];
                    if (u < acc) break;
                }
                size_t q = 0;
                while (q < k && ids[q] != (int32_t)j) q++;
                if (q == k) {
                    ids[k] = (int32_t)j, vals[k] = (float)log(p[j]), cnt[k] = 0, pr[k] = (float)r[j];
                    k++;
                }
                cnt[q] += 1;
            }
            kd_sparse_logits sp;
            kd_sparse_logits_default(&sp);
            sp.mode = KD_SPARSE_SAMPLED, sp.k = k, sp.ids = ids, sp.values = vals, sp.counts = cnt;
            if (prop) sp.proposal = pr;
            float g[64] = {0};
            double v;
            ck_assert_int_eq(loss_run(kd_loss_hinton(), &hc, 1, c, s, NULL, &sp, g, &v), KD_OK);
            for (size_t j = 0; j < c; j++) {
                mean[prop][j] += g[j] / (double)trials;
                sq[prop][j] += (double)g[j] * g[j] / (double)trials;
            }
            vmean[prop] += v / (double)trials;
        }
        for (size_t j = 0; j < c; j++) {
            /* empirical standard error of the mean over trials */
            double var = sq[prop][j] - mean[prop][j] * mean[prop][j];
            double se = sqrt(fmax(var, 0) / (double)trials) + 1e-7;
            ck_assert_msg(fabs(mean[prop][j] - dense_g[j]) <= 5 * se,
                          "proposal %d class %zu: mean %.6g dense %.6g (se %.2g)", prop, j,
                          mean[prop][j], dense_g[j], se);
        }
        ck_assert_msg(fabs(vmean[prop] - dense_v) <= 0.02 * dense_v + 0.01, "value %g vs %g",
                      vmean[prop], dense_v);
    }
}
END_TEST

START_TEST(sparse_hostile)
{
    const size_t c = 300;
    float s[300], g[300] = {0}, vals[2] = {-0.5f, -1.5f}, tail[1] = {0.2f};
    int32_t ids[2] = {3, 7};
    kd_test_fill(s, c, -2, 2, 10);
    kd_sparse_logits sp;
    kd_sparse_logits_default(&sp);
    sp.k = 2, sp.ids = ids, sp.values = vals;
    kd_loss_divergence_config dc;
    kd_loss_divergence_config_default(&dc);
    double v = 7;
    /* reverse KL with no tail bucket: the student's mass outside the ids is infinite */
    ck_assert_int_eq(loss_run(kd_loss_reverse_kl(), &dc, 1, c, s, NULL, &sp, g, &v), KD_E_NUMERIC);
    for (size_t j = 0; j < c; j++) ck_assert(g[j] == 0);
    ck_assert(v == 7);
    sp.tail_mass = tail;
    ck_assert_int_eq(loss_run(kd_loss_reverse_kl(), &dc, 1, c, s, NULL, &sp, g, &v), KD_OK);
    /* sampled needs T = 1 */
    kd_loss_hinton_config hc;
    kd_loss_hinton_config_default(&hc);
    hc.alpha = 1;
    sp.mode = KD_SPARSE_SAMPLED;
    memset(g, 0, sizeof g);
    ck_assert_int_eq(loss_run(kd_loss_hinton(), &hc, 1, c, s, NULL, &sp, g, &v), KD_E_UNSUPPORTED);
    ck_assert_int_eq(loss_run(kd_loss_jsd(), &dc, 1, c, s, NULL, &sp, g, &v), KD_E_UNSUPPORTED);
    float zero[2] = {0, 0};
    hc.temperature = 1;
    sp.counts = zero;
    ck_assert_int_eq(loss_run(kd_loss_hinton(), &hc, 1, c, s, NULL, &sp, g, &v), KD_E_INVALID);
    sp.counts = NULL, sp.mode = KD_SPARSE_TOPK;
    /* ids out of range, empty rows, losses without sparse support */
    ids[1] = 300;
    ck_assert_int_eq(loss_run(kd_loss_hinton(), &hc, 1, c, s, NULL, &sp, g, &v), KD_E_INVALID);
    ids[0] = ids[1] = -1;
    ck_assert_int_eq(loss_run(kd_loss_hinton(), &hc, 1, c, s, NULL, &sp, g, &v), KD_E_INVALID);
    ids[0] = 3, ids[1] = 7;
    ck_assert_int_eq(loss_run(kd_loss_skew_kl(), &dc, 1, c, s, NULL, &sp, g, &v), KD_E_UNSUPPORTED);
    /* TAID's default mixes logits, which a sparse teacher does not have */
    kd_loss_taid_config tc;
    kd_loss_taid_config_default(&tc);
    ck_assert_int_eq(tc.mix, KD_TAID_MIX_LOGITS);
    ck_assert_int_eq(loss_run(kd_loss_taid(), &tc, 1, c, s, NULL, &sp, g, &v), KD_E_UNSUPPORTED);
    tc.mix = KD_TAID_MIX_PROBS;
    ck_assert_int_eq(loss_run(kd_loss_taid(), &tc, 1, c, s, NULL, &sp, g, &v), KD_OK);
    memset(g, 0, c * sizeof *g);
    /* a student that masks an id the teacher gives mass */
    s[7] = -INFINITY;
    ck_assert_int_eq(loss_run(kd_loss_hinton(), &hc, 1, c, s, NULL, &sp, g, &v), KD_E_NUMERIC);
    for (size_t j = 0; j < c; j++) ck_assert(g[j] == 0);
}
END_TEST

Suite *kd_test_suite_vocab_maps(TCase *tc);

Suite *kd_test_suite(void)
{
    Suite *s = suite_create("loss_vocab");
    TCase *tc = tcase_create("vocab");
    tcase_set_timeout(tc, 60);
    tcase_add_loop_test(tc, fused_equals_reference, 0, 2);
    tcase_add_loop_test(tc, lse_on_bit_patterns, 0, 2);
    tcase_add_test(tc, sparse_equals_dense_at_k_v);
    tcase_add_test(tc, topk_tail_finite_differences);
    tcase_add_test(tc, sampled_estimator_unbiased);
    tcase_add_test(tc, sparse_hostile);
    kd_test_suite_vocab_maps(tc);
    suite_add_tcase(s, tc);
    return s;
}

/* ---- vocabulary maps ---------------------------------------------------------- */

START_TEST(vocab_maps)
{
    kd_context *ctx = kd_test_ctx();
    kd_vocab_map *m = (kd_vocab_map *)1;
    /* teacher 6 classes (last 2 padding), student 5 (last 1 padding), 4 real */
    ck_assert_int_eq(kd_vocab_map_identity(ctx, 6, 5, 6, &m), KD_E_SHAPE);
    ck_assert(m == NULL);
    ck_assert_int_eq(kd_vocab_map_identity(ctx, 6, 5, 0, &m), KD_E_INVALID);
    ck_assert_int_eq(kd_vocab_map_identity(NULL, 6, 5, 4, &m), KD_E_INVALID);
    ck_assert_int_eq(kd_vocab_map_identity(ctx, 6, 5, 4, &m), KD_OK);
    ck_assert_uint_eq(kd_vocab_map_teacher_classes(m), 6);
    ck_assert_uint_eq(kd_vocab_map_student_classes(m), 5);
    float t[12] = {1, 2, 3, 4, 9, 9, -INFINITY, 0, 1, 2, 9, 9}, o[10];
    ck_assert_int_eq(kd_vocab_map_logits(m, t, 2, o), KD_OK);
    const float want[10] = {1, 2, 3, 4, -INFINITY, -INFINITY, 0, 1, 2, -INFINITY};
    for (int i = 0; i < 10; i++) ck_assert(o[i] == want[i]);
    t[3] = NAN;
    ck_assert_int_eq(kd_vocab_map_logits(m, t, 2, o), KD_E_NUMERIC);
    int32_t ids[4] = {0, 5, -1, 3};
    ck_assert_int_eq(kd_vocab_map_ids(m, ids, 4), KD_OK);
    ck_assert(ids[0] == 0 && ids[1] == -1 && ids[2] == -1 && ids[3] == 3);
    ids[0] = 6;
    ck_assert_int_eq(kd_vocab_map_ids(m, ids, 4), KD_E_INVALID);
    ck_assert(ids[0] == 6 && ids[3] == 3); /* nothing written */
    kd_vocab_map_destroy(m);
    /* user map merging two teacher classes: probabilities add */
    int32_t map[3] = {1, 1, 0}, bad[3] = {0, 2, -1}, none[3] = {-1, -1, -1};
    ck_assert_int_eq(kd_vocab_map_from_ids(ctx, 3, 2, bad, &m), KD_E_INVALID);
    ck_assert_int_eq(kd_vocab_map_from_ids(ctx, 3, 2, none, &m), KD_E_INVALID);
    ck_assert_int_eq(kd_vocab_map_from_ids(ctx, 3, 2, NULL, &m), KD_E_INVALID);
    ck_assert_int_eq(kd_vocab_map_from_ids(ctx, 3, 2, map, &m), KD_OK);
    float t3[3] = {0.5f, -1.0f, 2.0f}, o2[2];
    ck_assert_int_eq(kd_vocab_map_logits(m, t3, 1, o2), KD_OK);
    ck_assert(o2[0] == 2.0f);
    ck_assert(fabs(o2[1] - log(exp(0.5) + exp(-1.0))) < 1e-6);
    kd_vocab_map_destroy(m);
    kd_vocab_map_destroy(NULL);
    /* a loss refuses mismatched sizes without a map */
    kd_loss *loss;
    ck_assert_int_eq(kd_loss_create(ctx, kd_loss_hinton(), NULL, &loss), KD_OK);
    float s5[5] = {0}, t6[6] = {0};
    int32_t y = 0;
    kd_loss_batch b;
    kd_loss_batch_default(&b);
    b.rows = 1, b.classes = 5, b.student_logits = s5, b.teacher_logits = t6, b.teacher_classes = 6;
    b.labels = &y;
    double v;
    ck_assert_int_eq(kd_loss_compute(loss, &b, &v, NULL), KD_E_SHAPE);
    ck_assert_ptr_nonnull(strstr(kd_context_last_error(ctx), "map the vocabularies"));
    kd_loss_destroy(loss);
    kd_context_destroy(ctx);
}
END_TEST

static kd_status alloc_body(kd_context *ctx, void *user)
{
    (void)user;
    kd_vocab_map *m;
    kd_status st = kd_vocab_map_identity(ctx, 10, 8, 8, &m);
    kd_vocab_map_destroy(m);
    return st;
}

START_TEST(vocab_map_alloc_failures)
{
    ck_assert(kd_test_alloc_failures(alloc_body, NULL) >= 2);
}
END_TEST

Suite *kd_test_suite_vocab_maps(TCase *tc);
Suite *kd_test_suite_vocab_maps(TCase *tc)
{
    tcase_add_test(tc, vocab_maps);
    tcase_add_test(tc, vocab_map_alloc_failures);
    return NULL;
}
