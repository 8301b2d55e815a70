/*
 * xapian_bm25.cc - the Xapian anchor for libkd's BM25: the Debian package
 * description corpus (examples/debian_corpus.h), the same tokens (as Xapian
 * terms, wdf = term frequency, document length = token count), BM25 with the
 * same k1 and b, the same held-out synopsis queries, top-10, one thread.
 * Per-query latency p50/p99 and MRR@10 of Xapian and libkd side by side,
 * rounds interleaved, medians over rounds.
 *
 *   scripts/debian_corpus.sh corpus.txt
 *   build/bench/xapian_bm25 corpus.txt [--queries N (2000)] [--rounds R (3)]
 *
 * Xapian: glass database in a temporary folder (removed at exit),
 * BM25Weight(k1 = 0.9, k2 = 0, k3 = 1e3, b = 0.4, min_normlen = 0) so that
 * query term frequency counts (almost) linearly as in libkd and short
 * documents are not clamped. Xapian's idf is log((N - n + 0.5) / (n + 0.5))
 * where libkd uses Lucene's log(1 + (N - n + 0.5) / (n + 0.5)): rankings
 * differ slightly, which the MRR@10 of both shows.
 * libkd: kd_sparse_index over the tokens (BM25 only), weight_sparse = 0,
 * k1 = 0.9, b = 0.4: MaxScore and BMW through a kd_sparse_searcher reused
 * across queries (as Xapian's Enquire is), and MaxScore through the one-shot
 * kd_sparse_index_search (scratch allocated per call) for comparison.
 *
 * Lines: bench=debian_bm25_<engine> docs=... queries=... p50_ms=... p99_ms=...
 *        mean_ms=... mrr10=... [speedup_p50=... speedup_mean=... mrr10_delta=...]
 */
#include <dirent.h>
#include <unistd.h>
#include <xapian.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <kd/kd.h>

#include "../examples/debian_corpus.h"

static double now_s()
{
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

static double pct(std::vector<double> v, double p)
{
    std::sort(v.begin(), v.end());
    size_t i = (size_t)(p * (double)v.size());
    if (i >= v.size()) i = v.size() - 1;
    return v[i];
}

/* Removes the database folder (flat: glass keeps plain files in it). */
static void remove_tree(const std::string &path)
{
    if (DIR *d = opendir(path.c_str())) {
        while (struct dirent *e = readdir(d))
            if (std::strcmp(e->d_name, ".") && std::strcmp(e->d_name, ".."))
                unlink((path + "/" + e->d_name).c_str());
        closedir(d);
    }
    rmdir(path.c_str());
}

static double median(std::vector<double> v) { return pct(v, 0.5); }

struct result {
    std::vector<double> p50, p99, mean;
    double mrr = 0.0;
};

static void add_round(result &r, std::vector<double> &t, double mrr)
{
    double s = 0.0;
    for (double x : t) s += x;
    r.p50.push_back(1e3 * pct(t, 0.5));
    r.p99.push_back(1e3 * pct(t, 0.99));
    r.mean.push_back(1e3 * s / (double)t.size());
    r.mrr = mrr;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        std::fprintf(stderr, "usage: %s CORPUS [--queries N] [--rounds R]\n", argv[0]);
        return 2;
    }
    size_t nq_max = 2000;
    int rounds = 3;
    for (int i = 2; i + 1 < argc; i += 2) {
        if (!std::strcmp(argv[i], "--queries")) nq_max = std::strtoull(argv[i + 1], nullptr, 10);
        else if (!std::strcmp(argv[i], "--rounds")) rounds = std::atoi(argv[i + 1]);
        else {
            std::fprintf(stderr, "unknown option %s\n", argv[i]);
            return 2;
        }
    }
    if (rounds < 1) rounds = 1;
    dc_corpus c;
    if (!dc_load(&c, argv[1])) return 1;
    std::vector<uint32_t> tq;
    for (size_t i = 0; i < c.n && tq.size() < nq_max; i++)
        if (c.test[i]) tq.push_back((uint32_t)i);
    const float k1 = 0.9f, b = 0.4f;

    /* ---- Xapian index ---- */
    char dir[] = "/tmp/kd_xapian_XXXXXX";
    if (!mkdtemp(dir)) {
        std::perror("mkdtemp");
        return 1;
    }
    std::string db_path = std::string(dir) + "/db";
    double t0 = now_s();
    {
        Xapian::WritableDatabase wdb(db_path, Xapian::DB_CREATE_OR_OVERWRITE | Xapian::DB_BACKEND_GLASS);
        for (size_t d = 0; d < c.n; d++) {
            Xapian::Document doc;
            for (size_t i = c.doc_off[d]; i < c.doc_off[d + 1]; i++) doc.add_term(c.words[c.doc_tok.v[i]]);
            wdb.replace_document((Xapian::docid)(d + 1), doc);
        }
        wdb.commit();
    }
    double xapian_build = now_s() - t0;

    /* ---- libkd index ---- */
    kd_context *ctx = nullptr;
    if (kd_context_create(nullptr, &ctx) != KD_OK) return 1;
    t0 = now_s();
    kd_sparse_index_builder *bld = nullptr;
    kd_sparse_index *idx = nullptr;
    if (kd_sparse_index_builder_create(ctx, nullptr, &bld) != KD_OK) return 1;
    for (size_t d = 0; d < c.n; d++)
        if (kd_sparse_index_builder_add(bld, (uint32_t)d, nullptr, nullptr, 0, c.doc_tok.v + c.doc_off[d],
                                        c.doc_off[d + 1] - c.doc_off[d]) != KD_OK)
            return 1;
    if (kd_sparse_index_build(bld, &idx) != KD_OK) {
        std::fprintf(stderr, "build: %s\n", kd_context_last_error(ctx));
        return 1;
    }
    kd_sparse_index_builder_destroy(bld);
    double kd_build = now_s() - t0;

    Xapian::Database db(db_path);
    Xapian::Enquire enq(db);
    enq.set_weighting_scheme(Xapian::BM25Weight(k1, 0.0, 1e3, b, 0.0));
    enum { NE = 3 };
    const kd_sparse_algo algos[NE] = {KD_SPARSE_MAXSCORE, KD_SPARSE_BMW, KD_SPARSE_MAXSCORE};
    const int use_searcher[NE] = {1, 1, 0};
    const char *names[NE] = {"maxscore", "bmw", "maxscore_oneshot"};
    kd_sparse_searcher *srch = nullptr;
    if (kd_sparse_searcher_create(ctx, idx, &srch) != KD_OK) return 1;
    result rx, rk[NE];
    size_t agree10 = 0;
    for (int round = 0; round < rounds; round++) {
        /* Xapian */
        std::vector<double> t(tq.size());
        double mrr = 0.0;
        std::vector<std::vector<uint32_t>> xtop(tq.size());
        for (size_t qi = 0; qi < tq.size(); qi++) {
            size_t q = tq[qi];
            std::vector<uint32_t> toks(c.q_tok.v + c.q_off[q], c.q_tok.v + c.q_off[q + 1]);
            std::sort(toks.begin(), toks.end());
            double s0 = now_s();
            std::vector<Xapian::Query> sub;
            for (size_t i = 0; i < toks.size();) {
                size_t j = i;
                while (j < toks.size() && toks[j] == toks[i]) j++;
                sub.emplace_back(c.words[toks[i]], (Xapian::termcount)(j - i));
                i = j;
            }
            enq.set_query(Xapian::Query(Xapian::Query::OP_OR, sub.begin(), sub.end()));
            Xapian::MSet ms = enq.get_mset(0, 10);
            t[qi] = now_s() - s0;
            size_t rank = 0;
            for (Xapian::MSetIterator it = ms.begin(); it != ms.end(); ++it, ++rank) {
                uint32_t d = (uint32_t)(*it - 1);
                xtop[qi].push_back(d);
                if (d == q) mrr += 1.0 / (double)(rank + 1);
            }
        }
        add_round(rx, t, mrr / (double)tq.size());
        /* libkd */
        for (int a = 0; a < NE; a++) {
            kd_sparse_search_config sc;
            kd_sparse_search_config_default(&sc);
            sc.algo = algos[a];
            sc.weight_sparse = 0.0f;
            sc.weight_bm25 = 1.0f;
            sc.bm25_k1 = k1;
            sc.bm25_b = b;
            mrr = 0.0;
            agree10 = 0;
            for (size_t qi = 0; qi < tq.size(); qi++) {
                size_t q = tq[qi];
                uint32_t ids[10];
                size_t n = 0;
                double s0 = now_s();
                kd_status st =
                    use_searcher[a]
                        ? kd_sparse_searcher_search(srch, &sc, nullptr, nullptr, 0, c.q_tok.v + c.q_off[q],
                                                    c.q_off[q + 1] - c.q_off[q], 10, ids, nullptr, &n)
                        : kd_sparse_index_search(ctx, idx, &sc, nullptr, nullptr, 0, c.q_tok.v + c.q_off[q],
                                                 c.q_off[q + 1] - c.q_off[q], 10, ids, nullptr, &n);
                t[qi] = now_s() - s0;
                if (st != KD_OK) {
                    std::fprintf(stderr, "search: %s\n", kd_context_last_error(ctx));
                    return 1;
                }
                for (size_t r = 0; r < n; r++)
                    if (ids[r] == q) mrr += 1.0 / (double)(r + 1);
                if (!xtop[qi].empty() && n > 0 && ids[0] == xtop[qi][0]) agree10++;
            }
            add_round(rk[a], t, mrr / (double)tq.size());
        }
    }
    std::printf("bench=debian_bm25_build docs=%zu xapian_s=%.2f libkd_s=%.2f\n", c.n, xapian_build, kd_build);
    double xp50 = median(rx.p50), xp99 = median(rx.p99), xmean = median(rx.mean);
    std::printf("bench=debian_bm25_xapian docs=%zu queries=%zu k=10 rounds=%d p50_ms=%.4f p99_ms=%.4f mean_ms=%.4f "
                "mrr10=%.4f\n",
                c.n, tq.size(), rounds, xp50, xp99, xmean, rx.mrr);
    for (int a = 0; a < NE; a++) {
        double p50 = median(rk[a].p50), p99 = median(rk[a].p99), mean = median(rk[a].mean);
        std::printf("bench=debian_bm25_libkd_%s docs=%zu queries=%zu k=10 rounds=%d p50_ms=%.4f p99_ms=%.4f "
                    "mean_ms=%.4f mrr10=%.4f speedup_p50=%.1f speedup_p99=%.1f speedup_mean=%.1f "
                    "mrr10_delta=%+.4f top1_agree=%.3f\n",
                    names[a], c.n, tq.size(), rounds, p50, p99, mean, rk[a].mrr, xp50 / p50,
                    xp99 / p99, xmean / mean, rk[a].mrr - rx.mrr, (double)agree10 / (double)tq.size());
    }
    kd_sparse_searcher_destroy(srch);
    kd_sparse_index_destroy(idx);
    kd_context_destroy(ctx);
    dc_free(&c);
    remove_tree(db_path);
    rmdir(dir);
    return 0;
}
