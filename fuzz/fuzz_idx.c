/*
 * fuzz_idx.c - libFuzzer target for the IDX (MNIST-family) parser.
 * Properties: kd_idx_parse never reads outside the input; when it accepts,
 * the header's product of dimensions times the element size plus the header
 * is exactly the input size, and converting every item stays in bounds.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kd/kd.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static kd_context *ctx;
    if (!ctx && kd_context_create(NULL, &ctx) != KD_OK) abort();
    /* An exact-size copy: any over-read hits ASan's red zone. */
    uint8_t *buf = (uint8_t *)malloc(size ? size : 1);
    if (size) memcpy(buf, data, size);
    kd_idx_view v;
    memset(&v, 0, sizeof v);
    v.struct_size = sizeof v;
    if (kd_idx_parse(ctx, buf, size, &v) == KD_OK) {
        size_t esz = v.type == KD_IDX_U8 || v.type == KD_IDX_I8 ? 1 : v.type == KD_IDX_I16 ? 2
                     : v.type == KD_IDX_F64 ? 8 : 4;
        if (4 + 4 * (size_t)v.rank + v.count * esz != size) abort();
        size_t items = v.dims[0] < 16 ? v.dims[0] : 16;
        if (v.item_size <= 4096 && items) {
            float *f = (float *)malloc(items * v.item_size * sizeof *f + 1);
            if (kd_idx_to_float(ctx, &v, 0, items, 1.0f, 0.0f, f) != KD_OK) abort();
            free(f);
        }
        if (v.rank == 1 && items) {
            int32_t lab[16];
            kd_status st = kd_idx_to_labels(ctx, &v, 0, items, lab);
            if (st != KD_OK && st != KD_E_FORMAT) abort();
        }
    }
    free(buf);
    return 0;
}
