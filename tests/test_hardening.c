/*
 * test_hardening.c - allocation-failure walks over the public create, load,
 * open and build paths that no other suite walks (found by listing every
 * KD_API *_create / *_load* / *_open* / *_build / *_from* function and the
 * bodies handed to kd_test_alloc_failures; see docs/RELIABILITY.md), and a
 * training step that meets a NaN gradient behind a finite loss, and GEMM
 * that never reads past the end of C (a BLIS 0.9 over-read that libkd works
 * around; see kd_gemm_blis.c).
 *
 * Each walk fails the 1st, 2nd, ... allocation of its body until the body
 * succeeds: every failing run must return KD_E_NOMEM (or KD_E_OVERFLOW) and
 * leave no live block (kd_test_alloc_failures asserts both).
 */
#define _DEFAULT_SOURCE /* MAP_ANONYMOUS */
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "kd_test.h"

static char dir[64], path[160], path2[160];

static void setup(void)
{
    kd_test_tmpdir(dir, sizeof dir, "hard");
    snprintf(path, sizeof path, "%s/a.bin", dir);
    snprintf(path2, sizeof path2, "%s/b.bin", dir);
}

static void teardown(void) { kd_test_rmdir(dir); }

/* ---- checkpoints: load from a file, weights into an existing model ------- */

#define CK_SPEC "input 6; linear 5; layernorm; relu; linear 3"

static kd_status load_file_body(kd_context *ctx, void *user)
{
    (void)user;
    kd_model *m = NULL;
    kd_status st = kd_model_load(ctx, path, &m);
    if (st == KD_OK) {
        const float *y;
        float x[2 * 6] = {1, 2, 3, 4, 5, 6, -1, -2, -3, -4, -5, -6};
        st = kd_model_forward(m, KD_MODE_INFER, x, 12, 2, &y);
    }
    kd_model_destroy(m);
    return st;
}

typedef struct {
    const unsigned char *buf;
    size_t n;
} bytes;

static kd_status load_weights_body(kd_context *ctx, void *user)
{
    const bytes *b = (const bytes *)user;
    kd_model *m = NULL;
    kd_status st = kd_model_create_from_spec(ctx, CK_SPEC, &m);
    if (st == KD_OK) st = b ? kd_model_load_weights_memory(m, b->buf, b->n) : kd_model_load_weights(m, path);
    kd_model_destroy(m);
    return st;
}

START_TEST(checkpoint_loads_fail_cleanly)
{
    kd_context *ctx = kd_test_ctx();
    kd_model *m;
    ck_assert_int_eq(kd_model_create_from_spec(ctx, CK_SPEC, &m), KD_OK);
    ck_assert_int_eq(kd_model_save(m, path), KD_OK);
    bytes b;
    b.buf = kd_test_read_file(path, &b.n);
    kd_model_destroy(m);
    kd_context_destroy(ctx);
    ck_assert_int_gt(kd_test_alloc_failures(load_file_body, NULL), 3);
    ck_assert_int_gt(kd_test_alloc_failures(load_weights_body, NULL), 3);
    ck_assert_int_gt(kd_test_alloc_failures(load_weights_body, &b), 3);
    free((void *)b.buf);
}
END_TEST

/* ---- teacher-logit cache: open from memory, write from a teacher --------- */

#define TV 40
#define TDIM 5
#define TROWS 70

static void lin_teacher_logits(const float *x, size_t batch, float *z)
{
    for (size_t r = 0; r < batch; r++)
        for (size_t c = 0; c < TV; c++) {
            float s = 0;
            for (size_t j = 0; j < TDIM; j++) s += x[r * TDIM + j] * (float)((c * 7 + j * 3) % 11 - 5);
            z[r * TV + c] = 0.3f * s;
        }
}

static int teacher_fn(void *user, const float *x, size_t batch, size_t input_dim, float *logits,
                      size_t classes)
{
    (void)user, (void)input_dim, (void)classes;
    lin_teacher_logits(x, batch, logits);
    return 0;
}

static float teach_x[TROWS * TDIM];

static kd_cache_config small_cache_cfg(void)
{
    kd_cache_config cfg;
    kd_cache_config_default(&cfg);
    cfg.k = 6;
    cfg.block_positions = 16;
    cfg.batch = 32;
    return cfg;
}

static kd_status write_teacher_body(kd_context *ctx, void *user)
{
    (void)user;
    kd_teacher *t = NULL;
    kd_status st = kd_teacher_from_callback(ctx, TDIM, TV, teacher_fn, NULL, &t);
    if (st != KD_OK) return st;
    kd_dataset ds = {sizeof ds, teach_x, TROWS, TDIM, NULL};
    kd_cache_config cfg = small_cache_cfg();
    st = kd_cache_write_teacher(ctx, t, &ds, path2, &cfg, 0);
    kd_teacher_destroy(t);
    return st;
}

static kd_status open_memory_body(kd_context *ctx, void *user)
{
    const bytes *b = (const bytes *)user;
    kd_logit_cache *c = NULL;
    kd_status st = kd_logit_cache_open_memory(ctx, b->buf, b->n, &c);
    if (st == KD_OK) {
        uint64_t rows[3] = {0, 33, TROWS - 1};
        int32_t ids[3 * 6];
        float v[3 * 6], tail[3];
        st = kd_logit_cache_rows(c, rows, 3, ids, v, tail, NULL);
    }
    kd_logit_cache_close(c);
    return st;
}

START_TEST(cache_paths_fail_cleanly)
{
    kd_test_fill(teach_x, TROWS * TDIM, -1, 1, 12);
    ck_assert_int_gt(kd_test_alloc_failures(write_teacher_body, NULL), 2);
    /* The last (successful) run wrote a complete cache; open it from memory. */
    bytes b;
    b.buf = kd_test_read_file(path2, &b.n);
    ck_assert_int_ge(kd_test_alloc_failures(open_memory_body, &b), 1);
    kd_context *ctx = kd_test_ctx();
    kd_logit_cache *c;
    ck_assert_int_eq(kd_logit_cache_open_memory(ctx, b.buf, b.n, &c), KD_OK);
    ck_assert_uint_eq(kd_logit_cache_positions(c), TROWS);
    kd_logit_cache_close(c);
    kd_context_destroy(ctx);
    free((void *)b.buf);
}
END_TEST

/* ---- students and model teachers ---------------------------------------- */

static kd_status student_body(kd_context *ctx, void *user)
{
    (void)user;
    kd_model *tm = NULL, *sm = NULL;
    kd_optimizer *opt = NULL;
    kd_loss *loss = NULL;
    kd_student *s = NULL;
    kd_teacher *t = NULL;
    kd_status st = kd_model_create_from_spec(ctx, "input 5; linear 8; relu; linear 4", &tm);
    if (st == KD_OK) st = kd_model_create_from_spec(ctx, "input 5; linear 4", &sm);
    if (st == KD_OK) st = kd_teacher_from_model(ctx, tm, &t);
    kd_optimizer_config oc;
    kd_optimizer_config_default(&oc, KD_OPTIM_ADAMW);
    if (st == KD_OK) st = kd_optimizer_create(sm, &oc, &opt);
    kd_loss_hinton_config hc;
    kd_loss_hinton_config_default(&hc);
    hc.alpha = 1.0f;
    if (st == KD_OK) st = kd_loss_create(ctx, kd_loss_hinton(), &hc, &loss);
    kd_student_config sc;
    kd_student_config_default(&sc);
    sc.max_grad_norm = 1.0f;
    if (st == KD_OK) st = kd_student_create(ctx, sm, opt, &sc, &s);
    if (st == KD_OK) st = kd_student_add_loss(s, loss, 1.0f, KD_TERM_NO_LABELS);
    float x[3 * 5] = {1, 0, -1, 2, 0.5f, 0, 1, 1, -1, 0, 2, -2, 0, 1, 1}, z[3 * 4];
    if (st == KD_OK) st = kd_teacher_logits(t, x, 3, z);
    if (st == KD_OK) st = kd_student_step(s, x, 3, NULL, z, NULL);
    kd_student_destroy(s);
    kd_loss_destroy(loss);
    kd_optimizer_destroy(opt);
    kd_teacher_destroy(t);
    kd_model_destroy(sm);
    kd_model_destroy(tm);
    return st;
}

START_TEST(student_and_teacher_creation_fail_cleanly)
{
    ck_assert_int_gt(kd_test_alloc_failures(student_body, NULL), 6);
}
END_TEST

/* ---- sparse index: load from a file and from memory, searcher ------------ */

static kd_status index_load_body(kd_context *ctx, void *user)
{
    const bytes *b = (const bytes *)user;
    kd_sparse_index *idx = NULL;
    kd_status st = b ? kd_sparse_index_load_memory(ctx, b->buf, b->n, &idx)
                     : kd_sparse_index_load(ctx, path, &idx);
    if (st == KD_OK) {
        uint32_t q[3] = {1, 7, 30}, out[5];
        float w[3] = {1, 0.5f, 0.25f};
        size_t n = 0;
        st = kd_sparse_index_search(ctx, idx, NULL, q, w, 3, NULL, 0, 5, out, NULL, &n);
        if (st == KD_OK && n == 0) st = KD_E_INTERNAL;
    }
    /* A reusable searcher over the loaded index: same results. */
    kd_sparse_searcher *srch = NULL;
    if (st == KD_OK) st = kd_sparse_searcher_create(ctx, idx, &srch);
    if (st == KD_OK) {
        uint32_t q[2] = {3, 44}, out[4];
        float w[2] = {0.5f, 2};
        size_t n = 0;
        st = kd_sparse_searcher_search(srch, NULL, q, w, 2, NULL, 0, 4, out, NULL, &n);
    }
    kd_sparse_searcher_destroy(srch);
    kd_sparse_index_destroy(idx);
    return st;
}

START_TEST(index_loads_fail_cleanly)
{
    kd_context *ctx = kd_test_ctx();
    kd_sparse_index_builder *bld;
    ck_assert_int_eq(kd_sparse_index_builder_create(ctx, NULL, &bld), KD_OK);
    kd_rng r;
    kd_rng_seed(&r, 3, 3);
    for (uint32_t d = 0; d < 200; d++) {
        uint32_t ids[5];
        float w[5];
        for (int t = 0; t < 5; t++) {
            ids[t] = (uint32_t)t * 10 + kd_rng_below(&r, 10);
            w[t] = 0.1f + kd_rng_uniform(&r);
        }
        ck_assert_int_eq(kd_sparse_index_builder_add(bld, d, ids, w, 5, NULL, 0), KD_OK);
    }
    kd_sparse_index *idx;
    ck_assert_int_eq(kd_sparse_index_build(bld, &idx), KD_OK);
    kd_sparse_index_builder_destroy(bld);
    ck_assert_int_eq(kd_sparse_index_save(idx, path), KD_OK);
    kd_sparse_index_destroy(idx);
    kd_context_destroy(ctx);
    bytes b;
    size_t n;
    unsigned char *raw = kd_test_read_file(path, &n);
    /* 8-byte aligned: borrowed in place; misaligned: copied (another path). */
    unsigned char *al = aligned_alloc(64, (n + 64) / 64 * 64 + 64);
    memcpy(al, raw, n);
    b.buf = al;
    b.n = n;
    ck_assert_int_ge(kd_test_alloc_failures(index_load_body, NULL), 1);
    ck_assert_int_ge(kd_test_alloc_failures(index_load_body, &b), 1);
    memmove(al + 1, al, n);
    b.buf = al + 1;
    ck_assert_int_ge(kd_test_alloc_failures(index_load_body, &b), 2);
    free(al);
    free(raw);
}
END_TEST

/* ---- vocabulary maps and contexts ---------------------------------------- */

static kd_status vocab_body(kd_context *ctx, void *user)
{
    (void)user;
    int32_t map[10] = {0, 1, -1, 2, 2, -1, 3, 0, -1, 1};
    kd_vocab_map *vm = NULL;
    kd_status st = kd_vocab_map_from_ids(ctx, 10, 4, map, &vm);
    kd_vocab_map_destroy(vm);
    return st;
}

START_TEST(vocab_map_and_context_fail_cleanly)
{
    ck_assert_int_ge(kd_test_alloc_failures(vocab_body, NULL), 1);
    /* kd_test_alloc_failures never fails the context's own allocation. */
    kd_test_alloc ta = {0, 0, 1, 0};
    kd_context_config cfg;
    kd_context_config_default(&cfg);
    cfg.allocator.alloc = kd_test_alloc_fn;
    cfg.allocator.free = kd_test_free_fn;
    cfg.allocator.opaque = &ta;
    kd_context *ctx = (kd_context *)&ta; /* must be set to NULL on failure */
    ck_assert_int_eq(kd_context_create(&cfg, &ctx), KD_E_NOMEM);
    ck_assert_ptr_null(ctx);
    ck_assert_int_eq(ta.failed, 1);
    ck_assert_int_eq(ta.live, 0);
}
END_TEST

/* ---- a NaN gradient behind a finite loss --------------------------------- */

typedef struct {
    int mode;     /* 0: leave the gradients, 1: one NaN, 2: one +Inf */
    long calls;
} poison;

static int poison_hook(void *user, kd_model *m, size_t batch, double loss)
{
    (void)batch;
    poison *p = (poison *)user;
    p->calls++;
    if (!isfinite(loss)) return 1; /* the loss itself must be finite here */
    float *g;
    size_t n;
    if (p->mode && kd_model_blocks(m, NULL, &g, &n) == KD_OK) g[n / 2] = p->mode == 1 ? NAN : INFINITY;
    return 0;
}

/* The student's gradient hook (what a data-parallel all-reduce would do)
 * turns one gradient into NaN or Inf while the loss is finite: the step must
 * fail with KD_E_NUMERIC and a reason, whether or not clipping is on, and
 * leave the weights, the optimizer's step count and its state untouched. */
START_TEST(nan_gradient_never_reaches_the_weights)
{
    for (int clip = 0; clip < 2; clip++) {
        kd_context *ctx = kd_test_ctx();
        kd_model *m;
        ck_assert_int_eq(kd_model_create_from_spec(ctx, "input 5; linear 6; tanh; linear 3", &m), KD_OK);
        kd_optimizer *opt;
        kd_optimizer_config oc;
        kd_optimizer_config_default(&oc, KD_OPTIM_ADAMW);
        oc.lr = 1e-2f;
        ck_assert_int_eq(kd_optimizer_create(m, &oc, &opt), KD_OK);
        kd_loss *loss;
        kd_loss_hinton_config hc;
        kd_loss_hinton_config_default(&hc);
        hc.alpha = 1.0f;
        ck_assert_int_eq(kd_loss_create(ctx, kd_loss_hinton(), &hc, &loss), KD_OK);
        kd_student_config sc;
        kd_student_config_default(&sc);
        sc.max_grad_norm = clip ? 1.0f : 0.0f;
        kd_student *s;
        ck_assert_int_eq(kd_student_create(ctx, m, opt, &sc, &s), KD_OK);
        ck_assert_int_eq(kd_student_add_loss(s, loss, 1.0f, KD_TERM_NO_LABELS), KD_OK);
        poison p = {0, 0};
        ck_assert_int_eq(kd_student_set_grad_hook(s, poison_hook, &p), KD_OK);
        float x[4 * 5], z[4 * 3];
        kd_test_fill(x, 20, -1, 1, 5);
        kd_test_fill(z, 12, -2, 2, 6);
        /* One clean step first, so that the optimizer has state to protect. */
        ck_assert_int_eq(kd_student_step(s, x, 4, NULL, z, NULL), KD_OK);
        float *w;
        size_t n;
        ck_assert_int_eq(kd_model_blocks(m, &w, NULL, &n), KD_OK);
        float *saved = malloc(n * sizeof *w);
        memcpy(saved, w, n * sizeof *w);
        for (int mode = 1; mode <= 2; mode++) {
            p.mode = mode;
            long before = p.calls;
            kd_step_report rep = {sizeof rep};
            ck_assert_int_eq(kd_student_step(s, x, 4, NULL, z, &rep), KD_E_NUMERIC);
            ck_assert_int_eq(p.calls, before + 1);
            ck_assert_msg(strstr(kd_context_last_error(ctx), "grad") != NULL, "reason: %s",
                          kd_context_last_error(ctx));
            ck_assert(memcmp(saved, w, n * sizeof *w) == 0);
            ck_assert_uint_eq(kd_optimizer_steps(opt), 1);
        }
        /* The student recovers: the next clean step updates as usual. */
        p.mode = 0;
        kd_step_report rep = {sizeof rep};
        ck_assert_int_eq(kd_student_step(s, x, 4, NULL, z, &rep), KD_OK);
        ck_assert(isfinite(rep.grad_norm) && rep.grad_norm > 0);
        ck_assert_uint_eq(kd_optimizer_steps(opt), 2);
        for (size_t i = 0; i < n; i++) ck_assert(isfinite(w[i]));
        ck_assert(memcmp(saved, w, n * sizeof *w) != 0);
        free(saved);
        kd_student_destroy(s);
        kd_loss_destroy(loss);
        kd_optimizer_destroy(opt);
        kd_model_destroy(m);
        kd_context_destroy(ctx);
    }
}
END_TEST

/* ---- GEMM never reads past the end of C ---------------------------------- */

/* bytes of memory that end exactly where an inaccessible page begins */
static float *before_guard_page(size_t size, void **map, size_t *map_len)
{
    size_t pg = (size_t)sysconf(_SC_PAGESIZE), pages = (size + pg - 1) / pg + 1;
    unsigned char *mem = mmap(NULL, pages * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    ck_assert(mem != MAP_FAILED);
    ck_assert_int_eq(mprotect(mem + (pages - 1) * pg, pg, PROT_NONE), 0);
    *map = mem;
    *map_len = pages * pg;
    return (float *)(mem + (pages - 1) * pg - size);
}

/*
 * C (m x n, ldc == n) ends at a guard page, for the shapes whose last row
 * BLIS 0.9's haswell-family kernels over-read (n % 4 in {2, 3}) and others,
 * under every sub-configuration this CPU runs (one process per test: the
 * choice is per process, so each arch is a loop of forked children). A read
 * past C is a SIGSEGV; results must match a plain triple loop.
 */
static void gemm_guard_shapes(kd_context *ctx)
{
    static const size_t ms[] = {1, 2, 5, 9};
    static const size_t ns[] = {1, 2, 3, 5, 6, 7, 10, 11, 14, 15, 19};
    static const size_t ks[] = {1, 300};
    for (size_t mi = 0; mi < sizeof ms / sizeof ms[0]; mi++)
        for (size_t ni = 0; ni < sizeof ns / sizeof ns[0]; ni++)
            for (size_t ki = 0; ki < sizeof ks / sizeof ks[0]; ki++)
                for (int t = 0; t < 8; t++) {
                    size_t m = ms[mi], n = ns[ni], k = ks[ki];
                    int ta = t & 1, tb = (t >> 1) & 1;
                    float beta = (t >> 2) ? 0.5f : 0.0f;
                    float *a = malloc(m * k * sizeof(float)), *b = malloc(k * n * sizeof(float));
                    float *want = malloc(m * n * sizeof(float));
                    void *map;
                    size_t map_len;
                    float *c = before_guard_page(m * n * sizeof(float), &map, &map_len);
                    kd_test_fill(a, m * k, -1, 1, m * 131 + k);
                    kd_test_fill(b, k * n, -1, 1, n * 7 + k);
                    kd_test_fill(c, m * n, -1, 1, 99);
                    for (size_t i = 0; i < m; i++)
                        for (size_t j = 0; j < n; j++) {
                            double acc = 0;
                            for (size_t p = 0; p < k; p++)
                                acc += (double)(ta ? a[p * m + i] : a[i * k + p]) *
                                       (tb ? b[j * k + p] : b[p * n + j]);
                            want[i * n + j] = (float)(acc + (double)beta * c[i * n + j]);
                        }
                    ck_assert_int_eq(kd_gemm(ctx, ta ? KD_TRANS : KD_NO_TRANS, tb ? KD_TRANS : KD_NO_TRANS, m,
                                             n, k, 1.0f, a, ta ? m : k, b, tb ? k : n, beta, c, n),
                                     KD_OK);
                    kd_assert_close(c, want, m * n, 1e-4, 1e-4);
                    munmap(map, map_len);
                    free(a), free(b), free(want);
                }
}

START_TEST(gemm_stays_inside_c)
{
    static const char *const archs[] = {NULL, "haswell", "zen3", "skx"};
    const char *arch = archs[_i];
    kd_context_config cfg;
    kd_context_config_default(&cfg);
    cfg.blis_arch = arch;
    kd_context *ctx = NULL;
    kd_status st = kd_context_create(&cfg, &ctx);
#if defined(KD_HAVE_BLIS)
    if (st == KD_E_UNSUPPORTED && arch) return; /* this CPU cannot run that sub-configuration */
#else
    if (arch) return;                          /* no BLIS: the reference GEMM only */
#endif
    ck_assert_int_eq(st, KD_OK);
    gemm_guard_shapes(ctx);
    kd_context_destroy(ctx);
}
END_TEST

Suite *kd_test_suite(void)
{
    Suite *s = suite_create("hardening");
    TCase *tc = tcase_create("hardening");
    tcase_set_timeout(tc, 120);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, checkpoint_loads_fail_cleanly);
    tcase_add_test(tc, cache_paths_fail_cleanly);
    tcase_add_test(tc, student_and_teacher_creation_fail_cleanly);
    tcase_add_test(tc, index_loads_fail_cleanly);
    tcase_add_test(tc, vocab_map_and_context_fail_cleanly);
    tcase_add_test(tc, nan_gradient_never_reaches_the_weights);
    tcase_add_loop_test(tc, gemm_stays_inside_c, 0, 4);
    suite_add_tcase(s, tc);
    return s;
}
