/*
 * test_concurrency.c - the documented thread-safety contracts, exercised from
 * several threads at once (scripts/test also runs this suite under
 * ThreadSanitizer):
 *  - a built or loaded kd_sparse_index is read-only: any number of threads
 *    search it at once, each with its own kd_context;
 *  - models are not shared: each thread loads the same checkpoint bytes into
 *    its own model and context;
 *  - process-wide lazy state (the CRC-32C tables) initialises once under a
 *    race.
 */
#include <pthread.h>
#include <string.h>

#include "kd_test.h"

#define THREADS 4
#define QUERIES 48
#define K 10

static kd_sparse_index *shared_index;
static uint32_t q_ids[QUERIES][6];
static float q_w[QUERIES][6];
static uint32_t want_ids[QUERIES][K];
static size_t want_n[QUERIES];

static void build_index(kd_context *ctx)
{
    kd_sparse_index_builder *b;
    ck_assert_int_eq(kd_sparse_index_builder_create(ctx, NULL, &b), KD_OK);
    kd_rng r;
    kd_rng_seed(&r, 77, 1);
    for (uint32_t d = 0; d < 3000; d++) {
        uint32_t ids[12], tok[20];
        float w[12];
        for (int t = 0; t < 12; t++) {
            ids[t] = (uint32_t)t * 40 + kd_rng_below(&r, 40);
            w[t] = 0.05f + kd_rng_uniform(&r);
        }
        for (int t = 0; t < 20; t++) tok[t] = kd_rng_below(&r, 300);
        ck_assert_int_eq(kd_sparse_index_builder_add(b, d, ids, w, 12, tok, 20), KD_OK);
    }
    ck_assert_int_eq(kd_sparse_index_build(b, &shared_index), KD_OK);
    kd_sparse_index_builder_destroy(b);
    for (int q = 0; q < QUERIES; q++)
        for (int t = 0; t < 6; t++) {
            q_ids[q][t] = (uint32_t)(t * 80) + kd_rng_below(&r, 80);
            q_w[q][t] = 0.1f + kd_rng_uniform(&r);
        }
}

static int search_all(kd_context *ctx, kd_sparse_algo algo, uint32_t ids[QUERIES][K], size_t n[QUERIES])
{
    kd_sparse_search_config cfg;
    kd_sparse_search_config_default(&cfg);
    cfg.algo = algo;
    for (int q = 0; q < QUERIES; q++)
        if (kd_sparse_index_search(ctx, shared_index, &cfg, q_ids[q], q_w[q], 6, q_ids[q], 6, K,
                                   ids[q], NULL, &n[q]) != KD_OK)
            return -1;
    return 0;
}

static void *searcher(void *arg)
{
    long t = (long)arg;
    kd_context *ctx = NULL;
    if (kd_context_create(NULL, &ctx) != KD_OK) return (void *)1;
    static uint32_t got[THREADS][QUERIES][K];
    static size_t got_n[THREADS][QUERIES];
    long bad = 0;
    for (int rep = 0; rep < 3; rep++) {
        kd_sparse_algo algo = (kd_sparse_algo)((t + rep) % 3);
        if (search_all(ctx, algo, got[t], got_n[t]) != 0) bad = 1;
        for (int q = 0; q < QUERIES && !bad; q++)
            if (got_n[t][q] != want_n[q] || memcmp(got[t][q], want_ids[q], want_n[q] * sizeof(uint32_t)))
                bad = 2;
    }
    kd_context_destroy(ctx);
    return (void *)bad;
}

START_TEST(concurrent_index_searches)
{
    kd_context *ctx = kd_test_ctx();
    build_index(ctx);
    ck_assert_int_eq(search_all(ctx, KD_SPARSE_EXHAUSTIVE, want_ids, want_n), 0);
    pthread_t th[THREADS];
    for (long t = 0; t < THREADS; t++) ck_assert_int_eq(pthread_create(&th[t], NULL, searcher, (void *)t), 0);
    for (int t = 0; t < THREADS; t++) {
        void *rv;
        pthread_join(th[t], &rv);
        ck_assert_msg(rv == NULL, "thread %d saw different results (%ld)", t, (long)rv);
    }
    /* The library's own batch threads agree as well. */
    size_t qo[QUERIES + 1], counts[QUERIES];
    uint32_t flat_ids[QUERIES * 6], out[QUERIES * K];
    float flat_w[QUERIES * 6];
    for (int q = 0; q <= QUERIES; q++) qo[q] = (size_t)q * 6;
    memcpy(flat_ids, q_ids, sizeof flat_ids);
    memcpy(flat_w, q_w, sizeof flat_w);
    kd_sparse_search_config cfg;
    kd_sparse_search_config_default(&cfg);
    cfg.threads = THREADS;
    ck_assert_int_eq(kd_sparse_index_search_batch(ctx, shared_index, &cfg, QUERIES, qo, flat_ids,
                                                  flat_w, qo, flat_ids, K, out, NULL, counts), KD_OK);
    for (int q = 0; q < QUERIES; q++) {
        ck_assert_uint_eq(counts[q], want_n[q]);
        ck_assert(memcmp(out + q * K, want_ids[q], want_n[q] * sizeof(uint32_t)) == 0);
    }
    kd_sparse_index_destroy(shared_index);
    kd_context_destroy(ctx);
}
END_TEST

static unsigned char *ckpt;
static size_t ckpt_n;
static float x_in[8 * 20], y_want[8 * 5];

static void *inferer(void *arg)
{
    (void)arg;
    kd_context *ctx = NULL;
    kd_model *m = NULL;
    long bad = 0;
    if (kd_context_create(NULL, &ctx) != KD_OK) return (void *)1;
    if (kd_model_load_memory(ctx, ckpt, ckpt_n, &m) != KD_OK) bad = 2;
    for (int rep = 0; rep < 50 && !bad; rep++) {
        const float *y;
        if (kd_model_forward(m, KD_MODE_INFER, x_in, 8 * 20, 8, &y) != KD_OK) bad = 3;
        else if (memcmp(y, y_want, sizeof y_want) != 0) bad = 4;
    }
    kd_model_destroy(m);
    kd_context_destroy(ctx);
    return (void *)bad;
}

START_TEST(one_checkpoint_many_models)
{
    kd_context *ctx = kd_test_ctx();
    kd_model *m;
    ck_assert_int_eq(kd_model_create_from_spec(ctx, "input 20; linear 64; gelu; layernorm; linear 5", &m), KD_OK);
    ck_assert_int_eq(kd_model_save_size(m, &ckpt_n), KD_OK);
    ckpt = malloc(ckpt_n);
    ck_assert_int_eq(kd_model_save_memory(m, ckpt, ckpt_n, NULL), KD_OK);
    kd_test_fill(x_in, 8 * 20, -1, 1, 4);
    const float *y;
    ck_assert_int_eq(kd_model_forward(m, KD_MODE_INFER, x_in, 8 * 20, 8, &y), KD_OK);
    memcpy(y_want, y, sizeof y_want);
    pthread_t th[THREADS];
    for (int t = 0; t < THREADS; t++) ck_assert_int_eq(pthread_create(&th[t], NULL, inferer, NULL), 0);
    for (int t = 0; t < THREADS; t++) {
        void *rv;
        pthread_join(th[t], &rv);
        ck_assert_msg(rv == NULL, "thread %d failed (%ld)", t, (long)rv);
    }
    free(ckpt);
    kd_model_destroy(m);
    kd_context_destroy(ctx);
}
END_TEST

static void *crc_first_use(void *arg)
{
    (void)arg;
    return (void *)(uintptr_t)(kd_crc32c(0, "123456789", 9) != 0xE3069283u);
}

/* Runs in a fresh process (CK_FORK): the tables are built under the race. */
START_TEST(crc_tables_initialise_once)
{
    pthread_t th[THREADS];
    for (int t = 0; t < THREADS; t++) ck_assert_int_eq(pthread_create(&th[t], NULL, crc_first_use, NULL), 0);
    for (int t = 0; t < THREADS; t++) {
        void *rv;
        pthread_join(th[t], &rv);
        ck_assert_ptr_null(rv);
    }
}
END_TEST

Suite *kd_test_suite(void)
{
    Suite *s = suite_create("concurrency");
    TCase *tc = tcase_create("concurrency");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, crc_tables_initialise_once);
    tcase_add_test(tc, concurrent_index_searches);
    tcase_add_test(tc, one_checkpoint_many_models);
    suite_add_tcase(s, tc);
    return s;
}
