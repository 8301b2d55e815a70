/* loss_ref_helpers.h - builds the loss and batch a reference case describes
 * (shared by test_loss_ref.c and test_loss_grad.c). */
#ifndef LOSS_REF_HELPERS_H
#define LOSS_REF_HELPERS_H
#include <string.h>

#include "kd_test.h"
#include "ref/loss_ref.h"

/* Creates the loss a reference case names. */
static inline kd_loss *make_loss(kd_context *ctx, const loss_ref_case *c)
{
    kd_loss *loss = NULL;
    kd_status st = KD_E_INTERNAL;
    float T = (float)c->temperature;
    switch (c->loss) {
    case REF_CE: {
        kd_loss_ce_config cfg;
        kd_loss_ce_config_default(&cfg);
        cfg.label_smoothing = (float)c->p1;
        st = kd_loss_create(ctx, kd_loss_cross_entropy(), &cfg, &loss);
        break;
    }
    case REF_HINTON: {
        kd_loss_hinton_config cfg;
        kd_loss_hinton_config_default(&cfg);
        cfg.temperature = T;
        cfg.alpha = (float)c->p1;
        cfg.label_smoothing = (float)c->p2;
        st = kd_loss_create(ctx, kd_loss_hinton(), &cfg, &loss);
        break;
    }
    case REF_RKL:
    case REF_JSD:
    case REF_SKL:
    case REF_SRKL: {
        kd_loss_divergence_config cfg;
        kd_loss_divergence_config_default(&cfg);
        cfg.temperature = T;
        cfg.jsd_beta = c->loss == REF_JSD ? (float)c->p1 : 0.5f;
        cfg.skew_alpha = (c->loss == REF_SKL || c->loss == REF_SRKL) ? (float)c->p1 : 0.1f;
        const kd_loss_vtable *vt = c->loss == REF_RKL   ? kd_loss_reverse_kl()
                                   : c->loss == REF_JSD ? kd_loss_jsd()
                                   : c->loss == REF_SKL ? kd_loss_skew_kl()
                                                        : kd_loss_skew_reverse_kl();
        st = kd_loss_create(ctx, vt, &cfg, &loss);
        break;
    }
    case REF_TAID: {
        kd_loss_taid_config cfg;
        kd_loss_taid_config_default(&cfg);
        cfg.temperature = T;
        cfg.t_start = (float)c->p1;
        cfg.mix = c->flag ? KD_TAID_MIX_LOGITS : KD_TAID_MIX_PROBS;
        st = kd_loss_create(ctx, kd_loss_taid(), &cfg, &loss);
        break;
    }
    case REF_DKD: {
        kd_loss_dkd_config cfg;
        kd_loss_dkd_config_default(&cfg);
        cfg.temperature = T;
        cfg.alpha = (float)c->p1;
        cfg.beta = (float)c->p2;
        st = kd_loss_create(ctx, kd_loss_dkd(), &cfg, &loss);
        break;
    }
    case REF_FMSE:
    case REF_FCOS: {
        kd_loss_feature_config cfg;
        kd_loss_feature_config_default(&cfg);
        cfg.student_dim = c->cols;
        cfg.teacher_dim = c->tcols;
        cfg.projection = c->flag;
        st = kd_loss_create(ctx, c->loss == REF_FMSE ? kd_loss_feature_mse() : kd_loss_feature_cosine(),
                            &cfg, &loss);
        break;
    }
    case REF_RKD_D:
    case REF_RKD_A: {
        kd_loss_rkd_config cfg;
        kd_loss_rkd_config_default(&cfg);
        cfg.huber_delta = (float)c->p1;
        st = kd_loss_create(ctx, c->loss == REF_RKD_D ? kd_loss_rkd_distance() : kd_loss_rkd_angle(),
                            &cfg, &loss);
        break;
    }
    case REF_MARGIN:
    case REF_LISTWISE: {
        kd_loss_rank_config cfg;
        kd_loss_rank_config_default(&cfg);
        cfg.temperature = T;
        st = kd_loss_create(ctx, c->loss == REF_MARGIN ? kd_loss_margin_mse() : kd_loss_listwise_kl(),
                            &cfg, &loss);
        break;
    }
    }
    ck_assert_msg(st == KD_OK, "%s: create failed: %s", c->name, kd_context_last_error(ctx));
    return loss;
}

/* Fills batch and grad for a case; the student gradient goes to g. */
static inline void make_batch(const loss_ref_case *c, kd_loss_batch *b, kd_loss_grad *gr, float *g)
{
    kd_loss_batch_default(b);
    kd_loss_grad_default(gr);
    b->rows = c->rows;
    b->labels = c->labels;
    b->weights = c->weights;
    switch (c->loss) {
    case REF_FMSE:
    case REF_FCOS:
    case REF_RKD_D:
    case REF_RKD_A:
        b->student_features = c->s;
        b->teacher_features = c->t;
        b->student_dim = c->cols;
        b->teacher_dim = c->tcols;
        gr->student_features = g;
        break;
    case REF_MARGIN:
    case REF_LISTWISE:
        b->student_scores = c->s;
        b->teacher_scores = c->t;
        b->candidates = c->cols;
        gr->student_scores = g;
        break;
    default:
        b->student_logits = c->s;
        b->teacher_logits = c->t;
        b->classes = c->cols;
        gr->student_logits = g;
    }
}

#endif
