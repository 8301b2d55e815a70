/* test_core.c - version, status, context, arena, RNG, CRC32C, formatter. */
#include <stddef.h>
#include <string.h>

#include "kd_internal.h"
#include "kd_test.h"

START_TEST(version_matches_headers)
{
    ck_assert_uint_eq(kd_version_number(), KD_VERSION_NUMBER);
    ck_assert_str_eq(kd_version_string(), KD_VERSION_STRING);
    ck_assert(KD_VERSION_COMPATIBLE());
}
END_TEST

START_TEST(status_strings_pinned)
{
    ck_assert_int_eq(KD_OK, 0);
    ck_assert_int_eq(KD_E_FORMAT, 5);
    ck_assert_int_eq(KD_E_INTERNAL, 14);
    ck_assert_str_eq(kd_status_string(KD_OK), "ok");
    for (int i = 0; i < KD_STATUS_COUNT; i++) {
        const char *s = kd_status_string((kd_status)i);
        ck_assert_ptr_nonnull(s);
        ck_assert(strlen(s) > 0);
        for (int j = 0; j < i; j++) ck_assert_str_ne(s, kd_status_string((kd_status)j));
    }
    ck_assert_str_eq(kd_status_string((kd_status)KD_STATUS_COUNT), "unknown status");
    ck_assert_str_eq(kd_status_string((kd_status)-1), "unknown status");
}
END_TEST

static int log_calls;
static kd_log_level log_last_level;
static char log_last[256];
static void test_log(void *user, kd_log_level level, const char *msg)
{
    (void)user;
    log_calls++;
    log_last_level = level;
    strncpy(log_last, msg, sizeof log_last - 1);
}

START_TEST(context_create_hostile)
{
    kd_context *ctx = (kd_context *)0x1;
    ck_assert_int_eq(kd_context_create(NULL, NULL), KD_E_INVALID);
    kd_context_config cfg;
    kd_context_config_default(&cfg);
    cfg.log = test_log;
    log_calls = 0;
    cfg.threads = 0;
    ck_assert_int_eq(kd_context_create(&cfg, &ctx), KD_E_INVALID);
    ck_assert_ptr_null(ctx);
    ck_assert_int_eq(log_calls, 1);
    ck_assert_int_eq(log_last_level, KD_LOG_ERROR);
    ck_assert(strstr(log_last, "threads") != NULL);
    cfg.threads = 5000;
    ck_assert_int_eq(kd_context_create(&cfg, &ctx), KD_E_INVALID);
    cfg.threads = 1;
    cfg.struct_size = 0;
    ck_assert_int_eq(kd_context_create(&cfg, &ctx), KD_E_VERSION);
    cfg.struct_size = sizeof cfg - 1;
    ck_assert_int_eq(kd_context_create(&cfg, &ctx), KD_E_VERSION);
    cfg.struct_size = sizeof cfg;
    cfg.log_level = (kd_log_level)9;
    ck_assert_int_eq(kd_context_create(&cfg, &ctx), KD_E_INVALID);
    cfg.log_level = KD_LOG_WARN;
    cfg.allocator.alloc = kd_test_alloc_fn;
    ck_assert_int_eq(kd_context_create(&cfg, &ctx), KD_E_INVALID);
    cfg.allocator.alloc = NULL;
    cfg.gemm = (kd_gemm_backend)7;
    ck_assert_int_eq(kd_context_create(&cfg, &ctx), KD_E_INVALID);
    cfg.gemm = KD_GEMM_AUTO;
    static unsigned char arena[4096];
    kd_test_alloc ta = {0, 0, 0, 0};
    cfg.arena = arena;
    cfg.arena_size = sizeof arena;
    cfg.allocator.alloc = kd_test_alloc_fn;
    cfg.allocator.free = kd_test_free_fn;
    cfg.allocator.opaque = &ta;
    ck_assert_int_eq(kd_context_create(&cfg, &ctx), KD_E_INVALID);
    ck_assert_int_eq(ta.calls, 0);
}
END_TEST

/* A caller compiled against a newer header passes a larger struct: accepted
 * when the fields this library does not know are zero. */
START_TEST(context_config_from_newer_caller)
{
    struct {
        kd_context_config base;
        uint64_t future_field;
    } big;
    memset(&big, 0, sizeof big);
    kd_context_config_default(&big.base);
    big.base.struct_size = sizeof big;
    kd_context *ctx = NULL;
    ck_assert_int_eq(kd_context_create(&big.base, &ctx), KD_OK);
    kd_context_destroy(ctx);
    big.future_field = 1;
    ctx = NULL;
    ck_assert_int_eq(kd_context_create(&big.base, &ctx), KD_E_VERSION);
    ck_assert_ptr_null(ctx);
}
END_TEST

/* kd_X_default() passes the caller's compile-time size: an older caller's
 * smaller struct is never written past its end, a newer caller's tail is
 * zeroed and its struct_size is the caller's, so the library accepts it while
 * the unknown fields stay zero and reports KD_E_VERSION once one is set. */
START_TEST(default_functions_respect_caller_size)
{
    struct {
        kd_context_config base;
        uint64_t future_field;
    } big;
    memset(&big, 0xAB, sizeof big);
    kd_context_config_default_sized(&big.base, sizeof big);
    ck_assert_uint_eq(big.base.struct_size, sizeof big);
    ck_assert_uint_eq(big.future_field, 0);
    ck_assert_uint_eq(big.base.threads, 1);
    kd_context *ctx = NULL;
    ck_assert_int_eq(kd_context_create(&big.base, &ctx), KD_OK);
    kd_context_destroy(ctx);
    big.future_field = 7;
    ctx = NULL;
    ck_assert_int_eq(kd_context_create(&big.base, &ctx), KD_E_VERSION);

    /* An older caller whose struct ends after `threads`: bytes beyond that
     * size are untouched and struct_size records the older size. */
    const size_t old_size = offsetof(kd_context_config, threads) + sizeof(int);
    unsigned char buf[sizeof(kd_context_config) + 16];
    memset(buf, 0x5A, sizeof buf);
    kd_context_config_default_sized((kd_context_config *)(void *)buf, old_size);
    for (size_t i = old_size; i < sizeof buf; i++) ck_assert_uint_eq(buf[i], 0x5A);
    uint32_t ss;
    memcpy(&ss, buf, sizeof ss);
    ck_assert_uint_eq(ss, old_size);

    /* Every macro passes the full size of its type. */
    kd_loss_batch b;
    memset(&b, 0xFF, sizeof b);
    kd_loss_batch_default(&b);
    ck_assert_uint_eq(b.struct_size, sizeof b);
    ck_assert_int_eq(b.ignore_index, KD_LOSS_IGNORE_INDEX);
    kd_optimizer_config oc;
    kd_optimizer_config_default(&oc, KD_OPTIM_SGD);
    ck_assert_uint_eq(oc.struct_size, sizeof oc);
    ck_assert_int_eq(oc.kind, KD_OPTIM_SGD);
    /* NULL and sizes below the struct_size field are no-ops. */
    kd_loss_batch_default(NULL);
    kd_context_config_default_sized((kd_context_config *)(void *)buf, 3);
    ck_assert_uint_eq(buf[0], (unsigned char)(old_size & 0xFF));
}
END_TEST

START_TEST(context_errors_and_accessors)
{
    kd_context *ctx = kd_test_ctx();
    ck_assert_str_eq(kd_context_last_error(ctx), "");
    ck_assert_int_eq(kd_context_last_status(ctx), KD_OK);
    ck_assert_int_eq(kd_context_set_threads(ctx, 0), KD_E_INVALID);
    ck_assert_int_eq(kd_context_last_status(ctx), KD_E_INVALID);
    ck_assert(strstr(kd_context_last_error(ctx), "threads") != NULL);
    kd_context_clear_error(ctx);
    ck_assert_str_eq(kd_context_last_error(ctx), "");
    ck_assert_int_eq(kd_context_set_threads(ctx, 2), KD_OK);
    ck_assert_int_eq(kd_context_threads(ctx), 2);
    ck_assert_uint_eq(kd_context_seed(ctx), 42);
    ck_assert_ptr_nonnull(kd_context_rng(ctx));
    size_t used = 9, peak = 9;
    ck_assert_int_eq(kd_context_arena_usage(ctx, &used, &peak), KD_OK);
    ck_assert_uint_eq(used, 0);
    ck_assert_uint_eq(peak, 0);
    kd_context_destroy(ctx);

    ck_assert_str_eq(kd_context_last_error(NULL), "no context");
    ck_assert_int_eq(kd_context_last_status(NULL), KD_E_INVALID);
    ck_assert_int_eq(kd_context_threads(NULL), 0);
    ck_assert_int_eq(kd_context_set_threads(NULL, 1), KD_E_INVALID);
    ck_assert_ptr_null(kd_context_rng(NULL));
    ck_assert_int_eq(kd_context_arena_usage(NULL, NULL, NULL), KD_E_INVALID);
    kd_context_clear_error(NULL);
    kd_context_destroy(NULL);
    kd_context_config_default(NULL);
}
END_TEST

START_TEST(context_allocator_failure)
{
    kd_test_alloc ta = {0, 0, 1, 0};
    kd_context_config cfg;
    kd_context_config_default(&cfg);
    cfg.allocator.alloc = kd_test_alloc_fn;
    cfg.allocator.free = kd_test_free_fn;
    cfg.allocator.opaque = &ta;
    kd_context *ctx = NULL;
    ck_assert_int_eq(kd_context_create(&cfg, &ctx), KD_E_NOMEM);
    ck_assert_ptr_null(ctx);
    ck_assert_int_eq(ta.live, 0);
    ta.fail_at = 0;
    ck_assert_int_eq(kd_context_create(&cfg, &ctx), KD_OK);
    ck_assert_int_eq(ta.live, 1);
    void *p = kd__alloc(ctx, 100);
    ck_assert_ptr_nonnull(p);
    ck_assert_int_eq(ta.live, 2);
    kd__free(ctx, p);
    ck_assert_ptr_null(kd__calloc(ctx, SIZE_MAX / 2, 4));
    ck_assert_int_eq(kd_context_last_status(ctx), KD_E_OVERFLOW);
    kd_context_destroy(ctx);
    ck_assert_int_eq(ta.live, 0);
}
END_TEST

START_TEST(context_in_arena)
{
    static unsigned char arena[64 * 1024];
    kd_context_config cfg;
    kd_context_config_default(&cfg);
    cfg.arena = arena + 3; /* misaligned on purpose */
    cfg.arena_size = 100;
    kd_context *ctx = NULL;
    ck_assert_int_eq(kd_context_create(&cfg, &ctx), KD_E_NOMEM);
    cfg.arena_size = sizeof arena - 3;
    ck_assert_int_eq(kd_context_create(&cfg, &ctx), KD_OK);
    ck_assert(kd_context_estimate_size() >= sizeof(struct kd_context));
    size_t used0, peak0;
    kd_context_arena_usage(ctx, &used0, &peak0);
    ck_assert(used0 > 0 && used0 <= kd_context_estimate_size());
    float *a = (float *)kd__alloc(ctx, 1000);
    ck_assert_ptr_nonnull(a);
    ck_assert_uint_eq((uintptr_t)a % KD_ALIGN, 0);
    ck_assert((unsigned char *)a >= arena && (unsigned char *)a + 1000 <= arena + sizeof arena);
    size_t used1;
    kd_context_arena_usage(ctx, &used1, NULL);
    ck_assert(used1 >= used0 + 1000);
    kd__free(ctx, a); /* most recent block: returned */
    size_t used2, peak2;
    kd_context_arena_usage(ctx, &used2, &peak2);
    ck_assert_uint_eq(used2, used0);
    ck_assert_uint_eq(peak2, used1);
    ck_assert_ptr_null(kd__alloc(ctx, sizeof arena));
    ck_assert_int_eq(kd_context_last_status(ctx), KD_E_NOMEM);
    ck_assert(strstr(kd_context_last_error(ctx), "arena") != NULL);
    ck_assert_ptr_null(kd__alloc(ctx, SIZE_MAX));
    kd_context_destroy(ctx);
}
END_TEST

/* Reference output of the PCG32 demo program (pcg32-demo, seed 42, stream 54). */
START_TEST(rng_matches_pcg32_reference)
{
    kd_rng r;
    kd_rng_seed(&r, 42u, 54u);
    const uint32_t want[6] = {0xa15c02b7u, 0x7b47f409u, 0xba1d3330u,
                              0x83d2f293u, 0xbfa4784bu, 0xcbed606eu};
    for (int i = 0; i < 6; i++) ck_assert_uint_eq(kd_rng_u32(&r), want[i]);
    kd_rng_seed(NULL, 1, 1);
}
END_TEST

START_TEST(rng_distributions)
{
    kd_rng r;
    kd_rng_seed(&r, 7, 0);
    long hist[10] = {0};
    double sum = 0, sum2 = 0, usum = 0;
    const int n = 200000;
    for (int i = 0; i < n; i++) {
        uint32_t b = kd_rng_below(&r, 10);
        ck_assert_uint_lt(b, 10);
        hist[b]++;
        float u = kd_rng_uniform(&r);
        ck_assert(u >= 0.0f && u < 1.0f);
        usum += u;
        float z = kd_rng_normal(&r);
        ck_assert(isfinite(z));
        sum += z;
        sum2 += (double)z * z;
    }
    for (int i = 0; i < 10; i++) ck_assert(labs(hist[i] - n / 10) < 800); /* ~6 sigma */
    ck_assert(fabs(usum / n - 0.5) < 0.005);
    ck_assert(fabs(sum / n) < 0.01);
    ck_assert(fabs(sum2 / n - 1.0) < 0.02);
    ck_assert_uint_eq(kd_rng_below(&r, 0), 0);
    ck_assert_uint_eq(kd_rng_below(&r, 1), 0);
}
END_TEST

START_TEST(crc32c_known_values)
{
    ck_assert_uint_eq(kd_crc32c(0, "123456789", 9), 0xE3069283u);
    ck_assert_uint_eq(kd_crc32c(0, "", 0), 0);
    ck_assert_uint_eq(kd_crc32c(5, NULL, 10), 5);
    /* 32 bytes of zeros: RFC 3720 (iSCSI) B.4 test vector. */
    unsigned char z[32] = {0};
    ck_assert_uint_eq(kd_crc32c(0, z, 32), 0x8A9136AAu);
    unsigned char ff[32];
    memset(ff, 0xff, sizeof ff);
    ck_assert_uint_eq(kd_crc32c(0, ff, 32), 0x62A8AB43u);
    /* Incremental equals one-shot at every split point. */
    unsigned char buf[100];
    for (int i = 0; i < 100; i++) buf[i] = (unsigned char)(i * 37 + 11);
    uint32_t whole = kd_crc32c(0, buf, sizeof buf);
    for (size_t s = 0; s <= sizeof buf; s++)
        ck_assert_uint_eq(kd_crc32c(kd_crc32c(0, buf, s), buf + s, sizeof buf - s), whole);
}
END_TEST

START_TEST(formatter)
{
    char b[64];
    kd__fmt(b, sizeof b, "%d|%u|%zu|%s|%x|%lld|%%|%c", -12, 7u, (size_t)123456789, "ab", 255u,
            -9000000000LL, 'z');
    ck_assert_str_eq(b, "-12|7|123456789|ab|ff|-9000000000|%|z");
    kd__fmt(b, sizeof b, "%g %g %g %g %g", 1.5, -0.25, 1e-7, 3e20, 0.0);
    ck_assert_str_eq(b, "1.5 -0.25 1e-7 3e20 0");
    kd__fmt(b, sizeof b, "%g %g %g", (double)NAN, (double)INFINITY, -(double)INFINITY);
    ck_assert_str_eq(b, "nan inf -inf");
    const char *volatile null_str = NULL;
    kd__fmt(b, sizeof b, "%s", null_str);
    ck_assert_str_eq(b, "(null)");
    size_t n = kd__fmt(b, 5, "%s", "truncated");
    ck_assert_str_eq(b, "trun");
    ck_assert_uint_eq(n, 4);
    kd__fmt(b, sizeof b, "%d", INT32_MIN);
    ck_assert_str_eq(b, "-2147483648");
}
END_TEST

Suite *kd_test_suite(void)
{
    Suite *s = suite_create("core");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, version_matches_headers);
    tcase_add_test(tc, status_strings_pinned);
    tcase_add_test(tc, context_create_hostile);
    tcase_add_test(tc, context_config_from_newer_caller);
    tcase_add_test(tc, default_functions_respect_caller_size);
    tcase_add_test(tc, context_errors_and_accessors);
    tcase_add_test(tc, context_allocator_failure);
    tcase_add_test(tc, context_in_arena);
    tcase_add_test(tc, rng_matches_pcg32_reference);
    tcase_add_test(tc, rng_distributions);
    tcase_add_test(tc, crc32c_known_values);
    tcase_add_test(tc, formatter);
    suite_add_tcase(s, tc);
    return s;
}
