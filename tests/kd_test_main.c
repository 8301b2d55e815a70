/* kd_test_main.c - runs one suite; Check prints "Checks: N, Failures: F, Errors: E". */
#include <dirent.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "kd_test.h"

void kd_test_tmpdir(char *dir, size_t size, const char *tag)
{
    ck_assert_int_lt(snprintf(dir, size, "/tmp/kd_test_%s_XXXXXX", tag), (int)size);
    ck_assert_ptr_nonnull(mkdtemp(dir));
}

void kd_test_rmdir(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    char p[512];
    while (d && (e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        unlink(p);
    }
    if (d) closedir(d);
    rmdir(dir);
}

int kd_test_dir_entries(const char *dir)
{
    DIR *d = opendir(dir);
    ck_assert_ptr_nonnull(d);
    struct dirent *e;
    int n = 0;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.') n++;
    closedir(d);
    return n;
}

unsigned char *kd_test_read_file(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = (unsigned char *)malloc((size_t)sz + 1);
    ck_assert_uint_eq(fread(b, 1, (size_t)sz, f), (size_t)sz);
    fclose(f);
    *n = (size_t)sz;
    return b;
}

void *kd_test_alloc_fn(void *opaque, size_t size)
{
    kd_test_alloc *ta = (kd_test_alloc *)opaque;
    ta->calls++;
    if (ta->fail_at > 0 && ta->calls == ta->fail_at) {
        ta->failed++;
        return NULL;
    }
    void *p = malloc(size);
    if (p) ta->live++;
    return p;
}

void kd_test_free_fn(void *opaque, void *ptr)
{
    kd_test_alloc *ta = (kd_test_alloc *)opaque;
    if (ptr) ta->live--;
    free(ptr);
}

kd_context *kd_test_ctx_counting(kd_test_alloc *ta)
{
    kd_context_config cfg;
    kd_context_config_default(&cfg);
    cfg.allocator.alloc = kd_test_alloc_fn;
    cfg.allocator.free = kd_test_free_fn;
    cfg.allocator.opaque = ta;
    cfg.seed = 42;
    kd_context *ctx = NULL;
    if (kd_context_create(&cfg, &ctx) != KD_OK) return NULL;
    return ctx;
}

kd_context *kd_test_ctx(void)
{
    kd_context_config cfg;
    kd_context_config_default(&cfg);
    cfg.seed = 42;
    kd_context *ctx = NULL;
    kd_status st = kd_context_create(&cfg, &ctx);
    ck_assert_int_eq(st, KD_OK);
    return ctx;
}

void kd_test_fill(float *x, size_t n, float lo, float hi, uint64_t seed)
{
    kd_rng r;
    kd_rng_seed(&r, seed, 7);
    for (size_t i = 0; i < n; i++) x[i] = lo + (hi - lo) * kd_rng_uniform(&r);
}

long kd_test_alloc_failures(kd_test_alloc_body body, void *user)
{
    for (long n = 2; n < 100000; n++) {
        /* Allocation 1 is the context itself; start failing at 2. */
        kd_test_alloc ta = {0, 0, 0, 0};
        kd_context *ctx = kd_test_ctx_counting(&ta);
        ck_assert_ptr_nonnull(ctx);
        ta.fail_at = n;
        kd_status st = body(ctx, user);
        long failed = ta.failed;
        kd_context_destroy(ctx);
        ck_assert_msg(ta.live == 0, "leak after failing allocation %ld: %ld blocks", n, ta.live);
        if (!failed) {
            ck_assert_msg(st == KD_OK, "body failed with %d without an injected failure", st);
            return n - 2;
        }
        ck_assert_msg(st == KD_E_NOMEM || st == KD_E_OVERFLOW,
                      "allocation %ld failed but body returned %d", n, st);
    }
    ck_abort_msg("body never succeeded");
    return -1;
}

void kd_test_assert_log_softmax(const float *out, const float *z, size_t rows, size_t cols, double tol)
{
    for (size_t r = 0; r < rows; r++) {
        const float *zr = z + r * cols;
        double mx = zr[0], s = 0;
        for (size_t j = 1; j < cols; j++) mx = zr[j] > mx ? zr[j] : mx;
        for (size_t j = 0; j < cols; j++) s += exp(zr[j] - mx);
        for (size_t j = 0; j < cols; j++)
            ck_assert_double_eq_tol(out[r * cols + j], zr[j] - mx - log(s), tol);
    }
}

void kd_test_rig_make(kd_context *ctx, kd_test_rig *r, const char *spec, float lr)
{
    ck_assert_int_eq(kd_model_create_from_spec(ctx, spec, &r->model), KD_OK);
    kd_optimizer_config oc;
    kd_optimizer_config_default(&oc, KD_OPTIM_ADAMW);
    oc.lr = lr;
    ck_assert_int_eq(kd_optimizer_create(r->model, &oc, &r->opt), KD_OK);
    kd_loss_hinton_config hc;
    kd_loss_hinton_config_default(&hc);
    hc.alpha = 1.0f;
    hc.temperature = 2.0f;
    ck_assert_int_eq(kd_loss_create(ctx, kd_loss_hinton(), &hc, &r->kd), KD_OK);
    ck_assert_int_eq(kd_student_create(ctx, r->model, r->opt, NULL, &r->student), KD_OK);
    ck_assert_int_eq(kd_student_add_loss(r->student, r->kd, 1.0f, KD_TERM_NO_LABELS), KD_OK);
}

void kd_test_rig_free(kd_test_rig *r)
{
    kd_student_destroy(r->student);
    kd_loss_destroy(r->kd);
    kd_optimizer_destroy(r->opt);
    kd_model_destroy(r->model);
}

int main(void)
{
    SRunner *sr = srunner_create(kd_test_suite());
    /* Each test runs in its own process: a crash fails one test, and
     * process-wide state (BLIS's sub-configuration) starts fresh. */
    srunner_set_fork_status(sr, CK_FORK);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? 0 : 1;
}
