/*
 * main.c - libkd on a Cortex-M4F (QEMU mps2-an386): classifies Fashion-MNIST
 * test images with a distilled student held in flash.
 *
 * The checkpoint (a safetensors file) and the images are const arrays
 * generated at build time by bin2c.py (model_data.c, images_data.c). All of
 * libkd's memory comes from one static arena: no malloc in the library.
 * Results go to the host console through semihosting (newlib + librdimon).
 *
 * Per image it prints "img I label L pred P" and the ten logits as IEEE-754
 * bit patterns, the same lines fw_host predict prints on the host. SysTick,
 * clocked by the CPU clock, times each inference; under QEMU with -icount the
 * clock advances per executed instruction, so the counts convert to
 * instructions (the calibration loop below measures the factor).
 */
#include <kd/kd.h>
#include <kd/kd_checkpoint.h>

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define PIXELS 784
#define CLASSES 10

#ifndef FW_ARENA_SIZE
#define FW_ARENA_SIZE (160u * 1024u)
#endif

extern const unsigned char kd_model_data[];
extern const unsigned long kd_model_data_size;
extern const unsigned char kd_images[];
extern const unsigned long kd_images_size;
extern const unsigned char kd_labels[];
extern const unsigned long kd_labels_size;

static unsigned char arena[FW_ARENA_SIZE] __attribute__((aligned(64)));

#define SYST_CSR (*(volatile uint32_t *)0xE000E010u)
#define SYST_RVR (*(volatile uint32_t *)0xE000E014u)
#define SYST_CVR (*(volatile uint32_t *)0xE000E018u)

static void systick_start(void)
{
    SYST_RVR = 0x00FFFFFFu;
    SYST_CVR = 0;
    SYST_CSR = 5u; /* enable, processor clock, no interrupt */
}

/* SysTick counts down, 24 bits. */
static uint32_t ticks_since(uint32_t start)
{
    return (start - SYST_CVR) & 0x00FFFFFFu;
}

/* 2 instructions per iteration (subs, bne) plus 2 around the loop. */
static uint32_t calibrate(uint32_t iterations, uint32_t *instructions)
{
    uint32_t t0 = SYST_CVR;
    __asm volatile("mov r0, %0\n"
                   "1: subs r0, r0, #1\n"
                   "bne 1b\n"
                   :
                   : "r"(iterations)
                   : "r0", "cc");
    uint32_t t = ticks_since(t0);
    *instructions = 2u * iterations + 2u;
    return t;
}

static int failed(kd_context *ctx, const char *what)
{
    printf("kd-fw: FAILED %s: %s\n", what, ctx ? kd_context_last_error(ctx) : "");
    return 1;
}

int main(void)
{
    printf("kd-fw: libkd %s on Cortex-M4F, checkpoint %lu bytes, %lu images\n",
           kd_version_string(), kd_model_data_size, kd_labels_size);
    kd_context_config cfg;
    kd_context_config_default(&cfg);
    cfg.arena = arena;
    cfg.arena_size = sizeof arena;
    kd_context *ctx = NULL;
    if (kd_context_create(&cfg, &ctx) != KD_OK) return failed(NULL, "kd_context_create");

    kd_model *m = NULL;
    if (kd_model_load_memory(ctx, kd_model_data, kd_model_data_size, &m) != KD_OK)
        return failed(ctx, "kd_model_load_memory");
    size_t used = 0, peak = 0, workspace = 0, out_numel = 0;
    uint32_t rank = 0;
    size_t shape[KD_TENSOR_MAX_RANK];
    if (kd_context_arena_usage(ctx, &used, NULL) != KD_OK ||
        kd_model_workspace_size(m, KD_MODE_INFER, 1, &workspace) != KD_OK ||
        kd_model_output_shape(m, shape, &rank, &out_numel) != KD_OK)
        return failed(ctx, "sizing");
    if (out_numel != CLASSES) return failed(ctx, "the model does not output 10 classes");
    size_t need = used + workspace; /* load + one batch-1 inference */
    if (need > sizeof arena) {
        printf("kd-fw: arena of %u bytes too small: need %u\n", (unsigned)sizeof arena,
               (unsigned)(used + workspace));
        return 1;
    }
    char spec[160];
    kd_model_spec(m, spec, sizeof spec, NULL);
    printf("kd-fw: model '%s', %u parameters\n", spec, (unsigned)kd_model_param_count(m));

    systick_start();
    uint32_t calib_insns = 0;
    uint32_t calib_ticks = calibrate(100000u, &calib_insns);

    unsigned long n = kd_labels_size, correct = 0;
    uint64_t total_ticks = 0;
    for (unsigned long i = 0; i < n; i++) {
        static float x[PIXELS];
        const unsigned char *px = kd_images + i * PIXELS;
        /* Same scaling as fw_host predict. */
        for (int p = 0; p < PIXELS; p++) x[p] = (float)px[p] * (1.0f / 255.0f);
        const float *y = NULL;
        uint32_t t0 = SYST_CVR;
        kd_status st = kd_model_forward(m, KD_MODE_INFER, x, PIXELS, 1, &y);
        total_ticks += ticks_since(t0);
        if (st != KD_OK) return failed(ctx, "kd_model_forward");
        int best = 0;
        for (int k = 1; k < CLASSES; k++)
            if (y[k] > y[best]) best = k;
        correct += best == kd_labels[i];
        printf("img %lu label %d pred %d", i, kd_labels[i], best);
        for (int k = 0; k < CLASSES; k++) {
            uint32_t bits;
            memcpy(&bits, &y[k], 4);
            printf(" %08lx", (unsigned long)bits);
        }
        printf("\n");
    }
    if (kd_context_arena_usage(ctx, &used, &peak) != KD_OK) return failed(ctx, "arena usage");
    printf("kd-fw: accuracy %lu/%lu\n", correct, n);
    printf("kd-fw: arena size %u context-estimate %u after-load+workspace %u used %u peak %u\n",
           (unsigned)sizeof arena, (unsigned)kd_context_estimate_size(),
           (unsigned)need, (unsigned)used, (unsigned)peak);
    printf("kd-fw: systick %lu ticks for %lu inferences; calibration %lu ticks for %lu "
           "instructions\n",
           (unsigned long)total_ticks, n, (unsigned long)calib_ticks,
           (unsigned long)calib_insns);
    kd_model_destroy(m);
    kd_context_destroy(ctx);
    printf("kd-fw: done\n");
    return 0;
}
