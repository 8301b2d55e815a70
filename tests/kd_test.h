/* kd_test.h - shared helpers for libkd's Check suites. */
#ifndef KD_TEST_H
#define KD_TEST_H

#include <check.h>
#include <math.h>
#include <stdlib.h>

#include "kd/kd.h"

/* Each test program defines this; kd_test_main.c runs it. */
Suite *kd_test_suite(void);

/* An allocator that counts live blocks and fails the Nth call (1-based) when
 * fail_at > 0. Tests use it to walk every allocation of a create path. */
typedef struct {
    long calls;
    long live;
    long fail_at;
    long failed;
} kd_test_alloc;

void *kd_test_alloc_fn(void *opaque, size_t size);
void kd_test_free_fn(void *opaque, void *ptr);

/* A context using a kd_test_alloc (seed fixed). */
kd_context *kd_test_ctx_counting(kd_test_alloc *ta);
/* A default context, seed 42; the test fails if creation fails. */
kd_context *kd_test_ctx(void);

/* Asserts that |a - b| <= atol + rtol * |b| for every element. */
#define kd_assert_close(a, b, n, atol, rtol)                                           \
    do {                                                                               \
        for (size_t kd_i_ = 0; kd_i_ < (size_t)(n); kd_i_++) {                         \
            double kd_a_ = (a)[kd_i_], kd_b_ = (b)[kd_i_];                             \
            ck_assert_msg(fabs(kd_a_ - kd_b_) <= (atol) + (rtol)*fabs(kd_b_),          \
                          "element %zu: %.9g vs %.9g", kd_i_, kd_a_, kd_b_);           \
        }                                                                              \
    } while (0)

/* Scratch folders for file tests: kd_test_tmpdir makes /tmp/kd_test_<tag>_XXXXXX
 * in dir (at least 64 bytes); kd_test_rmdir removes it with everything in it;
 * kd_test_dir_entries counts its entries. */
void kd_test_tmpdir(char *dir, size_t size, const char *tag);
void kd_test_rmdir(const char *dir);
int kd_test_dir_entries(const char *dir);
/* Whole file into a malloc'd buffer of *n + 1 bytes (*n read, one spare);
 * fails the test if unreadable. */
unsigned char *kd_test_read_file(const char *path, size_t *n);

/* Fills x with uniform values in [lo, hi) from a fixed-seed generator. */
void kd_test_fill(float *x, size_t n, float lo, float hi, uint64_t seed);

/*
 * Runs `body` (an expression returning kd_status that creates and destroys
 * its objects from ctx) failing the 1st, 2nd, ... allocation until it
 * succeeds. Asserts each failing run returns KD_E_NOMEM or KD_E_OVERFLOW and
 * leaks nothing. Returns the number of allocations the successful run made.
 */
typedef kd_status (*kd_test_alloc_body)(kd_context *ctx, void *user);
long kd_test_alloc_failures(kd_test_alloc_body body, void *user);

/* Asserts that every row of out (rows x cols) is the log-softmax of the same
 * row of z, within tol. */
void kd_test_assert_log_softmax(const float *out, const float *z, size_t rows, size_t cols, double tol);

/* The distillation tests' student: the model of spec, AdamW with learning
 * rate lr, and Hinton KD alone (alpha 1, temperature 2, no labels). */
typedef struct {
    kd_model *model;
    kd_optimizer *opt;
    kd_loss *kd;
    kd_student *student;
} kd_test_rig;
void kd_test_rig_make(kd_context *ctx, kd_test_rig *r, const char *spec, float lr);
void kd_test_rig_free(kd_test_rig *r);

#endif
