/*
 * bench_sparse.c - sparse index on synthetic SPLADE-like data: build time,
 * bytes per posting, per-query latency of MaxScore, Block-Max WAND and the
 * exhaustive oracle (top-10, one thread), BM25 over token ids, and batch
 * throughput. Every DAAT result is checked against the exhaustive one.
 *
 * Data: vocabulary of 30,000 terms with Zipf(1) frequencies; documents of
 * about 120 distinct terms with weights 0.05 + 3 u^2 (u uniform); queries of
 * about 25 terms drawn the same way ("zipf" queries, cases sparse_<algo>:
 * dominated by near-universal head terms with large weights, the worst case
 * for pruning). BM25: each document also carries ~60 tokens from a Zipf(1)
 * vocabulary of 30,000, queries ~6 tokens.
 * "docq" queries (cases sparse_docq_<algo>): the terms follow the document
 * term distribution as real queries do: 25 terms (6 tokens) drawn from one
 * indexed document, weighted as a SPLADE/IDF query weights them,
 * (0.05 + 3 u^2) * idf(t) / max idf, so near-universal terms weigh little.
 *
 *   bench_sparse                 200,000 docs (builds in well under a minute)
 *   bench_sparse --docs 1000000  the 1M-document scale of the issue
 *   options: --queries N (default 300), --exhaustive-queries N (default 50),
 *            --threads N (batch case, default 2), --seed S,
 *            --build-only 1 (stop after the sparse_build line)
 * The build line gives wall and process CPU seconds (add_cpu_s, build_cpu_s:
 * user + system time of this process, the useful figure on a loaded machine).
 *
 * Prints one line per case:
 *   bench=sparse_<case> docs=... key=value ...
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_util.h"
#include "kd/kd.h"

static double cpu_now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

typedef struct zipf {
    double *cdf;
    uint32_t n;
} zipf;

static void zipf_init(zipf *z, uint32_t n, double s)
{
    z->n = n;
    z->cdf = malloc(n * sizeof *z->cdf);
    double acc = 0.0;
    for (uint32_t i = 0; i < n; i++) {
        acc += 1.0 / pow((double)(i + 1), s);
        z->cdf[i] = acc;
    }
    for (uint32_t i = 0; i < n; i++) z->cdf[i] /= acc;
}

static uint32_t zipf_draw(const zipf *z, kd_rng *r)
{
    double u = kd_rng_uniform(r);
    uint32_t lo = 0, hi = z->n - 1;
    while (lo < hi) {
        uint32_t mid = (lo + hi) / 2;
        if (z->cdf[mid] < u) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

/* A random permutation maps Zipf ranks to term ids (frequent != small id). */
static uint32_t *perm_make(uint32_t n, kd_rng *r)
{
    uint32_t *p = malloc(n * sizeof *p);
    for (uint32_t i = 0; i < n; i++) p[i] = i;
    for (uint32_t i = n; i > 1; i--) {
        uint32_t j = kd_rng_below(r, i);
        uint32_t t = p[i - 1];
        p[i - 1] = p[j];
        p[j] = t;
    }
    return p;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

typedef struct qset {
    size_t n;
    size_t *qo, *to;
    uint32_t *qt, *tk;
    float *qw;
} qset;

static void run_case(kd_context *ctx, const kd_sparse_index *idx, const char *name, kd_sparse_algo algo,
                     const qset *q, size_t nq, float ws, float wb, uint64_t ndocs, uint32_t *ref_ids,
                     float *ref_sc, size_t *ref_n, int fill_ref)
{
    enum { K = 10 };
    kd_sparse_search_config c;
    kd_sparse_search_config_default(&c);
    c.algo = algo;
    c.weight_sparse = ws;
    c.weight_bm25 = wb;
    double *t = malloc(nq * sizeof *t);
    size_t mism = 0;
    double total = 0.0;
    for (size_t i = 0; i < nq; i++) {
        uint32_t ids[K];
        float sc[K];
        size_t n;
        size_t a = q->qo[i], na = q->qo[i + 1] - a, b = q->to[i], nb = q->to[i + 1] - b;
        double t0 = bench_now();
        kd_status st = kd_sparse_index_search(ctx, idx, &c, q->qt + a, q->qw + a, na, q->tk + b, nb, K, ids,
                                              sc, &n);
        t[i] = bench_now() - t0;
        total += t[i];
        if (st != KD_OK) {
            fprintf(stderr, "search failed: %s\n", kd_context_last_error(ctx));
            exit(1);
        }
        if (fill_ref) {
            memcpy(ref_ids + i * K, ids, sizeof ids);
            memcpy(ref_sc + i * K, sc, sizeof sc);
            ref_n[i] = n;
        } else if (n != ref_n[i] || memcmp(ids, ref_ids + i * K, n * 4) || memcmp(sc, ref_sc + i * K, n * 4)) {
            mism++;
        }
    }
    qsort(t, nq, sizeof *t, cmp_double);
    printf("bench=sparse_%s docs=%llu queries=%zu k=10 threads=1 mean_ms=%.4f p50_ms=%.4f p99_ms=%.4f "
           "mismatches_vs_exhaustive=%s\n",
           name, (unsigned long long)ndocs, nq, 1e3 * total / (double)nq, 1e3 * t[nq / 2],
           1e3 * t[(size_t)((double)nq * 0.99) < nq ? (size_t)((double)nq * 0.99) : nq - 1],
           fill_ref ? "ref" : (mism ? "NONZERO" : "0"));
    if (!fill_ref && mism) printf("# %zu mismatching queries\n", mism);
    free(t);
}

int main(int argc, char **argv)
{
    size_t ndocs = 200000, nq = 300, nqx = 50;
    int threads = 2, build_only = 0;
    uint64_t seed = 1;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--docs")) ndocs = strtoull(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "--queries")) nq = strtoull(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "--exhaustive-queries")) nqx = strtoull(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "--threads")) threads = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--seed")) seed = strtoull(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "--build-only")) build_only = atoi(argv[i + 1]);
        else {
            fprintf(stderr, "unknown option %s\n", argv[i]);
            return 2;
        }
    }
    if (nqx > nq) nqx = nq;
    const uint32_t V = 30000;
    kd_context *ctx;
    if (kd_context_create(NULL, &ctx) != KD_OK) return 1;
    kd_rng r;
    kd_rng_seed(&r, seed, 1);
    zipf z;
    zipf_init(&z, V, 1.0);
    uint32_t *perm = perm_make(V, &r), *tperm = perm_make(V, &r);
    /* corpus */
    kd_sparse_index_builder *b;
    kd_sparse_index_builder_create(ctx, NULL, &b);
    uint32_t terms[200], toks[200];
    float w[200];
    double gen = 0.0, t0 = bench_now(), cadd = 0.0;
    uint32_t *df = calloc(V, sizeof *df);
    const size_t keep_every = ndocs / nq > 0 ? ndocs / nq : 1;
    uint32_t *kept_t = malloc((ndocs / keep_every + 1) * 200 * sizeof *kept_t);
    uint32_t *kept_k = malloc((ndocs / keep_every + 1) * 200 * sizeof *kept_k);
    size_t *kept_n = calloc(ndocs / keep_every + 1, sizeof *kept_n);
    size_t *kept_m = calloc(ndocs / keep_every + 1, sizeof *kept_m);
    size_t nkept = 0;
    for (size_t d = 0; d < ndocs; d++) {
        double g0 = bench_now();
        size_t nnz = 90 + kd_rng_below(&r, 61); /* ~120 */
        for (size_t j = 0; j < nnz; j++) {
            terms[j] = perm[zipf_draw(&z, &r)];
            float u = kd_rng_uniform(&r);
            w[j] = 0.05f + 3.0f * u * u;
        }
        size_t nt = 30 + kd_rng_below(&r, 61);
        for (size_t j = 0; j < nt; j++) toks[j] = tperm[zipf_draw(&z, &r)];
        for (size_t j = 0; j < nnz; j++) df[terms[j]]++; /* repeats: close enough for weights */
        if (d % keep_every == 0) {
            memcpy(kept_t + nkept * 200, terms, nnz * sizeof *terms);
            memcpy(kept_k + nkept * 200, toks, nt * sizeof *toks);
            kept_n[nkept] = nnz;
            kept_m[nkept++] = nt;
        }
        gen += bench_now() - g0;
        double c0 = cpu_now();
        if (kd_sparse_index_builder_add(b, (uint32_t)d, terms, w, nnz, toks, nt) != KD_OK) return 1;
        cadd += cpu_now() - c0;
    }
    kd_sparse_index *idx;
    double t1 = bench_now(), c1 = cpu_now();
    if (kd_sparse_index_build(b, &idx) != KD_OK) {
        fprintf(stderr, "build: %s\n", kd_context_last_error(ctx));
        return 1;
    }
    double t2 = bench_now(), c2 = cpu_now();
    kd_sparse_index_builder_destroy(b);
    kd_sparse_index_stats st;
    st.struct_size = sizeof st;
    kd_sparse_index_stats_get(idx, &st);
    printf("bench=sparse_build docs=%zu postings=%llu bm25_postings=%llu add_s=%.2f build_s=%.2f "
           "add_cpu_s=%.2f build_cpu_s=%.2f "
           "bytes=%llu learned_bytes_per_posting=%.3f bm25_bytes_per_posting=%.3f quant_bits=%u\n",
           ndocs, (unsigned long long)st.n_postings, (unsigned long long)st.n_bm25_postings, t1 - t0 - gen,
           t2 - t1, cadd, c2 - c1, (unsigned long long)st.bytes, (double)st.postings_bytes / (double)st.n_postings,
           (double)st.bm25_postings_bytes / (double)st.n_bm25_postings, st.quant_bits);
    if (build_only) {
        kd_sparse_index_destroy(idx);
        kd_context_destroy(ctx);
        return 0;
    }
    /* queries */
    qset q;
    q.n = nq;
    q.qo = malloc((nq + 1) * sizeof *q.qo);
    q.to = malloc((nq + 1) * sizeof *q.to);
    q.qt = malloc(nq * 40 * sizeof *q.qt);
    q.qw = malloc(nq * 40 * sizeof *q.qw);
    q.tk = malloc(nq * 10 * sizeof *q.tk);
    q.qo[0] = q.to[0] = 0;
    for (size_t i = 0; i < nq; i++) {
        size_t n = 20 + kd_rng_below(&r, 11); /* ~25 */
        for (size_t j = 0; j < n; j++) {
            q.qt[q.qo[i] + j] = perm[zipf_draw(&z, &r)];
            float u = kd_rng_uniform(&r);
            q.qw[q.qo[i] + j] = 0.05f + 3.0f * u * u;
        }
        q.qo[i + 1] = q.qo[i] + n;
        size_t m = 4 + kd_rng_below(&r, 5); /* ~6 */
        for (size_t j = 0; j < m; j++) q.tk[q.to[i] + j] = tperm[zipf_draw(&z, &r)];
        q.to[i + 1] = q.to[i] + m;
    }
    qset dq;
    dq.n = nq;
    dq.qo = malloc((nq + 1) * sizeof *dq.qo);
    dq.to = malloc((nq + 1) * sizeof *dq.to);
    dq.qt = malloc(nq * 40 * sizeof *dq.qt);
    dq.qw = malloc(nq * 40 * sizeof *dq.qw);
    dq.tk = malloc(nq * 10 * sizeof *dq.tk);
    dq.qo[0] = dq.to[0] = 0;
    const double maxidf = log((double)ndocs + 1.0);
    for (size_t i = 0; i < nq; i++) {
        size_t src = kd_rng_below(&r, (uint32_t)nkept);
        size_t n = 20 + kd_rng_below(&r, 11);
        for (size_t j = 0; j < n; j++) {
            uint32_t t = kept_t[src * 200 + kd_rng_below(&r, (uint32_t)kept_n[src])];
            float u = kd_rng_uniform(&r);
            double idf = log(((double)ndocs + 1.0) / ((double)df[t] + 0.5));
            if (idf < 0.01) idf = 0.01;
            dq.qt[dq.qo[i] + j] = t;
            dq.qw[dq.qo[i] + j] = (float)((0.05 + 3.0 * u * u) * idf / maxidf);
        }
        dq.qo[i + 1] = dq.qo[i] + n;
        size_t m = 4 + kd_rng_below(&r, 5);
        for (size_t j = 0; j < m; j++) dq.tk[dq.to[i] + j] = kept_k[src * 200 + kd_rng_below(&r, (uint32_t)kept_m[src])];
        dq.to[i + 1] = dq.to[i] + m;
    }
    uint32_t *rid = malloc(nq * 10 * 4);
    float *rsc = malloc(nq * 10 * 4);
    size_t *rn = malloc(nq * sizeof *rn);
    const struct { const char *tag; float ws, wb; int docq; } modes[] = {
        {"", 1, 0, 0}, {"bm25_", 0, 1, 0}, {"hybrid_", 1, 1, 0},
        {"docq_", 1, 0, 1}, {"docq_bm25_", 0, 1, 1}, {"docq_hybrid_", 1, 1, 1}};
    for (int m = 0; m < 6; m++) {
        char nm[64];
        const qset *qs = modes[m].docq ? &dq : &q;
        snprintf(nm, sizeof nm, "%sexhaustive", modes[m].tag);
        run_case(ctx, idx, nm, KD_SPARSE_EXHAUSTIVE, qs, nqx, modes[m].ws, modes[m].wb, ndocs, rid, rsc, rn, 1);
        snprintf(nm, sizeof nm, "%smaxscore", modes[m].tag);
        run_case(ctx, idx, nm, KD_SPARSE_MAXSCORE, qs, nqx, modes[m].ws, modes[m].wb, ndocs, rid, rsc, rn, 0);
        snprintf(nm, sizeof nm, "%sbmw", modes[m].tag);
        run_case(ctx, idx, nm, KD_SPARSE_BMW, qs, nqx, modes[m].ws, modes[m].wb, ndocs, rid, rsc, rn, 0);
        if (nq > nqx) { /* more queries for the fast paths, MaxScore as reference */
            snprintf(nm, sizeof nm, "%smaxscore", modes[m].tag);
            run_case(ctx, idx, nm, KD_SPARSE_MAXSCORE, qs, nq, modes[m].ws, modes[m].wb, ndocs, rid, rsc, rn, 1);
            snprintf(nm, sizeof nm, "%sbmw", modes[m].tag);
            run_case(ctx, idx, nm, KD_SPARSE_BMW, qs, nq, modes[m].ws, modes[m].wb, ndocs, rid, rsc, rn, 0);
        }
    }
    /* batch throughput over threads */
    kd_sparse_search_config c;
    kd_sparse_search_config_default(&c);
    c.weight_bm25 = 0.0f;
    c.threads = threads;
    uint32_t *bid = malloc(nq * 10 * 4);
    size_t *bn = malloc(nq * sizeof *bn);
    for (int a = 0; a < 2; a++) {
        c.algo = a ? KD_SPARSE_BMW : KD_SPARSE_MAXSCORE;
        double s0 = bench_now();
        kd_sparse_index_search_batch(ctx, idx, &c, nq, q.qo, q.qt, q.qw, NULL, NULL, 10, bid, NULL, bn);
        double s1 = bench_now();
        printf("bench=sparse_batch_%s docs=%zu queries=%zu threads=%d qps=%.1f\n", a ? "bmw" : "maxscore", ndocs,
               nq, threads, (double)nq / (s1 - s0));
    }
    kd_sparse_index_destroy(idx);
    kd_context_destroy(ctx);
    return 0;
}
