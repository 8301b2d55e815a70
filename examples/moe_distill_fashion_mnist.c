/*
 * moe_distill_fashion_mnist.c - distils a Mixture-of-Experts teacher into a
 * dense student on Fashion-MNIST, with and without the MoE-specific methods
 * of "Every Expert Matters" (Kim, Chu and Yang 2025), over several seeds.
 *
 *   build/examples/moe_distill_fashion_mnist [--teacher-epochs N] [--epochs N]
 *       [--transfer N] [--seeds N] [--samples S] [--data-dir DIR]
 *
 * Teacher (trained here with cross-entropy on all 60,000 labelled images):
 *     input 784; linear 128; relu; moe 8 2 128 gelu balance 0.01; linear 10
 * Student (dense, 25,450 parameters): input 784; linear 32; relu; linear 10
 * The student never sees a label: it is trained with Hinton KD (alpha 1,
 * T 4) on the teacher's outputs for the first --transfer training images,
 * AdamW lr 2e-3, batch 128, --epochs epochs, from each of three teachers:
 *     topk: the teacher as trained (kd_teacher_from_model, top-2 routing)
 *     KA:   Knowledge Augmentation, --samples routings sampled from the
 *           router distribution and averaged (kd_teacher_create_moe)
 *     SAR:  student-aware router, all 8 experts, router trained on the
 *           student's KD objective (kd_teacher_create_moe)
 * Prints the test accuracy (10,000 images) per seed and mean +- sd, and the
 * teacher's own test accuracy under each routing and its expert load.
 *
 * Reads Debian's dataset-fashion-mnist (/usr/share/datasets/fashion-mnist,
 * gzip-compressed IDX) with zlib and kd_idx_parse.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <kd/kd.h>
#include "fashion_mnist.h"

#define CLASSES 10
#define BATCH 128

typedef fm_dataset dataset;

static double test_accuracy(kd_context *ctx, kd_model *m, kd_teacher *t, const dataset *te)
{
    kd_dataset ds = {sizeof ds, te->x, te->n, 784, te->y};
    kd_eval_report r;
    memset(&r, 0, sizeof r);
    r.struct_size = sizeof r;
    if (t) { /* a teacher's accuracy: its logits against the labels */
        float *z = malloc(te->n * CLASSES * sizeof *z);
        double acc = -1;
        if (z) {
            size_t i = 0;
            for (; i < te->n; i += 500) {
                size_t b = te->n - i < 500 ? te->n - i : 500;
                if (kd_teacher_logits(t, te->x + i * 784, b, z + i * CLASSES) != KD_OK) break;
            }
            if (i >= te->n) kd_eval_accuracy(ctx, z, te->n, CLASSES, te->y, &acc);
            free(z);
        }
        return acc;
    }
    if (kd_evaluate(ctx, m, NULL, &ds, 500, &r) != KD_OK) return -1;
    return r.accuracy;
}

static int train_teacher(kd_context *ctx, kd_model *m, const dataset *tr, int epochs)
{
    kd_optimizer_config oc;
    kd_optimizer_config_default(&oc, KD_OPTIM_ADAMW);
    oc.lr = 2e-3f;
    kd_optimizer *opt;
    kd_loss *ce;
    kd_student *s;
    kd_loss_ce_config cc;
    kd_loss_ce_config_default(&cc);
    FM_CHECK(kd_optimizer_create(m, &oc, &opt), "optimizer");
    FM_CHECK(kd_loss_create(ctx, kd_loss_cross_entropy(), &cc, &ce), "loss");
    FM_CHECK(kd_student_create(ctx, m, opt, NULL, &s), "student");
    FM_CHECK(kd_student_add_loss(s, ce, 1.0f, 0), "add loss");
    kd_dataset ds = {sizeof ds, tr->x, tr->n, 784, tr->y};
    kd_fit_config fc;
    kd_fit_config_default(&fc);
    fc.epochs = (size_t)epochs;
    fc.batch = BATCH;
    FM_CHECK(kd_fit(s, NULL, &ds, &fc), "teacher training");
    kd_student_destroy(s);
    kd_loss_destroy(ce);
    kd_optimizer_destroy(opt);
    return 0;
}

/* One student from one teacher kind; *acc receives its test accuracy. */
static int distil(kd_context *ctx, kd_model *tm, int kind, uint64_t seed, const dataset *tr,
                  size_t transfer, int epochs, size_t samples, const dataset *te, double *acc)
{
    kd_rng_seed(kd_context_rng(ctx), seed, 0); /* the student's initialisation */
    kd_model *sm;
    FM_CHECK(kd_model_create_from_spec(ctx, "input 784; linear 32; relu; linear 10", &sm), "student");
    kd_optimizer_config oc;
    kd_optimizer_config_default(&oc, KD_OPTIM_ADAMW);
    oc.lr = 2e-3f;
    kd_optimizer *opt;
    kd_loss *kd;
    kd_student *s;
    kd_loss_hinton_config hc;
    kd_loss_hinton_config_default(&hc);
    hc.alpha = 1.0f;
    hc.temperature = 4.0f;
    FM_CHECK(kd_optimizer_create(sm, &oc, &opt), "optimizer");
    FM_CHECK(kd_loss_create(ctx, kd_loss_hinton(), &hc, &kd), "loss");
    FM_CHECK(kd_student_create(ctx, sm, opt, NULL, &s), "student");
    FM_CHECK(kd_student_add_loss(s, kd, 1.0f, KD_TERM_NO_LABELS), "add loss");
    kd_teacher *t;
    if (kind == 0) {
        FM_CHECK(kd_teacher_from_model(ctx, tm, &t), "teacher");
    } else {
        kd_moe_teacher_config mc;
        kd_moe_teacher_config_default(&mc);
        mc.seed = seed;
        mc.samples = samples;
        if (kind == 2) {
            mc.mode = KD_MOE_TEACHER_SAR;
            mc.student = sm;
            mc.router_lr = 1e-4f;
        }
        FM_CHECK(kd_teacher_create_moe(ctx, tm, &mc, &t), "moe teacher");
    }
    kd_dataset ds = {sizeof ds, tr->x, transfer < tr->n ? transfer : tr->n, 784, NULL};
    kd_fit_config fc;
    kd_fit_config_default(&fc);
    fc.epochs = (size_t)epochs;
    fc.batch = BATCH;
    fc.seed = seed;
    FM_CHECK(kd_fit(s, t, &ds, &fc), "distillation");
    *acc = test_accuracy(ctx, sm, NULL, te);
    kd_teacher_destroy(t);
    kd_student_destroy(s);
    kd_loss_destroy(kd);
    kd_optimizer_destroy(opt);
    kd_model_destroy(sm);
    return *acc < 0 ? fm_fail(ctx, "evaluation") : 0;
}

int main(int argc, char **argv)
{
    const char *dir = FM_DEFAULT_DIR;
    int tepochs = 3, epochs = 5, seeds = 3;
    size_t transfer = 10000, samples = 8;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--teacher-epochs") && i + 1 < argc) tepochs = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--epochs") && i + 1 < argc) epochs = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--transfer") && i + 1 < argc) transfer = (size_t)atol(argv[++i]);
        else if (!strcmp(argv[i], "--seeds") && i + 1 < argc) seeds = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--samples") && i + 1 < argc) samples = (size_t)atol(argv[++i]);
        else if (!strcmp(argv[i], "--data-dir") && i + 1 < argc) dir = argv[++i];
        else {
            fprintf(stderr, "usage: %s [--teacher-epochs N] [--epochs N] [--transfer N] "
                            "[--seeds N] [--samples S] [--data-dir DIR]\n", argv[0]);
            return 2;
        }
    }
    if (tepochs < 1 || epochs < 1 || seeds < 1 || seeds > 16 || transfer == 0 || samples == 0) {
        fprintf(stderr, "error: epochs, seeds (1..16), transfer and samples must be positive\n");
        return 2;
    }
    kd_context_config cc;
    kd_context_config_default(&cc);
    cc.seed = 7;
    kd_context *ctx;
    if (kd_context_create(&cc, &ctx) != KD_OK) return 1;
    dataset tr = {0}, te = {0};
    if (fm_load(ctx, dir, "train", 0, &tr) || fm_load(ctx, dir, "t10k", 0, &te)) return 1;

    kd_model *tm;
    FM_CHECK(kd_model_create_from_spec(ctx, "input 784; linear 128; relu; moe 8 2 128 gelu balance 0.01; linear 10", &tm),
          "teacher");
    if (train_teacher(ctx, tm, &tr, tepochs)) return 1;
    double t_topk = test_accuracy(ctx, tm, NULL, &te);
    size_t routed[8];
    FM_CHECK(kd_model_moe_stats(tm, 2, routed, NULL, NULL, NULL), "stats");
    size_t tot = 0;
    for (int e = 0; e < 8; e++) tot += routed[e];
    printf("teacher: input 784; linear 128; relu; moe 8 2 128 gelu balance 0.01; linear 10, %d epochs\n", tepochs);
    printf("teacher test accuracy: top-2 %.4f", t_topk);
    kd_moe_teacher_config mc;
    kd_moe_teacher_config_default(&mc);
    mc.samples = samples;
    kd_teacher *t;
    FM_CHECK(kd_teacher_create_moe(ctx, tm, &mc, &t), "KA teacher");
    printf(", KA(%zu samples) %.4f", samples, test_accuracy(ctx, NULL, t, &te));
    kd_teacher_destroy(t);
    mc.mode = KD_MOE_TEACHER_SAR;
    FM_CHECK(kd_teacher_create_moe(ctx, tm, &mc, &t), "all-expert teacher");
    printf(", all 8 experts %.4f\n", test_accuracy(ctx, NULL, t, &te));
    kd_teacher_destroy(t);
    printf("expert load (share of routed tokens, last test batch):");
    for (int e = 0; e < 8; e++) printf(" %.3f", tot ? (double)routed[e] / (double)tot : 0.0);
    printf("\n");

    static const char *const names[3] = {"topk", "KA", "SAR"};
    double acc[3][16];
    printf("student: input 784; linear 32; relu; linear 10, Hinton KD (T 4, no labels), "
           "%zu transfer images, %d epochs\n", transfer, epochs);
    for (int sd = 0; sd < seeds; sd++)
        for (int k = 0; k < 3; k++) {
            if (distil(ctx, tm, k, (uint64_t)sd + 1, &tr, transfer, epochs, samples, &te, &acc[k][sd]))
                return 1;
            printf("teacher=%s seed=%d accuracy=%.4f\n", names[k], sd + 1, acc[k][sd]);
            fflush(stdout);
        }
    for (int k = 0; k < 3; k++) {
        double m = 0, v = 0;
        for (int sd = 0; sd < seeds; sd++) m += acc[k][sd] / seeds;
        for (int sd = 0; sd < seeds; sd++) v += (acc[k][sd] - m) * (acc[k][sd] - m);
        v = seeds > 1 ? sqrt(v / (seeds - 1)) : 0;
        printf("summary teacher=%s accuracy=%.2f +- %.2f %% (%d seeds)\n", names[k], 100 * m, 100 * v,
               seeds);
    }
    kd_model_destroy(tm);
    free(tr.x);
    free(tr.y);
    free(te.x);
    free(te.y);
    kd_context_destroy(ctx);
    return 0;
}
