/*
 * kd_loss_internal.h - shared internals of the distill layer's losses
 * (never installed).
 */
#ifndef KD_LOSS_INTERNAL_H
#define KD_LOSS_INTERNAL_H

#include <math.h>

#include "kd/kd_loss.h"
#include "kd_internal.h"

struct kd_loss {
    kd_context *ctx;
    const kd_loss_vtable *vt;
    void *state;                /* vt->state_size bytes, zeroed at create */
    int masked;                 /* set by validation: the current batch's logits hold -inf */
};

/* Copies a built-in's config over its defaulted dst; NULL keeps defaults.
 * min_size: size of the struct's first release. */
kd_status kd__loss_config(kd_loss *loss, void *dst, size_t dst_size, const void *src,
                          size_t min_size, const char *what);

/* ---- rows, weights and reduction --------------------------------------- */

/* 1 when row i takes part (its label is not ignore_index). */
static inline int kd__row_on(const kd_loss_batch *b, size_t i)
{
    return !b->labels || b->labels[i] != b->ignore_index;
}
static inline double kd__row_w(const kd_loss_batch *b, size_t i)
{
    return b->weights ? (double)b->weights[i] : 1.0;
}
/* Scale that turns sum_i w_i l_i into the reported value: 1/sum w (mean),
 * 1 (sum), 0 when no participating weight. *den_out gets sum w. */
double kd__reduce_norm(const kd_loss_batch *b, kd_loss_reduction red, double *den_out);

/* ---- stable log-softmax of one row at temperature T ---------------------- */

/* log sum_j exp(x_j * inv_t) over finite x_j (max-subtracted, in double);
 * -inf when every entry is -inf. skip: an index to leave out (or SIZE_MAX). */
double kd__row_lse(const float *x, size_t n, double inv_t, size_t skip);

/* log q_j = x_j * inv_t - lse, -inf for a masked entry. */
static inline double kd__lp(const float *x, size_t j, double inv_t, double lse)
{
    return isinf(x[j]) ? -INFINITY : (double)x[j] * inv_t - lse;
}

/* log(exp(a) + exp(b)) with -inf handled. */
static inline double kd__logaddexp(double a, double b)
{
    if (a == -INFINITY) return b;
    if (b == -INFINITY) return a;
    return a > b ? a + log1p(exp(b - a)) : b + log1p(exp(a - b));
}

/* Forward KL(P || Q) of one row from logits at temperature 1/inv_t:
 * value in *kl; grad (may be NULL) += coef * (q_j - p_j) (coef includes the
 * 1/T chain factor). Returns 0, or 1 when P has mass where Q has none
 * (*bad_col set). */
int kd__row_fkl(const float *s, const float *t, size_t n, double inv_t, double *kl,
                float *grad, double coef, size_t *bad_col);

#endif /* KD_LOSS_INTERNAL_H */
