/*
 * fuzz_logit_cache.c - libFuzzer target for the teacher-logit cache reader
 * (kd_logit_cache_open_memory, kd_logit_cache_rows).
 *
 * The first input byte picks a mode: even = load the rest as is (checksums
 * must match), odd = recompute the header, block and index checksums first,
 * so mutations reach the structural and record validation. A cache that
 * validates must decode every position without error, with ids in range and
 * ascending.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kd/kd.h"
#include "fuzz_crc.h"

static void fix_crcs(unsigned char *img, size_t n)
{
    if (n < 64) return;
    wr32(img + 60, kd_crc32c(0, img, 60));
    if (n < 96) return;
    unsigned char *f = img + n - 32;
    uint64_t io = rd64(f), nb = rd64(f + 16);
    size_t off = 64;
    while (off + 24 <= n && off < io) { /* blocks, as laid out */
        uint32_t pay = rd32(img + off + 16);
        if (pay > n - off - 24) break;
        wr32(img + off + 20, kd_crc32c(kd_crc32c(0, img + off, 20), img + off + 24, pay));
        off += 24 + (size_t)pay;
    }
    if (io <= n - 32 && nb <= (n - 32 - io) / 8)
        wr32(f + 24, kd_crc32c(kd_crc32c(0, img + io, (size_t)nb * 8), f, 24));
}

static void fuzz_image(kd_context *ctx, unsigned char *img, size_t size)
{
    kd_logit_cache *c = NULL;
    if (kd_logit_cache_open_memory(ctx, img, size, &c) == KD_OK) {
        size_t k = kd_logit_cache_k(c), V = kd_logit_cache_classes(c);
        int32_t *ids = (int32_t *)malloc(k * sizeof *ids);
        float *v = (float *)malloc(k * sizeof *v), t;
        uint64_t n = kd_logit_cache_positions(c);
        for (uint64_t r = 0; r < n && r < 4096; r++) {
            if (kd_logit_cache_rows(c, &r, 1, ids, v, &t, NULL) != KD_OK) abort();
            int32_t prev = -1;
            for (size_t i = 0; i < k; i++) {
                if (ids[i] < 0) continue;
                if ((size_t)ids[i] >= V || ids[i] <= prev || !(v[i] <= 0.0f)) abort();
                prev = ids[i];
            }
            if (!(t >= 0.0f && t <= 1.0f)) abort();
        }
        free(ids);
        free(v);
        kd_logit_cache_close(c);
    }
}
