/*
 * kd_vocab_internal.h - fused vocabulary-scale kernels of the temperature KD
 * family (never installed). See kd_loss_vocab.c.
 */
#ifndef KD_VOCAB_INTERNAL_H
#define KD_VOCAB_INTERNAL_H

#include "kd/kd_loss.h"
#include "kd_internal.h"

/* Divergences of the family. z = s/T (student), u = t/T (teacher),
 * q = softmax(z), p = softmax(u); values are WITHOUT the T^2 factor. */
enum {
    KD__DIV_FKL = 0,  /* KL(P || Q)                                     */
    KD__DIV_RKL = 1,  /* KL(Q || P)                                     */
    KD__DIV_JSD = 2,  /* beta KL(P||M) + (1-beta) KL(Q||M), M = beta P + (1-beta) Q */
    KD__DIV_TAID = 3, /* KL(P_t || Q), P_t = (1-w) q + w p (q detached) */
    KD__DIV_TAIDL = 4 /* KL(P_t || Q), P_t = softmax(((1-w) s + w t) / T) (s detached);
                         dense teachers only */
};

typedef struct kd__div {
    int kind;
    double inv_t;     /* 1 / T */
    double w;         /* JSD: beta in (0,1); TAID: t in [0,1]; else unused */
    int nomask;       /* the caller guarantees no -inf in the rows (kd__vocab_dense_row
                         may then skip the exact zeros of masked classes); 0 is always safe */
} kd__div;

/* Rows shorter than this go through the exact double-precision reference
 * path (kd_loss_prob.c); vocabulary-sized rows through the fused kernel. */
#define KD__VOCAB_FUSED_MIN 256

/*
 * Fused dense row over the first n classes of s and t: *val receives the
 * divergence (without T^2); grad (may be NULL) += coef * dVal/dz for the
 * first n entries (coef includes the chain factor). Two passes for FKL and
 * TAID, three for RKL and JSD (the last one only touches s and grad);
 * nothing is allocated. The caller has excluded infinite divergences
 * (kd__vocab_mask_bad) when the row holds -inf entries.
 */
void kd__vocab_dense_row(const kd__div *d, const float *s, const float *t, size_t n,
                         double coef, float *grad, double *val);

/* Tests only (default 0): 1 makes the kernels take the paths of the
 * non-AVX-512 clones (masked exps, 8-lane block maxima) on any CPU. */
extern int kd__vocab_generic;

/* 1 + the first column where the divergence would be infinite, 0 if none
 * (only -inf masks can cause it). */
size_t kd__vocab_mask_bad(const kd__div *d, const float *s, const float *t, size_t n);

/*
 * Sparse teacher row i of sp (validated) against student row s (first n
 * classes). Returns KD_OK, or a status with the reason in *why (static).
 * Never writes grad when it fails.
 */
kd_status kd__vocab_sparse_row(const kd__div *d, const float *s, size_t n,
                               const kd_sparse_logits *sp, size_t row, double coef,
                               float *grad, double *val, const char **why);

/* Fast scan of a float row: returns 1 when it holds NaN or +inf; *neg_inf
 * receives the count of -inf entries. */
int kd__vocab_scan(const float *x, size_t n, size_t *neg_inf);

/* log-sum-exp of x[0..n) (vectorised; -inf when every entry is -inf). */
double kd__vocab_lse(const float *x, size_t n);

/* Index of the first x_j > thr (NaN never is), n if none; vectorised. */
size_t kd__vocab_find_above(const float *x, size_t n, float thr);

/* Sum of exp(x_j - lse) over x_j < below, and the count of x_j == below:
 * the teacher-logit cache's tail mass beyond its top k, without the
 * cancellation of 1 - sum(top k). */
void kd__vocab_tail(const float *x, size_t n, double lse, float below, double *mass,
                    size_t *equal);

#endif
