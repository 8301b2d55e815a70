/*
 * fuzz_sparse_index.c - libFuzzer target for the sparse index loader and
 * search.
 *
 * Build (from the repository root):
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -DKD_BUILDING \
 *     -D_POSIX_C_SOURCE=200809L -Iinclude -Ilib/core \
 *     fuzz/fuzz_sparse_index.c lib/core/kd_*.c lib/math/kd_gemm.c \
 *     lib/math/kd_gemm_reference.c lib/retrieval/kd_*.c -lm -lpthread \
 *     -o fuzz_sparse_index
 *   ./fuzz_sparse_index -max_total_time=120 fuzz/corpus/sparse_index
 *
 * The first input byte picks a mode: even = load the rest as is (checksums
 * must match), odd = recompute every checksum first, so mutations reach the
 * structural validation and, when that passes, the three search algorithms,
 * which must agree.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kd/kd.h"
#include "fuzz_crc.h"

static void fix_crcs(unsigned char *img, size_t n)
{
    if (n < 232) return;
    for (int i = 0; i < 7; i++) {
        unsigned char *e = img + 64 + 24 * i;
        uint64_t off = rd64(e + 8), sz = rd64(e + 16);
        if (off <= n && sz <= n - off) wr32(e + 4, kd_crc32c(0, img + off, (size_t)sz));
    }
    uint32_t hc = kd_crc32c(0, img, 60);
    hc = kd_crc32c(hc, img + 64, 7 * 24);
    wr32(img + 60, hc);
}

static void fuzz_image(kd_context *ctx, unsigned char *img, size_t size)
{
    kd_sparse_index *idx = NULL;
    if (kd_sparse_index_load_memory(ctx, img, size, &idx) == KD_OK) {
        uint32_t t[4] = {0, 1, 3, 7}, ids[3][8];
        float w[4] = {1.0f, 0.5f, 2.0f, 0.25f}, sc[3][8];
        size_t cnt[3];
        for (int a = 0; a < 3; a++) {
            kd_sparse_search_config c;
            kd_sparse_search_config_default(&c);
            c.algo = (kd_sparse_algo)a;
            if (kd_sparse_index_search(ctx, idx, &c, t, w, 4, t, 4, 8, ids[a], sc[a], &cnt[a]) != KD_OK)
                abort();
        }
        for (int a = 0; a < 2; a++)
            if (cnt[a] != cnt[2] || memcmp(ids[a], ids[2], cnt[2] * 4) ||
                memcmp(sc[a], sc[2], cnt[2] * 4))
                abort(); /* algorithms disagree on a file that validated */
        kd_sparse_index_destroy(idx);
    }
}
