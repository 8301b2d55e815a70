/* test_retrieval_index.c - sparse index build and exact top-k: MaxScore, BMW
 * and the exhaustive oracle agree bit for bit; scores match the documented
 * formula; edge cases; allocation failures. */
#include <math.h>
#include <stdio.h>
#include <stdint.h>
#include <string.h>

#include "kd_internal.h"
#include "kd_test.h"
#include "retrieval_gen.h"

static kd_sparse_search_config scfg(kd_sparse_algo algo, float ws, float wb)
{
    kd_sparse_search_config c;
    kd_sparse_search_config_default(&c);
    c.algo = algo;
    c.weight_sparse = ws;
    c.weight_bm25 = wb;
    return c;
}

/* Corpus statistics for the reference BM25. */
typedef struct ref_stats {
    double avg;
    uint32_t df[128];
} ref_stats;

static void ref_stats_make(const gen_corpus *c, ref_stats *rs)
{
    double tot = 0.0;
    memset(rs->df, 0, sizeof rs->df);
    for (size_t i = 0; i < c->n; i++) {
        tot += c->docs[i].ntok;
        uint8_t has[128] = {0};
        for (uint32_t j = 0; j < c->docs[i].ntok; j++) has[c->docs[i].toks[j]] = 1;
        for (uint32_t t = 0; t < c->tvocab; t++) rs->df[t] += has[t];
    }
    rs->avg = tot > 0 ? tot / (double)c->n : 1.0;
}

/* Reference score from the raw corpus in double (no quantisation). */
static double ref_score(const gen_corpus *c, const ref_stats *rs, const gen_doc *d, const gen_query *q,
                        float ws, float wb, double k1, double b, int *matched)
{
    double s = 0.0;
    *matched = 0;
    if (ws > 0.0f)
        for (uint32_t j = 0; j < d->nnz; j++) {
            int first = 1; /* count each distinct doc term once */
            for (uint32_t i = 0; i < j; i++) first &= d->terms[i] != d->terms[j];
            if (!first) continue;
            double qw = 0.0, dw = 0.0;
            for (uint32_t i = 0; i < q->nnz; i++)
                if (q->terms[i] == d->terms[j]) qw += q->w[i];
            for (uint32_t i = 0; i < d->nnz; i++)
                if (d->terms[i] == d->terms[j]) dw += d->w[i];
            if (qw > 0.0 && dw > 0.0) {
                *matched = 1;
                s += ws * qw * dw;
            }
        }
    if (wb > 0.0f) {
        for (uint32_t t = 0; t < c->tvocab; t++) {
            uint32_t qtf = 0, tf = 0;
            for (uint32_t j = 0; j < q->ntok; j++) qtf += q->toks[j] == t;
            if (!qtf) continue;
            for (uint32_t j = 0; j < d->ntok; j++) tf += d->toks[j] == t;
            if (!tf) continue;
            double df = rs->df[t];
            double idf = log(1.0 + ((double)c->n - df + 0.5) / (df + 0.5));
            *matched = 1;
            s += wb * qtf * idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * d->ntok / rs->avg));
        }
    }
    return s;
}

static const gen_doc *find_doc(const gen_corpus *c, uint32_t id)
{
    for (size_t i = 0; i < c->n; i++)
        if (c->docs[i].id == id) return &c->docs[i];
    return NULL;
}

static void check_corpus(gen_kind kind, size_t ndocs, int nqueries, uint64_t seed)
{
    kd_context *ctx = kd_test_ctx();
    gen_corpus c;
    gen_corpus_make(&c, kind, ndocs, seed);
    kd_sparse_index *idx = gen_build(ctx, &c, NULL);
    kd_sparse_index_stats st;
    memset(&st, 0, sizeof st);
    st.struct_size = sizeof st;
    ck_assert_int_eq(kd_sparse_index_stats_get(idx, &st), KD_OK);
    ck_assert_uint_eq(st.n_docs, ndocs);
    kd_rng r;
    kd_rng_seed(&r, seed, 3);
    static ref_stats rs;
    ref_stats_make(&c, &rs);
    const float wmodes[4][2] = {{1, 0}, {0, 1}, {1, 1}, {0.7f, 2.5f}};
    const size_t ks[] = {0, 1, 3, 10, 50, 100000};
    static uint32_t ids[3][4000], sids[4000];
    static float sc[3][4000], ssc[4000];
    size_t cnt[3];
    /* one searcher across all queries, algorithms and k: its reused (and
     * grown) scratch must give exactly the one-shot results */
    kd_sparse_searcher *srch = NULL;
    ck_assert_int_eq(kd_sparse_searcher_create(ctx, idx, &srch), KD_OK);
    for (int qi = 0; qi < nqueries; qi++) {
        gen_query q;
        gen_query_make(&q, &c, &r);
        int wm = (int)kd_rng_below(&r, 4);
        size_t k = ks[kd_rng_below(&r, 6)];
        size_t kcap = k < ndocs ? k : ndocs;
        ck_assert(kcap <= 4000);
        for (int a = 0; a < 3; a++) {
            kd_sparse_search_config cf = scfg((kd_sparse_algo)a, wmodes[wm][0], wmodes[wm][1]);
            kd_status s = kd_sparse_index_search(ctx, idx, &cf, q.terms, q.w, q.nnz, q.toks, q.ntok,
                                                 k, ids[a], sc[a], &cnt[a]);
            ck_assert_msg(s == KD_OK, "search: %s", kd_context_last_error(ctx));
            size_t sn = 0;
            s = kd_sparse_searcher_search(srch, &cf, q.terms, q.w, q.nnz, q.toks, q.ntok, k, sids, ssc, &sn);
            ck_assert_msg(s == KD_OK, "searcher: %s", kd_context_last_error(ctx));
            ck_assert_uint_eq(sn, cnt[a]);
            ck_assert(memcmp(sids, ids[a], sn * 4) == 0 && memcmp(ssc, sc[a], sn * 4) == 0);
        }
        for (int a = 0; a < 2; a++) {
            ck_assert_msg(cnt[a] == cnt[2], "kind %d query %d algo %d: %zu results vs %zu", kind, qi, a,
                          cnt[a], cnt[2]);
            for (size_t i = 0; i < cnt[2]; i++) {
                ck_assert_msg(ids[a][i] == ids[2][i] && memcmp(&sc[a][i], &sc[2][i], 4) == 0,
                              "kind %d query %d algo %d rank %zu: doc %u %.9g vs doc %u %.9g", kind, qi,
                              a, i, ids[a][i], (double)sc[a][i], ids[2][i], (double)sc[2][i]);
            }
        }
        /* order: score desc, ties by smaller id */
        for (size_t i = 1; i < cnt[2]; i++)
            ck_assert(sc[2][i - 1] > sc[2][i] || (sc[2][i - 1] == sc[2][i] && ids[2][i - 1] < ids[2][i]));
        /* count = min(k, matching docs); scores close to the unquantised formula */
        size_t matching = 0;
        for (size_t i = 0; i < c.n; i++) {
            int m;
            (void)ref_score(&c, &rs, &c.docs[i], &q, wmodes[wm][0], wmodes[wm][1], 0.9, 0.4, &m);
            matching += (size_t)m;
        }
        ck_assert_uint_eq(cnt[2], kcap < matching ? kcap : matching);
        double qsum = 0.0;
        for (uint32_t j = 0; j < q.nnz; j++) qsum += q.w[j];
        for (size_t i = 0; i < cnt[2]; i++) {
            int m;
            const gen_doc *d = find_doc(&c, ids[2][i]);
            ck_assert_ptr_nonnull(d);
            double ref = ref_score(&c, &rs, d, &q, wmodes[wm][0], wmodes[wm][1], 0.9, 0.4, &m);
            ck_assert(m);
            double tol = 1e-4 * fabs(ref) + wmodes[wm][0] * qsum * st.quant_scale * 1.01 + 1e-6;
            ck_assert_msg(fabs(ref - sc[2][i]) <= tol, "score %.9g vs reference %.9g", (double)sc[2][i], ref);
        }
    }
    kd_sparse_searcher_destroy(srch);
    kd_sparse_index_destroy(idx);
    gen_corpus_free(&c);
    kd_context_destroy(ctx);
}

START_TEST(agree_uniform) { check_corpus(GEN_UNIFORM, 700, 250, 1); }
END_TEST
START_TEST(agree_zipf_ties) { check_corpus(GEN_ZIPF_TIES, 900, 250, 2); }
END_TEST
START_TEST(agree_all_equal) { check_corpus(GEN_ALL_EQUAL, 500, 200, 3); }
END_TEST
START_TEST(agree_long_lists) { check_corpus(GEN_LONG_LISTS, 3000, 120, 4); }
END_TEST
START_TEST(agree_tiny) { check_corpus(GEN_UNIFORM, 3, 100, 5); }
END_TEST

/* Queries whose terms are frequent in most documents and carry high
 * impacts in every block: block-max bounds cannot skip, and BMW hands the
 * search over to MaxScore's window accumulation (SPX_BMW_CHECK in
 * kd_sparse_search.c) with its heap and its cursors where they stand. The
 * first third of the corpus is sparse in those terms (BMW prunes there and
 * leaves its cursors at different documents), the rest dense; weights are
 * drawn from three values in half of the runs, so ties cross the handover.
 * Every algorithm, one-shot and through a searcher, must return the
 * exhaustive top-k bit for bit. */
static void check_dense_heads(uint64_t seed, int ties)
{
    kd_context *ctx = kd_test_ctx();
    kd_rng r;
    kd_rng_seed(&r, seed, 7);
    gen_corpus c;
    c.n = 6000;
    c.vocab = 300;
    c.tvocab = 80;
    c.docs = (gen_doc *)calloc(c.n, sizeof *c.docs);
    ck_assert_ptr_nonnull(c.docs);
    for (size_t i = 0; i < c.n; i++) {
        gen_doc *d = &c.docs[i];
        d->id = (uint32_t)(2 * i + 1);
        uint32_t pct = i < c.n / 3 ? 5 : 90; /* head terms: rare, then nearly everywhere */
        for (uint32_t t = 0; t < 12; t++)
            if (kd_rng_below(&r, 100) < pct) {
                d->terms[d->nnz] = t;
                d->w[d->nnz++] = ties ? 0.5f * (float)(1 + kd_rng_below(&r, 3)) : 0.05f + 3.0f * kd_rng_uniform(&r);
            }
        for (uint32_t j = 0; j < 5; j++) {
            d->terms[d->nnz] = 12 + kd_rng_below(&r, c.vocab - 12);
            d->w[d->nnz++] = 0.05f + kd_rng_uniform(&r);
        }
        for (uint32_t t = 0; t < 6; t++)
            if (kd_rng_below(&r, 100) < pct) d->toks[d->ntok++] = t;
        for (uint32_t j = 0; j < 8; j++) d->toks[d->ntok++] = 6 + kd_rng_below(&r, c.tvocab - 6);
    }
    kd_sparse_index *idx = gen_build(ctx, &c, NULL);
    kd_sparse_searcher *srch = NULL;
    ck_assert_int_eq(kd_sparse_searcher_create(ctx, idx, &srch), KD_OK);
    const float wmodes[3][2] = {{1, 0}, {1, 1}, {0.3f, 2.0f}};
    const size_t ks[] = {1, 10, 37, 300};
    static uint32_t ids[3][300], sids[300];
    static float sc[3][300], ssc[300];
    size_t cnt[3];
    for (int qi = 0; qi < 24; qi++) {
        uint32_t qt[16], tk[8];
        float qw[16];
        size_t nq = 0, nt = 0;
        for (uint32_t t = 0; t < 12; t++) {
            qt[nq] = t;
            qw[nq++] = ties ? 1.0f : 0.05f + 3.0f * kd_rng_uniform(&r);
        }
        qt[nq] = 12 + kd_rng_below(&r, c.vocab - 12); /* one rare term */
        qw[nq++] = 2.0f;
        for (uint32_t t = 0; t < 6; t++) tk[nt++] = t;
        int wm = qi % 3;
        size_t k = ks[(qi / 3) % 4];
        for (int a = 0; a < 3; a++) {
            kd_sparse_search_config cf = scfg((kd_sparse_algo)a, wmodes[wm][0], wmodes[wm][1]);
            kd_status s = kd_sparse_index_search(ctx, idx, &cf, qt, qw, nq, tk, nt, k, ids[a], sc[a], &cnt[a]);
            ck_assert_msg(s == KD_OK, "search: %s", kd_context_last_error(ctx));
            size_t sn = 0;
            s = kd_sparse_searcher_search(srch, &cf, qt, qw, nq, tk, nt, k, sids, ssc, &sn);
            ck_assert_msg(s == KD_OK, "searcher: %s", kd_context_last_error(ctx));
            ck_assert_uint_eq(sn, cnt[a]);
            ck_assert(memcmp(sids, ids[a], sn * 4) == 0 && memcmp(ssc, sc[a], sn * 4) == 0);
        }
        ck_assert_uint_eq(cnt[2], k); /* far more than k documents match */
        for (int a = 0; a < 2; a++) {
            ck_assert_uint_eq(cnt[a], cnt[2]);
            for (size_t i = 0; i < cnt[2]; i++)
                ck_assert_msg(ids[a][i] == ids[2][i] && memcmp(&sc[a][i], &sc[2][i], 4) == 0,
                              "ties %d query %d algo %d rank %zu: doc %u %.9g vs doc %u %.9g", ties, qi, a, i,
                              ids[a][i], (double)sc[a][i], ids[2][i], (double)sc[2][i]);
        }
        for (size_t i = 1; i < cnt[2]; i++)
            ck_assert(sc[2][i - 1] > sc[2][i] || (sc[2][i - 1] == sc[2][i] && ids[2][i - 1] < ids[2][i]));
    }
    kd_sparse_searcher_destroy(srch);
    kd_sparse_index_destroy(idx);
    gen_corpus_free(&c);
    kd_context_destroy(ctx);
}

START_TEST(dense_head_terms) { check_dense_heads(21, 0); }
END_TEST
START_TEST(dense_head_terms_ties) { check_dense_heads(22, 1); }
END_TEST

/* One searcher across BM25 parameters and query widths: its per-document
 * BM25 table (refilled when k1 or b change) and its window scratch (rows
 * left uncleared by queries of at most 64 tokens, then read in full by a
 * query of more) must give exactly the one-shot results (which compute
 * every normalisation directly), and MaxScore and BMW the exhaustive ones. */
START_TEST(searcher_params_and_wide_queries)
{
    kd_context *ctx = kd_test_ctx();
    gen_corpus c;
    gen_corpus_make(&c, GEN_UNIFORM, 900, 21);
    kd_sparse_index *idx = gen_build(ctx, &c, NULL);
    kd_sparse_searcher *srch = NULL;
    ck_assert_int_eq(kd_sparse_searcher_create(ctx, idx, &srch), KD_OK);
    kd_rng r;
    kd_rng_seed(&r, 21, 5);
    const float k1s[3] = {0.9f, 1.6f, 0.0f}, bs[3] = {0.4f, 1.0f, 0.0f};
    const uint32_t widths[6] = {3, 70, 6, 80, 64, 65};
    static uint32_t toks[200], ids[3][50], sids[50];
    static float sc[3][50], ssc[50];
    for (int it = 0; it < 36; it++) {
        uint32_t m = widths[it % 6];
        /* m distinct tokens (some absent from the index), a few repeated */
        uint32_t nt = 0;
        for (uint32_t j = 0; j < m; j++) toks[nt++] = (j * 7u + (uint32_t)it) % (c.tvocab + 3);
        for (uint32_t j = 0; j < 4; j++) toks[nt++] = toks[kd_rng_below(&r, m)];
        size_t k = it % 4 == 3 ? 50 : 10;
        size_t cnt[3];
        for (int a = 0; a < 3; a++) {
            kd_sparse_search_config cf = scfg((kd_sparse_algo)a, 0.0f, 1.0f);
            cf.bm25_k1 = k1s[(it / 6) % 3];
            cf.bm25_b = bs[(it / 4) % 3];
            ck_assert_int_eq(kd_sparse_index_search(ctx, idx, &cf, NULL, NULL, 0, toks, nt, k, ids[a], sc[a],
                                                    &cnt[a]),
                             KD_OK);
            size_t sn = 0;
            ck_assert_int_eq(kd_sparse_searcher_search(srch, &cf, NULL, NULL, 0, toks, nt, k, sids, ssc, &sn),
                             KD_OK);
            ck_assert_uint_eq(sn, cnt[a]);
            ck_assert_msg(memcmp(sids, ids[a], sn * 4) == 0 && memcmp(ssc, sc[a], sn * 4) == 0,
                          "iteration %d algo %d: searcher differs from one-shot", it, a);
        }
        ck_assert_uint_eq(cnt[2], k);
        for (int a = 0; a < 2; a++) {
            ck_assert_uint_eq(cnt[a], cnt[2]);
            ck_assert_msg(memcmp(ids[a], ids[2], cnt[2] * 4) == 0 && memcmp(sc[a], sc[2], cnt[2] * 4) == 0,
                          "iteration %d algo %d differs from exhaustive", it, a);
        }
    }
    kd_sparse_searcher_destroy(srch);
    kd_sparse_index_destroy(idx);
    gen_corpus_free(&c);
    kd_context_destroy(ctx);
}
END_TEST

START_TEST(quantisation_never_zero)
{
    kd_context *ctx = kd_test_ctx();
    kd_sparse_index_builder *b = NULL;
    ck_assert_int_eq(kd_sparse_index_builder_create(ctx, NULL, &b), KD_OK);
    uint32_t t[2] = {1, 2};
    float w[2] = {1000.0f, 1e-6f};
    ck_assert_int_eq(kd_sparse_index_builder_add(b, 10, t, w, 2, NULL, 0), KD_OK);
    uint32_t t2 = 2;
    float w2 = 1e-7f;
    ck_assert_int_eq(kd_sparse_index_builder_add(b, 11, &t2, &w2, 1, NULL, 0), KD_OK);
    kd_sparse_index *idx = NULL;
    ck_assert_int_eq(kd_sparse_index_build(b, &idx), KD_OK);
    kd_sparse_index_stats st;
    memset(&st, 0, sizeof st);
    st.struct_size = sizeof st;
    ck_assert_int_eq(kd_sparse_index_stats_get(idx, &st), KD_OK);
    ck_assert_uint_eq(st.quant_bits, 8);
    ck_assert(fabs(st.quant_scale - 1000.0 / 255.0) < 1e-3);
    ck_assert_uint_eq(st.n_postings, 3);
    uint32_t ids[4];
    float sc[4];
    size_t n = 0;
    float one = 1.0f;
    ck_assert_int_eq(kd_sparse_index_search(ctx, idx, NULL, &t2, &one, 1, NULL, 0, 4, ids, sc, &n), KD_OK);
    ck_assert_uint_eq(n, 2); /* both tiny weights still match, at one impact unit */
    ck_assert_uint_eq(ids[0], 10);
    ck_assert_uint_eq(ids[1], 11);
    ck_assert(sc[0] == sc[1] && sc[0] > 0.0f);
    kd_sparse_index_destroy(idx);
    kd_sparse_index_builder_destroy(b);
    kd_context_destroy(ctx);
}
END_TEST

START_TEST(invalid_inputs)
{
    kd_context *ctx = kd_test_ctx();
    kd_sparse_index_builder *b = NULL;
    kd_sparse_index_config cfg;
    kd_sparse_index_config_default(&cfg);
    cfg.quant_bits = 9;
    ck_assert_int_eq(kd_sparse_index_builder_create(ctx, &cfg, &b), KD_E_INVALID);
    ck_assert_ptr_null(b);
    cfg.quant_bits = 4;
    ck_assert_int_eq(kd_sparse_index_builder_create(ctx, &cfg, &b), KD_OK);
    uint32_t t[2] = {1, 2};
    float w[2] = {1.0f, NAN};
    ck_assert_int_eq(kd_sparse_index_builder_add(b, 1, t, w, 2, NULL, 0), KD_E_INVALID);
    w[1] = -1.0f;
    ck_assert_int_eq(kd_sparse_index_builder_add(b, 1, t, w, 2, NULL, 0), KD_E_INVALID);
    ck_assert_int_eq(kd_sparse_index_builder_add(b, 1, NULL, NULL, 2, NULL, 0), KD_E_INVALID);
    w[1] = 2.0f;
    ck_assert_int_eq(kd_sparse_index_builder_add(b, 1, t, w, 2, t, 2), KD_OK);
    ck_assert_int_eq(kd_sparse_index_builder_add(b, 1, t, w, 1, NULL, 0), KD_OK);
    kd_sparse_index *idx = NULL;
    ck_assert_int_eq(kd_sparse_index_build(b, &idx), KD_E_INVALID);
    ck_assert(strstr(kd_context_last_error(ctx), "duplicate") != NULL);
    ck_assert_ptr_null(idx);
    kd_sparse_index_builder_destroy(b);
    /* empty index: searches return nothing */
    ck_assert_int_eq(kd_sparse_index_builder_create(ctx, NULL, &b), KD_OK);
    ck_assert_int_eq(kd_sparse_index_build(b, &idx), KD_OK);
    uint32_t ids[2];
    size_t n = 9;
    ck_assert_int_eq(kd_sparse_index_search(ctx, idx, NULL, t, w, 2, t, 2, 2, ids, NULL, &n), KD_OK);
    ck_assert_uint_eq(n, 0);
    kd_sparse_index_destroy(idx);
    kd_sparse_index_builder_destroy(b);
    /* bad search arguments */
    ck_assert_int_eq(kd_sparse_index_builder_create(ctx, NULL, &b), KD_OK);
    ck_assert_int_eq(kd_sparse_index_builder_add(b, 5, t, w, 2, t, 2), KD_OK);
    ck_assert_int_eq(kd_sparse_index_build(b, &idx), KD_OK);
    float bad[2] = {1.0f, -0.5f};
    ck_assert_int_eq(kd_sparse_index_search(ctx, idx, NULL, t, bad, 2, NULL, 0, 2, ids, NULL, &n), KD_E_INVALID);
    kd_sparse_search_config sc;
    kd_sparse_search_config_default(&sc);
    sc.bm25_b = 1.5f;
    ck_assert_int_eq(kd_sparse_index_search(ctx, idx, &sc, t, w, 2, NULL, 0, 2, ids, NULL, &n), KD_E_INVALID);
    sc.bm25_b = 0.5f;
    sc.algo = (kd_sparse_algo)7;
    ck_assert_int_eq(kd_sparse_index_search(ctx, idx, &sc, t, w, 2, NULL, 0, 2, ids, NULL, &n), KD_E_INVALID);
    sc.algo = KD_SPARSE_BMW;
    sc.struct_size = 2;
    ck_assert_int_eq(kd_sparse_index_search(ctx, idx, &sc, t, w, 2, NULL, 0, 2, ids, NULL, &n), KD_E_VERSION);
    /* NULL context: the index's own */
    ck_assert_int_eq(kd_sparse_index_search(NULL, idx, NULL, t, w, 2, NULL, 0, 2, ids, NULL, &n), KD_OK);
    /* searcher: hostile arguments; a failed search leaves it usable */
    kd_sparse_searcher *sr = (kd_sparse_searcher *)&n;
    ck_assert_int_eq(kd_sparse_searcher_create(ctx, NULL, &sr), KD_E_INVALID);
    ck_assert_ptr_null(sr);
    ck_assert_int_eq(kd_sparse_searcher_create(ctx, idx, NULL), KD_E_INVALID);
    ck_assert_int_eq(kd_sparse_searcher_search(NULL, NULL, t, w, 2, NULL, 0, 2, ids, NULL, &n), KD_E_INVALID);
    kd_sparse_searcher_destroy(NULL);
    ck_assert_int_eq(kd_sparse_searcher_create(NULL, idx, &sr), KD_OK);
    ck_assert_int_eq(kd_sparse_searcher_search(sr, NULL, t, bad, 2, NULL, 0, 2, ids, NULL, &n), KD_E_INVALID);
    ck_assert_int_eq(kd_sparse_searcher_search(sr, NULL, t, w, 2, NULL, 0, 2, ids, NULL, NULL), KD_E_INVALID);
    ck_assert_int_eq(kd_sparse_searcher_search(sr, NULL, NULL, NULL, 2, NULL, 0, 2, ids, NULL, &n), KD_E_INVALID);
    ck_assert_int_eq(kd_sparse_searcher_search(sr, NULL, t, w, SIZE_MAX, NULL, 0, 2, ids, NULL, &n),
                     KD_E_OVERFLOW);
    ck_assert_int_eq(kd_sparse_searcher_search(sr, &sc, t, w, 2, NULL, 0, 2, ids, NULL, &n), KD_E_VERSION);
    ck_assert_int_eq(kd_sparse_searcher_search(sr, NULL, t, w, 2, t, 2, SIZE_MAX, ids, NULL, &n), KD_OK);
    ck_assert_uint_eq(n, 1);
    ck_assert_uint_eq(ids[0], 5);
    kd_sparse_searcher_destroy(sr);
    ck_assert_uint_eq(n, 1);
    ck_assert_uint_eq(ids[0], 5);
    kd_sparse_index_destroy(idx);
    kd_sparse_index_builder_destroy(b);
    kd_sparse_index_destroy(NULL);
    kd_sparse_index_builder_destroy(NULL);
    kd_context_destroy(ctx);
}
END_TEST

START_TEST(batch_matches_single)
{
    kd_context *ctx = kd_test_ctx();
    gen_corpus c;
    gen_corpus_make(&c, GEN_ZIPF_TIES, 800, 9);
    kd_sparse_index *idx = gen_build(ctx, &c, NULL);
    enum { NQ = 64, K = 10 };
    gen_query q[NQ];
    kd_rng r;
    kd_rng_seed(&r, 5, 5);
    size_t qo[NQ + 1], to[NQ + 1];
    uint32_t qt[NQ * 12], tk[NQ * 8];
    float qw[NQ * 12];
    qo[0] = to[0] = 0;
    for (int i = 0; i < NQ; i++) {
        gen_query_make(&q[i], &c, &r);
        memcpy(qt + qo[i], q[i].terms, q[i].nnz * 4);
        memcpy(qw + qo[i], q[i].w, q[i].nnz * 4);
        memcpy(tk + to[i], q[i].toks, q[i].ntok * 4);
        qo[i + 1] = qo[i] + q[i].nnz;
        to[i + 1] = to[i] + q[i].ntok;
    }
    for (int a = 0; a < 3; a++) {
        kd_sparse_search_config cf = scfg((kd_sparse_algo)a, 1.0f, 0.5f);
        cf.threads = 3;
        uint32_t ids[NQ * K];
        float sc[NQ * K];
        size_t cnt[NQ];
        ck_assert_int_eq(kd_sparse_index_search_batch(ctx, idx, &cf, NQ, qo, qt, qw, to, tk, K, ids, sc, cnt), KD_OK);
        for (int i = 0; i < NQ; i++) {
            uint32_t id1[K];
            float s1[K];
            size_t n1;
            ck_assert_int_eq(kd_sparse_index_search(ctx, idx, &cf, q[i].terms, q[i].w, q[i].nnz, q[i].toks,
                                                    q[i].ntok, K, id1, s1, &n1), KD_OK);
            ck_assert_uint_eq(n1, cnt[i]);
            ck_assert(memcmp(id1, ids + i * K, n1 * 4) == 0);
            ck_assert(memcmp(s1, sc + i * K, n1 * 4) == 0);
        }
    }
    /* a bad query is reported with its number */
    qw[qo[7]] = NAN;
    uint32_t ids[NQ * K];
    size_t cnt[NQ];
    if (qo[8] > qo[7]) {
        kd_sparse_search_config cf = scfg(KD_SPARSE_BMW, 1.0f, 0.5f);
        cf.threads = 2;
        ck_assert_int_eq(kd_sparse_index_search_batch(ctx, idx, &cf, NQ, qo, qt, qw, to, tk, K, ids, NULL, cnt),
                         KD_E_INVALID);
        ck_assert(strstr(kd_context_last_error(ctx), "query 7") != NULL);
    }
    kd_sparse_index_destroy(idx);
    gen_corpus_free(&c);
    kd_context_destroy(ctx);
}
END_TEST

static kd_status alloc_body(kd_context *ctx, void *user)
{
    const gen_corpus *c = (const gen_corpus *)user;
    kd_sparse_index_builder *b = NULL;
    kd_sparse_index *idx = NULL;
    kd_status st = kd_sparse_index_builder_create(ctx, NULL, &b);
    for (size_t i = 0; st == KD_OK && i < c->n; i++) {
        const gen_doc *d = &c->docs[i];
        st = kd_sparse_index_builder_add(b, d->id, d->terms, d->w, d->nnz, d->toks, d->ntok);
    }
    if (st == KD_OK) st = kd_sparse_index_build(b, &idx);
    for (int a = 0; st == KD_OK && a < 3; a++) {
        kd_sparse_search_config cf = scfg((kd_sparse_algo)a, 1.0f, 1.0f);
        uint32_t ids[5];
        size_t n;
        const gen_doc *d = &c->docs[0];
        st = kd_sparse_index_search(ctx, idx, &cf, d->terms, d->w, d->nnz, d->toks, d->ntok, 5, ids, NULL, &n);
        kd_sparse_searcher *sr = NULL;
        if (st == KD_OK) st = kd_sparse_searcher_create(ctx, idx, &sr);
        for (size_t j = 0; st == KD_OK && j < 3 && j < c->n; j++) /* grows with the queries */
            st = kd_sparse_searcher_search(sr, &cf, c->docs[j].terms, c->docs[j].w, c->docs[j].nnz,
                                           c->docs[j].toks, c->docs[j].ntok, 2 + j, ids, NULL, &n);
        kd_sparse_searcher_destroy(sr);
        if (st == KD_OK) {
            size_t qo[2] = {0, d->nnz}, to[2] = {0, d->ntok};
            size_t cnt;
            cf.threads = 2;
            st = kd_sparse_index_search_batch(ctx, idx, &cf, 1, qo, d->terms, d->w, to, d->toks, 5, ids, NULL, &cnt);
        }
    }
    kd_sparse_index_destroy(idx);
    kd_sparse_index_builder_destroy(b);
    return st;
}

START_TEST(allocation_failures)
{
    gen_corpus c;
    gen_corpus_make(&c, GEN_UNIFORM, 40, 12);
    long n = kd_test_alloc_failures(alloc_body, &c);
    ck_assert(n > 10);
    gen_corpus_free(&c);
}
END_TEST

Suite *kd_test_suite(void)
{
    Suite *s = suite_create("retrieval_index");
    TCase *tc = tcase_create("index");
    tcase_add_test(tc, agree_uniform);
    tcase_add_test(tc, agree_zipf_ties);
    tcase_add_test(tc, agree_all_equal);
    tcase_add_test(tc, agree_long_lists);
    tcase_add_test(tc, agree_tiny);
    tcase_add_test(tc, dense_head_terms);
    tcase_add_test(tc, dense_head_terms_ties);
    tcase_add_test(tc, searcher_params_and_wide_queries);
    tcase_add_test(tc, quantisation_never_zero);
    tcase_add_test(tc, invalid_inputs);
    tcase_add_test(tc, batch_matches_single);
    tcase_add_test(tc, allocation_failures);
    suite_add_tcase(s, tc);
    return s;
}
