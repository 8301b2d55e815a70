/*
 * fuzz_spec.c - libFuzzer target for the model spec parser (a checkpoint's
 * "kd.spec" metadata is attacker-controlled text).
 * Properties: parsing never crashes; an accepted spec prints back to a
 * canonical spec that parses again and prints identically; a small accepted
 * model runs one inference forward without error.
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
    char *spec = (char *)malloc(size + 1);
    memcpy(spec, data, size);
    spec[size] = '\0';
    kd_model *m = NULL;
    if (kd_model_create_from_spec(ctx, spec, &m) == KD_OK) {
        size_t n1 = 0, n2 = 0;
        kd_model_spec(m, NULL, 0, &n1);
        char *a = (char *)malloc(n1 + 1), *b = (char *)malloc(n1 + 1);
        if (kd_model_spec(m, a, n1 + 1, NULL) != KD_OK) abort();
        kd_model *m2 = NULL;
        if (kd_model_create_from_spec(ctx, a, &m2) != KD_OK) abort();
        kd_model_spec(m2, NULL, 0, &n2);
        if (n2 != n1 || kd_model_spec(m2, b, n1 + 1, NULL) != KD_OK || strcmp(a, b) != 0) abort();
        size_t shape[KD_TENSOR_MAX_RANK], in = 1;
        uint32_t rank = 0;
        int ids = 0;
        kd_model_input_shape(m, shape, &rank, &ids);
        for (uint32_t i = 0; i < rank; i++) in *= shape[i];
        if (!ids && rank > 0 && in <= 4096 && kd_model_param_count(m) <= 100000) {
            size_t ws = 0;
            if (kd_model_workspace_size(m, KD_MODE_INFER, 1, &ws) == KD_OK && ws <= (64u << 20)) {
                float *x = (float *)calloc(in, sizeof *x);
                const float *y;
                kd_status st = kd_model_forward(m, KD_MODE_INFER, x, in, 1, &y);
                if (st != KD_OK && st != KD_E_NOMEM) abort();
                free(x);
            }
        }
        kd_model_destroy(m2);
        free(a);
        free(b);
        kd_model_destroy(m);
    }
    free(spec);
    return 0;
}
