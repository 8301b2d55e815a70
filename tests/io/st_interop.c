/*
 * st_interop.c - the C side of the PyTorch safetensors interop test
 * (driven by tests/ref/st_torch.py roundtrip):
 *   st_interop write PATH        writes the checkpoint st_torch.py verify expects
 *   st_interop check-mixed PATH  checks torch's F32/F16/BF16/I64 file
 *   st_interop check-mlp PATH    checks torch's MLP weights against its logits
 * Exit status 0 on success; the reason goes to stderr otherwise.
 */
#include <stdio.h>
#include <string.h>

#include "../st_expect.h"

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s write|check-mixed|check-mlp PATH\n", argv[0]);
        return 2;
    }
    kd_context *ctx = NULL;
    if (kd_context_create(NULL, &ctx) != KD_OK) return 1;
    int rc = 1;
    if (strcmp(argv[1], "write") == 0) {
        kd_safetensors_writer *w = NULL;
        kd_status s = st_kd_writer(ctx, &w);
        if (s == KD_OK) s = kd_safetensors_writer_write_file(w, argv[2]);
        kd_safetensors_writer_destroy(w);
        if (s != KD_OK)
            fprintf(stderr, "st_interop write: %s\n", kd_context_last_error(ctx));
        else
            rc = 0;
    } else {
        kd_safetensors *st = NULL;
        kd_status s = kd_safetensors_open_file(ctx, argv[2], &st);
        if (s != KD_OK) {
            fprintf(stderr, "st_interop: %s\n", kd_context_last_error(ctx));
        } else {
            const char *why = strcmp(argv[1], "check-mlp") == 0 ? st_expect_mlp(st)
                                                                : st_expect_mixed(st);
            if (why)
                fprintf(stderr, "st_interop %s: %s\n", argv[1], why);
            else {
                printf("st_interop %s: %s ok\n", argv[1], argv[2]);
                rc = 0;
            }
        }
        kd_safetensors_close(st);
    }
    kd_context_destroy(ctx);
    return rc;
}
