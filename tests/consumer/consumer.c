/* consumer.c - a downstream C program built only through pkg-config. */
#include <kd/kd.h>
#include <stdio.h>
#include <string.h>

int main(void)
{
    if (!KD_VERSION_COMPATIBLE()) {
        fprintf(stderr, "header %s vs library %s\n", KD_VERSION_STRING, kd_version_string());
        return 1;
    }
    kd_context *ctx = NULL;
    if (kd_context_create(NULL, &ctx) != KD_OK) return 1;
    const float a[4] = {1, 2, 3, 4}, b[4] = {5, 6, 7, 8};
    float c[4];
    if (kd_gemm(ctx, KD_NO_TRANS, KD_NO_TRANS, 2, 2, 2, 1.0f, a, 2, b, 2, 0.0f, c, 2) != KD_OK)
        return 1;
    /* [1 2; 3 4] x [5 6; 7 8] = [19 22; 43 50] */
    if (c[0] != 19 || c[1] != 22 || c[2] != 43 || c[3] != 50) return 1;
    kd_status st = kd_gemm(ctx, KD_NO_TRANS, KD_NO_TRANS, 2, 2, 2, 1.0f, NULL, 2, b, 2, 0.0f, c, 2);
    if (st != KD_E_INVALID || strlen(kd_context_last_error(ctx)) == 0) return 1;
    printf("consumer (C): libkd %s ok\n", kd_version_string());
    kd_context_destroy(ctx);
    return 0;
}
