/*
 * model_interop.c - the C half of the PyTorch model interop test
 * (tests/ref/model_torch.py drives it).
 *
 *   model_interop check PREFIX        loads PREFIX.safetensors (written by torch),
 *                                     runs PREFIX.in, compares with PREFIX.out
 *   model_interop train PREFIX SPEC   builds SPEC, trains a few AdamW steps, saves
 *                                     PREFIX.safetensors, PREFIX.in and PREFIX.out
 * .in files: uint32 batch, then batch x input floats; .out: batch x output floats.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kd/kd.h"

static float *read_all(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    float *b = malloc((size_t)sz + 4);
    *n = fread(b, 1, (size_t)sz, f) / 4;
    fclose(f);
    return b;
}

static int write_all(const char *path, const void *p, size_t bytes)
{
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    size_t w = fwrite(p, 1, bytes, f);
    return fclose(f) == 0 && w == bytes ? 0 : -1;
}

static size_t per_sample(kd_model *m, int in)
{
    size_t shape[KD_TENSOR_MAX_RANK], n = 1, numel = 0;
    uint32_t rank = 0;
    if (in) {
        kd_model_input_shape(m, shape, &rank, NULL);
        for (uint32_t i = 0; i < rank; i++) n *= shape[i];
        return n;
    }
    kd_model_output_shape(m, shape, &rank, &numel);
    return numel;
}

int main(int argc, char **argv)
{
    if (argc < 3) return 2;
    char path[1024];
    kd_context *ctx = NULL;
    if (kd_context_create(NULL, &ctx) != KD_OK) return 1;
    kd_model *m = NULL;
    if (strcmp(argv[1], "check") == 0) {
        snprintf(path, sizeof path, "%s.safetensors", argv[2]);
        if (kd_model_load(ctx, path, &m) != KD_OK) {
            fprintf(stderr, "load %s: %s\n", path, kd_context_last_error(ctx));
            return 1;
        }
        size_t nin, nout;
        snprintf(path, sizeof path, "%s.in", argv[2]);
        float *in = read_all(path, &nin);
        snprintf(path, sizeof path, "%s.out", argv[2]);
        float *want = read_all(path, &nout);
        if (!in || !want) return 1;
        uint32_t batch;
        memcpy(&batch, in, 4);
        const float *y;
        if (kd_model_forward(m, KD_MODE_INFER, in + 1, nin - 1, batch, &y) != KD_OK) {
            fprintf(stderr, "forward: %s\n", kd_context_last_error(ctx));
            return 1;
        }
        double worst = 0;
        for (size_t i = 0; i < nout; i++) worst = fmax(worst, fabs((double)y[i] - want[i]));
        printf("%s: torch logits vs libkd: max abs diff %.3g over %zu values\n", argv[2], worst, nout);
        int ok = worst <= 1e-5 && nout == batch * per_sample(m, 0);
        free(in);
        free(want);
        kd_model_destroy(m);
        kd_context_destroy(ctx);
        return ok ? 0 : 1;
    }
    if (strcmp(argv[1], "train") == 0 && argc == 4) {
        if (kd_model_create_from_spec(ctx, argv[3], &m) != KD_OK) {
            fprintf(stderr, "spec: %s\n", kd_context_last_error(ctx));
            return 1;
        }
        const uint32_t batch = 5;
        size_t in = per_sample(m, 1), out = per_sample(m, 0);
        float *x = malloc((1 + batch * in) * 4), *dy = malloc(batch * out * 4);
        kd_rng r;
        kd_rng_seed(&r, 11, 3);
        for (size_t i = 0; i < batch * in; i++) x[1 + i] = kd_rng_normal(&r);
        for (size_t i = 0; i < batch * out; i++) dy[i] = kd_rng_normal(&r);
        memcpy(x, &batch, 4);
        kd_optimizer *opt;
        kd_optimizer_config oc;
        kd_optimizer_config_default(&oc, KD_OPTIM_ADAMW);
        oc.lr = 0.01f;
        if (kd_optimizer_create(m, &oc, &opt) != KD_OK) return 1;
        const float *y;
        for (int s = 0; s < 5; s++) {
            kd_model_zero_grad(m);
            if (kd_model_forward(m, KD_MODE_TRAIN, x + 1, batch * in, batch, &y) != KD_OK) return 1;
            if (kd_model_backward(m, dy, batch * out, NULL, 0) != KD_OK) return 1;
            kd_optimizer_step(opt);
        }
        if (kd_model_forward(m, KD_MODE_INFER, x + 1, batch * in, batch, &y) != KD_OK) return 1;
        snprintf(path, sizeof path, "%s.safetensors", argv[2]);
        if (kd_model_save(m, path) != KD_OK) {
            fprintf(stderr, "save: %s\n", kd_context_last_error(ctx));
            return 1;
        }
        snprintf(path, sizeof path, "%s.in", argv[2]);
        if (write_all(path, x, (1 + batch * in) * 4)) return 1;
        snprintf(path, sizeof path, "%s.out", argv[2]);
        if (write_all(path, y, batch * out * 4)) return 1;
        free(x);
        free(dy);
        kd_optimizer_destroy(opt);
        kd_model_destroy(m);
        kd_context_destroy(ctx);
        return 0;
    }
    return 2;
}
