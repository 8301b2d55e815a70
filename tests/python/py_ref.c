/*
 * py_ref.c - the C side of the Python binding tests (tests/python): runs the
 * same calls the Python test makes through ctypes and writes raw float32
 * results, so the test can require bit-identical answers.
 *
 *   py_ref forward CKPT X.f32 BATCH OUT.f32
 *       loads CKPT, forward (inference) on BATCH rows of X, writes the logits.
 *   py_ref step CKPT X.f32 LABELS.i32 TEACHER.f32 BATCH OUT.f32
 *       loads CKPT, one kd_student_step (SGD lr 0.1, Hinton T=2 alpha=0.5),
 *       writes the parameter block after the step.
 */
#include <kd/kd.h>
#include <kd/kd_checkpoint.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void *read_all(const char *path, size_t *size)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    void *buf = malloc(n > 0 ? (size_t)n : 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    *size = (size_t)n;
    return buf;
}

static int write_all(const char *path, const void *data, size_t size)
{
    FILE *f = fopen(path, "wb");
    if (!f) return 1;
    int bad = fwrite(data, 1, size, f) != size;
    return fclose(f) != 0 || bad;
}

#define CHECK(call)                                                                  \
    do {                                                                             \
        kd_status st_ = (call);                                                      \
        if (st_ != KD_OK) {                                                          \
            fprintf(stderr, "%s: %s\n", #call, kd_context_last_error(ctx));          \
            return 1;                                                                \
        }                                                                            \
    } while (0)

int main(int argc, char **argv)
{
    if (argc < 2) return 2;
    int step = strcmp(argv[1], "step") == 0;
    if ((!step && argc != 6) || (step && argc != 8)) {
        fprintf(stderr, "usage: see py_ref.c\n");
        return 2;
    }
    kd_context *ctx = NULL;
    if (kd_context_create(NULL, &ctx) != KD_OK) return 1;
    kd_model *m = NULL;
    CHECK(kd_model_load(ctx, argv[2], &m));
    size_t nx = 0;
    float *x = read_all(argv[3], &nx);
    size_t batch = (size_t)strtoul(argv[step ? 6 : 4], NULL, 10);
    if (!x) return 1;
    if (!step) {
        const float *y = NULL;
        CHECK(kd_model_forward(m, KD_MODE_INFER, x, nx / sizeof(float), batch, &y));
        size_t numel = 0;
        CHECK(kd_model_output_shape(m, (size_t[KD_TENSOR_MAX_RANK]){0}, &(uint32_t){0}, &numel));
        if (write_all(argv[5], y, batch * numel * sizeof(float))) return 1;
    } else {
        size_t nl = 0, nt = 0;
        int32_t *labels = read_all(argv[4], &nl);
        float *teacher = read_all(argv[5], &nt);
        if (!labels || !teacher) return 1;
        kd_optimizer_config oc;
        kd_optimizer_config_default(&oc, KD_OPTIM_SGD);
        oc.lr = 0.1f;
        kd_optimizer *opt = NULL;
        CHECK(kd_optimizer_create(m, &oc, &opt));
        kd_loss_hinton_config hc;
        kd_loss_hinton_config_default(&hc);
        hc.temperature = 2.0f;
        hc.alpha = 0.5f;
        kd_loss *loss = NULL;
        CHECK(kd_loss_create(ctx, kd_loss_hinton(), &hc, &loss));
        kd_student *s = NULL;
        CHECK(kd_student_create(ctx, m, opt, NULL, &s));
        CHECK(kd_student_add_loss(s, loss, 1.0f, 0));
        CHECK(kd_student_step(s, x, batch, labels, teacher, NULL));
        float *params = NULL;
        size_t np = 0;
        CHECK(kd_model_blocks(m, &params, NULL, &np));
        if (write_all(argv[7], params, np * sizeof(float))) return 1;
        kd_student_destroy(s);
        kd_loss_destroy(loss);
        kd_optimizer_destroy(opt);
        free(labels);
        free(teacher);
    }
    free(x);
    kd_model_destroy(m);
    kd_context_destroy(ctx);
    return 0;
}
