/* test_mpi_sparse.c - a sparse index sharded over the ranks returns the single index's
 * top-k bit for bit (ids and scores, ties by doc id); disagreement fails on every rank. */
#include <math.h>
#include <stdlib.h>

#include "mpi_test.h"

#define DOCS 400
#define VOCAB 60
#define QUERIES 25

typedef struct {
    uint32_t terms[12];
    float w[12];
    size_t nnz;
} doc;

static doc D[DOCS];
static uint32_t ID[DOCS];

/* Same corpus on every rank (seeded). Doc ids are scattered; every 10th document
 * copies its predecessor's vector, so equal scores occur and ties are exercised. */
static void make_corpus(void)
{
    kd_rng rng;
    kd_rng_seed(&rng, 7, 3);
    for (size_t d = 0; d < DOCS; d++) {
        ID[d] = (uint32_t)(d * 7919u % 100003u);
        if (d % 10 == 9) {
            D[d] = D[d - 1];
            continue;
        }
        D[d].nnz = 1 + kd_rng_below(&rng, 12);
        for (size_t j = 0; j < D[d].nnz; j++) {
            D[d].terms[j] = kd_rng_below(&rng, VOCAB);
            D[d].w[j] = 0.05f + 0.9f * kd_rng_uniform(&rng);
        }
    }
}

static kd_sparse_index *build(kd_context *ctx, int shard, int nshards, float quant_max)
{
    kd_sparse_index_config ic;
    kd_sparse_index_config_default(&ic);
    ic.quant_max = quant_max;
    kd_sparse_index_builder *b = NULL;
    kd_sparse_index *idx = NULL;
    if (kd_sparse_index_builder_create(ctx, &ic, &b) != KD_OK) return NULL;
    for (size_t d = 0; d < DOCS; d++)
        if (shard < 0 || (int)(ID[d] % (uint32_t)nshards) == shard)
            kd_sparse_index_builder_add(b, ID[d], D[d].terms, D[d].w, D[d].nnz, NULL, 0);
    kd_sparse_index_build(b, &idx);
    kd_sparse_index_builder_destroy(b);
    return idx;
}

int main(int argc, char **argv)
{
    mt_init(&argc, &argv);
    make_corpus();
    kd_context_config cc;
    kd_context_config_default(&cc);
    kd_context *ctx = NULL;
    kd_context_create(&cc, &ctx);
    kd_mpi_comm *comm = NULL;
    MPI_Comm world = MPI_COMM_WORLD;
    MT_CHECK(kd_mpi_comm_create(ctx, &world, &comm) == KD_OK, "create");

    kd_sparse_index *whole = build(ctx, -1, 1, 1.0f), *shard = build(ctx, mt_rank, mt_size, 1.0f);
    MT_CHECK(whole && shard, "index build: %s", kd_context_last_error(ctx));

    /* Queries: 1..6 terms each, CSR. */
    size_t qoff[QUERIES + 1];
    uint32_t qt[QUERIES * 6];
    float qw[QUERIES * 6];
    kd_rng rng;
    kd_rng_seed(&rng, 11, 5);
    qoff[0] = 0;
    for (size_t q = 0; q < QUERIES; q++) {
        size_t n = 1 + kd_rng_below(&rng, 6);
        for (size_t j = 0; j < n; j++) {
            qt[qoff[q] + j] = kd_rng_below(&rng, VOCAB);
            qw[qoff[q] + j] = 0.1f + kd_rng_uniform(&rng);
        }
        qoff[q + 1] = qoff[q] + n;
    }
    static const size_t ks[3] = {1, 10, 500}; /* 500 > documents matching any query */
    static const kd_sparse_algo algos[2] = {KD_SPARSE_MAXSCORE, KD_SPARSE_EXHAUSTIVE};
    uint32_t *ids = malloc(QUERIES * 500 * sizeof *ids), *ref_ids = malloc(QUERIES * 500 * sizeof *ids);
    float *sc = malloc(QUERIES * 500 * sizeof *sc), *ref_sc = malloc(QUERIES * 500 * sizeof *sc);
    size_t cnt[QUERIES], ref_cnt[QUERIES];
    int ties = 0;
    for (size_t a = 0; a < 2; a++)
        for (size_t ki = 0; ki < 3; ki++) {
            size_t k = ks[ki];
            kd_sparse_search_config scfg;
            kd_sparse_search_config_default(&scfg);
            scfg.algo = algos[a];
            scfg.threads = 1;
            MT_CHECK(kd_sparse_index_search_batch(ctx, whole, &scfg, QUERIES, qoff, qt, qw, NULL, NULL, k, ref_ids,
                                                  ref_sc, ref_cnt) == KD_OK,
                     "single index: %s", kd_context_last_error(ctx));
            kd_status st = kd_mpi_sparse_search_batch(comm, ctx, shard, &scfg, QUERIES, qoff, qt, qw, NULL, NULL, k,
                                                      ids, sc, cnt);
            MT_CHECK(st == KD_OK, "sharded: %s", kd_mpi_comm_last_error(comm));
            int same = 1;
            for (size_t q = 0; q < QUERIES && same; q++) {
                same = cnt[q] == ref_cnt[q];
                for (size_t j = 0; j < cnt[q] && same; j++) {
                    same = ids[q * k + j] == ref_ids[q * k + j] &&
                           memcmp(&sc[q * k + j], &ref_sc[q * k + j], sizeof(float)) == 0;
                    if (j > 0 && sc[q * k + j] == sc[q * k + j - 1]) ties++;
                }
            }
            MT_CHECK(same, "algo %zu k %zu: sharded top-k differs from the single index", a, k);
        }
    MT_CHECK(ties > 0, "the corpus produced no tied scores; the tie rule went untested");
    size_t total = 0;
    for (size_t q = 0; q < QUERIES; q++) total += ref_cnt[q];
    MT_CHECK(total > QUERIES * 10, "too few matches (%zu) for a meaningful comparison", total);
    /* out_scores may be NULL. */
    MT_CHECK(kd_mpi_sparse_search_batch(comm, ctx, shard, NULL, QUERIES, qoff, qt, qw, NULL, NULL, 10, ids, NULL,
                                        cnt) == KD_OK, "%s", kd_mpi_comm_last_error(comm));

    /* Shards quantised with their own maximum disagree on the scale: KD_E_INVALID everywhere. */
    kd_sparse_index *local = build(ctx, mt_rank, mt_size, 0.0f);
    kd_status st = kd_mpi_sparse_search_batch(comm, ctx, local, NULL, QUERIES, qoff, qt, qw, NULL, NULL, 10, ids,
                                              sc, cnt);
    MT_CHECK(st == KD_E_INVALID && strstr(kd_mpi_comm_last_error(comm), "quantisation scale"), "status %d: %s",
             (int)st, kd_mpi_comm_last_error(comm));
    kd_sparse_index_destroy(local);
    /* Another k on the last rank. */
    st = kd_mpi_sparse_search_batch(comm, ctx, shard, NULL, QUERIES, qoff, qt, qw, NULL, NULL,
                                    mt_rank == mt_size - 1 ? 9 : 10, ids, sc, cnt);
    MT_CHECK(st == KD_E_INVALID && strstr(kd_mpi_comm_last_error(comm), "k is 9"), "status %d: %s", (int)st,
             kd_mpi_comm_last_error(comm));
    /* Another query on rank 0. */
    qw[0] += mt_rank == 0 ? 1.0f : 0.0f;
    st = kd_mpi_sparse_search_batch(comm, ctx, shard, NULL, QUERIES, qoff, qt, qw, NULL, NULL, 10, ids, sc, cnt);
    MT_CHECK(st == KD_E_INVALID && strstr(kd_mpi_comm_last_error(comm), "queries"), "status %d: %s", (int)st,
             kd_mpi_comm_last_error(comm));
    qw[0] -= mt_rank == 0 ? 1.0f : 0.0f;
    /* BM25 over shards is refused with a reason. */
    size_t toff[QUERIES + 1];
    uint32_t tok[QUERIES];
    for (size_t q = 0; q <= QUERIES; q++) toff[q] = q;
    for (size_t q = 0; q < QUERIES; q++) tok[q] = (uint32_t)q;
    st = kd_mpi_sparse_search_batch(comm, ctx, shard, NULL, QUERIES, qoff, qt, qw, toff, tok, 10, ids, sc, cnt);
    MT_CHECK(st == KD_E_UNSUPPORTED && strstr(kd_mpi_comm_last_error(comm), "BM25"), "status %d: %s", (int)st,
             kd_mpi_comm_last_error(comm));
    /* Hostile arguments: NULL index on one rank, k 0, NULL comm. */
    st = kd_mpi_sparse_search_batch(comm, ctx, mt_rank == 1 ? NULL : shard, NULL, QUERIES, qoff, qt, qw, NULL,
                                    NULL, 10, ids, sc, cnt);
    MT_CHECK(st == KD_E_INVALID && strstr(kd_mpi_comm_last_error(comm), "rank 1: "), "status %d: %s", (int)st,
             kd_mpi_comm_last_error(comm));
    MT_CHECK(kd_mpi_sparse_search_batch(comm, ctx, shard, NULL, QUERIES, qoff, qt, qw, NULL, NULL, 0, ids, sc,
                                        cnt) == KD_E_INVALID, "k 0");
    MT_CHECK(kd_mpi_sparse_search_batch(NULL, ctx, shard, NULL, QUERIES, qoff, qt, qw, NULL, NULL, 10, ids, sc,
                                        cnt) == KD_E_INVALID, "NULL comm");
    size_t badoff[3] = {0, 5, 2}; /* decreasing offsets on one rank */
    st = kd_mpi_sparse_search_batch(comm, ctx, shard, NULL, 2, mt_rank == 1 ? badoff : qoff, qt, qw, NULL, NULL, 10,
                                    ids, sc, cnt);
    MT_CHECK(st == KD_E_INVALID && strstr(kd_mpi_comm_last_error(comm), "rank 1: kd_mpi_sparse_search_batch: offsets"),
             "status %d: %s", (int)st, kd_mpi_comm_last_error(comm));
    MT_CHECK(kd_mpi_sparse_search_batch(comm, ctx, shard, NULL, (size_t)1 << 40, qoff, qt, qw, NULL, NULL,
                                        (size_t)1 << 40, ids, sc, cnt) == KD_E_OVERFLOW, "huge n x k");

    free(ids);
    free(ref_ids);
    free(sc);
    free(ref_sc);
    kd_sparse_index_destroy(shard);
    kd_sparse_index_destroy(whole);
    kd_mpi_comm_destroy(comm);
    kd_context_destroy(ctx);
    return mt_finish("test_mpi_sparse");
}
