/*
 * fuzz_checkpoint.c - libFuzzer target for kd_model_load_memory: a safetensors
 * header whose "kd.spec" builds a model, then strict loading by name/shape.
 * Properties: no crash or over-read; an accepted checkpoint saves back to
 * bytes that load again into a model with identical parameters.
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
    uint8_t *buf = (uint8_t *)malloc(size ? size : 1);
    if (size) memcpy(buf, data, size);
    kd_model *m = NULL;
    if (kd_model_load_memory(ctx, buf, size, &m) == KD_OK) {
        size_t need = 0;
        if (kd_model_save_size(m, &need) != KD_OK) abort();
        uint8_t *out = (uint8_t *)malloc(need);
        if (kd_model_save_memory(m, out, need, NULL) != KD_OK) abort();
        kd_model *m2 = NULL;
        if (kd_model_load_memory(ctx, out, need, &m2) != KD_OK) abort();
        float *p1, *p2;
        size_t n1, n2;
        if (kd_model_blocks(m, &p1, NULL, &n1) != KD_OK || kd_model_blocks(m2, &p2, NULL, &n2) != KD_OK ||
            n1 != n2 || (n1 && memcmp(p1, p2, n1 * sizeof *p1) != 0))
            abort();
        kd_model_destroy(m2);
        free(out);
        kd_model_destroy(m);
    }
    free(buf);
    return 0;
}
