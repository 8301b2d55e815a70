/*
 * kd_layer_norm.c - layer normalisation (over the last dim) and batch
 * normalisation (per channel = first per-sample dim, over batch and the
 * remaining dims; running statistics as PyTorch's BatchNorm1d/2d).
 */
#include <math.h>

#include "kd_layer.h"

typedef struct {
    kd_layer base;
    int batch_norm;
    size_t groups; /* layernorm: rows per sample; batchnorm: channels */
    size_t len;    /* layernorm: D; batchnorm: spatial elements per channel per sample */
    float eps, momentum;
} kd_norm;

static size_t norm_features(const kd_norm *N)
{
    return N->batch_norm ? N->groups : N->len;
}

static size_t norm_tensor_count(const kd_layer *l)
{
    return ((const kd_norm *)l)->batch_norm ? 5 : 2;
}

static void norm_tensor_desc(const kd_layer *l, size_t i, kd_tensor_desc *d)
{
    const kd_norm *N = (const kd_norm *)l;
    static const char *const names[] = {"weight", "bias", "running_mean", "running_var",
                                        "num_batches_tracked"};
    memset(d, 0, sizeof *d);
    kd__fmt(d->name, sizeof d->name, "%s", names[i]);
    d->rank = i == 4 ? 0 : 1;
    d->shape[0] = i == 4 ? 0 : norm_features(N);
    d->is_buffer = i >= 2;
}

static void norm_init(kd_layer *l, kd_rng *rng)
{
    kd_norm *N = (kd_norm *)l;
    size_t f = norm_features(N);
    (void)rng;
    for (size_t i = 0; i < f; i++) {
        l->param[i] = 1.0f;
        l->param[f + i] = 0.0f;
    }
    if (N->batch_norm) {
        for (size_t i = 0; i < f; i++) {
            l->buf[i] = 0.0f;
            l->buf[f + i] = 1.0f;
        }
        l->buf[2 * f] = 0.0f;
    }
}

static void norm_workspace(const kd_layer *l, size_t batch, int train, size_t *saved,
                           size_t *scratch)
{
    const kd_norm *N = (const kd_norm *)l;
    *scratch = 0;
    if (!train) *saved = 0;
    else *saved = N->batch_norm ? 2 * N->groups : 2 * batch * N->groups;
}

/*
 * layernorm: x (B*R, D) -> y (B*R, D), y = (x - mean) * rstd * g + b per row
 *   (biased variance); saved: mean (B*R), rstd (B*R).
 */
static kd_status layernorm_forward(kd_norm *N, const kd_layer_run *r, const float *x, float *y)
{
    size_t rows = r->batch * N->groups, D = N->len;
    const float *g = N->base.param, *b = g + D;
    for (size_t i = 0; i < rows; i++) {
        const float *xr = x + i * D;
        float *yr = y + i * D;
        double s = 0, v = 0;
        for (size_t k = 0; k < D; k++) s += xr[k];
        double mean = s / (double)D;
        for (size_t k = 0; k < D; k++) v += (xr[k] - mean) * (xr[k] - mean);
        float rstd = (float)(1.0 / sqrt(v / (double)D + N->eps)), m = (float)mean;
        for (size_t k = 0; k < D; k++) yr[k] = (xr[k] - m) * rstd * g[k] + b[k];
        if (r->train) {
            r->saved[i] = m;
            r->saved[rows + i] = rstd;
        }
    }
    return KD_OK;
}

/*
 * dy (B*R, D) -> dg, db (D) +=; dx = rstd * (dxh - mean(dxh) - xh * mean(dxh * xh)),
 *   dxh = dy * g, xh = (x - mean) * rstd.
 */
static void layernorm_backward(kd_norm *N, const kd_layer_run *r, const float *x,
                               const float *dy, float *dx)
{
    size_t rows = r->batch * N->groups, D = N->len;
    const float *g = N->base.param;
    float *dg = N->base.grad, *db = dg + D;
    for (size_t i = 0; i < rows; i++) {
        const float *xr = x + i * D, *gr = dy + i * D;
        float m = r->saved[i], rstd = r->saved[rows + i];
        double s1 = 0, s2 = 0;
        for (size_t k = 0; k < D; k++) {
            float xh = (xr[k] - m) * rstd, dxh = gr[k] * g[k];
            dg[k] += gr[k] * xh;
            db[k] += gr[k];
            s1 += dxh;
            s2 += (double)dxh * xh;
        }
        if (!dx) continue;
        float m1 = (float)(s1 / (double)D), m2 = (float)(s2 / (double)D);
        float *dr = dx + i * D;
        for (size_t k = 0; k < D; k++) {
            float xh = (xr[k] - m) * rstd;
            dr[k] = rstd * (gr[k] * g[k] - m1 - xh * m2);
        }
    }
}

/*
 * batchnorm: x (B, C, S) -> y (B, C, S). Training: per-channel batch mean and
 *   biased variance over B*S; running_mean/var updated with momentum (var
 *   unbiased), num_batches_tracked += 1; saved: mean (C), rstd (C).
 *   Inference: running statistics.
 */
static kd_status batchnorm_forward(kd_norm *N, const kd_layer_run *r, const float *x, float *y)
{
    size_t C = N->groups, S = N->len, B = r->batch;
    const float *g = N->base.param, *b = g + C;
    float *rm = N->base.buf, *rv = rm + C;
    if (r->train && B * S < 2)
        return kd__fail(r->ctx, KD_E_SHAPE, "batchnorm: training needs more than 1 value per channel (batch %zu)", B);
    for (size_t c = 0; c < C; c++) {
        float mean, rstd;
        if (r->train) {
            double s = 0, v = 0;
            for (size_t n = 0; n < B; n++) {
                const float *xc = x + (n * C + c) * S;
                for (size_t k = 0; k < S; k++) s += xc[k];
            }
            double md = s / (double)(B * S);
            for (size_t n = 0; n < B; n++) {
                const float *xc = x + (n * C + c) * S;
                for (size_t k = 0; k < S; k++) v += (xc[k] - md) * (xc[k] - md);
            }
            double var = v / (double)(B * S);
            mean = (float)md;
            rstd = (float)(1.0 / sqrt(var + N->eps));
            double unbiased = v / (double)(B * S - 1);
            rm[c] = (1.0f - N->momentum) * rm[c] + N->momentum * mean;
            rv[c] = (1.0f - N->momentum) * rv[c] + N->momentum * (float)unbiased;
            r->saved[c] = mean;
            r->saved[C + c] = rstd;
        } else {
            mean = rm[c];
            rstd = 1.0f / sqrtf(rv[c] + N->eps);
        }
        float sc = rstd * g[c], sh = b[c] - mean * sc;
        for (size_t n = 0; n < B; n++) {
            const float *xc = x + (n * C + c) * S;
            float *yc = y + (n * C + c) * S;
            for (size_t k = 0; k < S; k++) yc[k] = xc[k] * sc + sh;
        }
    }
    if (r->train) N->base.buf[2 * C] += 1.0f;
    return KD_OK;
}

/*
 * dy (B, C, S) -> dg, db (C) +=; dx as layernorm's, with the mean over B*S
 *   of each channel.
 */
static void batchnorm_backward(kd_norm *N, const kd_layer_run *r, const float *x,
                               const float *dy, float *dx)
{
    size_t C = N->groups, S = N->len, B = r->batch;
    const float *g = N->base.param;
    float *dg = N->base.grad, *db = dg + C;
    double cnt = (double)(B * S);
    for (size_t c = 0; c < C; c++) {
        float m = r->saved[c], rstd = r->saved[C + c];
        double s1 = 0, s2 = 0, sdy = 0;
        for (size_t n = 0; n < B; n++) {
            const float *xc = x + (n * C + c) * S, *gc = dy + (n * C + c) * S;
            for (size_t k = 0; k < S; k++) {
                float xh = (xc[k] - m) * rstd;
                sdy += gc[k];
                s2 += (double)gc[k] * xh;
            }
        }
        dg[c] += (float)s2;
        db[c] += (float)sdy;
        if (!dx) continue;
        s1 = sdy * g[c];
        float m1 = (float)(s1 / cnt), m2 = (float)(s2 * g[c] / cnt);
        for (size_t n = 0; n < B; n++) {
            const float *xc = x + (n * C + c) * S, *gc = dy + (n * C + c) * S;
            float *dc = dx + (n * C + c) * S;
            for (size_t k = 0; k < S; k++) {
                float xh = (xc[k] - m) * rstd;
                dc[k] = rstd * (gc[k] * g[c] - m1 - xh * m2);
            }
        }
    }
}

static kd_status norm_forward(kd_layer *l, const kd_layer_run *r, const kd_layer_in *x, float *y)
{
    kd_norm *N = (kd_norm *)l;
    return N->batch_norm ? batchnorm_forward(N, r, x->x, y) : layernorm_forward(N, r, x->x, y);
}

static kd_status norm_backward(kd_layer *l, const kd_layer_run *r, const kd_layer_in *x,
                               const float *y, const float *dy, float *dx)
{
    kd_norm *N = (kd_norm *)l;
    if (N->batch_norm) batchnorm_backward(N, r, x->x, dy, dx);
    else layernorm_backward(N, r, x->x, dy, dx);
    return KD_OK;
}

static void norm_spec(const kd_layer *l, kd__sb *sb)
{
    const kd_norm *N = (const kd_norm *)l;
    kd__sb_puts(sb, N->batch_norm ? "batchnorm eps " : "layernorm eps ");
    kd__sb_float(sb, N->eps);
    if (N->batch_norm) {
        kd__sb_puts(sb, " momentum ");
        kd__sb_float(sb, N->momentum);
    }
}

static int norm_inference_affine(const kd_layer *l, size_t ch, float *scale, float *shift)
{
    const kd_norm *N = (const kd_norm *)l;
    if (!N->batch_norm || ch != N->groups) return 0;
    const float *g = l->param, *b = g + ch, *rm = l->buf, *rv = rm + ch;
    for (size_t c = 0; c < ch; c++) {
        scale[c] = g[c] / sqrtf(rv[c] + N->eps);
        shift[c] = b[c] - rm[c] * scale[c];
    }
    return 1;
}

static const kd_layer_vtable norm_vt = {
    KD_LAYER_ABI_VERSION, "norm", norm_tensor_count, norm_tensor_desc, NULL, norm_init,
    norm_workspace, norm_forward, norm_backward, norm_spec, NULL,
    NULL, NULL, norm_inference_affine, kd__layer_infer_shared_yes,
};

static kd_status norm_parse(kd__spec_parser *p, const kd_shape *in, int bn, kd_layer **out)
{
    const char *name = bn ? "batchnorm" : "layernorm";
    if (in->kind != KD_DATA_DENSE || in->rank == 0) return kd__spec_error(p, "%s needs dense input", name);
    float eps = 1e-5f, mom = 0.1f;
    for (;;) {
        kd_status st = KD_OK;
        if (kd__spec_accept(p, "eps")) st = kd__spec_float(p, "eps", 1e-30f, 1.0f, &eps);
        else if (bn && kd__spec_accept(p, "momentum")) st = kd__spec_float(p, "momentum", 0.0f, 1.0f, &mom);
        else break;
        if (st != KD_OK) return st;
    }
    kd_norm *N = (kd_norm *)kd__calloc(p->ctx, 1, sizeof *N);
    if (!N) return KD_E_NOMEM;
    N->base.vt = &norm_vt;
    N->base.in = *in;
    N->base.out = *in;
    N->batch_norm = bn;
    size_t numel = kd__shape_numel(in);
    if (bn) {
        N->groups = in->d[0];
        N->len = numel / in->d[0];
    } else {
        N->len = in->d[in->rank - 1];
        N->groups = numel / N->len;
    }
    N->eps = eps;
    N->momentum = mom;
    *out = &N->base;
    return KD_OK;
}

static kd_status layernorm_parse(kd__spec_parser *p, const kd_shape *in, kd_layer **out)
{
    return norm_parse(p, in, 0, out);
}

static kd_status batchnorm_parse(kd__spec_parser *p, const kd_shape *in, kd_layer **out)
{
    return norm_parse(p, in, 1, out);
}

const kd_layer_kind kd__kind_layernorm = {"layernorm", layernorm_parse};
const kd_layer_kind kd__kind_batchnorm = {"batchnorm", batchnorm_parse};
