/*
 * debian_search.c - known-item search over Debian's English package
 * descriptions with BM25, a learned inference-free sparse document encoder,
 * and their sum, all served by one kd_sparse_index.
 *
 *   scripts/debian_corpus.sh corpus.txt
 *   build/examples/debian_search corpus.txt [options]
 *
 * Queries are package synopses; the relevant document is the package's own
 * long description (examples/debian_corpus.h). Packages whose name hashes to
 * 0 mod 10 are held out: the encoder never sees them, and they are the
 * evaluation queries. Every package's description is indexed.
 *
 * Encoder (inference-free: only documents go through the model; a query is
 * its token ids weighted by IDF):
 *     input bags; embeddingbag Vm D mean; linear Vm     (z_d, over the Vm most frequent tokens)
 *     s(q, d) = sum_{t in q} idf_t * w_d[t]
 * with one of three heads (--head):
 *   0 (default) BM25-prior re-weighting of the document's own tokens:
 *       w_d[t] = g_dt * log(1 + relu(z_dt)),
 *       g_dt = tf (k1 + 1) / (tf + k1 (1 - b + b dl / avgdl)) (BM25's term
 *       saturation, 0 for tokens not in d). The linear layer starts with
 *       weight 0 and bias e - 1, so before training log(1 + z) = 1 and the
 *       learned score IS BM25 (up to 8-bit quantisation); training learns a
 *       per-document, per-term multiplier.
 *   1 tf re-weighting: w_d[t] = log(1 + tf_dt relu(z_dt)) on d's tokens
 *       (bias starts at 1: a TF-IDF-like start).
 *   2 expansion: w_d[t] = log(1 + relu(z_dt)) for every t of the model
 *       vocabulary (SPLADE-like, through the D-dimensional bottleneck).
 *   3 BM25 prior plus expansion: head 0 on d's own tokens, and for every
 *       other model token w_d[t] = log(1 + relu(z_dt - c)) with c = e - 1.05,
 *       so every expansion weight starts at log(1.05) (the same for every
 *       document: no ranking change at the start) and training raises the
 *       useful ones and the FLOPS term pushes the rest to 0; at indexing
 *       expansion weights below --exp-min (0.1) are dropped.
 * No head expands beyond d's tokens except 2 and 3. With heads 0 and 3, tokens outside
 * the model vocabulary (rare ones) keep w_d[t] = g_dt, untrained.
 * trained on the training packages with in-batch negatives (B queries x B
 * documents of the batch): cross-entropy on the known positive plus listwise
 * KL to BM25 as the teacher (kd_loss_listwise_kl), and the IDF-aware FLOPS
 * regulariser (kd_sparse_flops_idf) with a quadratic warm-up. Documents are
 * then encoded, pruned to their top --doc-terms weights and indexed with
 * their tokens, so one index answers BM25, learned and hybrid queries.
 *
 * Options: --steps N (1200) --batch B (128) --vocab Vm (16384) --dim D (64) --head 0|1|2|3
 *          --lr X (2e-3) --flops X (1e-3) --kl X (0.5) --doc-terms N (200)
 *          --test N (2000 held-out queries evaluated) --threads N (2)
 *          --seed S --save PATH (write the index) --exp-min X (0.1, head 3)
 *          --check F (exit 1 unless BM25, learned and sum each answer >= 90% of
 *          the queries with MRR@10 >= F: the smoke test on tests/data)
 * Prints the MRR@10 / Recall@100 table.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <kd/kd.h>

#include "debian_corpus.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

#define CHECK(call)                                                                            \
    do {                                                                                       \
        kd_status st_ = (call);                                                                \
        if (st_ != KD_OK) {                                                                    \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, kd_status_string(st_),     \
                    kd_context_last_error(ctx));                                               \
            exit(1);                                                                           \
        }                                                                                      \
    } while (0)

typedef struct bm25 {
    const dc_corpus *c;
    double *idf;   /* [V] Lucene idf over all documents */
    double avgdl;
    float k1, b;
    uint32_t *tf;  /* [V] scratch: term frequencies of one document */
} bm25;

static double bm25_score(const bm25 *m, const uint32_t *q, size_t nq, size_t dl)
{
    double s = 0.0;
    for (size_t i = 0; i < nq; i++) {
        uint32_t f = m->tf[q[i]];
        if (!f) continue;
        double norm = m->k1 * (1.0 - m->b + m->b * (double)dl / m->avgdl);
        s += m->idf[q[i]] * (double)f * (m->k1 + 1.0) / ((double)f + norm);
    }
    return s;
}

/* BM25's term saturation g(tf, dl) (the head-0 prior). */
static double prior(const bm25 *m, uint32_t tf, size_t dl)
{
    double norm = m->k1 * (1.0 - m->b + m->b * (double)dl / m->avgdl);
    return (double)tf * (m->k1 + 1.0) / ((double)tf + norm);
}

typedef struct eval_out {
    double mrr10, r100;
    double ms_per_query;
    size_t answered; /* queries with at least one result */
} eval_out;

static eval_out evaluate(kd_context *ctx, const kd_sparse_index *idx, const dc_corpus *c,
                         const uint32_t *tq, size_t ntq, const double *idf, float ws, float wb,
                         int threads)
{
    enum { K = 100 };
    size_t *qo = (size_t *)malloc((ntq + 1) * sizeof *qo);
    size_t tot = 0;
    for (size_t i = 0; i < ntq; i++) tot += c->q_off[tq[i] + 1] - c->q_off[tq[i]];
    uint32_t *ids = (uint32_t *)malloc((tot ? tot : 1) * sizeof *ids);
    float *w = (float *)malloc((tot ? tot : 1) * sizeof *w);
    qo[0] = 0;
    for (size_t i = 0; i < ntq; i++) {
        size_t a = c->q_off[tq[i]], b = c->q_off[tq[i] + 1];
        for (size_t j = a; j < b; j++) {
            ids[qo[i] + j - a] = c->q_tok.v[j];
            w[qo[i] + j - a] = (float)idf[c->q_tok.v[j]];
        }
        qo[i + 1] = qo[i] + (b - a);
    }
    uint32_t *out = (uint32_t *)malloc(ntq * K * sizeof *out);
    size_t *cnt = (size_t *)malloc(ntq * sizeof *cnt);
    kd_sparse_search_config sc;
    kd_sparse_search_config_default(&sc);
    sc.weight_sparse = ws;
    sc.weight_bm25 = wb;
    sc.threads = threads;
    double t0 = now_s();
    CHECK(kd_sparse_index_search_batch(ctx, idx, &sc, ntq, ws > 0 ? qo : NULL, ids, w,
                                       wb > 0 ? qo : NULL, ids, K, out, NULL, cnt));
    double t1 = now_s();
    eval_out r = {0.0, 0.0, 1e3 * (t1 - t0) * threads / (double)(ntq ? ntq : 1), 0};
    for (size_t i = 0; i < ntq; i++) {
        r.answered += cnt[i] > 0;
        for (size_t j = 0; j < cnt[i]; j++)
            if (out[i * K + j] == tq[i]) {
                if (j < 10) r.mrr10 += 1.0 / (double)(j + 1);
                r.r100 += 1.0;
                break;
            }
    }
    r.mrr10 /= (double)(ntq ? ntq : 1);
    r.r100 /= (double)(ntq ? ntq : 1);
    free(qo);
    free(ids);
    free(w);
    free(out);
    free(cnt);
    return r;
}

/* Document weights from the model output z [n x Vm] and the documents' term
 * frequencies tf [n x Vm] (see the top of the file). */
#define EXP_SHIFT ((float)(2.718281828459045 - 1.05))

static void doc_weights(const float *z, const float *tf, size_t n, size_t Vm, int head, float *w)
{
    for (size_t i = 0; i < n * Vm; i++) {
        float r = z[i] > 0.0f ? z[i] : 0.0f;
        if (head == 3 && !(tf[i] > 0.0f)) w[i] = z[i] > EXP_SHIFT ? log1pf(z[i] - EXP_SHIFT) : 0.0f;
        else if (head == 2) w[i] = log1pf(r);
        else if (!(tf[i] > 0.0f)) w[i] = 0.0f;
        else w[i] = head == 1 ? log1pf(tf[i] * r) : tf[i] * log1pf(r);
    }
}

/* dL/dz from dL/dw, in place. */
static void doc_weights_backward(const float *z, const float *tf, size_t n, size_t Vm, int head,
                                 float *g)
{
    for (size_t i = 0; i < n * Vm; i++) {
        if (head == 3 && !(tf[i] > 0.0f)) g[i] = z[i] > EXP_SHIFT ? g[i] / (1.0f + z[i] - EXP_SHIFT) : 0.0f;
        else if (!(z[i] > 0.0f)) g[i] = 0.0f;
        else if (head == 2) g[i] = g[i] / (1.0f + z[i]);
        else if (!(tf[i] > 0.0f)) g[i] = 0.0f;
        else g[i] = head == 1 ? g[i] * tf[i] / (1.0f + tf[i] * z[i]) : g[i] * tf[i] / (1.0f + z[i]);
    }
}

/* Head 0: turns the term frequencies of batch row i (model tokens listed in
 * bag[off[i] .. off[i+1])) into BM25 saturations g, once per distinct token. */
static void bm25_prior(float *tf, const int32_t *bag, const int32_t *off, size_t n, size_t Vm,
                       const dc_corpus *c, size_t d0, const uint32_t *pick, double avgdl, float k1,
                       float b)
{
    for (size_t i = 0; i < n; i++) {
        size_t d = pick ? pick[i] : d0 + i;
        double dl = (double)(c->doc_off[d + 1] - c->doc_off[d]);
        double norm = k1 * (1.0 - b + b * dl / avgdl);
        for (int32_t j = off[i]; j < off[i + 1]; j++) {
            float *x = &tf[i * Vm + (size_t)bag[j]];
            if (*x >= 1.0f) *x = -(float)((double)*x * (k1 + 1.0) / ((double)*x + norm)); /* mark done */
        }
        for (int32_t j = off[i]; j < off[i + 1]; j++) {
            float *x = &tf[i * Vm + (size_t)bag[j]];
            if (*x < 0.0f) *x = -*x;
        }
    }
}

typedef struct tf_pair {
    uint32_t id;
    uint32_t n;
} tf_pair;

/* The model-vocabulary tokens of n documents (pick[i], or d0 + i when pick
 * is NULL) as bags for kd_model_forward_ids: offsets bag_off[0..n], tokens
 * in *bag, grown as needed. Returns the token count, or SIZE_MAX when out of
 * memory. */
static size_t make_bags(const dc_corpus *c, const int32_t *to_m, const uint32_t *pick, size_t d0,
                        size_t n, int32_t **bag, size_t *cap, int32_t *bag_off)
{
    size_t nb = 0;
    bag_off[0] = 0;
    for (size_t i = 0; i < n; i++) {
        size_t d = pick ? pick[i] : d0 + i;
        for (size_t j = c->doc_off[d]; j < c->doc_off[d + 1]; j++) {
            int32_t mid = to_m[c->doc_tok.v[j]];
            if (mid < 0) continue;
            if (nb == *cap) {
                int32_t *grown = (int32_t *)realloc(*bag, 2 * *cap * sizeof **bag);
                if (!grown) return SIZE_MAX;
                *bag = grown;
                *cap *= 2;
            }
            (*bag)[nb++] = mid;
        }
        bag_off[i + 1] = (int32_t)nb;
    }
    return nb;
}

static int cmp_df_desc(const void *a, const void *b)
{
    const tf_pair *x = (const tf_pair *)a, *y = (const tf_pair *)b;
    if (x->n != y->n) return x->n < y->n ? 1 : -1;
    return x->id < y->id ? -1 : x->id > y->id;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s CORPUS [--steps N] [--batch B] [--vocab Vm] [--dim D] [--lr X]\n"
                        "       [--flops X] [--kl X] [--doc-terms N] [--test N] [--threads N] [--seed S]\n"
                        "       [--save PATH]\n(CORPUS: scripts/debian_corpus.sh CORPUS)\n",
                argv[0]);
        return 2;
    }
    size_t steps = 1200, B = 128, Vm = 16384, D = 64, doc_terms = 200, ntest_max = 2000;
    float lr = 2e-3f, flops_w = 1e-3f, kl_w = 0.5f, check = -1.0f, exp_min = 0.1f;
    int threads = 2, expand = 0;
    uint64_t seed = 7;
    const char *save = NULL;
    for (int i = 2; i + 1 < argc; i += 2) {
        const char *o = argv[i], *v = argv[i + 1];
        if (!strcmp(o, "--steps")) steps = strtoull(v, NULL, 10);
        else if (!strcmp(o, "--batch")) B = strtoull(v, NULL, 10);
        else if (!strcmp(o, "--vocab")) Vm = strtoull(v, NULL, 10);
        else if (!strcmp(o, "--dim")) D = strtoull(v, NULL, 10);
        else if (!strcmp(o, "--lr")) lr = strtof(v, NULL);
        else if (!strcmp(o, "--flops")) flops_w = strtof(v, NULL);
        else if (!strcmp(o, "--kl")) kl_w = strtof(v, NULL);
        else if (!strcmp(o, "--doc-terms")) doc_terms = strtoull(v, NULL, 10);
        else if (!strcmp(o, "--test")) ntest_max = strtoull(v, NULL, 10);
        else if (!strcmp(o, "--threads")) threads = atoi(v);
        else if (!strcmp(o, "--seed")) seed = strtoull(v, NULL, 10);
        else if (!strcmp(o, "--save")) save = v;
        else if (!strcmp(o, "--head")) expand = atoi(v);
        else if (!strcmp(o, "--check")) check = strtof(v, NULL);
        else if (!strcmp(o, "--exp-min")) exp_min = strtof(v, NULL);
        else {
            fprintf(stderr, "unknown option %s\n", o);
            return 2;
        }
    }
    if (B < 2 || D < 1 || Vm < 16 || threads < 1) {
        fprintf(stderr, "need --batch >= 2, --dim >= 1, --vocab >= 16, --threads >= 1\n");
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    double t_start = now_s();
    dc_corpus c;
    if (!dc_load(&c, argv[1])) return 1;
    const size_t V = c.vocab, N = c.n;
    size_t ntrain = 0, ntest_all = 0;
    for (size_t i = 0; i < N; i++) c.test[i] ? ntest_all++ : ntrain++;
    printf("corpus: %zu packages (%zu train, %zu held out), vocabulary %zu tokens, %zu document tokens"
           " (%.1f s)\n",
           N, ntrain, ntest_all, V, c.doc_tok.n, now_s() - t_start);

    kd_context_config cc;
    kd_context_config_default(&cc);
    cc.threads = threads;
    cc.seed = seed;
    kd_context *ctx = NULL;
    if (kd_context_create(&cc, &ctx) != KD_OK) return 1;

    /* BM25 statistics (the same formula and parameters as the index) */
    bm25 bm;
    bm.c = &c;
    bm.k1 = 0.9f;
    bm.b = 0.4f;
    bm.idf = (double *)malloc(V * sizeof *bm.idf);
    bm.tf = (uint32_t *)calloc(V, sizeof *bm.tf);
    bm.avgdl = (double)c.doc_tok.n / (double)N;
    for (size_t t = 0; t < V; t++)
        bm.idf[t] = log(1.0 + ((double)N - c.df[t] + 0.5) / ((double)c.df[t] + 0.5));

    /* model vocabulary: the Vm tokens with the largest df */
    if (Vm > V) Vm = V;
    tf_pair *byf = (tf_pair *)malloc(V * sizeof *byf);
    for (size_t t = 0; t < V; t++) byf[t] = (tf_pair){(uint32_t)t, c.df[t]};
    qsort(byf, V, sizeof *byf, cmp_df_desc);
    int32_t *to_m = (int32_t *)malloc(V * sizeof *to_m); /* token -> model id or -1 */
    uint32_t *from_m = (uint32_t *)malloc(Vm * sizeof *from_m);
    float *idf_m = (float *)malloc(Vm * sizeof *idf_m);
    for (size_t t = 0; t < V; t++) to_m[t] = -1;
    for (size_t i = 0; i < Vm; i++) {
        to_m[byf[i].id] = (int32_t)i;
        from_m[i] = byf[i].id;
        idf_m[i] = (float)bm.idf[byf[i].id];
        if (!(idf_m[i] > 0.0f)) idf_m[i] = 1e-3f;
    }
    free(byf);

    /* held-out queries */
    uint32_t *tq = (uint32_t *)malloc((ntest_all ? ntest_all : 1) * sizeof *tq);
    uint32_t *train = (uint32_t *)malloc((ntrain ? ntrain : 1) * sizeof *train);
    size_t ntq = 0, ntr = 0;
    for (size_t i = 0; i < N; i++) {
        if (c.test[i]) {
            if (ntq < ntest_max) tq[ntq++] = (uint32_t)i;
        } else {
            train[ntr++] = (uint32_t)i;
        }
    }

    /* ---- training ---- */
    char spec[160];
    snprintf(spec, sizeof spec, "input bags; embeddingbag %zu %zu mean; linear %zu", Vm, D, Vm);
    kd_model *m = NULL;
    CHECK(kd_model_create_from_spec(ctx, spec, &m));
    {
        size_t bi, nel;
        float *bias;
        CHECK(kd_model_tensor_find(m, "1.bias", &bi));
        CHECK(kd_model_tensor(m, bi, &bias, &nel, NULL, NULL, NULL));
        const int prior_head = expand == 0 || expand == 3;
        for (size_t i = 0; i < nel; i++) bias[i] = prior_head ? (float)(exp(1.0) - 1.0) : 1.0f;
        if (prior_head) {
            CHECK(kd_model_tensor_find(m, "1.weight", &bi));
            CHECK(kd_model_tensor(m, bi, &bias, &nel, NULL, NULL, NULL));
            memset(bias, 0, nel * sizeof *bias);
        }
    }
    kd_optimizer_config oc;
    kd_optimizer_config_default(&oc, KD_OPTIM_ADAMW);
    oc.lr = lr;
    oc.weight_decay = 0.0f;
    kd_optimizer *opt = NULL;
    CHECK(kd_optimizer_create(m, &oc, &opt));
    kd_loss *ce = NULL, *kl = NULL;
    CHECK(kd_loss_create(ctx, kd_loss_cross_entropy(), NULL, &ce));
    CHECK(kd_loss_create(ctx, kd_loss_listwise_kl(), NULL, &kl));
    int32_t *bag_off = (int32_t *)malloc((B + 1) * sizeof *bag_off);
    size_t bag_cap = 1 << 16;
    int32_t *bag = (int32_t *)malloc(bag_cap * sizeof *bag);
    float *w = (float *)malloc(B * Vm * sizeof *w);
    float *mtf = (float *)calloc(B * Vm, sizeof *mtf); /* tf of each model token per batch doc */
    float *dw = (float *)malloc(B * Vm * sizeof *dw);
    float *S = (float *)malloc(B * B * sizeof *S), *T = (float *)malloc(B * B * sizeof *T);
    float *dS = (float *)malloc(B * B * sizeof *dS);
    int32_t *labels = (int32_t *)malloc(B * sizeof *labels);
    uint32_t *pick = (uint32_t *)malloc(B * sizeof *pick);
    kd_rng rng;
    kd_rng_seed(&rng, seed, 5);
    double t_train = now_s(), run_loss = 0.0;
    const uint64_t warm = steps / 3 > 0 ? steps / 3 : 1;
    for (size_t step = 0; step < steps && ntr >= B; step++) {
        /* a batch of distinct training packages (partial Fisher-Yates) */
        for (size_t i = 0; i < B; i++) {
            size_t j = i + kd_rng_below(&rng, (uint32_t)(ntr - i));
            uint32_t x = train[i];
            train[i] = train[j];
            train[j] = x;
            pick[i] = train[i];
        }
        size_t nb = make_bags(&c, to_m, pick, 0, B, &bag, &bag_cap, bag_off);
        if (nb == SIZE_MAX) { fprintf(stderr, "error: out of memory\n"); return 1; }
        const float *z = NULL;
        CHECK(kd_model_forward_ids(m, KD_MODE_TRAIN, bag, nb, bag_off, B, &z));
        for (size_t i = 0; i < B; i++)
            for (int32_t j = bag_off[i]; j < bag_off[i + 1]; j++) mtf[i * Vm + (size_t)bag[j]] += 1.0f;
        if (expand == 0 || expand == 3) bm25_prior(mtf, bag, bag_off, B, Vm, &c, 0, pick, bm.avgdl, bm.k1, bm.b);
        doc_weights(z, mtf, B, Vm, expand, w);
        /* student scores S[q][d] and BM25 teacher T[q][d] over the batch */
        for (size_t j = 0; j < B; j++) {
            size_t d = pick[j];
            for (size_t k = c.doc_off[d]; k < c.doc_off[d + 1]; k++) bm.tf[c.doc_tok.v[k]]++;
            for (size_t i = 0; i < B; i++) {
                size_t q = pick[i];
                const uint32_t *qt = c.q_tok.v + c.q_off[q];
                size_t nq = c.q_off[q + 1] - c.q_off[q];
                T[i * B + j] = (float)bm25_score(&bm, qt, nq, c.doc_off[d + 1] - c.doc_off[d]);
                double s = 0.0;
                size_t dl = c.doc_off[d + 1] - c.doc_off[d];
                for (size_t k = 0; k < nq; k++) {
                    int32_t mid = to_m[qt[k]];
                    if (mid >= 0) s += (double)idf_m[mid] * w[j * Vm + (size_t)mid];
                    else if ((expand == 0 || expand == 3) && bm.tf[qt[k]]) s += bm.idf[qt[k]] * prior(&bm, bm.tf[qt[k]], dl);
                }
                S[i * B + j] = (float)s;
            }
            for (size_t k = c.doc_off[d]; k < c.doc_off[d + 1]; k++) bm.tf[c.doc_tok.v[k]] = 0;
        }
        for (size_t i = 0; i < B; i++) labels[i] = (int32_t)i;
        memset(dS, 0, B * B * sizeof *dS);
        kd_loss_batch lb;
        kd_loss_batch_default(&lb);
        lb.rows = B;
        lb.classes = B;
        lb.student_logits = S;
        lb.labels = labels;
        lb.candidates = B;
        lb.student_scores = S;
        lb.teacher_scores = T;
        kd_loss_grad lg;
        kd_loss_grad_default(&lg);
        lg.student_logits = dS;
        double v_ce = 0.0, v_kl = 0.0, v_fl = 0.0;
        CHECK(kd_loss_compute(ce, &lb, &v_ce, &lg));
        kd_loss_grad_default(&lg);
        lg.scale = kl_w;
        lg.student_scores = dS;
        CHECK(kd_loss_compute(kl, &lb, &v_kl, &lg));
        /* dS -> dw, plus the IDF-aware FLOPS regulariser */
        memset(dw, 0, B * Vm * sizeof *dw);
        for (size_t i = 0; i < B; i++) {
            size_t q = pick[i];
            const uint32_t *qt = c.q_tok.v + c.q_off[q];
            size_t nq = c.q_off[q + 1] - c.q_off[q];
            for (size_t k = 0; k < nq; k++) {
                int32_t mid = to_m[qt[k]];
                if (mid < 0) continue;
                float f = idf_m[mid];
                for (size_t j = 0; j < B; j++) dw[j * Vm + (size_t)mid] += dS[i * B + j] * f;
            }
        }
        float lam = kd_sparse_reg_schedule(flops_w, step, warm);
        float fl = 0.0f;
        CHECK(kd_sparse_flops_idf(ctx, w, B, Vm, idf_m, lam, &fl, dw));
        v_fl = fl;
        doc_weights_backward(z, mtf, B, Vm, expand, dw);
        for (size_t i = 0; i < B; i++)
            for (int32_t j = bag_off[i]; j < bag_off[i + 1]; j++) mtf[i * Vm + (size_t)bag[j]] = 0.0f;
        CHECK(kd_model_zero_grad(m));
        CHECK(kd_model_backward(m, dw, B * Vm, NULL, 0));
        float gn;
        CHECK(kd_model_clip_grad_norm(m, 5.0f, &gn));
        CHECK(kd_optimizer_step(opt));
        run_loss = step ? 0.98 * run_loss + 0.02 * (v_ce + kl_w * v_kl) : v_ce + kl_w * v_kl;
        if (step % 100 == 0 || step + 1 == steps)
            printf("step %5zu  ce+kl %.4f (ce %.4f kl %.4f)  flops %.4f (lambda %.2g)  %.1f s\n", step,
                   run_loss, v_ce, v_kl, v_fl, (double)lam, now_s() - t_train);
    }
    double train_s = now_s() - t_train;

    /* ---- encode every document and build one index ---- */
    double t_enc = now_s();
    kd_sparse_index_builder *bld = NULL;
    CHECK(kd_sparse_index_builder_create(ctx, NULL, &bld));
    size_t maxdl = 0;
    for (size_t d = 0; d < N; d++)
        if (c.doc_off[d + 1] - c.doc_off[d] > maxdl) maxdl = c.doc_off[d + 1] - c.doc_off[d];
    uint32_t *st_ids = (uint32_t *)malloc((Vm + maxdl) * sizeof *st_ids);
    float *st_w = (float *)malloc((Vm + maxdl) * sizeof *st_w);
    uint64_t nnz_total = 0;
    for (size_t d0 = 0; d0 < N; d0 += B) {
        size_t nbat = N - d0 < B ? N - d0 : B;
        size_t nb = make_bags(&c, to_m, NULL, d0, nbat, &bag, &bag_cap, bag_off);
        if (nb == SIZE_MAX) { fprintf(stderr, "error: out of memory\n"); return 1; }
        const float *z = NULL;
        CHECK(kd_model_forward_ids(m, KD_MODE_INFER, bag, nb, bag_off, nbat, &z));
        for (size_t i = 0; i < nbat; i++)
            for (int32_t j = bag_off[i]; j < bag_off[i + 1]; j++) mtf[i * Vm + (size_t)bag[j]] += 1.0f;
        if (expand == 0 || expand == 3) bm25_prior(mtf, bag, bag_off, nbat, Vm, &c, d0, NULL, bm.avgdl, bm.k1, bm.b);
        doc_weights(z, mtf, nbat, Vm, expand, w);
        if (expand == 3) /* drop small expansion weights (tokens not in the document) */
            for (size_t i = 0; i < nbat * Vm; i++)
                if (!(mtf[i] > 0.0f) && w[i] < exp_min) w[i] = 0.0f;
        for (size_t i = 0; i < nbat; i++)
            for (int32_t j = bag_off[i]; j < bag_off[i + 1]; j++) mtf[i * Vm + (size_t)bag[j]] = 0.0f;
        for (size_t i = 0; i < nbat; i++) {
            size_t d = d0 + i, n = 0;
            for (size_t t = 0; t < Vm; t++) {
                float x = w[i * Vm + t];
                if (x > 0.0f) {
                    st_ids[n] = from_m[t];
                    st_w[n++] = x;
                }
            }
            if (expand == 0 || expand == 3) { /* tokens outside the model vocabulary keep their prior */
                size_t dl = c.doc_off[d + 1] - c.doc_off[d];
                for (size_t j = c.doc_off[d]; j < c.doc_off[d + 1]; j++) bm.tf[c.doc_tok.v[j]]++;
                for (size_t j = c.doc_off[d]; j < c.doc_off[d + 1]; j++) {
                    uint32_t t = c.doc_tok.v[j];
                    if (to_m[t] >= 0 || !bm.tf[t]) continue;
                    st_ids[n] = t;
                    st_w[n++] = (float)prior(&bm, bm.tf[t], dl);
                    bm.tf[t] = 0;
                }
                for (size_t j = c.doc_off[d]; j < c.doc_off[d + 1]; j++) bm.tf[c.doc_tok.v[j]] = 0;
            }
            size_t kept = n;
            CHECK(kd_sparse_topk_prune(ctx, st_ids, st_w, n, doc_terms, &kept));
            nnz_total += kept;
            CHECK(kd_sparse_index_builder_add(bld, (uint32_t)d, st_ids, st_w, kept,
                                              c.doc_tok.v + c.doc_off[d],
                                              c.doc_off[d + 1] - c.doc_off[d]));
        }
    }
    kd_sparse_index *idx = NULL;
    CHECK(kd_sparse_index_build(bld, &idx));
    kd_sparse_index_builder_destroy(bld);
    double enc_s = now_s() - t_enc;
    kd_sparse_index_stats ist;
    ist.struct_size = sizeof ist;
    CHECK(kd_sparse_index_stats_get(idx, &ist));
    printf("index: %llu docs, %.1f learned terms/doc (top %zu kept), %llu BM25 postings, %.1f MB;"
           " encode+build %.1f s\n",
           (unsigned long long)ist.n_docs, (double)nnz_total / (double)N, doc_terms,
           (unsigned long long)ist.n_bm25_postings, (double)ist.bytes / 1e6, enc_s);
    if (save) CHECK(kd_sparse_index_save(idx, save));

    /* ---- evaluation on held-out packages ---- */
    const struct {
        const char *name;
        float ws, wb;
    } modes[] = {{"BM25", 0.0f, 1.0f}, {"learned sparse", 1.0f, 0.0f}, {"BM25 + learned", 1.0f, 1.0f}};
    eval_out r[3];
    for (int i = 0; i < 3; i++) r[i] = evaluate(ctx, idx, &c, tq, ntq, bm.idf, modes[i].ws, modes[i].wb, threads);
    printf("\nheld-out known-item queries: %zu (synopsis -> own long description), %zu docs indexed\n", ntq, N);
    printf("model: %s, %s head; %zu steps x %zu pairs (%.2f epochs) in %.1f s on %d threads\n",
           spec,
           expand == 3 ? "BM25-prior re-weighting + log(1+relu(z-c)) expansion"
           : expand == 2 ? "log(1+relu(z)) expansion"
                       : expand == 1 ? "log(1+tf relu(z)) re-weighting" : "BM25-prior g*log(1+relu(z)) re-weighting",
           steps, B,
           (double)(steps * B) / (double)(ntr ? ntr : 1), train_s, threads);
    printf("| method | MRR@10 | Recall@100 | ms/query |\n| --- | --- | --- | --- |\n");
    for (int i = 0; i < 3; i++)
        printf("| %s | %.4f | %.4f | %.3f |\n", modes[i].name, r[i].mrr10, r[i].r100, r[i].ms_per_query);
    printf("learned - BM25: MRR@10 %+.4f, Recall@100 %+.4f; sum - BM25: MRR@10 %+.4f\n",
           r[1].mrr10 - r[0].mrr10, r[1].r100 - r[0].r100, r[2].mrr10 - r[0].mrr10);
    printf("total %.1f s\n", now_s() - t_start);
    int failed = 0;
    if (check >= 0.0f)
        for (int i = 0; i < 3; i++)
            if (!(r[i].mrr10 >= check) || r[i].answered * 10 < ntq * 9 || ntq == 0) {
                printf("check FAILED: %s MRR@10 %.4f (floor %.4f), %zu of %zu queries answered\n",
                       modes[i].name, r[i].mrr10, (double)check, r[i].answered, ntq);
                failed = 1;
            }

    kd_sparse_index_destroy(idx);
    kd_loss_destroy(kl);
    kd_loss_destroy(ce);
    kd_optimizer_destroy(opt);
    kd_model_destroy(m);
    kd_context_destroy(ctx);
    free(st_ids);
    free(st_w);
    free(bag_off);
    free(bag);
    free(w);
    free(mtf);
    free(dw);
    free(S);
    free(T);
    free(dS);
    free(labels);
    free(pick);
    free(tq);
    free(train);
    free(to_m);
    free(from_m);
    free(idf_m);
    free(bm.idf);
    free(bm.tf);
    dc_free(&c);
    return failed;
}
