/* quickstart.c - the README's example: a context and one GEMM. */
#include <stdio.h>

#include <kd/kd.h>

int main(void)
{
    if (!KD_VERSION_COMPATIBLE()) {
        fprintf(stderr, "libkd %s does not match headers %s\n", kd_version_string(),
                KD_VERSION_STRING);
        return 1;
    }
    kd_context *ctx = NULL;
    kd_status st = kd_context_create(NULL, &ctx); /* defaults: malloc, 1 thread */
    if (st != KD_OK) {
        fprintf(stderr, "kd_context_create: %s\n", kd_status_string(st));
        return 1;
    }
    const float a[2 * 3] = {1, 2, 3, 4, 5, 6};    /* 2 x 3 */
    const float b[3 * 2] = {1, 0, 0, 1, 1, 1};    /* 3 x 2 */
    float c[2 * 2];
    st = kd_gemm(ctx, KD_NO_TRANS, KD_NO_TRANS, 2, 2, 3, 1.0f, a, 3, b, 2, 0.0f, c, 2);
    if (st != KD_OK) {
        fprintf(stderr, "kd_gemm: %s: %s\n", kd_status_string(st), kd_context_last_error(ctx));
        kd_context_destroy(ctx);
        return 1;
    }
    printf("libkd %s, GEMM on %s%s%s\n", kd_version_string(),
           kd_context_gemm_backend(ctx) == KD_GEMM_BLIS ? "BLIS " : "reference C",
           kd_context_blis_arch(ctx), "");
    printf("C = [%g %g; %g %g]\n", c[0], c[1], c[2], c[3]);
    kd_context_destroy(ctx);
    return 0;
}
