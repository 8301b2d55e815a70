/* test_file.c - crash-safe writer and file mapping, with injected I/O faults. */
#include <dirent.h>
#include <sys/stat.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "kd_internal.h"
#include "kd_test.h"

static char dir[64];
static char path[128];

static void setup(void)
{
    kd_test_tmpdir(dir, sizeof dir, "file");
    snprintf(path, sizeof path, "%s/out.bin", dir);
}

static void teardown(void) { kd_test_rmdir(dir); }

static int count_entries(void) { return kd_test_dir_entries(dir); }

static kd_status write_file(kd_context *ctx, const char *content)
{
    kd_atomic_file f;
    kd_status st = kd__atomic_open(ctx, &f, path);
    if (st != KD_OK) return st;
    st = kd__atomic_write(&f, content, strlen(content));
    if (st == KD_OK) st = kd__atomic_commit(&f);
    if (st != KD_OK) kd__atomic_abort(&f);
    return st;
}

static void expect_content(kd_context *ctx, const char *want)
{
    kd_mapped_file m;
    ck_assert_int_eq(kd__map_file(ctx, path, &m), KD_OK);
    ck_assert_uint_eq(m.size, strlen(want));
    ck_assert(memcmp(m.data, want, m.size) == 0);
    kd__unmap_file(&m);
}

START_TEST(atomic_write_roundtrip)
{
    kd_context *ctx = kd_test_ctx();
    ck_assert_int_eq(write_file(ctx, "first"), KD_OK);
    expect_content(ctx, "first");
    ck_assert_int_eq(write_file(ctx, "second version"), KD_OK);
    expect_content(ctx, "second version");
    ck_assert_int_eq(count_entries(), 1);
    /* Created like any file (0666 less the umask), not 0600 like mkstemp. */
    mode_t old = umask(022);
    ck_assert_int_eq(write_file(ctx, "third"), KD_OK);
    umask(old);
    struct stat sb;
    ck_assert_int_eq(stat(path, &sb), 0);
    ck_assert_uint_eq(sb.st_mode & 0777, 0644);
    kd_context_destroy(ctx);
}
END_TEST

static const char *fail_op;
static int fail_errno;
static int fault(const char *op) { return strcmp(op, fail_op) == 0 ? fail_errno : 0; }

/* Each injected failure leaves the previous file intact and no temporary. */
START_TEST(atomic_write_faults_keep_old_file)
{
    kd_context *ctx = kd_test_ctx();
    ck_assert_int_eq(write_file(ctx, "old complete file"), KD_OK);
    const char *ops[3] = {"write", "fsync", "rename"};
    const int errs[3] = {ENOSPC, EIO, EXDEV};
    for (int i = 0; i < 3; i++) {
        fail_op = ops[i];
        fail_errno = errs[i];
        kd__io_fault_hook = fault;
        ck_assert_int_eq(write_file(ctx, "new data that must not appear"), KD_E_IO);
        ck_assert(strstr(kd_context_last_error(ctx), strerror(errs[i])) != NULL);
        kd__io_fault_hook = NULL;
        expect_content(ctx, "old complete file");
        ck_assert_int_eq(count_entries(), 1);
    }
    kd_context_destroy(ctx);
}
END_TEST

START_TEST(file_hostile_paths)
{
    kd_context *ctx = kd_test_ctx();
    kd_atomic_file f;
    kd_mapped_file m;
    ck_assert_int_eq(kd__atomic_open(ctx, &f, NULL), KD_E_INVALID);
    ck_assert_int_eq(kd__atomic_open(ctx, &f, ""), KD_E_INVALID);
    ck_assert_int_eq(kd__atomic_open(ctx, &f, "/nonexistent-dir/x/y"), KD_E_IO);
    ck_assert_int_eq(kd__map_file(ctx, NULL, &m), KD_E_INVALID);
    ck_assert_int_eq(kd__map_file(ctx, "/nonexistent-file", &m), KD_E_NOT_FOUND);
    ck_assert_int_eq(kd__map_file(ctx, dir, &m), KD_E_IO);
    ck_assert(strstr(kd_context_last_error(ctx), "regular file") != NULL);
    ck_assert_int_eq(write_file(ctx, ""), KD_OK);
    ck_assert_int_eq(kd__map_file(ctx, path, &m), KD_OK);
    ck_assert_uint_eq(m.size, 0);
    ck_assert_ptr_null(m.data);
    kd__unmap_file(&m);
    kd__unmap_file(NULL);
    kd__atomic_abort(NULL);
    kd_context_destroy(ctx);
}
END_TEST

static kd_status write_body(kd_context *ctx, void *user)
{
    (void)user;
    return write_file(ctx, "x");
}

START_TEST(atomic_write_allocation_failures)
{
    long n = kd_test_alloc_failures(write_body, NULL);
    ck_assert_int_eq(n, 2);
}
END_TEST

Suite *kd_test_suite(void)
{
    Suite *s = suite_create("file");
    TCase *tc = tcase_create("file");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, atomic_write_roundtrip);
    tcase_add_test(tc, atomic_write_faults_keep_old_file);
    tcase_add_test(tc, file_hostile_paths);
    tcase_add_test(tc, atomic_write_allocation_failures);
    suite_add_tcase(s, tc);
    return s;
}
