/* test_cache.c - the teacher-logit cache: round trip within the stated
 * quantisation bounds, bytes per position and KL at V = 32000, k = 50,
 * resume after a crash (byte-identical to an uninterrupted run), hostile
 * files (magic, version, counts, CRCs, truncation at every byte, overflowing
 * V/k/positions), allocation failures, and a student distilled through the
 * cache only compared with a dense-teacher run of the same seed. */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "kd_internal.h"
#include "kd_test.h"

static char dir[64];
static char path[160], path2[160], partial[180];

static void setup(void)
{
    kd_test_tmpdir(dir, sizeof dir, "cache");
    snprintf(path, sizeof path, "%s/a.kdlc", dir);
    snprintf(path2, sizeof path2, "%s/b.kdlc", dir);
    snprintf(partial, sizeof partial, "%s.partial", path);
}

static void teardown(void) { kd_test_rmdir(dir); }


static void wr32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static void wr64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static uint32_t rd32(const unsigned char *p) { return (uint32_t)p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24; }
static void fix_header_crc(unsigned char *img) { wr32(img + 60, kd_crc32c(0, img, 60)); }

/* Logits with the shape of a language model's: a Zipf prior over the
 * vocabulary (low ids frequent), Gaussian context noise and a few boosted
 * tokens. zipf = 0: i.i.d. N(0, 2) logits (the hard case for id coding). */
static void lm_logits(float *z, size_t rows, size_t V, int zipf, uint64_t seed)
{
    kd_rng r;
    kd_rng_seed(&r, seed, 17);
    for (size_t i = 0; i < rows; i++) {
        float *row = z + i * V;
        for (size_t j = 0; j < V; j++)
            row[j] = zipf ? -1.5f * logf((float)j + 1.0f) + kd_rng_normal(&r) : 2.0f * kd_rng_normal(&r);
        if (zipf)
            for (int b = 0; b < 8; b++) row[kd_rng_below(&r, (uint32_t)V)] += 12.0f - (float)b;
    }
}

/* KL(full || cached) for one row: the cached distribution spreads the tail
 * bucket uniformly over the classes it does not list. */
static double row_kl(const float *z, size_t V, const int32_t *ids, const float *vals, float tail, size_t k)
{
    double mx = -INFINITY, S = 0.0, Z = tail, kl = 0.0;
    for (size_t j = 0; j < V; j++) mx = z[j] > mx ? z[j] : mx;
    for (size_t j = 0; j < V; j++) S += exp(z[j] - mx);
    size_t m = 0;
    for (size_t i = 0; i < k; i++)
        if (ids[i] >= 0) {
            Z += exp(vals[i]);
            m++;
        }
    double rest = tail / Z / (double)(V - m);
    size_t t = 0;
    for (size_t j = 0; j < V; j++) {
        double p = exp(z[j] - mx) / S, q = rest;
        if (t < k && ids[t] == (int32_t)j) q = exp(vals[t++]) / Z;
        if (p > 0) kl += p * log(p / q);
    }
    return kl;
}

static void write_logits(kd_context *ctx, const char *p, const float *z, size_t rows, size_t V,
                         const kd_cache_config *cfg)
{
    kd_cache_writer *w = NULL;
    ck_assert_int_eq(kd_cache_writer_open(ctx, p, V, cfg, 0, &w), KD_OK);
    ck_assert_int_eq(kd_cache_writer_append_logits(w, z, rows), KD_OK);
    ck_assert_int_eq(kd_cache_writer_finish(w), KD_OK);
    kd_cache_writer_destroy(w);
}

/* Every stored entry is one of the true top-k and within the stated bound;
 * the tail within its bound. */
START_TEST(round_trip_within_bounds)
{
    kd_context *ctx = kd_test_ctx();
    enum { V = 300, K = 20, R = 70 };
    float *z = (float *)malloc(sizeof(float) * V * R);
    lm_logits(z, R, V, 1, 3);
    z[5 * V + 7] = -INFINITY; /* masked classes are allowed */
    for (int enc = 1; enc <= 2; enc++) {
        kd_cache_config cfg;
        kd_cache_config_default(&cfg);
        cfg.k = K;
        cfg.encoding = (kd_cache_encoding)enc;
        cfg.block_positions = 16;
        write_logits(ctx, path, z, R, V, &cfg);
        ck_assert_int_eq(access(partial, F_OK), -1); /* the partial file is gone */
        kd_logit_cache *c = NULL;
        ck_assert_int_eq(kd_logit_cache_open(ctx, path, &c), KD_OK);
        ck_assert_uint_eq(kd_logit_cache_positions(c), R);
        ck_assert_uint_eq(kd_logit_cache_classes(c), V);
        ck_assert_uint_eq(kd_logit_cache_k(c), K);
        uint64_t rows[R];
        for (int i = 0; i < R; i++) rows[i] = (uint64_t)(R - 1 - i); /* any order */
        int32_t ids[R * K];
        float vals[R * K], tail[R];
        kd_sparse_logits sp;
        ck_assert_int_eq(kd_logit_cache_rows(c, rows, R, ids, vals, tail, &sp), KD_OK);
        ck_assert(sp.ids == ids && sp.values == vals && sp.tail_mass == tail && sp.k == K);
        ck_assert_int_eq(sp.mode, KD_SPARSE_TOPK);
        ck_assert_int_eq(sp.value_kind, KD_SPARSE_LOGPROB);
        size_t kept = 0;
        for (int i = 0; i < R; i++) {
            const float *row = z + rows[i] * V;
            double mx = -INFINITY, S = 0;
            for (int j = 0; j < V; j++) mx = row[j] > mx ? row[j] : mx;
            for (int j = 0; j < V; j++) S += exp(row[j] - mx);
            /* the K-th largest logit: every stored id is at least that */
            float sorted[V];
            memcpy(sorted, row, sizeof sorted);
            for (int a = 0; a < K; a++)
                for (int b = a + 1; b < V; b++)
                    if (sorted[b] > sorted[a]) { float t = sorted[a]; sorted[a] = sorted[b]; sorted[b] = t; }
            double stored = 0;
            int32_t prev = -1;
            for (int s = 0; s < K; s++) {
                int32_t id = ids[i * K + s];
                if (id < 0) {
                    ck_assert_float_eq(vals[i * K + s], 0.0f);
                    continue;
                }
                kept++;
                ck_assert_int_gt(id, prev);
                prev = id;
                ck_assert(row[id] >= sorted[K - 1]);
                double lp = row[id] - mx - log(S), p = exp(lp);
                stored += p;
                if (enc == KD_CACHE_ENC_LOGPROB16)
                    ck_assert_msg(fabs(vals[i * K + s] - lp) <= 1.0 / 2048 + 1e-5, "%g vs %g", vals[i * K + s], lp);
                else
                    ck_assert_msg(fabs(exp(0.5 * vals[i * K + s]) - sqrt(p)) <= 0.5 / 128 + 1e-6, "%g vs %g",
                                  exp(vals[i * K + s]), p);
            }
            double t = 1.0 - stored;
            if (enc == KD_CACHE_ENC_COMPACT)
                ck_assert_msg(fabs(sqrt(tail[i]) - sqrt(t > 0 ? t : 0)) <= 0.5 / 65535 + 2e-4, "tail %g vs %g", tail[i], t);
            else if (t > 1e-6)
                ck_assert_msg(fabs(log(tail[i]) - log(t)) <= 1.0 / 2048 + 1e-3, "tail %g vs %g", tail[i], t);
        }
        ck_assert_uint_gt(kept, R * K / 4);
        if (enc == KD_CACHE_ENC_LOGPROB16) ck_assert_uint_eq(kept, R * K); /* nothing dropped */
        /* rows out of range, NULLs */
        uint64_t bad = R;
        ck_assert_int_eq(kd_logit_cache_rows(c, &bad, 1, ids, vals, tail, NULL), KD_E_INVALID);
        ck_assert_int_eq(kd_logit_cache_rows(c, rows, 1, NULL, vals, tail, NULL), KD_E_INVALID);
        ck_assert_int_eq(kd_logit_cache_rows(NULL, rows, 1, ids, vals, tail, NULL), KD_E_INVALID);
        ck_assert_int_eq(kd_logit_cache_rows(c, rows, 0, NULL, NULL, NULL, NULL), KD_OK);
        kd_logit_cache_close(c);
    }
    free(z);
    kd_context_destroy(ctx);
}
END_TEST

/* k = V with LOGPROB16 keeps every class: the cached distribution equals the
 * full one up to the 16-bit rounding. */
/* Ties at the k-th largest logit keep the lowest ids and send the others to
 * the tail; a confident teacher's tail (1e-8 of the mass) is summed
 * directly, not lost to 1 - sum(top k). */
START_TEST(tail_with_ties_and_confident_rows)
{
    kd_context *ctx = kd_test_ctx();
    enum { V = 1000, K = 8, R = 2 };
    float *z = (float *)malloc(sizeof(float) * V * R);
    for (int j = 0; j < V; j++) z[j] = j % 100 == 3 ? 2.0f : -3.0f; /* ten tied at 2 */
    z[10] = z[500] = z[700] = z[999] = 5.0f;
    for (int j = 0; j < V; j++) z[V + j] = 0.0f;
    z[V + 321] = 25.0f;
    kd_cache_config cfg;
    kd_cache_config_default(&cfg);
    cfg.k = K;
    cfg.encoding = KD_CACHE_ENC_LOGPROB16;
    write_logits(ctx, path, z, R, V, &cfg);
    kd_logit_cache *c = NULL;
    ck_assert_int_eq(kd_logit_cache_open(ctx, path, &c), KD_OK);
    uint64_t rows[R] = {0, 1};
    int32_t ids[R * K];
    float vals[R * K], tail[R];
    ck_assert_int_eq(kd_logit_cache_rows(c, rows, R, ids, vals, tail, NULL), KD_OK);
    /* row 0: the four 5s, then the four lowest ids of the ten tied 2s */
    const int32_t want[K] = {3, 10, 103, 203, 303, 500, 700, 999};
    for (int s = 0; s < K; s++) ck_assert_int_eq(ids[s], want[s]);
    double S = 4 * exp(5.0) + 10 * exp(2.0) + (V - 14) * exp(-3.0);
    double t0 = (6 * exp(2.0) + (V - 14) * exp(-3.0)) / S;
    ck_assert_msg(fabs(log(tail[0]) - log(t0)) <= 1.0 / 2048 + 1e-4, "tail %g vs %g", tail[0], t0);
    /* row 1: one confident class, the other 999 share 1.4e-8 */
    double t1 = (V - K) * exp(-25.0) / (exp(25.0 - 25.0) + (V - 1) * exp(-25.0));
    ck_assert_int_eq(ids[K], 0);
    ck_assert_msg(fabs(log(tail[1]) - log(t1)) <= 1.0 / 2048 + 1e-4, "tail %g vs %g", tail[1], t1);
    kd_logit_cache_close(c);
    unlink(path);
    free(z);
    kd_context_destroy(ctx);
}
END_TEST

START_TEST(k_equals_v_is_nearly_exact)
{
    kd_context *ctx = kd_test_ctx();
    enum { V = 40, R = 9 };
    float z[V * R];
    lm_logits(z, R, V, 0, 8);
    kd_cache_config cfg;
    kd_cache_config_default(&cfg);
    cfg.k = V;
    cfg.encoding = KD_CACHE_ENC_LOGPROB16;
    write_logits(ctx, path, z, R, V, &cfg);
    kd_logit_cache *c;
    ck_assert_int_eq(kd_logit_cache_open(ctx, path, &c), KD_OK);
    uint64_t rows[R];
    for (int i = 0; i < R; i++) rows[i] = (uint64_t)i;
    int32_t ids[R * V];
    float vals[R * V], tail[R];
    ck_assert_int_eq(kd_logit_cache_rows(c, rows, R, ids, vals, tail, NULL), KD_OK);
    for (int i = 0; i < R; i++) {
        ck_assert_float_eq(tail[i], 0.0f);
        for (int j = 0; j < V; j++) ck_assert_int_eq(ids[i * V + j], j);
        ck_assert(row_kl(z + i * V, V, ids + i * V, vals + i * V, tail[i], V) < 1e-6);
    }
    kd_logit_cache_close(c);
    kd_context_destroy(ctx);
}
END_TEST

/* The figures of the issue: bytes per position at k = 50, V = 32000, and the
 * KL between the cached and the full teacher distribution. */
START_TEST(bytes_per_position_and_kl)
{
    kd_context *ctx = kd_test_ctx();
    enum { V = 32000, K = 50, R = 64 };
    float *z = (float *)malloc(sizeof(float) * V * R);
    int32_t *ids = (int32_t *)malloc(sizeof(int32_t) * K * R);
    float *vals = (float *)malloc(sizeof(float) * K * R), tail[R];
    uint64_t rows[R];
    for (int i = 0; i < R; i++) rows[i] = (uint64_t)i;
    for (int zipf = 1; zipf >= 0; zipf--) {
        lm_logits(z, R, V, zipf, 77);
        for (int enc = 1; enc <= 2; enc++) {
            kd_cache_config cfg;
            kd_cache_config_default(&cfg);
            cfg.k = K;
            cfg.encoding = (kd_cache_encoding)enc;
            write_logits(ctx, path, z, R, V, &cfg);
            kd_logit_cache *c;
            ck_assert_int_eq(kd_logit_cache_open(ctx, path, &c), KD_OK);
            ck_assert_int_eq(kd_logit_cache_rows(c, rows, R, ids, vals, tail, NULL), KD_OK);
            /* payload bytes: the file minus header, index and footer */
            double bytes = (double)(kd_logit_cache_file_bytes(c) - 64 - 32 - 8) / R;
            double kl = 0, kl_exact = 0;
            for (int i = 0; i < R; i++) {
                kl += row_kl(z + (size_t)i * V, V, ids + i * K, vals + i * K, tail[i], K) / R;
                /* the same ids with exact values: what top-k itself costs */
                float ev[K], et = 0;
                double mx = -INFINITY, S = 0, st = 0;
                const float *row = z + (size_t)i * V;
                for (int j = 0; j < V; j++) mx = row[j] > mx ? row[j] : mx;
                for (int j = 0; j < V; j++) S += exp(row[j] - mx);
                for (int s = 0; s < K; s++) {
                    int32_t id = ids[i * K + s];
                    ev[s] = id < 0 ? 0.0f : (float)(row[id] - mx - log(S));
                    st += id < 0 ? 0.0 : exp(ev[s]);
                }
                et = (float)(1.0 - st);
                kl_exact += row_kl(row, V, ids + i * K, ev, et, K) / R;
            }
            printf("cache: teacher=%s V=%d k=%d encoding=%s bytes/position=%.1f kl_mean=%.2e kl_topk_unquantised=%.2e\n",
                   zipf ? "zipf-lm" : "iid-normal", V, K, enc == 1 ? "logprob16" : "compact", bytes, kl, kl_exact);
            if (enc == KD_CACHE_ENC_COMPACT) {
                ck_assert_msg(kl - kl_exact < 2e-3, "quantisation adds %g nats", kl - kl_exact);
                /* the goal on the LM-shaped teacher; i.i.d. ids cannot reach it:
                 * log2 C(32000, 50) / 8 = 67 bytes for the id set alone */
                if (zipf) ck_assert_msg(bytes <= 64.0, "%.1f bytes/position", bytes);
                else ck_assert_msg(bytes <= 110.0, "%.1f bytes/position", bytes);
            } else {
                ck_assert(kl - kl_exact < 1e-4);
                ck_assert(bytes <= 2 + 2 + (15.0 * K + 16.0 * K + 16) / 8 + 1);
            }
            kd_logit_cache_close(c);
        }
    }
    free(vals);
    free(ids);
    free(z);
    kd_context_destroy(ctx);
}
END_TEST

/* A deterministic per-row teacher (no batch effects): logits from a hash. */
static int hash_teacher(void *user, const float *x, size_t batch, size_t dim, float *logits, size_t classes)
{
    (void)user;
    for (size_t b = 0; b < batch; b++) {
        kd_rng r;
        kd_rng_seed(&r, (uint64_t)(x[b * dim] * 1e6f), 3);
        for (size_t c = 0; c < classes; c++) logits[b * classes + c] = 3.0f * kd_rng_normal(&r);
    }
    return 0;
}

enum { RV = 500, RN = 300, RD = 2 };
static float resume_x[RN * RD];

static void resume_setup(kd_context *ctx, kd_teacher **t, kd_dataset *ds, kd_cache_config *cfg)
{
    for (int i = 0; i < RN * RD; i++) resume_x[i] = (float)i * 0.001f;
    ck_assert_int_eq(kd_teacher_from_callback(ctx, RD, RV, hash_teacher, NULL, t), KD_OK);
    kd_dataset d = {sizeof d, resume_x, RN, RD, NULL};
    *ds = d;
    kd_cache_config_default(cfg);
    cfg->k = 12;
    cfg->block_positions = 32;
    cfg->batch = 25;
}

START_TEST(resume_after_crash_is_byte_identical)
{
    kd_context *ctx = kd_test_ctx();
    kd_teacher *t;
    kd_dataset ds;
    kd_cache_config cfg;
    resume_setup(ctx, &t, &ds, &cfg);
    ck_assert_int_eq(kd_cache_write_teacher(ctx, t, &ds, path2, &cfg, 0), KD_OK);
    size_t nref;
    unsigned char *ref = kd_test_read_file(path2, &nref);
    float *z = (float *)malloc(sizeof(float) * RN * RV);
    ck_assert_int_eq(kd_teacher_logits(t, resume_x, RN, z), KD_OK);
    /* torn: 0 = clean stop after 150 positions; 1..3 = the partial file cut
     * inside a later block, inside the header, and a byte flipped */
    for (int mode = 0; mode < 4; mode++) {
        kd_cache_writer *w;
        ck_assert_int_eq(kd_cache_writer_open(ctx, path, RV, &cfg, 0, &w), KD_OK);
        ck_assert_int_eq(kd_cache_writer_append_logits(w, z, 150), KD_OK);
        ck_assert_uint_eq(kd_cache_writer_positions(w), 150);
        kd_cache_writer_destroy(w); /* "crash": no finish */
        ck_assert_int_eq(access(path, F_OK), -1);
        size_t np;
        unsigned char *pb = kd_test_read_file(partial, &np);
        ck_assert_uint_gt(np, 64);
        FILE *f = fopen(partial, "r+b");
        uint64_t expect = 128; /* 4 complete blocks of 32 */
        if (mode == 1) {
            ck_assert_int_eq(ftruncate(fileno(f), (off_t)(np - 7)), 0);
            expect = 96;
        } else if (mode == 2) {
            ck_assert_int_eq(ftruncate(fileno(f), 30), 0);
            expect = 0;
        } else if (mode == 3) {
            fseek(f, (long)(np - 20), SEEK_SET);
            fputc(pb[np - 20] ^ 0x40, f);
            expect = 96;
        }
        fclose(f);
        free(pb);
        ck_assert_int_eq(kd_cache_writer_open(ctx, path, RV, &cfg, 1, &w), KD_OK);
        ck_assert_uint_eq(kd_cache_writer_positions(w), expect);
        kd_cache_writer_destroy(w);
        ck_assert_int_eq(kd_cache_write_teacher(ctx, t, &ds, path, &cfg, 1), KD_OK);
        size_t n;
        unsigned char *got = kd_test_read_file(path, &n);
        ck_assert_uint_eq(n, nref);
        ck_assert_msg(memcmp(got, ref, n) == 0, "mode %d: resumed file differs", mode);
        free(got);
        ck_assert_int_eq(access(partial, F_OK), -1);
        unlink(path);
    }
    /* resuming with another k is refused; with no partial file it starts over */
    kd_cache_writer *w;
    ck_assert_int_eq(kd_cache_writer_open(ctx, path, RV, &cfg, 0, &w), KD_OK);
    kd_cache_writer_destroy(w);
    kd_cache_config other = cfg;
    other.k = 13;
    ck_assert_int_eq(kd_cache_writer_open(ctx, path, RV, &other, 1, &w), KD_E_INVALID);
    ck_assert(strstr(kd_context_last_error(ctx), "partial") != NULL);
    unlink(partial);
    ck_assert_int_eq(kd_cache_writer_open(ctx, path, RV, &other, 1, &w), KD_OK);
    ck_assert_uint_eq(kd_cache_writer_positions(w), 0);
    kd_cache_writer_destroy(w);
    free(z);
    free(ref);
    kd_teacher_destroy(t);
    kd_context_destroy(ctx);
}
END_TEST

static int fail_fsync(const char *op) { return strcmp(op, "fsync") == 0 ? EIO : 0; }
static int fail_write(const char *op) { return strcmp(op, "write") == 0 ? ENOSPC : 0; }

START_TEST(writer_hostile_input_and_io_faults)
{
    kd_context *ctx = kd_test_ctx();
    enum { V = 30 };
    float z[3 * V];
    lm_logits(z, 3, V, 0, 5);
    kd_cache_config cfg;
    kd_cache_config_default(&cfg);
    cfg.k = 5;
    kd_cache_writer *w = NULL;
    ck_assert_int_eq(kd_cache_writer_open(NULL, path, V, &cfg, 0, &w), KD_E_INVALID);
    ck_assert_int_eq(kd_cache_writer_open(ctx, NULL, V, &cfg, 0, &w), KD_E_INVALID);
    ck_assert_int_eq(kd_cache_writer_open(ctx, path, V, &cfg, 0, NULL), KD_E_INVALID);
    ck_assert_int_eq(kd_cache_writer_open(ctx, path, 0, &cfg, 0, &w), KD_E_INVALID);
    ck_assert_int_eq(kd_cache_writer_open(ctx, path, (size_t)1 << 40, &cfg, 0, &w), KD_E_INVALID);
    kd_cache_config bad = cfg;
    bad.k = V + 1;
    ck_assert_int_eq(kd_cache_writer_open(ctx, path, V, &bad, 0, &w), KD_E_INVALID);
    bad = cfg;
    bad.k = 0;
    ck_assert_int_eq(kd_cache_writer_open(ctx, path, V, &bad, 0, &w), KD_E_INVALID);
    bad = cfg;
    bad.encoding = (kd_cache_encoding)9;
    ck_assert_int_eq(kd_cache_writer_open(ctx, path, V, &bad, 0, &w), KD_E_INVALID);
    bad = cfg;
    bad.value_scale = 5;
    ck_assert_int_eq(kd_cache_writer_open(ctx, path, V, &bad, 0, &w), KD_E_INVALID);
    bad = cfg;
    bad.block_positions = 0;
    ck_assert_int_eq(kd_cache_writer_open(ctx, path, V, &bad, 0, &w), KD_E_INVALID);
    bad = cfg;
    bad.struct_size = 3;
    ck_assert_int_eq(kd_cache_writer_open(ctx, path, V, &bad, 0, &w), KD_E_VERSION);
    ck_assert_int_eq(kd_cache_writer_open(ctx, "/nonexistent-dir/x", V, &cfg, 0, &w), KD_E_IO);
    ck_assert_ptr_null(w);

    ck_assert_int_eq(kd_cache_writer_open(ctx, path, V, &cfg, 0, &w), KD_OK);
    float nanrow[V];
    memcpy(nanrow, z, sizeof nanrow);
    nanrow[3] = NAN;
    ck_assert_int_eq(kd_cache_writer_append_logits(w, nanrow, 1), KD_E_NUMERIC);
    nanrow[3] = INFINITY;
    ck_assert_int_eq(kd_cache_writer_append_logits(w, nanrow, 1), KD_E_NUMERIC);
    for (int j = 0; j < V; j++) nanrow[j] = -INFINITY;
    ck_assert_int_eq(kd_cache_writer_append_logits(w, nanrow, 1), KD_E_NUMERIC);
    ck_assert_uint_eq(kd_cache_writer_positions(w), 0);
    ck_assert_int_eq(kd_cache_writer_append_logits(w, NULL, 1), KD_E_INVALID);
    ck_assert_int_eq(kd_cache_writer_append_logits(w, z, (size_t)-1), KD_E_OVERFLOW);
    ck_assert_int_eq(kd_cache_writer_append_logits(NULL, z, 1), KD_E_INVALID);
    ck_assert_int_eq(kd_cache_writer_append_logits(w, z, 3), KD_OK);
    /* a failing fsync at finish leaves no file, and the writer refuses more */
    kd__io_fault_hook = fail_fsync;
    ck_assert_int_eq(kd_cache_writer_finish(w), KD_E_IO);
    kd__io_fault_hook = NULL;
    ck_assert_int_eq(access(path, F_OK), -1);
    ck_assert_int_eq(kd_cache_writer_finish(w), KD_E_STATE);
    ck_assert_int_eq(kd_cache_writer_append_logits(w, z, 1), KD_E_STATE);
    kd_cache_writer_destroy(w);
    kd_cache_writer_destroy(NULL);
    /* a failing write of a block */
    cfg.block_positions = 1;
    ck_assert_int_eq(kd_cache_writer_open(ctx, path, V, &cfg, 0, &w), KD_OK);
    kd__io_fault_hook = fail_write;
    ck_assert_int_eq(kd_cache_writer_append_logits(w, z, 2), KD_E_IO);
    kd__io_fault_hook = NULL;
    ck_assert_int_eq(kd_cache_writer_append_logits(w, z, 1), KD_E_STATE);
    kd_cache_writer_destroy(w);
    /* zero positions is a valid, empty cache */
    ck_assert_int_eq(kd_cache_writer_open(ctx, path, V, &cfg, 0, &w), KD_OK);
    ck_assert_int_eq(kd_cache_writer_finish(w), KD_OK);
    kd_cache_writer_destroy(w);
    kd_logit_cache *c;
    ck_assert_int_eq(kd_logit_cache_open(ctx, path, &c), KD_OK);
    ck_assert_uint_eq(kd_logit_cache_positions(c), 0);
    kd_logit_cache_close(c);
    kd_logit_cache_close(NULL);
    ck_assert_int_eq(kd_logit_cache_open(ctx, path2, &c), KD_E_NOT_FOUND);
    ck_assert_int_eq(kd_logit_cache_open(ctx, NULL, &c), KD_E_INVALID);
    ck_assert_int_eq(kd_logit_cache_open_memory(ctx, NULL, 5, &c), KD_E_INVALID);
    ck_assert_uint_eq(kd_logit_cache_positions(NULL) + kd_logit_cache_classes(NULL) + kd_logit_cache_k(NULL), 0);
    kd_context_destroy(ctx);
}
END_TEST

static kd_status open_mem(kd_context *ctx, const unsigned char *img, size_t n)
{
    /* an exact-size heap copy, so ASan sees any over-read */
    unsigned char *copy = (unsigned char *)malloc(n ? n : 1);
    memcpy(copy, img, n);
    kd_logit_cache *c = NULL;
    kd_status st = kd_logit_cache_open_memory(ctx, copy, n, &c);
    if (st == KD_OK) {
        size_t k = kd_logit_cache_k(c);
        int32_t *ids = (int32_t *)malloc(k * sizeof *ids);
        float *v = (float *)malloc(k * sizeof *v), t;
        for (uint64_t r = 0; r < kd_logit_cache_positions(c); r++)
            ck_assert_int_eq(kd_logit_cache_rows(c, &r, 1, ids, v, &t, NULL), KD_OK);
        free(ids);
        free(v);
    } else {
        ck_assert_ptr_null(c);
        ck_assert(strlen(kd_context_last_error(ctx)) > 0);
    }
    kd_logit_cache_close(c);
    free(copy);
    return st;
}

START_TEST(hostile_files)
{
    kd_context *ctx = kd_test_ctx();
    enum { V = 40, R = 10 };
    float z[V * R];
    lm_logits(z, R, V, 1, 9);
    for (int enc = 1; enc <= 2; enc++) {
        kd_cache_config cfg;
        kd_cache_config_default(&cfg);
        cfg.k = 5;
        cfg.block_positions = 4;
        cfg.encoding = (kd_cache_encoding)enc;
        write_logits(ctx, path, z, R, V, &cfg);
        size_t n;
        unsigned char *img = kd_test_read_file(path, &n);
        ck_assert_int_eq(open_mem(ctx, img, n), KD_OK);
        /* truncation at every byte offset */
        for (size_t cut = 0; cut < n; cut++) {
            kd_status st = open_mem(ctx, img, cut);
            ck_assert_msg(st == KD_E_FORMAT || st == KD_E_CORRUPT, "cut %zu: %d", cut, st);
        }
        /* a flipped byte anywhere is caught (every block, header, index, footer) */
        for (size_t i = 0; i < n; i++) {
            img[i] ^= 0x10;
            kd_status st = open_mem(ctx, img, n);
            ck_assert_msg(st == KD_E_FORMAT || st == KD_E_CORRUPT || st == KD_E_VERSION, "byte %zu: %d", i, st);
            img[i] ^= 0x10;
        }
        /* one flipped payload byte in every block: each is a CRC mismatch */
        for (size_t off = 64, b = 0; b < 3; b++) {
            uint32_t pay = rd32(img + off + 16);
            img[off + 24 + pay / 2] ^= 1;
            ck_assert_int_eq(open_mem(ctx, img, n), KD_E_CORRUPT);
            ck_assert(strstr(kd_context_last_error(ctx), "CRC") != NULL);
            img[off + 24 + pay / 2] ^= 1;
            off += 24 + pay;
        }
        unsigned char *m = (unsigned char *)malloc(n);
        /* bad magic, version */
        memcpy(m, img, n);
        m[0] = 'X';
        ck_assert_int_eq(open_mem(ctx, m, n), KD_E_FORMAT);
        memcpy(m, img, n);
        wr32(m + 8, 2);
        fix_header_crc(m);
        ck_assert_int_eq(open_mem(ctx, m, n), KD_E_VERSION);
        /* hostile V / k / block size / positions with a valid header CRC */
        uint64_t hostile[][4] = {
            /* classes, k, block, positions */
            {0, 5, 4, R}, {(uint64_t)1 << 40, 5, 4, R}, {UINT64_MAX, 5, 4, R}, {V, 0, 4, R},
            {V, V + 1, 4, R}, {V, 0xffffffffu, 4, R}, {V, 5, 0, R}, {V, 5, 0xffffffffu, R},
            {V, 5, 4, R + 1}, {V, 5, 4, R - 1}, {V, 5, 4, UINT64_MAX}, {V, 5, 4, (uint64_t)1 << 62},
            {V, 5, 8, R}, {V, 4, 4, R}, {V - 30, 5, 4, R}};
        for (size_t h = 0; h < sizeof hostile / sizeof hostile[0]; h++) {
            memcpy(m, img, n);
            wr64(m + 16, hostile[h][0]);
            wr32(m + 24, (uint32_t)hostile[h][1]);
            wr32(m + 28, (uint32_t)hostile[h][2]);
            wr64(m + 32, hostile[h][3]);
            fix_header_crc(m);
            kd_status st = open_mem(ctx, m, n);
            ck_assert_msg(st == KD_E_FORMAT || st == KD_E_CORRUPT, "case %zu: %d", h, st);
        }
        /* footer counts forged with a recomputed index CRC */
        uint64_t nb = (R + 3) / 4;
        size_t io = n - 32 - nb * 8;
        uint64_t forged[][3] = {{io, R, nb + 1}, {io, R + 4, nb + 1}, {io, UINT64_MAX, nb},
                                {io - 8, R, nb}, {0, R, nb}, {io, R, (uint64_t)1 << 61}};
        for (size_t h = 0; h < sizeof forged / sizeof forged[0]; h++) {
            memcpy(m, img, n);
            unsigned char *f = m + n - 32;
            wr64(f, forged[h][0]);
            wr64(f + 8, forged[h][1]);
            wr64(f + 16, forged[h][2]);
            wr32(f + 24, kd_crc32c(kd_crc32c(0, m + io, (size_t)nb * 8), f, 24));
            ck_assert_int_eq(open_mem(ctx, m, n), KD_E_FORMAT);
        }
        /* a partial file is not a cache */
        memcpy(m, img, n);
        wr32(m + 44, 0);
        fix_header_crc(m);
        ck_assert_int_eq(open_mem(ctx, m, n), KD_E_FORMAT);
        free(m);
        free(img);
    }
    kd_context_destroy(ctx);
}
END_TEST

typedef struct {
    const float *z;
} alloc_user;

static kd_status alloc_body(kd_context *ctx, void *user)
{
    const float *z = ((alloc_user *)user)->z;
    kd_cache_config cfg;
    kd_cache_config_default(&cfg);
    cfg.k = 4;
    cfg.block_positions = 2;
    kd_cache_writer *w = NULL;
    kd_status st = kd_cache_writer_open(ctx, path, 20, &cfg, 0, &w);
    if (st == KD_OK) st = kd_cache_writer_append_logits(w, z, 5);
    if (st == KD_OK) st = kd_cache_writer_finish(w);
    kd_cache_writer_destroy(w);
    if (st != KD_OK) return st;
    kd_logit_cache *c = NULL;
    if ((st = kd_logit_cache_open(ctx, path, &c)) != KD_OK) return st;
    kd_logit_cache_close(c);
    /* resume path: a partial file with two blocks */
    if ((st = kd_cache_writer_open(ctx, path2, 20, &cfg, 0, &w)) != KD_OK) return st;
    st = kd_cache_writer_append_logits(w, z, 4);
    kd_cache_writer_destroy(w);
    if (st != KD_OK) return st;
    if ((st = kd_cache_writer_open(ctx, path2, 20, &cfg, 1, &w)) != KD_OK) return st;
    kd_cache_writer_destroy(w);
    return KD_OK;
}

START_TEST(allocation_failures)
{
    float z[5 * 20];
    lm_logits(z, 5, 20, 0, 4);
    alloc_user u = {z};
    ck_assert_int_ge(kd_test_alloc_failures(alloc_body, &u), 8);
}
END_TEST

/* ---- end to end: distil through the cache only ---------------------------- */

#define E_DIM 16
#define E_C 64
#define E_N 1024

static float e_w[E_C * E_DIM], e_x[E_N * E_DIM];
static int32_t e_y[E_N];

static kd_model *e_teacher(kd_context *ctx)
{
    kd_test_fill(e_w, E_C * E_DIM, -1, 1, 501);
    kd_test_fill(e_x, E_N * E_DIM, -1, 1, 502);
    for (int i = 0; i < E_N; i++) {
        int best = 0;
        float bv = -1e30f;
        for (int c = 0; c < E_C; c++) {
            float s = 0;
            for (int d = 0; d < E_DIM; d++) s += e_w[c * E_DIM + d] * e_x[i * E_DIM + d];
            if (s > bv) { bv = s; best = c; }
        }
        e_y[i] = best;
    }
    kd_model *m = NULL;
    ck_assert_int_eq(kd_model_create_from_spec(ctx, "input 16; linear 64", &m), KD_OK);
    size_t wi, bi;
    float *wd, *bd;
    ck_assert_int_eq(kd_model_tensor_find(m, "0.weight", &wi), KD_OK);
    ck_assert_int_eq(kd_model_tensor_find(m, "0.bias", &bi), KD_OK);
    ck_assert_int_eq(kd_model_tensor(m, wi, &wd, NULL, NULL, NULL, NULL), KD_OK);
    ck_assert_int_eq(kd_model_tensor(m, bi, &bd, NULL, NULL, NULL, NULL), KD_OK);
    for (int i = 0; i < E_C * E_DIM; i++) wd[i] = 2.5f * e_w[i];
    for (int c = 0; c < E_C; c++) bd[c] = 0;
    return m;
}

static const char *E_STUDENT = "input 16; linear 32; relu; linear 64";

START_TEST(distil_through_cache_matches_dense)
{
    kd_context *ctx = kd_test_ctx();
    kd_model *tm = e_teacher(ctx);
    kd_teacher *t;
    ck_assert_int_eq(kd_teacher_from_model(ctx, tm, &t), KD_OK);
    kd_dataset train = {sizeof train, e_x, E_N, E_DIM, NULL}, eval = {sizeof eval, e_x, E_N, E_DIM, e_y};
    kd_cache_config cc;
    kd_cache_config_default(&cc);
    cc.k = 8; /* of 64 classes, with the tail bucket */
    ck_assert_int_eq(kd_cache_write_teacher(ctx, t, &train, path, &cc, 0), KD_OK);
    kd_logit_cache *cache;
    ck_assert_int_eq(kd_logit_cache_open(ctx, path, &cache), KD_OK);

    kd_fit_config fc;
    kd_fit_config_default(&fc);
    fc.epochs = 12;
    fc.batch = 64;
    fc.seed = 11;
    kd_eval_report dense = {sizeof dense}, cached = {sizeof cached}, teach = {sizeof teach};
    /* two fresh contexts of the same seed: the same initial students */
    kd_context *ca = kd_test_ctx(), *cb = kd_test_ctx();
    kd_test_rig a;
    kd_test_rig_make(ca, &a, E_STUDENT, 1e-2f);
    ck_assert_int_eq(kd_fit(a.student, t, &train, &fc), KD_OK);
    ck_assert_int_eq(kd_evaluate(ctx, a.model, t, &eval, 256, &dense), KD_OK);
    kd_test_rig b;
    kd_test_rig_make(cb, &b, E_STUDENT, 1e-2f);
    /* no teacher from here on: the cache only */
    ck_assert_int_eq(kd_fit_cached(b.student, cache, &train, &fc), KD_OK);
    ck_assert_int_eq(kd_evaluate(ctx, b.model, t, &eval, 256, &cached), KD_OK);
    ck_assert_int_eq(kd_evaluate(ctx, tm, NULL, &eval, 256, &teach), KD_OK);
    printf("cache e2e: classes=64 k=8 teacher_acc=%.3f dense_student acc=%.3f agree=%.3f | cached_student acc=%.3f agree=%.3f\n",
           teach.accuracy, dense.accuracy, dense.agreement, cached.accuracy, cached.agreement);
    ck_assert_msg(dense.agreement > 0.6, "dense run did not learn: %.3f", dense.agreement);
    /* stated tolerance: within 0.05 of the dense-teacher run */
    ck_assert_msg(fabs(cached.accuracy - dense.accuracy) <= 0.05 && fabs(cached.agreement - dense.agreement) <= 0.05,
                  "cached %.3f/%.3f vs dense %.3f/%.3f", cached.accuracy, cached.agreement, dense.accuracy,
                  dense.agreement);
    /* hostile: wrong shapes, augmentation, NULLs */
    kd_dataset small = train;
    small.n = E_N - 1;
    ck_assert_int_eq(kd_fit_cached(b.student, cache, &small, &fc), KD_E_SHAPE);
    ck_assert_int_eq(kd_fit_cached(b.student, NULL, &train, &fc), KD_E_INVALID);
    ck_assert_int_eq(kd_fit_cached(NULL, cache, &train, &fc), KD_E_INVALID);
    kd_fit_config aug = fc;
    aug.augment = (kd_augment_fn)1;
    ck_assert_int_eq(kd_fit_cached(b.student, cache, &train, &aug), KD_E_INVALID);
    kd_test_rig_free(&a);
    kd_test_rig_free(&b);
    kd_logit_cache_close(cache);
    kd_teacher_destroy(t);
    kd_model_destroy(tm);
    kd_context_destroy(cb);
    kd_context_destroy(ca);
    kd_context_destroy(ctx);
}
END_TEST

Suite *kd_test_suite(void)
{
    Suite *s = suite_create("cache");
    TCase *tc = tcase_create("cache");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, round_trip_within_bounds);
    tcase_add_test(tc, tail_with_ties_and_confident_rows);
    tcase_add_test(tc, k_equals_v_is_nearly_exact);
    tcase_add_test(tc, bytes_per_position_and_kl);
    tcase_add_test(tc, resume_after_crash_is_byte_identical);
    tcase_add_test(tc, writer_hostile_input_and_io_faults);
    tcase_add_test(tc, hostile_files);
    tcase_add_test(tc, allocation_failures);
    tcase_add_test(tc, distil_through_cache_matches_dense);
    suite_add_tcase(s, tc);
    return s;
}
