/* test_retrieval_file.c - sparse index persistence: atomic save, mmap load,
 * identical results, and hostile files (bad magic, version, truncation,
 * flipped bytes, forged counts and offsets with valid checksums). */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "kd_internal.h"
#include "kd_test.h"
#include "retrieval_gen.h"

static char dir[64];
static char path[128];

static void setup(void)
{
    kd_test_tmpdir(dir, sizeof dir, "spx");
    snprintf(path, sizeof path, "%s/index.kdsp", dir);
}

static void teardown(void) { kd_test_rmdir(dir); }

static uint32_t rd32(const unsigned char *p) { return (uint32_t)p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24; }
static uint64_t rd64(const unsigned char *p) { return rd32(p) | (uint64_t)rd32(p + 4) << 32; }
static void wr32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static void wr64(unsigned char *p, uint64_t v)
{
    wr32(p, (uint32_t)v);
    wr32(p + 4, (uint32_t)(v >> 32));
}

/* Recomputes every checksum, so structural validation is what is tested. */
static void fix_crcs(unsigned char *img, size_t n)
{
    for (int i = 0; i < 7; i++) {
        unsigned char *e = img + 64 + 24 * i;
        uint64_t off = rd64(e + 8), sz = rd64(e + 16);
        if (off <= n && sz <= n - off) wr32(e + 4, kd_crc32c(0, img + off, (size_t)sz));
    }
    uint32_t hc = kd_crc32c(0, img, 60);
    hc = kd_crc32c(hc, img + 64, 7 * 24);
    wr32(img + 60, hc);
}

static kd_status open_mem(kd_context *ctx, const unsigned char *img, size_t n)
{
    kd_sparse_index *idx = NULL;
    kd_status st = kd_sparse_index_load_memory(ctx, img, n, &idx);
    if (st == KD_OK) {
        /* a file that validates must also search safely */
        uint32_t t[3] = {0, 1, 2}, ids[5];
        float w[3] = {1, 1, 1};
        size_t cnt;
        for (int a = 0; a < 3; a++) {
            kd_sparse_search_config c;
            kd_sparse_search_config_default(&c);
            c.algo = (kd_sparse_algo)a;
            ck_assert_int_eq(kd_sparse_index_search(ctx, idx, &c, t, w, 3, t, 3, 5, ids, NULL, &cnt), KD_OK);
        }
    } else {
        ck_assert_ptr_null(idx);
        ck_assert(strlen(kd_context_last_error(ctx)) > 0);
    }
    kd_sparse_index_destroy(idx);
    return st;
}

static kd_sparse_index *small_index(kd_context *ctx, gen_corpus *c, size_t n)
{
    gen_corpus_make(c, GEN_UNIFORM, n, 31);
    return gen_build(ctx, c, NULL);
}

START_TEST(save_load_same_results)
{
    kd_context *ctx = kd_test_ctx();
    gen_corpus c;
    kd_sparse_index *idx = small_index(ctx, &c, 600);
    ck_assert_int_eq(kd_sparse_index_save(idx, path), KD_OK);
    kd_sparse_index *ld = NULL;
    ck_assert_int_eq(kd_sparse_index_load(ctx, path, &ld), KD_OK);
    kd_sparse_index_stats a, b;
    a.struct_size = b.struct_size = sizeof a;
    kd_sparse_index_stats_get(idx, &a);
    kd_sparse_index_stats_get(ld, &b);
    ck_assert(memcmp(&a, &b, sizeof a) == 0);
    kd_rng r;
    kd_rng_seed(&r, 8, 8);
    for (int qi = 0; qi < 50; qi++) {
        gen_query q;
        gen_query_make(&q, &c, &r);
        uint32_t i1[10], i2[10];
        float s1[10], s2[10];
        size_t n1, n2;
        ck_assert_int_eq(kd_sparse_index_search(ctx, idx, NULL, q.terms, q.w, q.nnz, q.toks, q.ntok, 10, i1, s1, &n1), KD_OK);
        ck_assert_int_eq(kd_sparse_index_search(ctx, ld, NULL, q.terms, q.w, q.nnz, q.toks, q.ntok, 10, i2, s2, &n2), KD_OK);
        ck_assert_uint_eq(n1, n2);
        ck_assert(memcmp(i1, i2, n1 * 4) == 0 && memcmp(s1, s2, n1 * 4) == 0);
    }
    /* the file size equals the in-memory image, and a misaligned copy loads */
    size_t n;
    unsigned char *img = kd_test_read_file(path, &n); /* n + 1 bytes */
    ck_assert_uint_eq(n, a.bytes);
    memmove(img + 1, img, n);
    ck_assert_int_eq(open_mem(ctx, img + 1, n), KD_OK);
    free(img);
    /* a failing write leaves no file and no temporary */
    kd_sparse_index_destroy(ld);
    unlink(path);
    kd_sparse_index_destroy(idx);
    gen_corpus_free(&c);
    kd_context_destroy(ctx);
}
END_TEST

static int fault(const char *op) { return strcmp(op, "fsync") == 0 ? EIO : 0; }

START_TEST(save_is_atomic)
{
    kd_context *ctx = kd_test_ctx();
    gen_corpus c;
    kd_sparse_index *idx = small_index(ctx, &c, 50);
    kd__io_fault_hook = fault;
    ck_assert_int_eq(kd_sparse_index_save(idx, path), KD_E_IO);
    kd__io_fault_hook = NULL;
    ck_assert_int_eq(access(path, F_OK), -1);
    DIR *d = opendir(dir);
    int entries = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) entries += e->d_name[0] != '.';
    closedir(d);
    ck_assert_int_eq(entries, 0);
    kd_sparse_index *ld = NULL;
    ck_assert_int_eq(kd_sparse_index_load(ctx, path, &ld), KD_E_NOT_FOUND);
    kd_sparse_index_destroy(idx);
    gen_corpus_free(&c);
    kd_context_destroy(ctx);
}
END_TEST

START_TEST(hostile_header)
{
    kd_context *ctx = kd_test_ctx();
    gen_corpus c;
    kd_sparse_index *idx = small_index(ctx, &c, 300);
    ck_assert_int_eq(kd_sparse_index_save(idx, path), KD_OK);
    size_t n;
    unsigned char *img = kd_test_read_file(path, &n);
    unsigned char *w = (unsigned char *)malloc(n + 8);
    ck_assert_int_eq(open_mem(ctx, img, n), KD_OK);
    memcpy(w, img, n);
    w[0] = 'X';
    ck_assert_int_eq(open_mem(ctx, w, n), KD_E_FORMAT);
    ck_assert(strstr(kd_context_last_error(ctx), "magic") != NULL);
    memcpy(w, img, n);
    wr32(w + 8, 2);
    ck_assert_int_eq(open_mem(ctx, w, n), KD_E_VERSION);
    fix_crcs(w, n);
    ck_assert_int_eq(open_mem(ctx, w, n), KD_E_VERSION);
    memcpy(w, img, n);
    w[7] = 2;
    ck_assert_int_eq(open_mem(ctx, w, n), KD_E_VERSION);
    memcpy(w, img, n);
    w[20] = 3; /* quant bits, header checksum not fixed */
    ck_assert_int_eq(open_mem(ctx, w, n), KD_E_CORRUPT);
    /* empty and tiny inputs */
    ck_assert_int_eq(open_mem(ctx, NULL, 0), KD_E_FORMAT);
    ck_assert_int_eq(open_mem(ctx, img, 7), KD_E_FORMAT);
    /* a file that is not there, and a folder */
    kd_sparse_index *ld = NULL;
    ck_assert_int_eq(kd_sparse_index_load(ctx, "/nonexistent/x.kdsp", &ld), KD_E_NOT_FOUND);
    ck_assert_int_ne(kd_sparse_index_load(ctx, dir, &ld), KD_OK);
    ck_assert_ptr_null(ld);
    /* file-level error names the path */
    FILE *f = fopen(path, "wb");
    fwrite("KDSPIDX\x01junk", 1, 12, f);
    fclose(f);
    ck_assert_int_eq(kd_sparse_index_load(ctx, path, &ld), KD_E_FORMAT);
    ck_assert(strstr(kd_context_last_error(ctx), path) != NULL);
    free(w);
    free(img);
    kd_sparse_index_destroy(idx);
    gen_corpus_free(&c);
    kd_context_destroy(ctx);
}
END_TEST

START_TEST(hostile_truncation_and_flips)
{
    kd_context *ctx = kd_test_ctx();
    gen_corpus c;
    kd_sparse_index *idx = small_index(ctx, &c, 200);
    ck_assert_int_eq(kd_sparse_index_save(idx, path), KD_OK);
    size_t n;
    unsigned char *img = kd_test_read_file(path, &n);
    unsigned char *w = (unsigned char *)malloc(n + 8);
    /* every truncation */
    for (size_t cut = 0; cut < n; cut++) {
        memcpy(w, img, cut);
        kd_status st = open_mem(ctx, w, cut);
        ck_assert_msg(st == KD_E_FORMAT || st == KD_E_CORRUPT, "cut %zu: %d", cut, st);
    }
    /* a flipped bit in every byte is detected */
    for (size_t i = 0; i < n; i++) {
        memcpy(w, img, n);
        w[i] ^= (unsigned char)(1u << (i % 8));
        kd_status st = open_mem(ctx, w, n);
        ck_assert_msg(st == KD_E_FORMAT || st == KD_E_CORRUPT || st == KD_E_VERSION, "flip %zu: %d", i, st);
    }
    /* trailing garbage */
    memcpy(w, img, n);
    w[n] = 0;
    ck_assert_int_eq(open_mem(ctx, w, n + 1), KD_E_FORMAT);
    free(w);
    free(img);
    kd_sparse_index_destroy(idx);
    gen_corpus_free(&c);
    kd_context_destroy(ctx);
}
END_TEST

/* Forged files: each change is made with all checksums recomputed. */
START_TEST(hostile_counts_and_offsets)
{
    kd_context *ctx = kd_test_ctx();
    gen_corpus c;
    kd_sparse_index *idx = small_index(ctx, &c, 400);
    ck_assert_int_eq(kd_sparse_index_save(idx, path), KD_OK);
    size_t n;
    unsigned char *img = kd_test_read_file(path, &n);
    unsigned char *w = (unsigned char *)malloc(n + 8);
    const unsigned char *sec = img + 64;
#define SOFF(i) rd64(sec + 24 * (i) + 8)
#define SSZ(i) rd64(sec + 24 * (i) + 16)
    int cases = 0;
    kd_rng r;
    kd_rng_seed(&r, 4, 4);
    /* random forged 32-bit fields across every section, many times */
    for (int rep = 0; rep < 3000; rep++) {
        memcpy(w, img, n);
        int s = (int)kd_rng_below(&r, 7);
        if (SSZ(s) < 4) continue;
        uint64_t at = SOFF(s) + 4 * kd_rng_below(&r, (uint32_t)(SSZ(s) / 4));
        uint32_t v;
        switch (kd_rng_below(&r, 4)) {
        case 0: v = rd32(w + at) + 1; break;
        case 1: v = rd32(w + at) - 1; break;
        case 2: v = 0xFFFFFFFFu; break;
        default: v = kd_rng_u32(&r); break;
        }
        wr32(w + at, v);
        fix_crcs(w, n);
        kd_status st = open_mem(ctx, w, n);
        ck_assert_msg(st == KD_OK || st == KD_E_FORMAT, "section %d at %llu: %d", s + 1,
                      (unsigned long long)at, st);
        cases++;
    }
    ck_assert(cases > 1000);
    /* header fields */
    const struct { size_t at; int is64; uint64_t v; } hdr[] = {
        {24, 1, 1u << 30}, {24, 1, 0}, {24, 1, 0xFFFFFFFFull}, {32, 1, 12345}, {20, 0, 0}, {20, 0, 9},
        {40, 0, 0}, {40, 0, 0x7FC00000u}, {44, 0, 64}, {12, 0, 100}, {16, 0, 6}, {50, 0, 1},
        {64 + 8, 1, 0}, {64 + 8, 1, 1ull << 62}, {64 + 16, 1, 1ull << 62}, {64 + 24 * 3 + 16, 1, 0},
        {64 + 24 * 6 + 8, 1, 1ull << 40}, {64 + 24 * 2, 0, 9},
    };
    for (size_t i = 0; i < sizeof hdr / sizeof hdr[0]; i++) {
        memcpy(w, img, n);
        if (hdr[i].is64) wr64(w + hdr[i].at, hdr[i].v);
        else wr32(w + hdr[i].at, (uint32_t)hdr[i].v);
        fix_crcs(w, n);
        kd_status st = open_mem(ctx, w, n);
        ck_assert_msg(st == KD_E_FORMAT, "header case %zu: %d (%s)", i, st, kd_context_last_error(ctx));
    }
    /* learned term 0: df larger than its blocks, first_block moved */
    memcpy(w, img, n);
    wr32(w + SOFF(1) + 4, rd32(w + SOFF(1) + 4) + 200);
    fix_crcs(w, n);
    ck_assert_int_eq(open_mem(ctx, w, n), KD_E_FORMAT);
    memcpy(w, img, n);
    wr64(w + SOFF(1) + 8, 5);
    fix_crcs(w, n);
    ck_assert_int_eq(open_mem(ctx, w, n), KD_E_FORMAT);
    /* block 0: offset, byte count, bit width */
    memcpy(w, img, n);
    wr64(w + SOFF(2), SSZ(3));
    fix_crcs(w, n);
    ck_assert_int_eq(open_mem(ctx, w, n), KD_E_FORMAT);
    memcpy(w, img, n);
    wr32(w + SOFF(2) + 12, 0xFFFFFFF0u);
    fix_crcs(w, n);
    ck_assert_int_eq(open_mem(ctx, w, n), KD_E_FORMAT);
    memcpy(w, img, n);
    w[SOFF(3)] = 33;
    fix_crcs(w, n);
    ck_assert_int_eq(open_mem(ctx, w, n), KD_E_FORMAT);
    memcpy(w, img, n);
    w[SOFF(6)] = 0xFF;
    fix_crcs(w, n);
    ck_assert_int_eq(open_mem(ctx, w, n), KD_E_FORMAT);
    free(w);
    free(img);
    kd_sparse_index_destroy(idx);
    gen_corpus_free(&c);
    kd_context_destroy(ctx);
}
END_TEST

Suite *kd_test_suite(void)
{
    Suite *s = suite_create("retrieval_file");
    TCase *tc = tcase_create("file");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, save_load_same_results);
    tcase_add_test(tc, save_is_atomic);
    tcase_add_test(tc, hostile_header);
    tcase_add_test(tc, hostile_truncation_and_flips);
    tcase_add_test(tc, hostile_counts_and_offsets);
    suite_add_tcase(s, tc);
    return s;
}
