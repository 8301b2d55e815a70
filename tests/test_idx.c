/* test_idx.c - IDX parser: real layouts, every element type, hostile headers. */
#include <string.h>

#include "kd_test.h"

static kd_idx_view view0(void)
{
    kd_idx_view v;
    memset(&v, 0, sizeof v);
    v.struct_size = sizeof v;
    return v;
}

START_TEST(idx_images_and_labels)
{
    kd_context *ctx = kd_test_ctx();
    /* 2 images of 2x3 ubyte, as in train-images-idx3-ubyte. */
    const unsigned char img[] = {0, 0, 0x08, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 3,
                                 0, 51, 102, 153, 204, 255, 1, 2, 3, 4, 5, 6};
    kd_idx_view v = view0();
    ck_assert_int_eq(kd_idx_parse(ctx, img, sizeof img, &v), KD_OK);
    ck_assert_uint_eq(v.rank, 3);
    ck_assert_uint_eq(v.dims[0], 2);
    ck_assert_uint_eq(v.count, 12);
    ck_assert_uint_eq(v.item_size, 6);
    float x[6];
    ck_assert_int_eq(kd_idx_to_float(ctx, &v, 0, 1, 1.0f / 255, 0, x), KD_OK);
    ck_assert_float_eq_tol(x[1], 0.2f, 1e-6);
    ck_assert_float_eq_tol(x[5], 1.0f, 1e-6);
    ck_assert_int_eq(kd_idx_to_float(ctx, &v, 1, 1, 1.0f, -1.0f, x), KD_OK);
    ck_assert_float_eq(x[0], 0.0f);
    ck_assert_float_eq(x[5], 5.0f);
    ck_assert_int_eq(kd_idx_to_float(ctx, &v, 1, 2, 1, 0, x), KD_E_SHAPE);
    ck_assert_int_eq(kd_idx_to_float(ctx, &v, SIZE_MAX, 2, 1, 0, x), KD_E_SHAPE);
    ck_assert_int_eq(kd_idx_to_labels(ctx, &v, 0, 1, (int32_t *)x), KD_E_SHAPE);

    const unsigned char lab[] = {0, 0, 0x08, 1, 0, 0, 0, 4, 9, 0, 3, 7};
    kd_idx_view l = view0();
    ck_assert_int_eq(kd_idx_parse(ctx, lab, sizeof lab, &l), KD_OK);
    int32_t y[4];
    ck_assert_int_eq(kd_idx_to_labels(ctx, &l, 0, 4, y), KD_OK);
    ck_assert(y[0] == 9 && y[1] == 0 && y[2] == 3 && y[3] == 7);
    kd_context_destroy(ctx);
}
END_TEST

START_TEST(idx_element_types)
{
    kd_context *ctx = kd_test_ctx();
    const unsigned char i8[] = {0, 0, 0x09, 1, 0, 0, 0, 2, 0xff, 0x7f};
    const unsigned char i16[] = {0, 0, 0x0B, 1, 0, 0, 0, 2, 0xff, 0xfe, 0x01, 0x00};
    const unsigned char i32[] = {0, 0, 0x0C, 1, 0, 0, 0, 1, 0xff, 0xff, 0xff, 0xfd};
    const unsigned char f32[] = {0, 0, 0x0D, 1, 0, 0, 0, 1, 0x3f, 0xc0, 0, 0};           /* 1.5 */
    const unsigned char f64[] = {0, 0, 0x0E, 1, 0, 0, 0, 1, 0xc0, 0x04, 0, 0, 0, 0, 0, 0}; /* -2.5 */
    kd_idx_view v = view0();
    float x[2];
    int32_t y[2];
    ck_assert_int_eq(kd_idx_parse(ctx, i8, sizeof i8, &v), KD_OK);
    ck_assert_int_eq(kd_idx_to_labels(ctx, &v, 0, 2, y), KD_OK);
    ck_assert(y[0] == -1 && y[1] == 127);
    ck_assert_int_eq(kd_idx_parse(ctx, i16, sizeof i16, &v), KD_OK);
    ck_assert_int_eq(kd_idx_to_float(ctx, &v, 0, 2, 1, 0, x), KD_OK);
    ck_assert(x[0] == -2.0f && x[1] == 256.0f);
    ck_assert_int_eq(kd_idx_parse(ctx, i32, sizeof i32, &v), KD_OK);
    ck_assert_int_eq(kd_idx_to_labels(ctx, &v, 0, 1, y), KD_OK);
    ck_assert_int_eq(y[0], -3);
    ck_assert_int_eq(kd_idx_parse(ctx, f32, sizeof f32, &v), KD_OK);
    ck_assert_int_eq(kd_idx_to_float(ctx, &v, 0, 1, 2, 0, x), KD_OK);
    ck_assert_float_eq(x[0], 3.0f);
    ck_assert_int_eq(kd_idx_to_labels(ctx, &v, 0, 1, y), KD_E_FORMAT);
    ck_assert_int_eq(kd_idx_parse(ctx, f64, sizeof f64, &v), KD_OK);
    ck_assert_int_eq(kd_idx_to_float(ctx, &v, 0, 1, 1, 0, x), KD_OK);
    ck_assert_float_eq(x[0], -2.5f);
    kd_context_destroy(ctx);
}
END_TEST

START_TEST(idx_hostile)
{
    kd_context *ctx = kd_test_ctx();
    kd_idx_view v = view0();
    const unsigned char ok[] = {0, 0, 0x08, 1, 0, 0, 0, 2, 1, 2};
    ck_assert_int_eq(kd_idx_parse(NULL, ok, sizeof ok, &v), KD_E_INVALID);
    ck_assert_int_eq(kd_idx_parse(ctx, NULL, sizeof ok, &v), KD_E_INVALID);
    ck_assert_int_eq(kd_idx_parse(ctx, ok, sizeof ok, NULL), KD_E_INVALID);
    kd_idx_view small = view0();
    small.struct_size = 4;
    ck_assert_int_eq(kd_idx_parse(ctx, ok, sizeof ok, &small), KD_E_VERSION);
    /* Every truncation and one trailing byte are reported. */
    for (size_t n = 0; n < sizeof ok; n++)
        ck_assert_int_eq(kd_idx_parse(ctx, ok, n, &v), KD_E_FORMAT);
    unsigned char longer[sizeof ok + 1];
    memcpy(longer, ok, sizeof ok);
    longer[sizeof ok] = 0;
    ck_assert_int_eq(kd_idx_parse(ctx, longer, sizeof longer, &v), KD_E_FORMAT);
    ck_assert(strstr(kd_context_last_error(ctx), "trailing") != NULL);
    const unsigned char gz[] = {0x1f, 0x8b, 8, 0, 0, 0};
    ck_assert_int_eq(kd_idx_parse(ctx, gz, sizeof gz, &v), KD_E_FORMAT);
    ck_assert(strstr(kd_context_last_error(ctx), "gzip") != NULL);
    const unsigned char badtype[] = {0, 0, 0x07, 1, 0, 0, 0, 0};
    ck_assert_int_eq(kd_idx_parse(ctx, badtype, sizeof badtype, &v), KD_E_FORMAT);
    const unsigned char rank0[] = {0, 0, 0x08, 0};
    ck_assert_int_eq(kd_idx_parse(ctx, rank0, sizeof rank0, &v), KD_E_FORMAT);
    const unsigned char rank9[] = {0, 0, 0x08, 9};
    ck_assert_int_eq(kd_idx_parse(ctx, rank9, sizeof rank9, &v), KD_E_FORMAT);
    /* Dimensions whose product overflows size_t. */
    const unsigned char huge[] = {0, 0, 0x0E, 3, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                                  0xff, 0xff, 0xff, 0xff};
    ck_assert_int_eq(kd_idx_parse(ctx, huge, sizeof huge, &v), KD_E_OVERFLOW);
    /* Claims 4 billion items in a 12-byte file. */
    const unsigned char liar[] = {0, 0, 0x08, 1, 0xff, 0xff, 0xff, 0xff, 1, 2, 3, 4};
    ck_assert_int_eq(kd_idx_parse(ctx, liar, sizeof liar, &v), KD_E_FORMAT);
    ck_assert(strstr(kd_context_last_error(ctx), "truncated") != NULL);
    /* Zero items is a valid, empty file. */
    const unsigned char empty[] = {0, 0, 0x08, 1, 0, 0, 0, 0};
    ck_assert_int_eq(kd_idx_parse(ctx, empty, sizeof empty, &v), KD_OK);
    ck_assert_uint_eq(v.count, 0);
    ck_assert_int_eq(kd_idx_to_float(ctx, &v, 0, 0, 1, 0, NULL), KD_OK);
    ck_assert_int_eq(kd_idx_to_float(NULL, &v, 0, 0, 1, 0, NULL), KD_E_INVALID);
    ck_assert_int_eq(kd_idx_to_labels(ctx, NULL, 0, 0, NULL), KD_E_INVALID);
    kd_context_destroy(ctx);
}
END_TEST

Suite *kd_test_suite(void)
{
    Suite *s = suite_create("idx");
    TCase *tc = tcase_create("idx");
    tcase_add_test(tc, idx_images_and_labels);
    tcase_add_test(tc, idx_element_types);
    tcase_add_test(tc, idx_hostile);
    suite_add_tcase(s, tc);
    return s;
}
