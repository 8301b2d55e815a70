/*
 * fuzz_safetensors.c - libFuzzer target for the safetensors reader (memory and
 * path) and, as a differential check, the writer.
 *
 * For each input:
 *   1. open it from memory; when that succeeds, every query must succeed and
 *      stay inside the input (tensor bytes, zero-copy pointers), names must
 *      round-trip through kd_safetensors_find, metadata through _get;
 *   2. re-write every float-convertible tensor and all metadata with the
 *      writer, re-open the result, and require the same names, shapes,
 *      metadata and bit-identical float values;
 *   3. for one input in 16, open it again through a file (mmap path) and
 *      require the same status.
 * A violated property calls __builtin_trap(), which libFuzzer reports.
 *
 * Build and run: fuzz/run_safetensors.sh [SECONDS] (see fuzz/README.md).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kd/kd.h"

#define CHECK(c)                                                                 \
    do {                                                                         \
        if (!(c)) {                                                              \
            fprintf(stderr, "property failed at %s:%d: %s\n", __FILE__, __LINE__, #c); \
            __builtin_trap();                                                    \
        }                                                                        \
    } while (0)

#define MAX_FLOATS (1u << 16)

static kd_context *ctx;
static float *vals, *vals2;
static char tmp_path[64];

static int is_float(kd_st_dtype d) { return d == KD_ST_F32 || d == KD_ST_F16 || d == KD_ST_BF16; }

static void check_reader(kd_safetensors *st, const uint8_t *data, size_t size)
{
    size_t n = kd_safetensors_count(st);
    for (size_t i = 0; i < n; i++) {
        kd_safetensors_tensor_info info;
        info.struct_size = sizeof info;
        CHECK(kd_safetensors_info(st, i, &info) == KD_OK);
        CHECK(strlen(info.name) == info.name_len && info.name_len > 0);
        CHECK(info.rank <= KD_SAFETENSORS_MAX_RANK);
        CHECK(info.nbytes == info.numel * kd_st_dtype_size(info.dtype));
        const uint8_t *p = (const uint8_t *)info.data;
        CHECK(p >= data && p <= data + size && info.nbytes <= (size_t)(data + size - p));
        size_t idx;
        CHECK(kd_safetensors_find(st, info.name, &idx) == KD_OK && idx == i);
        const float *zc;
        kd_status s = kd_safetensors_data_f32(st, i, &zc);
        CHECK(s == KD_OK || s == KD_E_UNSUPPORTED);
        if (s == KD_OK) CHECK((const uint8_t *)zc == p);
        /* Every dtype but FP8 converts to float (integers and F64 rounded). */
        int converts = info.dtype != KD_ST_F8_E5M2 && info.dtype != KD_ST_F8_E4M3;
        if (converts && info.numel <= MAX_FLOATS) {
            CHECK(kd_safetensors_read_f32(st, i, vals, info.numel) == KD_OK);
            if (s == KD_OK) CHECK(memcmp(vals, zc, info.numel * 4) == 0);
        } else if (!converts) {
            CHECK(kd_safetensors_read_f32(st, i, vals, info.numel) == KD_E_UNSUPPORTED);
        }
    }
    size_t m = kd_safetensors_metadata_count(st);
    for (size_t i = 0; i < m; i++) {
        const char *k, *v, *v2;
        CHECK(kd_safetensors_metadata_at(st, i, &k, &v) == KD_OK);
        CHECK(kd_safetensors_metadata_get(st, k, &v2) == KD_OK && v2 == v);
    }
}

/* Writes the float tensors and metadata of st, re-reads, compares. */
static void check_rewrite(kd_safetensors *st)
{
    kd_safetensors_writer *w;
    CHECK(kd_safetensors_writer_create(ctx, &w) == KD_OK);
    size_t n = kd_safetensors_count(st), kept = 0, floats = 0;
    for (size_t i = 0; i < n; i++) {
        kd_safetensors_tensor_info info;
        info.struct_size = sizeof info;
        CHECK(kd_safetensors_info(st, i, &info) == KD_OK);
        if (!is_float(info.dtype) || floats + info.numel > MAX_FLOATS) continue;
        CHECK(kd_safetensors_read_f32(st, i, vals + floats, info.numel) == KD_OK);
        CHECK(kd_safetensors_writer_add_f32(w, info.name, info.rank, info.shape,
                                            info.numel ? vals + floats : NULL, KD_ST_COPY) == KD_OK);
        floats += info.numel;
        kept++;
    }
    size_t m = kd_safetensors_metadata_count(st);
    for (size_t i = 0; i < m; i++) {
        const char *k, *v;
        CHECK(kd_safetensors_metadata_at(st, i, &k, &v) == KD_OK);
        CHECK(kd_safetensors_writer_set_metadata(w, k, v) == KD_OK);
    }
    size_t size, written;
    CHECK(kd_safetensors_writer_size(w, &size) == KD_OK);
    unsigned char *buf = malloc(size);
    CHECK(buf != NULL);
    CHECK(kd_safetensors_writer_write_memory(w, buf, size, &written) == KD_OK && written == size);
    kd_safetensors_writer_destroy(w);

    kd_safetensors *st2;
    kd_status s = kd_safetensors_open_memory(ctx, buf, size, &st2);
    if (s != KD_OK) fprintf(stderr, "re-open failed: %s\n", kd_context_last_error(ctx));
    CHECK(s == KD_OK);
    CHECK(kd_safetensors_count(st2) == kept);
    CHECK(kd_safetensors_metadata_count(st2) == m);
    for (size_t i = 0; i < m; i++) {
        const char *k, *v, *v2;
        CHECK(kd_safetensors_metadata_at(st, i, &k, &v) == KD_OK);
        CHECK(kd_safetensors_metadata_get(st2, k, &v2) == KD_OK && strcmp(v, v2) == 0);
    }
    for (size_t i = 0; i < n; i++) {
        kd_safetensors_tensor_info a, b;
        a.struct_size = b.struct_size = sizeof a;
        CHECK(kd_safetensors_info(st, i, &a) == KD_OK);
        size_t j;
        if (kd_safetensors_find(st2, a.name, &j) != KD_OK) {
            CHECK(!is_float(a.dtype) || a.numel > 0); /* skipped: non-float or over budget */
            continue;
        }
        CHECK(kd_safetensors_info(st2, j, &b) == KD_OK);
        CHECK(b.dtype == KD_ST_F32 && b.rank == a.rank && b.numel == a.numel);
        CHECK(memcmp(a.shape, b.shape, sizeof a.shape) == 0);
        CHECK(kd_safetensors_read_f32(st, i, vals, a.numel) == KD_OK);
        CHECK(kd_safetensors_read_f32(st2, j, vals2, b.numel) == KD_OK);
        CHECK(memcmp(vals, vals2, a.numel * 4) == 0);
    }
    kd_safetensors_close(st2);
    free(buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!ctx) {
        if (kd_context_create(NULL, &ctx) != KD_OK) __builtin_trap();
        vals = malloc(MAX_FLOATS * sizeof(float));
        vals2 = malloc(MAX_FLOATS * sizeof(float));
        snprintf(tmp_path, sizeof tmp_path, "/tmp/kd_fuzz_st_%ld.safetensors", (long)getpid());
    }
    kd_safetensors *st = NULL;
    kd_status s = kd_safetensors_open_memory(ctx, data, size, &st);
    CHECK(s == KD_OK || s == KD_E_FORMAT || s == KD_E_OVERFLOW);
    CHECK(s == KD_OK ? st != NULL : st == NULL);
    if (s != KD_OK) CHECK(kd_context_last_error(ctx)[0] != '\0');
    if (st) {
        check_reader(st, data, size);
        check_rewrite(st);
    }
    if ((size & 15) == 0) {
        FILE *f = fopen(tmp_path, "wb");
        if (f) {
            size_t w = fwrite(data, 1, size, f);
            fclose(f);
            if (w == size) {
                kd_safetensors *sf = NULL;
                kd_status s2 = kd_safetensors_open_file(ctx, tmp_path, &sf);
                CHECK(s2 == s);
                for (size_t i = 0; sf && i < kd_safetensors_count(sf); i++) {
                    kd_safetensors_tensor_info a, b;
                    a.struct_size = b.struct_size = sizeof a;
                    CHECK(kd_safetensors_info(st, i, &a) == KD_OK);
                    CHECK(kd_safetensors_info(sf, i, &b) == KD_OK);
                    CHECK(strcmp(a.name, b.name) == 0 && a.nbytes == b.nbytes);
                    CHECK(a.nbytes == 0 || memcmp(a.data, b.data, a.nbytes) == 0);
                }
                kd_safetensors_close(sf);
            }
            unlink(tmp_path);
        }
    }
    kd_safetensors_close(st);
    return 0;
}
