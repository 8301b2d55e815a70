/* bench_mlp.c - libkd nn train steps and batch-1 inference, one thread.
 * Prints `bench=<case> libkd_ms=<median>` lines; bench/run_nn.sh pairs them
 * with bench/torch_mlp.py. */
#include <stdio.h>
#include <stdlib.h>

#include "bench_util.h"
#include "kd/kd.h"

typedef struct {
    kd_model *m;
    kd_optimizer *opt;
    float *x, *dy;
    size_t batch, nx, ny;
    int train;
} run_t;

static void step(void *arg)
{
    run_t *r = (run_t *)arg;
    const float *y;
    if (!r->train) {
        kd_model_forward(r->m, KD_MODE_INFER, r->x, r->nx, r->batch, &y);
        return;
    }
    kd_model_zero_grad(r->m);
    kd_model_forward(r->m, KD_MODE_TRAIN, r->x, r->nx, r->batch, &y);
    kd_model_backward(r->m, r->dy, r->ny, NULL, 0);
    kd_optimizer_step(r->opt);
}

static void bench(kd_context *ctx, const char *name, const char *spec, size_t batch, int train)
{
    run_t r = {0};
    r.batch = batch;
    r.train = train;
    if (kd_model_create_from_spec(ctx, spec, &r.m) != KD_OK) {
        fprintf(stderr, "%s: %s\n", name, kd_context_last_error(ctx));
        exit(1);
    }
    size_t s[4], n = 1, no;
    uint32_t rank;
    kd_model_input_shape(r.m, s, &rank, NULL);
    for (uint32_t i = 0; i < rank; i++) n *= s[i];
    kd_model_output_shape(r.m, NULL, NULL, &no);
    r.nx = n * batch;
    r.ny = no * batch;
    r.x = calloc(r.nx, sizeof(float));
    r.dy = calloc(r.ny, sizeof(float));
    for (size_t i = 0; i < r.nx; i++) r.x[i] = (float)((i * 7919) % 1000) / 1000.0f;
    for (size_t i = 0; i < r.ny; i++) r.dy[i] = (float)((i * 31) % 100) / 1000.0f - 0.05f;
    kd_optimizer_config oc;
    kd_optimizer_config_default(&oc, KD_OPTIM_ADAMW);
    if (train) kd_optimizer_create(r.m, &oc, &r.opt);
    double sec = bench_time_median(step, &r, 0.3, 5);
    printf("bench=%s libkd_ms=%.4f\n", name, sec * 1e3);
    kd_optimizer_destroy(r.opt);
    kd_model_destroy(r.m);
    free(r.x);
    free(r.dy);
}

int main(void)
{
    kd_context *ctx;
    if (kd_context_create(NULL, &ctx) != KD_OK) return 1;
    bench(ctx, "mlp_784_1200_1200_10_train_b128", "input 784; linear 1200; relu; linear 1200; relu; linear 10", 128, 1);
    bench(ctx, "mlp_784_128_10_train_b128", "input 784; linear 128; relu; linear 10", 128, 1);
    bench(ctx, "mlp_784_32_10_infer_b1", "input 784; linear 32; relu; linear 10", 1, 0);
    bench(ctx, "cnn_train_b128",
          "input 1x28x28; conv 32 3 stride 1 pad 1; relu; maxpool 2; conv 64 3 stride 1 pad 1; relu; maxpool 2; flatten; linear 10",
          128, 1);
    kd_context_destroy(ctx);
    return 0;
}
