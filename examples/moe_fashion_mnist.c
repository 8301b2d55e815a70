/*
 * moe_fashion_mnist.c - trains a small Mixture-of-Experts classifier on
 * Fashion-MNIST and reports accuracy, expert load, and what compressing the
 * MoE costs in accuracy on the test set.
 *
 *   build/examples/moe_fashion_mnist [--epochs N] [--data-dir DIR] [--limit N]
 *
 * Network (one token per image):
 *     pre:  input 784; linear D; relu                 (kd_model)
 *     moe:  h + MoE(h), E experts, top-k, GELU FFN     (stand-alone kd_moe)
 *     head: input D; linear 10                         (kd_model)
 * trained with softmax cross-entropy plus the Switch balance loss
 * (coefficient 0.01), AdamW on the two models and Adam in this file on the
 * MoE block (kd_moe has no optimizer of its own). Gradients are chained by
 * hand: head dx -> (identity + MoE backward) -> pre.
 *
 * Reports test accuracy, per-expert load (share of routed tokens), router
 * entropy; then the accuracy after lowering k to 1, after pruning the two
 * least-used experts, after HC-SMoE merging to E/2 experts (calibration:
 * 2048 training images), and with Knowledge Augmentation teacher outputs
 * (8 sampled routings) used directly as the classifier's features.
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

#define D 64
#define E 8
#define K 2
#define FF 128
#define BATCH 128
#define CLASSES 10

typedef fm_dataset dataset;

typedef struct {
    kd_context *ctx;
    kd_model *pre, *head;
    kd_moe *moe;
    float *h, *z, *dz, *dh, *dm;
} net;

/* logits (n x 10) of samples x; ka > 0: MoE outputs are KA-averaged. */
static kd_status forward(net *N, const float *x, size_t n, kd_mode mode, size_t ka,
                         const float **logits)
{
    const float *h;
    kd_status st = kd_model_forward(N->pre, mode, x, n * 784, n, &h);
    if (st != KD_OK) return st;
    memcpy(N->h, h, n * D * sizeof(float));
    st = ka ? kd_moe_forward_ka(N->moe, N->h, n, ka, N->z)
            : kd_moe_forward(N->moe, mode, N->h, n, N->z);
    if (st != KD_OK) return st;
    for (size_t i = 0; i < n * D; i++) N->z[i] += N->h[i]; /* residual */
    return kd_model_forward(N->head, mode, N->z, n * D, n, logits);
}

static double accuracy(net *N, const dataset *d, size_t ka, double *load, float *entropy)
{
    size_t correct = 0, routed[E] = {0}, tot = 0;
    double ent = 0;
    for (size_t s = 0; s < d->n; s += BATCH) {
        size_t n = d->n - s < BATCH ? d->n - s : BATCH;
        const float *lg;
        if (forward(N, d->x + s * 784, n, KD_MODE_INFER, ka, &lg) != KD_OK) return -1;
        for (size_t i = 0; i < n; i++) {
            size_t best = 0;
            for (size_t c = 1; c < CLASSES; c++)
                if (lg[i * CLASSES + c] > lg[i * CLASSES + best]) best = c;
            correct += (int32_t)best == d->y[s + i];
        }
        if (load) {
            size_t r[E];
            float e;
            kd_moe_stats(N->moe, r, NULL, NULL, &e);
            for (size_t j = 0; j < kd_moe_expert_count(N->moe); j++) routed[j] += r[j], tot += r[j];
            ent += (double)e * (double)n;
        }
    }
    if (load) {
        for (size_t j = 0; j < E; j++) load[j] = tot ? (double)routed[j] / (double)tot : 0;
        *entropy = (float)(ent / (double)d->n);
    }
    return (double)correct / (double)d->n;
}

int main(int argc, char **argv)
{
    const char *dir = FM_DEFAULT_DIR;
    int epochs = 3;
    size_t limit = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--epochs") && i + 1 < argc) epochs = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--data-dir") && i + 1 < argc) dir = argv[++i];
        else if (!strcmp(argv[i], "--limit") && i + 1 < argc) limit = (size_t)atol(argv[++i]);
        else {
            fprintf(stderr, "usage: %s [--epochs N] [--data-dir DIR] [--limit N]\n", argv[0]);
            return 2;
        }
    }
    kd_context_config cc;
    kd_context_config_default(&cc);
    cc.seed = 7;
    kd_context *ctx;
    if (kd_context_create(&cc, &ctx) != KD_OK) return 1;
    dataset tr = {0}, te = {0};
    if (fm_load(ctx, dir, "train", limit, &tr) || fm_load(ctx, dir, "t10k", limit ? limit / 6 + 1 : 0, &te))
        return 1;

    net N;
    memset(&N, 0, sizeof N);
    N.ctx = ctx;
    FM_CHECK(kd_model_create_from_spec(ctx, "input 784; linear 64; relu", &N.pre), "pre");
    FM_CHECK(kd_model_create_from_spec(ctx, "input 64; linear 10", &N.head), "head");
    kd_moe_config mc;
    kd_moe_config_default(&mc);
    mc.n_experts = E, mc.top_k = K, mc.d_model = D, mc.d_ff = FF;
    mc.activation = KD_MOE_GELU;
    mc.balance_coef = 0.01f;
    FM_CHECK(kd_moe_create(ctx, &mc, &N.moe), "moe");
    N.h = malloc(BATCH * D * 4), N.z = malloc(BATCH * D * 4), N.dz = malloc(BATCH * D * 4);
    N.dh = malloc(BATCH * D * 4), N.dm = malloc(BATCH * D * 4);
    float *dlog = malloc(BATCH * CLASSES * 4);
    kd_optimizer_config oc;
    kd_optimizer_config_default(&oc, KD_OPTIM_ADAMW);
    oc.lr = 2e-3f;
    kd_optimizer *op1, *op2;
    FM_CHECK(kd_optimizer_create(N.pre, &oc, &op1), "optimizer");
    FM_CHECK(kd_optimizer_create(N.head, &oc, &op2), "optimizer");
    float *mp, *mg;
    size_t mn;
    kd_moe_blocks(N.moe, &mp, &mg, &mn);
    float *am = calloc(mn, 4), *av = calloc(mn, 4);
    size_t *perm = malloc(tr.n * sizeof(size_t));
    float *xb = malloc(BATCH * 784 * 4);
    kd_rng rng;
    kd_rng_seed(&rng, 11, 0);
    long step = 0;
    for (int ep = 0; ep < epochs; ep++) {
        for (size_t i = 0; i < tr.n; i++) perm[i] = i;
        for (size_t i = tr.n; i > 1; i--) {
            size_t j = kd_rng_below(&rng, (uint32_t)i), t = perm[i - 1];
            perm[i - 1] = perm[j], perm[j] = t;
        }
        double lsum = 0;
        size_t lcount = 0;
        for (size_t s = 0; s + BATCH <= tr.n; s += BATCH) {
            int32_t yb[BATCH];
            for (size_t i = 0; i < BATCH; i++) {
                memcpy(xb + i * 784, tr.x + perm[s + i] * 784, 784 * 4);
                yb[i] = tr.y[perm[s + i]];
            }
            const float *lg;
            FM_CHECK(forward(&N, xb, BATCH, KD_MODE_TRAIN, 0, &lg), "forward");
            for (size_t i = 0; i < BATCH; i++) { /* softmax cross-entropy */
                const float *l = lg + i * CLASSES;
                float m = l[0];
                for (int c = 1; c < CLASSES; c++) m = l[c] > m ? l[c] : m;
                double se = 0;
                for (int c = 0; c < CLASSES; c++) se += exp(l[c] - m);
                lsum += log(se) + m - l[yb[i]];
                for (int c = 0; c < CLASSES; c++)
                    dlog[i * CLASSES + c] = (float)((exp(l[c] - m) / se - (c == yb[i])) / BATCH);
            }
            lcount += BATCH;
            kd_model_zero_grad(N.pre), kd_model_zero_grad(N.head), kd_moe_zero_grad(N.moe);
            FM_CHECK(kd_model_backward(N.head, dlog, BATCH * CLASSES, N.dz, BATCH * D), "head backward");
            FM_CHECK(kd_moe_backward(N.moe, N.dz, N.dm), "moe backward");
            for (size_t i = 0; i < BATCH * D; i++) N.dh[i] = N.dz[i] + N.dm[i];
            FM_CHECK(kd_model_backward(N.pre, N.dh, BATCH * D, NULL, 0), "pre backward");
            kd_optimizer_step(op1), kd_optimizer_step(op2);
            step++;
            double b1 = 1 - pow(0.9, (double)step), b2 = 1 - pow(0.999, (double)step);
            for (size_t i = 0; i < mn; i++) {
                am[i] = 0.9f * am[i] + 0.1f * mg[i];
                av[i] = 0.999f * av[i] + 0.001f * mg[i] * mg[i];
                mp[i] -= (float)(2e-3 * (am[i] / b1) / (sqrt(av[i] / b2) + 1e-8) + 2e-3 * 0.01 * mp[i]);
            }
        }
        float bal;
        kd_moe_aux_losses(N.moe, &bal, NULL);
        printf("epoch %d: train loss %.4f, last balance loss %.3f\n", ep + 1, lsum / (double)lcount, bal);
    }

    double load_[E];
    float ent;
    double acc = accuracy(&N, &te, 0, load_, &ent);
    printf("test accuracy (E=%d, k=%d): %.4f\n", E, K, acc);
    printf("expert load (share of routed tokens):");
    for (int e = 0; e < E; e++) printf(" %.3f", load_[e]);
    printf("\nrouter entropy: %.3f nats (uniform: %.3f)\n", ent, log((double)E));
    printf("knowledge augmentation (8 sampled routings): %.4f\n", accuracy(&N, &te, 8, NULL, NULL));

    FM_CHECK(kd_moe_set_top_k(N.moe, 1), "set k");
    double a1 = accuracy(&N, &te, 0, NULL, NULL);
    printf("k lowered to 1: %.4f (cost %+.4f)\n", a1, a1 - acc);
    FM_CHECK(kd_moe_set_top_k(N.moe, K), "set k");

    /* pruning by routing frequency on the calibration tokens */
    size_t ncal = tr.n < 2048 ? tr.n : 2048;
    float *cal = malloc(ncal * D * 4);
    for (size_t s = 0; s < ncal; s += BATCH) {
        size_t n = ncal - s < BATCH ? ncal - s : BATCH;
        const float *h;
        FM_CHECK(kd_model_forward(N.pre, KD_MODE_INFER, tr.x + s * 784, n * 784, n, &h), "calib");
        memcpy(cal + s * D, h, n * D * 4);
    }
    float *ycal = malloc(ncal * D * 4);
    FM_CHECK(kd_moe_forward(N.moe, KD_MODE_INFER, cal, ncal, ycal), "calib");
    free(ycal);
    size_t routed[E];
    kd_moe_stats(N.moe, routed, NULL, NULL, NULL);
    /* keep a copy of the trained block for the merging run */
    float *saved = malloc(mn * 4);
    memcpy(saved, mp, mn * 4);
    uint8_t keep[E];
    for (int e = 0; e < E; e++) keep[e] = 1;
    for (int r = 0; r < 2; r++) {
        int worst = -1;
        for (int e = 0; e < E; e++)
            if (keep[e] && (worst < 0 || routed[e] < routed[worst])) worst = e;
        keep[worst] = 0;
    }
    FM_CHECK(kd_moe_prune_experts(N.moe, keep), "prune");
    double ap = accuracy(&N, &te, 0, NULL, NULL);
    printf("pruned to %d experts (2 least used dropped): %.4f (cost %+.4f)\n", E - 2, ap, ap - acc);

    /* HC-SMoE merge of the original 8 experts into 4 */
    kd_moe_destroy(N.moe);
    FM_CHECK(kd_moe_create(ctx, &mc, &N.moe), "moe");
    kd_moe_blocks(N.moe, &mp, NULL, NULL);
    memcpy(mp, saved, mn * 4);
    size_t cl[E];
    FM_CHECK(kd_moe_merge_experts(N.moe, cal, ncal, E / 2, cl), "merge");
    double am2 = accuracy(&N, &te, 0, NULL, NULL);
    printf("HC-SMoE merged to %d experts (clusters:", E / 2);
    for (int e = 0; e < E; e++) printf(" %zu", cl[e]);
    printf("): %.4f (cost %+.4f)\n", am2, am2 - acc);

    kd_optimizer_destroy(op1);
    kd_optimizer_destroy(op2);
    kd_moe_destroy(N.moe);
    kd_model_destroy(N.pre);
    kd_model_destroy(N.head);
    kd_context_destroy(ctx);
    return 0;
}
