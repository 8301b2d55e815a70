/* kd_mpi_sparse.c - top-k over a sparse index sharded across ranks: local top-k, all-gather, merge. */
#include <limits.h>
#include <string.h>

#include "kd_mpi_internal.h"

/* One gathered hit: score and doc id (packed so one MPI_BYTE gather moves all). */
typedef struct {
    float score;
    uint32_t id;
} hit;

static int better(const hit *a, const hit *b)
{
    return a->score > b->score || (a->score == b->score && a->id < b->id);
}

static kd_status check_local(kd_mpi_comm *c, const kd_sparse_index *idx, const kd_sparse_search_config *cfg,
                             size_t n, const size_t *q_offsets, const uint32_t *term_ids, const float *weights,
                             const size_t *t_offsets, const uint32_t *tokens, size_t k,
                             const uint32_t *out_ids, const size_t *out_counts, kd_sparse_index_stats *ist)
{
    if (!idx || !out_ids || !out_counts)
        return kd__mpi_fail(c, KD_E_INVALID, "kd_mpi_sparse_search_batch: NULL index or output");
    if (n == 0 || k == 0) return kd__mpi_fail(c, KD_E_INVALID, "kd_mpi_sparse_search_batch: n and k must be > 0");
    if (q_offsets && (!term_ids || !weights))
        return kd__mpi_fail(c, KD_E_INVALID, "kd_mpi_sparse_search_batch: q_offsets without terms or weights");
    if (t_offsets && !tokens)
        return kd__mpi_fail(c, KD_E_INVALID, "kd_mpi_sparse_search_batch: t_offsets without tokens");
    if (k > (size_t)INT_MAX / sizeof(hit) / n / 2)
        return kd__mpi_fail(c, KD_E_OVERFLOW, "kd_mpi_sparse_search_batch: n x k = %zu x %zu too large for one gather", n, k);
    for (size_t q = 0; q < n; q++) /* the CRC below reads the CSR arrays: check them first */
        if ((q_offsets && q_offsets[q + 1] < q_offsets[q]) || (t_offsets && t_offsets[q + 1] < t_offsets[q]))
            return kd__mpi_fail(c, KD_E_INVALID, "kd_mpi_sparse_search_batch: offsets decrease at query %zu", q);
    kd_sparse_search_config def;
    kd_sparse_search_config_default(&def);
    float wb = cfg ? cfg->weight_bm25 : def.weight_bm25;
    if (wb > 0.0f && t_offsets && t_offsets[n] > t_offsets[0])
        return kd__mpi_fail(c, KD_E_UNSUPPORTED,
                            "kd_mpi_sparse_search_batch: BM25 over shards needs corpus-wide N, df and avgdl; "
                            "set weight_bm25 = 0 or pass no tokens");
    memset(ist, 0, sizeof *ist);
    ist->struct_size = (uint32_t)sizeof *ist;
    kd_status st = kd_sparse_index_stats_get(idx, ist);
    if (st != KD_OK) return kd__mpi_fail(c, st, "kd_mpi_sparse_search_batch: kd_sparse_index_stats_get failed");
    return KD_OK;
}

kd_status kd_mpi_sparse_search_batch(kd_mpi_comm *comm, kd_context *ctx, const kd_sparse_index *idx,
                                     const kd_sparse_search_config *cfg, size_t n, const size_t *q_offsets,
                                     const uint32_t *term_ids, const float *weights, const size_t *t_offsets,
                                     const uint32_t *tokens, size_t k, uint32_t *out_ids, float *out_scores,
                                     size_t *out_counts)
{
    if (!comm) return KD_E_INVALID;
    kd_mpi_comm *c = comm;
    c->reason[0] = '\0';
    kd_sparse_index_stats ist;
    kd_status st = check_local(c, idx, cfg, n, q_offsets, term_ids, weights, t_offsets, tokens, k, out_ids,
                               out_counts, &ist);
    if ((st = kd__mpi_agree(c, st)) != KD_OK) return st;

    /* Queries, k, the search settings and the quantisation must agree. */
    uint32_t qcrc = 0, scale_bits;
    if (q_offsets) {
        qcrc = kd_crc32c(qcrc, q_offsets, (n + 1) * sizeof *q_offsets);
        size_t nnz = q_offsets[n] - q_offsets[0];
        qcrc = kd_crc32c(qcrc, term_ids + q_offsets[0], nnz * sizeof *term_ids);
        qcrc = kd_crc32c(qcrc, weights + q_offsets[0], nnz * sizeof *weights);
    }
    if (t_offsets) {
        qcrc = kd_crc32c(qcrc, t_offsets, (n + 1) * sizeof *t_offsets);
        qcrc = kd_crc32c(qcrc, tokens + t_offsets[0], (t_offsets[n] - t_offsets[0]) * sizeof *tokens);
    }
    kd_sparse_search_config sc;
    kd_sparse_search_config_default(&sc);
    if (cfg) {
        sc.algo = cfg->algo;
        sc.weight_sparse = cfg->weight_sparse;
        sc.weight_bm25 = cfg->weight_bm25;
        sc.bm25_k1 = cfg->bm25_k1;
        sc.bm25_b = cfg->bm25_b;
    }
    uint32_t ccrc = kd_crc32c(0, &sc.weight_sparse, sizeof sc.weight_sparse);
    ccrc = kd_crc32c(ccrc, &sc.weight_bm25, sizeof sc.weight_bm25);
    memcpy(&scale_bits, &ist.quant_scale, sizeof scale_bits);
    uint64_t sig[6] = {n, k, qcrc, ccrc, ist.quant_bits, scale_bits};
    static const char *const names[6] = {"the query count", "k", "the CRC-32C of the queries",
                                         "the CRC-32C of the score weights", "quant_bits",
                                         "the quantisation scale (bits of the float; build shards with one fixed quant_max)"};
    if ((st = kd__mpi_same(c, sig, names, 6, KD_E_INVALID, "kd_mpi_sparse_search_batch")) != KD_OK) return st;

    const size_t N = (size_t)c->size, per = n * k;
    uint32_t *lids = (uint32_t *)kd__mpi_alloc(c, per, sizeof *lids);
    float *lsc = (float *)kd__mpi_alloc(c, per, sizeof *lsc);
    size_t *lcnt = (size_t *)kd__mpi_alloc(c, n, sizeof *lcnt);
    hit *mine = (hit *)kd__mpi_alloc(c, per, sizeof *mine);
    hit *all = (hit *)kd__mpi_alloc(c, N * per, sizeof *all);
    size_t *heads = (size_t *)kd__mpi_alloc(c, N, sizeof *heads);
    st = lids && lsc && lcnt && mine && all && heads ? KD_OK : KD_E_NOMEM;
    if (st == KD_OK) {
        st = kd_sparse_index_search_batch(ctx, idx, cfg, n, q_offsets, term_ids, weights, t_offsets, tokens, k,
                                          lids, lsc, lcnt);
        if (st != KD_OK) {
            const char *why = kd_context_last_error(ctx);
            kd__mpi_fail(c, st, "kd_mpi_sparse_search_batch: local search: %s",
                         ctx && why && *why ? why : kd_status_string(st));
        }
    }
    if ((st = kd__mpi_agree(c, st)) != KD_OK) goto done;
    /* Unused slots get id UINT32_MAX and score -inf-like NaN-free sentinel;
     * counts travel separately below. */
    for (size_t q = 0; q < n; q++)
        for (size_t j = 0; j < k; j++) {
            hit h = {0.0f, UINT32_MAX};
            if (j < lcnt[q]) h = (hit){lsc[q * k + j], lids[q * k + j]};
            mine[q * k + j] = h;
        }
    c->stats.control_calls++;
    c->stats.gather_bytes += per * sizeof(hit);
    int rc = MPI_Allgather(mine, (int)(per * sizeof(hit)), MPI_BYTE, all, (int)(per * sizeof(hit)), MPI_BYTE,
                           c->comm);
    if ((st = kd__mpi_check(c, rc, "kd_mpi_sparse_search_batch: MPI_Allgather")) != KD_OK) goto done;
    /* k-way merge per query: each rank's list is already best first. */
    for (size_t q = 0; q < n; q++) {
        memset(heads, 0, N * sizeof *heads);
        size_t got = 0;
        while (got < k) {
            const hit *best = NULL;
            size_t br = 0;
            for (size_t r = 0; r < N; r++) {
                if (heads[r] >= k) continue;
                const hit *h = &all[r * per + q * k + heads[r]];
                if (h->id == UINT32_MAX) continue;
                if (!best || better(h, best)) {
                    best = h;
                    br = r;
                }
            }
            if (!best) break;
            out_ids[q * k + got] = best->id;
            if (out_scores) out_scores[q * k + got] = best->score;
            heads[br]++;
            got++;
        }
        out_counts[q] = got;
    }
done:
    kd__mpi_free(c, heads);
    kd__mpi_free(c, all);
    kd__mpi_free(c, mine);
    kd__mpi_free(c, lcnt);
    kd__mpi_free(c, lsc);
    kd__mpi_free(c, lids);
    return st;
}
