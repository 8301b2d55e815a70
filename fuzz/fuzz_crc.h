/*
 * fuzz_crc.h - shared by the fuzz targets of checksummed formats
 * (fuzz_logit_cache.c, fuzz_sparse_index.c): little-endian field access and
 * the input convention "first byte picks the mode: even = load the rest as
 * is, odd = recompute the format's checksums first", so that mutations get
 * past the CRCs to the structural validation.
 *
 * Header-only (static functions and the libFuzzer entry point): scripts/fuzz
 * compiles each fuzz/fuzz_<name>.c on its own, and a target finds this file
 * next to it.
 */
#ifndef KD_FUZZ_CRC_H
#define KD_FUZZ_CRC_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kd/kd.h"

static uint32_t rd32(const unsigned char *p) { return (uint32_t)p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24; }
static uint64_t rd64(const unsigned char *p) { return rd32(p) | (uint64_t)rd32(p + 4) << 32; }
static void wr32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}

/* Each target defines these two, before or after including this file:
 * fix_crcs recomputes the format's checksums in img (n bytes, any content);
 * fuzz_image loads img (a malloc'd, so 8-byte aligned, copy of n bytes the
 * loader may borrow as it would an mmap) and checks what it promises. */
static void fix_crcs(unsigned char *img, size_t n);
static void fuzz_image(kd_context *ctx, unsigned char *img, size_t n);

/* The entry point: the input without its mode byte, checksums recomputed
 * when that byte is odd, to fuzz_image with one context for the process. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static kd_context *ctx;
    if (size < 1) return 0;
    if (!ctx && kd_context_create(NULL, &ctx) != KD_OK) abort();
    size_t n = size - 1;
    unsigned char *img = (unsigned char *)malloc(n ? n : 1);
    if (!img) return 0;
    memcpy(img, data + 1, n);
    if (data[0] & 1) fix_crcs(img, n);
    fuzz_image(ctx, img, n);
    free(img);
    return 0;
}

#endif
