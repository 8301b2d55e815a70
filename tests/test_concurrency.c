/*
 * test_concurrency.c - the documented thread-safety contracts, exercised from
 * several threads at once (scripts/test also runs this suite under
 * ThreadSanitizer):
 *  - a built or loaded kd_sparse_index is read-only: any number of threads
 *    search it at once, each with its own kd_context;
 *  - models are not shared for training or kd_model_forward: each thread
 *    loads the same checkpoint bytes into its own model and context;
 *  - one frozen model is shared by kd_model_infer: several threads, each with
 *    its own context and workspace, get results bit-identical to a
 *    single-threaded kd_model_forward, and the model's bytes do not change;
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

/* ---- one frozen model, many threads (kd_model_infer) -------------------- */

#define SH_SPEC "input 3x8x8; conv 8 3 pad 1; batchnorm; relu; maxpool 2; " \
                "residual { conv 8 3 pad 1; gelu }; dropout 0.5; flatten; linear 16; layernorm; linear 10"
#define SH_IN (3 * 8 * 8)
#define SH_OUT 10
#define SH_BIG 8
#define SH_SMALL 3

static const kd_model *shared_model;
static float sh_x[SH_BIG * SH_IN], sh_want_big[SH_BIG * SH_OUT], sh_want_small[SH_SMALL * SH_OUT];
static size_t sh_ws_bytes;

static void *shared_inferer(void *arg)
{
    long t = (long)arg, bad = 0;
    kd_context *ctx = NULL;
    if (kd_context_create(NULL, &ctx) != KD_OK) return (void *)1;
    /* Misaligned on purpose (odd threads): the library aligns inside. */
    unsigned char *mem = malloc(sh_ws_bytes + 1);
    void *ws = mem + (t & 1);
    float y[SH_BIG * SH_OUT];
    for (int rep = 0; rep < 40 && !bad && mem; rep++) {
        int big = (rep + (int)t) % 2 == 0;
        size_t b = big ? SH_BIG : SH_SMALL;
        memset(y, 0xff, sizeof y);
        if (kd_model_infer(shared_model, ctx, sh_x, b * SH_IN, b, y, b * SH_OUT, ws, sh_ws_bytes) != KD_OK)
            bad = 2;
        else if (memcmp(y, big ? sh_want_big : sh_want_small, b * SH_OUT * sizeof(float)) != 0)
            bad = 3;
    }
    if (!mem) bad = 4;
    free(mem);
    kd_context_destroy(ctx);
    return (void *)bad;
}

/* Every byte of every tensor (parameters and buffers), concatenated. */
static float *model_snapshot(kd_model *m, size_t *n)
{
    size_t total = 0, cnt = kd_model_tensor_count(m);
    for (size_t i = 0; i < cnt; i++) {
        size_t e;
        ck_assert_int_eq(kd_model_tensor(m, i, NULL, &e, NULL, NULL, NULL), KD_OK);
        total += e;
    }
    float *s = malloc(total * sizeof(float) + 1), *p = s;
    for (size_t i = 0; i < cnt; i++) {
        float *d;
        size_t e;
        ck_assert_int_eq(kd_model_tensor(m, i, &d, &e, NULL, NULL, NULL), KD_OK);
        memcpy(p, d, e * sizeof(float));
        p += e;
    }
    *n = total;
    return s;
}

START_TEST(one_model_many_threads)
{
    kd_context *ctx = kd_test_ctx();
    kd_model *m;
    ck_assert_int_eq(kd_model_create_from_spec(ctx, SH_SPEC, &m), KD_OK);
    /* Non-trivial batch-norm statistics, so that the buffers matter. */
    size_t cnt = kd_model_tensor_count(m);
    for (size_t i = 0; i < cnt; i++) {
        float *d;
        size_t e;
        int trainable;
        ck_assert_int_eq(kd_model_tensor(m, i, &d, &e, NULL, NULL, &trainable), KD_OK);
        if (!trainable) kd_test_fill(d, e, 0.5f, 1.5f, 100 + i);
    }
    kd_test_fill(sh_x, SH_BIG * SH_IN, -1, 1, 9);
    const float *y;
    ck_assert_int_eq(kd_model_forward(m, KD_MODE_INFER, sh_x, SH_SMALL * SH_IN, SH_SMALL, &y), KD_OK);
    memcpy(sh_want_small, y, sizeof sh_want_small);
    ck_assert_int_eq(kd_model_forward(m, KD_MODE_INFER, sh_x, SH_BIG * SH_IN, SH_BIG, &y), KD_OK);
    memcpy(sh_want_big, y, sizeof sh_want_big);
    for (size_t i = 0; i < SH_BIG * SH_OUT; i++) ck_assert(isfinite(sh_want_big[i]));
    size_t n_before, n_after;
    float *before = model_snapshot(m, &n_before);

    ck_assert_int_eq(kd_model_infer_workspace_size(m, SH_BIG, &sh_ws_bytes), KD_OK);
    size_t small_bytes;
    ck_assert_int_eq(kd_model_infer_workspace_size(m, SH_SMALL, &small_bytes), KD_OK);
    ck_assert_uint_lt(small_bytes, sh_ws_bytes);
    shared_model = m;
    pthread_t th[THREADS];
    for (long t = 0; t < THREADS; t++)
        ck_assert_int_eq(pthread_create(&th[t], NULL, shared_inferer, (void *)t), 0);
    for (int t = 0; t < THREADS; t++) {
        void *rv;
        pthread_join(th[t], &rv);
        ck_assert_msg(rv == NULL, "thread %d: %ld (2 failed, 3 differed)", t, (long)rv);
    }
    float *after = model_snapshot(m, &n_after);
    ck_assert_uint_eq(n_before, n_after);
    ck_assert(memcmp(before, after, n_before * sizeof(float)) == 0);
    /* The model's own forward still gives the same (its buffers were not touched either). */
    ck_assert_int_eq(kd_model_forward(m, KD_MODE_INFER, sh_x, SH_BIG * SH_IN, SH_BIG, &y), KD_OK);
    ck_assert(memcmp(y, sh_want_big, sizeof sh_want_big) == 0);
    free(before);
    free(after);
    kd_model_destroy(m);
    kd_context_destroy(ctx);
}
END_TEST

/* kd_model_infer allocates nothing and agrees with the model's forward, for
 * dense and id models, from an exactly sized workspace. */
START_TEST(infer_allocates_nothing)
{
    kd_test_alloc ta = {0};
    kd_context *ctx = kd_test_ctx_counting(&ta);
    const char *specs[] = {"input 20; linear 64; gelu; layernorm; linear 5", "input ids 4; embedding 50 8; flatten; linear 6",
                           "input bags; embeddingbag 30 7 mean; tanh; linear 3"};
    for (int k = 0; k < 3; k++) {
        kd_model *m;
        ck_assert_int_eq(kd_model_create_from_spec(ctx, specs[k], &m), KD_OK);
        ck_assert_int_eq(kd_model_blocks(m, NULL, NULL, NULL), KD_OK);
        size_t out_n, bytes;
        ck_assert_int_eq(kd_model_output_shape(m, NULL, NULL, &out_n), KD_OK);
        ck_assert_int_eq(kd_model_infer_workspace_size(m, 5, &bytes), KD_OK);
        float x[5 * 20], got[5 * 8], *ws = malloc(bytes);
        int32_t ids[20], offs[6] = {0, 3, 3, 7, 12, 20};
        for (int i = 0; i < 20; i++) ids[i] = (i * 7) % 30;
        kd_test_fill(x, 5 * 20, -2, 2, 3);
        long calls = ta.calls;
        kd_status st = k == 0 ? kd_model_infer(m, ctx, x, 5 * 20, 5, got, 5 * out_n, ws, bytes)
                       : kd_model_infer_ids(m, ctx, ids, 20, k == 2 ? offs : NULL, 5, got, 5 * out_n, ws, bytes);
        ck_assert_msg(st == KD_OK, "%s: %s", specs[k], kd_context_last_error(ctx));
        ck_assert_int_eq(ta.calls, calls);
        const float *y;
        st = k == 0 ? kd_model_forward(m, KD_MODE_INFER, x, 5 * 20, 5, &y)
                    : kd_model_forward_ids(m, KD_MODE_INFER, ids, 20, k == 2 ? offs : NULL, 5, &y);
        ck_assert_int_eq(st, KD_OK);
        ck_assert(memcmp(got, y, 5 * out_n * sizeof(float)) == 0);
        free(ws);
        kd_model_destroy(m);
    }
    kd_context_destroy(ctx);
    ck_assert_int_eq(ta.live, 0);
}
END_TEST

START_TEST(infer_hostile_arguments)
{
    kd_context *ctx = kd_test_ctx();
    kd_model *m, *fresh, *moe, *ids;
    ck_assert_int_eq(kd_model_create_from_spec(ctx, "input 20; linear 7; relu; linear 5", &m), KD_OK);
    ck_assert_int_eq(kd_model_blocks(m, NULL, NULL, NULL), KD_OK);
    size_t bytes = 0;
    ck_assert_int_eq(kd_model_infer_workspace_size(m, 4, &bytes), KD_OK);
    ck_assert_uint_gt(bytes, 4 * 7 * sizeof(float));
    unsigned char *ws = aligned_alloc(64, (bytes + 127) / 64 * 64);
    float x[4 * 20], y[4 * 5];
    kd_test_fill(x, 4 * 20, -1, 1, 1);
    /* workspace_size */
    ck_assert_int_eq(kd_model_infer_workspace_size(NULL, 4, &bytes), KD_E_INVALID);
    ck_assert_int_eq(kd_model_infer_workspace_size(m, 4, NULL), KD_E_INVALID);
    ck_assert_int_eq(kd_model_infer_workspace_size(m, 0, &bytes), KD_E_INVALID);
    ck_assert_int_eq(kd_model_infer_workspace_size(m, SIZE_MAX, &bytes), KD_E_OVERFLOW);
    ck_assert_int_eq(kd_model_infer_workspace_size(m, SIZE_MAX / 64, &bytes), KD_E_OVERFLOW);
    ck_assert_int_eq(kd_model_infer_workspace_size(m, 4, &bytes), KD_OK);
    /* infer */
    ck_assert_int_eq(kd_model_infer(NULL, ctx, x, 80, 4, y, 20, ws, bytes), KD_E_INVALID);
    ck_assert_int_eq(kd_model_infer(m, NULL, x, 80, 4, y, 20, ws, bytes), KD_E_INVALID);
    ck_assert_int_eq(kd_model_infer(m, ctx, NULL, 80, 4, y, 20, ws, bytes), KD_E_INVALID);
    ck_assert_int_eq(kd_model_infer(m, ctx, x, 80, 4, NULL, 20, ws, bytes), KD_E_INVALID);
    ck_assert_int_eq(kd_model_infer(m, ctx, x, 80, 4, y, 20, NULL, bytes), KD_E_INVALID);
    ck_assert_int_eq(kd_model_infer(m, ctx, x, 0, 0, y, 0, ws, bytes), KD_E_INVALID);
    ck_assert_int_eq(kd_model_infer(m, ctx, x, 79, 4, y, 20, ws, bytes), KD_E_SHAPE);
    ck_assert_int_eq(kd_model_infer(m, ctx, x, 80, 4, y, 21, ws, bytes), KD_E_SHAPE);
    ck_assert_int_eq(kd_model_infer(m, ctx, x, 80, SIZE_MAX / 2, y, 20, ws, bytes), KD_E_OVERFLOW);
    ck_assert_int_eq(kd_model_infer(m, ctx, x, 20 * (SIZE_MAX / 2000), SIZE_MAX / 2000, y, 20, ws, bytes),
                     KD_E_OVERFLOW);
    /* too small by one byte (aligned buffer: the KD_ALIGN slack is not needed,
     * so only a cut into the floats themselves fails) */
    size_t need = bytes - 64;
    ck_assert_int_eq(kd_model_infer(m, ctx, x, 80, 4, y, 20, ws, need - 1), KD_E_INVALID);
    ck_assert_ptr_nonnull(strstr(kd_context_last_error(ctx), "too small"));
    ck_assert_int_eq(kd_model_infer(m, ctx, x, 80, 4, y, 20, ws, 0), KD_E_INVALID);
    ck_assert_int_eq(kd_model_infer(m, ctx, x, 80, 4, y, 20, ws + 1, 62), KD_E_INVALID);
    ck_assert_int_eq(kd_model_infer(m, ctx, x, 80, 4, y, 20, ws, need), KD_OK);
    ck_assert_int_eq(kd_model_infer(m, ctx, x, 80, 4, y, 20, ws + 63, bytes), KD_OK);
    /* a batch larger than the workspace was sized for */
    float x8[8 * 20], y8[8 * 5];
    kd_test_fill(x8, 8 * 20, -1, 1, 2);
    ck_assert_int_eq(kd_model_infer(m, ctx, x8, 160, 8, y8, 40, ws, bytes), KD_E_INVALID);
    /* NaN passes through (as kd_model_forward), nothing fails */
    x[3] = NAN;
    ck_assert_int_eq(kd_model_infer(m, ctx, x, 80, 4, y, 20, ws, bytes), KD_OK);
    ck_assert(isnan(y[0]));
    for (int i = 5; i < 20; i++) ck_assert(isfinite(y[i]));
    /* a model without weights yet, an MoE model, id/dense mismatches */
    ck_assert_int_eq(kd_model_create_from_spec(ctx, "input 20; linear 5", &fresh), KD_OK);
    ck_assert_int_eq(kd_model_infer_workspace_size(fresh, 4, &bytes), KD_E_STATE);
    ck_assert_int_eq(kd_model_infer(fresh, ctx, x, 80, 4, y, 20, ws, bytes), KD_E_STATE);
    ck_assert_int_eq(kd_model_create_from_spec(ctx, "input 8; moe 4 2 16 relu; linear 3", &moe), KD_OK);
    ck_assert_int_eq(kd_model_blocks(moe, NULL, NULL, NULL), KD_OK);
    ck_assert_int_eq(kd_model_infer_workspace_size(moe, 4, &bytes), KD_E_UNSUPPORTED);
    ck_assert_int_eq(kd_model_infer(moe, ctx, x, 32, 4, y, 12, ws, bytes), KD_E_UNSUPPORTED);
    ck_assert_ptr_nonnull(strstr(kd_context_last_error(ctx), "moe"));
    ck_assert_int_eq(kd_model_create_from_spec(ctx, "input ids 2; embedding 10 4; flatten; linear 5", &ids), KD_OK);
    ck_assert_int_eq(kd_model_blocks(ids, NULL, NULL, NULL), KD_OK);
    ck_assert_int_eq(kd_model_infer_workspace_size(ids, 4, &bytes), KD_OK);
    int32_t tok[8] = {0, 1, 2, 3, 4, 5, 6, 7}, bad_tok[8] = {0, 1, 2, 3, 4, 5, 6, 10};
    ck_assert_int_eq(kd_model_infer(ids, ctx, x, 8, 4, y, 20, ws, bytes), KD_E_INVALID);
    ck_assert_int_eq(kd_model_infer_ids(m, ctx, tok, 8, NULL, 4, y, 20, ws, bytes), KD_E_INVALID);
    ck_assert_int_eq(kd_model_infer_ids(ids, ctx, tok, 7, NULL, 4, y, 20, ws, bytes), KD_E_SHAPE);
    ck_assert_int_eq(kd_model_infer_ids(ids, ctx, NULL, 8, NULL, 4, y, 20, ws, bytes), KD_E_INVALID);
    ck_assert_int_eq(kd_model_infer_ids(ids, ctx, bad_tok, 8, NULL, 4, y, 20, ws, bytes), KD_E_INVALID);
    ck_assert_ptr_nonnull(strstr(kd_context_last_error(ctx), "outside"));
    ck_assert_int_eq(kd_model_infer_ids(ids, ctx, tok, 8, tok, 4, y, 20, ws, bytes), KD_E_INVALID);
    ck_assert_int_eq(kd_model_infer_ids(ids, ctx, tok, 8, NULL, 4, y, 20, ws, bytes), KD_OK);
    ck_assert_int_eq(kd_model_infer_ids(ids, NULL, tok, 8, NULL, 4, y, 20, ws, bytes), KD_E_INVALID);
    kd_model_destroy(ids);
    kd_model_destroy(moe);
    kd_model_destroy(fresh);
    free(ws);
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
    tcase_add_test(tc, one_model_many_threads);
    tcase_add_test(tc, infer_allocates_nothing);
    tcase_add_test(tc, infer_hostile_arguments);
    suite_add_tcase(s, tc);
    return s;
}
