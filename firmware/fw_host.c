/*
 * fw_host.c - the host side of the firmware example (docs/FIRMWARE.md).
 *
 *   fw_host train OUT.safetensors TRAIN_IMAGES TRAIN_LABELS
 *       Distils a small Fashion-MNIST student in a few seconds: a teacher
 *       (784-256-10) is trained on labels, then the student (784-32-10, the
 *       spec of examples/distill_fashion_mnist) learns from the teacher's
 *       soft targets (Hinton KD) and the labels. Images and labels are
 *       uncompressed IDX files; "-" for both uses synthetic 28x28 images (ten
 *       noisy class prototypes) when the dataset is not installed.
 *   fw_host images OUT_PREFIX TEST_IMAGES TEST_LABELS N
 *       Writes the first N test images (OUT_PREFIX.u8, N x 784 bytes) and
 *       their labels (OUT_PREFIX.lbl, N bytes): the firmware embeds both.
 *   fw_host predict CKPT IMAGES.u8 LABELS.lbl N
 *       Classifies the images exactly as firmware/main.c does (same pixel
 *       scaling, batch 1, reference GEMM) and prints the same "img" lines, so
 *       the two outputs can be compared line by line.
 *   fw_host arena CKPT
 *       Prints the arena bytes this host needs to load CKPT and run one
 *       inference (kd_context_estimate_size, the model's allocations, and
 *       kd_model_workspace_size), measured on a context with an arena.
 */
#include <kd/kd.h>
#include <kd/kd_checkpoint.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PIXELS 784
#define CLASSES 10

static int fail(kd_context *ctx, const char *what)
{
    fprintf(stderr, "fw_host: %s: %s\n", what, ctx ? kd_context_last_error(ctx) : "");
    return 1;
}

static unsigned char *read_file(const char *path, size_t *size)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        return NULL;
    }
    unsigned char *buf = NULL;
    size_t cap = 0, n = 0;
    for (;;) {
        if (n == cap) {
            cap = cap ? cap * 2 : 1 << 20;
            unsigned char *nb = realloc(buf, cap);
            if (!nb) {
                free(buf);
                fclose(f);
                return NULL;
            }
            buf = nb;
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0) break;
    }
    fclose(f);
    *size = n;
    return buf;
}

/* Synthetic stand-in for Fashion-MNIST: ten random prototypes plus noise. */
static void synthetic(size_t n, uint64_t seed, float *x, int32_t *y)
{
    kd_rng rng;
    kd_rng_seed(&rng, 99, 1);
    static float proto[CLASSES][PIXELS];
    for (int c = 0; c < CLASSES; c++)
        for (int p = 0; p < PIXELS; p++) proto[c][p] = kd_rng_uniform(&rng);
    kd_rng_seed(&rng, seed, 2);
    for (size_t i = 0; i < n; i++) {
        int c = (int)kd_rng_below(&rng, CLASSES);
        y[i] = c;
        for (int p = 0; p < PIXELS; p++) {
            float v = proto[c][p] + 0.35f * kd_rng_normal(&rng);
            x[i * PIXELS + p] = v < 0 ? 0 : v > 1 ? 1 : v;
        }
    }
}

/* Loads n rows of IDX images (as x / 255) and labels; "-" gives synthetic data. */
static int load_rows(kd_context *ctx, const char *img, const char *lbl, size_t n, float *x,
                     int32_t *y, size_t *got)
{
    if (!strcmp(img, "-")) {
        synthetic(n, 7, x, y);
        *got = n;
        return 0;
    }
    size_t si = 0, sl = 0;
    unsigned char *bi = read_file(img, &si), *bl = read_file(lbl, &sl);
    kd_idx_view vi = {.struct_size = sizeof vi}, vl = {.struct_size = sizeof vl};
    int rc = 1;
    if (bi && bl && kd_idx_parse(ctx, bi, si, &vi) == KD_OK &&
        kd_idx_parse(ctx, bl, sl, &vl) == KD_OK && vi.item_size == PIXELS) {
        if (n > vi.dims[0]) n = vi.dims[0];
        if (kd_idx_to_float(ctx, &vi, 0, n, 1.0f / 255.0f, 0.0f, x) == KD_OK &&
            kd_idx_to_labels(ctx, &vl, 0, n, y) == KD_OK) {
            *got = n;
            rc = 0;
        }
    }
    if (rc) fail(ctx, "reading the dataset");
    free(bi);
    free(bl);
    return rc;
}

static int train(const char *out, const char *img, const char *lbl)
{
    enum { N_TRAIN = 12000, N_HELD = 2000 };
    kd_context *ctx = NULL;
    kd_context_config cc;
    kd_context_config_default(&cc);
    cc.seed = 2026;
    if (kd_context_create(&cc, &ctx) != KD_OK) return 1;
    float *x = malloc(sizeof(float) * PIXELS * (N_TRAIN + N_HELD));
    int32_t *y = malloc(sizeof(int32_t) * (N_TRAIN + N_HELD));
    size_t n = 0;
    int rc = 1;
    kd_model *teacher = NULL, *student = NULL;
    kd_optimizer *topt = NULL, *sopt = NULL;
    kd_loss *ce = NULL, *kd = NULL;
    kd_student *ts = NULL, *ss = NULL;
    kd_teacher *tk = NULL;
    if (!x || !y || load_rows(ctx, img, lbl, N_TRAIN + N_HELD, x, y, &n)) goto done;
    if (n < N_TRAIN + N_HELD) {
        fprintf(stderr, "fw_host: need %d rows, got %zu\n", N_TRAIN + N_HELD, n);
        goto done;
    }
    kd_dataset ds = {.struct_size = sizeof ds, .x = x, .n = N_TRAIN, .dim = PIXELS, .labels = y};
    kd_dataset held = {.struct_size = sizeof held, .x = x + (size_t)N_TRAIN * PIXELS,
                       .n = N_HELD, .dim = PIXELS, .labels = y + N_TRAIN};
    kd_optimizer_config oc;
    kd_optimizer_config_default(&oc, KD_OPTIM_ADAMW);
    oc.lr = 2e-3f;
    kd_loss_hinton_config hc;
    kd_loss_hinton_config_default(&hc);
    hc.temperature = 4.0f;
    hc.alpha = 0.7f;
    kd_fit_config fc;
    kd_fit_config_default(&fc);
    fc.batch = 64;
    if (kd_model_create_from_spec(ctx, "input 784; linear 256; relu; linear 10", &teacher) ||
        kd_optimizer_create(teacher, &oc, &topt) ||
        kd_loss_create(ctx, kd_loss_cross_entropy(), NULL, &ce) ||
        kd_student_create(ctx, teacher, topt, NULL, &ts) || kd_student_add_loss(ts, ce, 1, 0)) {
        fail(ctx, "teacher setup");
        goto done;
    }
    fc.epochs = 3;
    if (kd_fit(ts, NULL, &ds, &fc)) {
        fail(ctx, "teacher training");
        goto done;
    }
    if (kd_model_create_from_spec(ctx, "input 784; linear 32; relu; linear 10", &student) ||
        kd_optimizer_create(student, &oc, &sopt) ||
        kd_loss_create(ctx, kd_loss_hinton(), &hc, &kd) ||
        kd_student_create(ctx, student, sopt, NULL, &ss) || kd_student_add_loss(ss, kd, 1, 0) ||
        kd_teacher_from_model(ctx, teacher, &tk)) {
        fail(ctx, "student setup");
        goto done;
    }
    fc.epochs = 4;
    if (kd_fit(ss, tk, &ds, &fc)) {
        fail(ctx, "distillation");
        goto done;
    }
    kd_eval_report tr = {.struct_size = sizeof tr}, sr = {.struct_size = sizeof sr};
    if (kd_evaluate(ctx, teacher, NULL, &held, 256, &tr) ||
        kd_evaluate(ctx, student, tk, &held, 256, &sr)) {
        fail(ctx, "evaluation");
        goto done;
    }
    printf("fw_host: %s data, %d training rows: teacher accuracy %.4f, student accuracy %.4f "
           "(agreement %.4f) on %d held-out rows; student %zu parameters\n",
           strcmp(img, "-") ? "Fashion-MNIST" : "synthetic", N_TRAIN, tr.accuracy, sr.accuracy,
           sr.agreement, N_HELD, kd_model_param_count(student));
    if (kd_model_save(student, out)) {
        fail(ctx, "saving the student");
        goto done;
    }
    rc = 0;
done:
    kd_teacher_destroy(tk);
    kd_student_destroy(ss);
    kd_student_destroy(ts);
    kd_loss_destroy(kd);
    kd_loss_destroy(ce);
    kd_optimizer_destroy(sopt);
    kd_optimizer_destroy(topt);
    kd_model_destroy(student);
    kd_model_destroy(teacher);
    kd_context_destroy(ctx);
    free(x);
    free(y);
    return rc;
}

static int write_file(const char *path, const void *data, size_t size)
{
    FILE *f = fopen(path, "wb");
    if (!f) return 1;
    int bad = fwrite(data, 1, size, f) != size;
    return (fclose(f) != 0 || bad) ? 1 : 0;
}

static int images(const char *prefix, const char *img, const char *lbl, size_t n)
{
    unsigned char *px = malloc(n * PIXELS), *lb = malloc(n);
    char path[4096];
    int rc = 1;
    if (!px || !lb) goto done;
    if (!strcmp(img, "-")) {
        float *x = malloc(sizeof(float) * n * PIXELS);
        int32_t *y = malloc(sizeof(int32_t) * n);
        if (!x || !y) return 1;
        synthetic(n, 1234, x, y);
        for (size_t i = 0; i < n * PIXELS; i++) px[i] = (unsigned char)(x[i] * 255.0f + 0.5f);
        for (size_t i = 0; i < n; i++) lb[i] = (unsigned char)y[i];
        free(x);
        free(y);
    } else {
        kd_context *ctx = NULL;
        if (kd_context_create(NULL, &ctx) != KD_OK) goto done;
        size_t si = 0, sl = 0;
        unsigned char *bi = read_file(img, &si), *bl = read_file(lbl, &sl);
        kd_idx_view vi = {.struct_size = sizeof vi}, vl = {.struct_size = sizeof vl};
        int ok = bi && bl && kd_idx_parse(ctx, bi, si, &vi) == KD_OK &&
                 kd_idx_parse(ctx, bl, sl, &vl) == KD_OK && vi.type == KD_IDX_U8 &&
                 vi.item_size == PIXELS && vi.dims[0] >= n && vl.dims[0] >= n;
        if (ok) {
            memcpy(px, vi.data, n * PIXELS);
            memcpy(lb, vl.data, n);
        } else {
            fail(ctx, "reading the test images");
        }
        free(bi);
        free(bl);
        kd_context_destroy(ctx);
        if (!ok) goto done;
    }
    snprintf(path, sizeof path, "%s.u8", prefix);
    if (write_file(path, px, n * PIXELS)) goto done;
    snprintf(path, sizeof path, "%s.lbl", prefix);
    if (write_file(path, lb, n)) goto done;
    rc = 0;
done:
    free(px);
    free(lb);
    return rc;
}

static int predict(const char *ckpt, const char *img, const char *lbl, size_t n)
{
    kd_context *ctx = NULL;
    kd_context_config cc;
    kd_context_config_default(&cc);
    cc.gemm = KD_GEMM_REFERENCE; /* the firmware's GEMM */
    if (kd_context_create(&cc, &ctx) != KD_OK) return 1;
    size_t sc = 0, si = 0, sl = 0;
    unsigned char *c = read_file(ckpt, &sc), *px = read_file(img, &si), *lb = read_file(lbl, &sl);
    kd_model *m = NULL;
    int rc = 1;
    if (!c || !px || !lb || si < n * PIXELS || sl < n) goto done;
    if (kd_model_load_memory(ctx, c, sc, &m) != KD_OK) {
        fail(ctx, "loading the checkpoint");
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        float x[PIXELS];
        /* Same scaling as firmware/main.c. */
        for (int p = 0; p < PIXELS; p++) x[p] = (float)px[i * PIXELS + p] * (1.0f / 255.0f);
        const float *y = NULL;
        if (kd_model_forward(m, KD_MODE_INFER, x, PIXELS, 1, &y) != KD_OK) {
            fail(ctx, "forward");
            goto done;
        }
        int best = 0;
        for (int k = 1; k < CLASSES; k++)
            if (y[k] > y[best]) best = k;
        printf("img %zu label %d pred %d", i, lb[i], best);
        for (int k = 0; k < CLASSES; k++) {
            uint32_t bits;
            memcpy(&bits, &y[k], 4);
            printf(" %08x", (unsigned)bits);
        }
        printf("\n");
    }
    rc = 0;
done:
    kd_model_destroy(m);
    kd_context_destroy(ctx);
    free(c);
    free(px);
    free(lb);
    return rc;
}

static int arena(const char *ckpt)
{
    size_t sc = 0;
    unsigned char *c = read_file(ckpt, &sc);
    if (!c) return 1;
    static unsigned char buf[8u << 20] __attribute__((aligned(64)));
    kd_context_config cc;
    kd_context_config_default(&cc);
    cc.arena = buf;
    cc.arena_size = sizeof buf;
    cc.gemm = KD_GEMM_REFERENCE;
    kd_context *ctx = NULL;
    kd_model *m = NULL;
    size_t used = 0, peak = 0, ws = 0;
    float x[PIXELS] = {0};
    const float *y = NULL;
    int rc = 1;
    if (kd_context_create(&cc, &ctx) != KD_OK) goto done;
    if (kd_model_load_memory(ctx, c, sc, &m) || kd_context_arena_usage(ctx, &used, NULL) ||
        kd_model_workspace_size(m, KD_MODE_INFER, 1, &ws) ||
        kd_model_forward(m, KD_MODE_INFER, x, PIXELS, 1, &y) ||
        kd_context_arena_usage(ctx, NULL, &peak)) {
        fail(ctx, "arena measurement");
        goto done;
    }
    printf("context %zu after-load %zu workspace %zu estimate %zu peak %zu\n",
           kd_context_estimate_size(), used, ws, used + ws, peak);
    rc = 0;
done:
    kd_model_destroy(m);
    kd_context_destroy(ctx);
    free(c);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc == 5 && !strcmp(argv[1], "train")) return train(argv[2], argv[3], argv[4]);
    if (argc == 6 && !strcmp(argv[1], "images"))
        return images(argv[2], argv[3], argv[4], (size_t)strtoul(argv[5], NULL, 10));
    if (argc == 6 && !strcmp(argv[1], "predict"))
        return predict(argv[2], argv[3], argv[4], (size_t)strtoul(argv[5], NULL, 10));
    if (argc == 3 && !strcmp(argv[1], "arena")) return arena(argv[2]);
    fprintf(stderr, "usage: fw_host train|images|predict|arena ... (see firmware/fw_host.c)\n");
    return 2;
}
