/*
 * kd_layer_conv.c - 2-D convolution (im2col + GEMM, NCHW), max and average
 * pooling.
 */
#include <math.h>

#include "kd_layer.h"

/* ---- conv2d ---------------------------------------------------------------- */

typedef struct {
    kd_layer base;
    size_t c, h, w, oc, k, stride, pad, oh, ow;
    int has_bias;
} kd_conv;

static size_t conv_tensor_count(const kd_layer *l)
{
    return ((const kd_conv *)l)->has_bias ? 2 : 1;
}

static void conv_tensor_desc(const kd_layer *l, size_t i, kd_tensor_desc *d)
{
    const kd_conv *C = (const kd_conv *)l;
    memset(d, 0, sizeof *d);
    if (i == 0) {
        kd__fmt(d->name, sizeof d->name, "weight");
        d->rank = 4;
        d->shape[0] = C->oc;
        d->shape[1] = C->c;
        d->shape[2] = C->k;
        d->shape[3] = C->k;
    } else {
        kd__fmt(d->name, sizeof d->name, "bias");
        d->rank = 1;
        d->shape[0] = C->oc;
    }
}

static void conv_init(kd_layer *l, kd_rng *rng)
{
    kd_conv *C = (kd_conv *)l;
    size_t fan_in = C->c * C->k * C->k, nw = C->oc * fan_in;
    float bound = 1.0f / sqrtf((float)fan_in);
    for (size_t i = 0; i < nw; i++) l->param[i] = bound * (2.0f * kd_rng_uniform(rng) - 1.0f);
    if (C->has_bias)
        for (size_t i = 0; i < C->oc; i++) l->param[nw + i] = bound * (2.0f * kd_rng_uniform(rng) - 1.0f);
}

static void conv_workspace(const kd_layer *l, size_t batch, int train, size_t *saved,
                           size_t *scratch)
{
    const kd_conv *C = (const kd_conv *)l;
    size_t col = C->c * C->k * C->k * C->oh * C->ow;
    (void)batch;
    *saved = 0;
    *scratch = train ? 2 * col : col;
}

/* x: (C, H, W) -> col: (C*K*K, OH*OW), zero outside the padded image. */
static void im2col(const kd_conv *C, const float *x, float *col)
{
    size_t K = C->k, OH = C->oh, OW = C->ow, S = C->stride;
    for (size_t c = 0; c < C->c; c++)
        for (size_t ki = 0; ki < K; ki++)
            for (size_t kj = 0; kj < K; kj++) {
                float *row = col + ((c * K + ki) * K + kj) * OH * OW;
                for (size_t oh = 0; oh < OH; oh++) {
                    float *r = row + oh * OW;
                    /* ih = oh*S + ki - P, in [0, H)? */
                    size_t ihp = oh * S + ki;
                    if (ihp < C->pad || ihp - C->pad >= C->h) {
                        memset(r, 0, OW * sizeof(float));
                        continue;
                    }
                    const float *xr = x + (c * C->h + (ihp - C->pad)) * C->w;
                    for (size_t ow = 0; ow < OW; ow++) {
                        size_t iwp = ow * S + kj;
                        r[ow] = (iwp < C->pad || iwp - C->pad >= C->w) ? 0.0f : xr[iwp - C->pad];
                    }
                }
            }
}

/* col: (C*K*K, OH*OW) -> dx: (C, H, W) +=, the adjoint of im2col. */
static void col2im(const kd_conv *C, const float *col, float *dx)
{
    size_t K = C->k, OH = C->oh, OW = C->ow, S = C->stride;
    for (size_t c = 0; c < C->c; c++)
        for (size_t ki = 0; ki < K; ki++)
            for (size_t kj = 0; kj < K; kj++) {
                const float *row = col + ((c * K + ki) * K + kj) * OH * OW;
                for (size_t oh = 0; oh < OH; oh++) {
                    size_t ihp = oh * S + ki;
                    if (ihp < C->pad || ihp - C->pad >= C->h) continue;
                    float *xr = dx + (c * C->h + (ihp - C->pad)) * C->w;
                    const float *r = row + oh * OW;
                    for (size_t ow = 0; ow < OW; ow++) {
                        size_t iwp = ow * S + kj;
                        if (iwp >= C->pad && iwp - C->pad < C->w) xr[iwp - C->pad] += r[ow];
                    }
                }
            }
}

/*
 * x: (B, C, H, W), W: (OC, C, K, K), b: (OC) -> y: (B, OC, OH, OW)
 * per sample: y_n (OC, OH*OW) = W (OC, C*K*K) . im2col(x_n) (C*K*K, OH*OW) + b
 */
static kd_status conv_forward(kd_layer *l, const kd_layer_run *r, const kd_layer_in *x,
                              float *y)
{
    kd_conv *C = (kd_conv *)l;
    size_t ckk = C->c * C->k * C->k, ohw = C->oh * C->ow, in_n = C->c * C->h * C->w;
    float *col = r->scratch;
    const float *W = l->param, *b = W + C->oc * ckk;
    for (size_t n = 0; n < r->batch; n++) {
        float *yn = y + n * C->oc * ohw;
        im2col(C, x->x + n * in_n, col);
        kd__gemm(r->ctx, 0, 0, C->oc, ohw, ckk, 1.0f, W, ckk, col, ohw, 0.0f, yn, ohw);
        if (C->has_bias)
            for (size_t o = 0; o < C->oc; o++)
                for (size_t j = 0; j < ohw; j++) yn[o * ohw + j] += b[o];
    }
    return KD_OK;
}

/*
 * dy: (B, OC, OH, OW) -> dW (OC, C*K*K) += dy_n . col_n^T; db += sum dy_n;
 *                        dx_n = col2im(W^T . dy_n)
 */
static kd_status conv_backward(kd_layer *l, const kd_layer_run *r, const kd_layer_in *x,
                               const float *y, const float *dy, float *dx)
{
    kd_conv *C = (kd_conv *)l;
    size_t ckk = C->c * C->k * C->k, ohw = C->oh * C->ow, in_n = C->c * C->h * C->w;
    float *col = r->scratch, *dcol = col + ckk * ohw;
    const float *W = l->param;
    float *dW = l->grad, *db = dW + C->oc * ckk;
    for (size_t n = 0; n < r->batch; n++) {
        const float *dyn = dy + n * C->oc * ohw;
        im2col(C, x->x + n * in_n, col);
        kd__gemm(r->ctx, 0, 1, C->oc, ckk, ohw, 1.0f, dyn, ohw, col, ohw, 1.0f, dW, ckk);
        if (C->has_bias)
            for (size_t o = 0; o < C->oc; o++) {
                float s = 0;
                for (size_t j = 0; j < ohw; j++) s += dyn[o * ohw + j];
                db[o] += s;
            }
        if (dx) {
            kd__gemm(r->ctx, 1, 0, ckk, ohw, C->oc, 1.0f, W, ckk, dyn, ohw, 0.0f, dcol, ohw);
            float *dxn = dx + n * in_n;
            memset(dxn, 0, in_n * sizeof(float));
            col2im(C, dcol, dxn);
        }
    }
    return KD_OK;
}

static void conv_spec(const kd_layer *l, kd__sb *sb)
{
    const kd_conv *C = (const kd_conv *)l;
    kd__sb_printf(sb, "conv %zu %zu stride %zu pad %zu%s", C->oc, C->k, C->stride, C->pad,
                  C->has_bias ? "" : " nobias");
}

static int conv_fold(kd_layer *l, size_t ch, const float *scale, const float *shift)
{
    kd_conv *C = (kd_conv *)l;
    if (ch != C->oc) return 0;
    if (!C->has_bias) return -1;
    size_t ckk = C->c * C->k * C->k;
    float *W = l->param, *b = W + C->oc * ckk;
    for (size_t o = 0; o < ch; o++) {
        for (size_t k = 0; k < ckk; k++) W[o * ckk + k] *= scale[o];
        b[o] = b[o] * scale[o] + shift[o];
    }
    return 1;
}

static void conv_enable_bias(kd_layer *l)
{
    ((kd_conv *)l)->has_bias = 1;
}

static const kd_layer_vtable conv_vt = {
    KD_LAYER_ABI_VERSION, "conv", conv_tensor_count, conv_tensor_desc, NULL, conv_init,
    conv_workspace, conv_forward, conv_backward, conv_spec, NULL,
    conv_fold, conv_enable_bias, NULL,
};

/* Output size of a window op: (n + 2p - k) / s + 1, or 0 when it does not fit. */
static size_t window_out(size_t n, size_t k, size_t s, size_t p)
{
    size_t span = n + 2 * p;
    return span < k ? 0 : (span - k) / s + 1;
}

static kd_status conv_parse(kd__spec_parser *p, const kd_shape *in, kd_layer **out)
{
    if (in->kind != KD_DATA_DENSE || in->rank != 3)
        return kd__spec_error(p, "conv needs a CxHxW input");
    size_t oc, k, s = 1, pad = 0;
    kd_status st = kd__spec_uint(p, "conv output channels", 1u << 20, &oc);
    if (st == KD_OK) st = kd__spec_uint(p, "conv kernel size", 1024, &k);
    if (st != KD_OK) return st;
    int bias = 1;
    for (;;) {
        if (kd__spec_accept(p, "stride")) {
            if ((st = kd__spec_uint(p, "conv stride", 1024, &s)) != KD_OK) return st;
        } else if (kd__spec_accept(p, "pad")) {
            const char *t;
            /* pad may be 0 */
            if (kd__spec_peek(p, &t) == 1 && t[0] == '0') {
                kd__spec_skip(p, 1);
                pad = 0;
            } else if ((st = kd__spec_uint(p, "conv padding", 1024, &pad)) != KD_OK) {
                return st;
            }
        } else if (kd__spec_accept(p, "nobias")) {
            bias = 0;
        } else {
            break;
        }
    }
    if (pad >= k) return kd__spec_error(p, "conv padding must be smaller than the kernel");
    size_t oh = window_out(in->d[1], k, s, pad), ow = window_out(in->d[2], k, s, pad);
    if (oh == 0 || ow == 0) return kd__spec_error(p, "conv kernel larger than the padded input");
    size_t ckk, w, col, o;
    if (kd__mul_overflow(in->d[0], k * k, &ckk) || kd__mul_overflow(ckk, oc, &w) ||
        w > KD_NN_MAX_NUMEL || kd__mul_overflow(ckk, oh * ow, &col) || col > KD_NN_MAX_NUMEL ||
        kd__mul_overflow(oc, oh * ow, &o) || o > KD_NN_MAX_NUMEL)
        return kd__spec_error(p, "conv layer too large");
    kd_conv *C = (kd_conv *)kd__calloc(p->ctx, 1, sizeof *C);
    if (!C) return KD_E_NOMEM;
    C->base.vt = &conv_vt;
    C->base.in = *in;
    C->base.out.kind = KD_DATA_DENSE;
    C->base.out.rank = 3;
    C->base.out.d[0] = oc;
    C->base.out.d[1] = oh;
    C->base.out.d[2] = ow;
    C->c = in->d[0];
    C->h = in->d[1];
    C->w = in->d[2];
    C->oc = oc;
    C->k = k;
    C->stride = s;
    C->pad = pad;
    C->oh = oh;
    C->ow = ow;
    C->has_bias = bias;
    *out = &C->base;
    return KD_OK;
}

const kd_layer_kind kd__kind_conv = {"conv", conv_parse};

/* ---- pooling ------------------------------------------------------------- */

typedef struct {
    kd_layer base;
    size_t c, h, w, k, stride, oh, ow;
    int avg;
} kd_pool;

static size_t pool_tensor_count(const kd_layer *l)
{
    (void)l;
    return 0;
}

static void pool_tensor_desc(const kd_layer *l, size_t i, kd_tensor_desc *d)
{
    (void)l;
    (void)i;
    memset(d, 0, sizeof *d);
}

/* Index (within the plane) of the window's max: the first strictly larger
 * value wins, and a NaN wins over any number (as PyTorch's CPU kernel). */
static size_t pool_argmax(const kd_pool *P, const float *plane, size_t oh, size_t ow)
{
    size_t best = oh * P->stride * P->w + ow * P->stride;
    float m = plane[best];
    for (size_t i = 0; i < P->k; i++)
        for (size_t j = 0; j < P->k; j++) {
            size_t idx = (oh * P->stride + i) * P->w + ow * P->stride + j;
            float v = plane[idx];
            if (v > m || (isnan(v) && !isnan(m))) {
                m = v;
                best = idx;
            }
        }
    return best;
}

/*
 * x: (B, C, H, W) -> y: (B, C, OH, OW), max or mean over K x K windows.
 */
static kd_status pool_forward(kd_layer *l, const kd_layer_run *r, const kd_layer_in *x,
                              float *y)
{
    kd_pool *P = (kd_pool *)l;
    size_t planes = r->batch * P->c, hw = P->h * P->w, ohw = P->oh * P->ow;
    float inv = 1.0f / (float)(P->k * P->k);
    for (size_t pl = 0; pl < planes; pl++) {
        const float *xp = x->x + pl * hw;
        float *yp = y + pl * ohw;
        for (size_t oh = 0; oh < P->oh; oh++)
            for (size_t ow = 0; ow < P->ow; ow++) {
                if (!P->avg) {
                    yp[oh * P->ow + ow] = xp[pool_argmax(P, xp, oh, ow)];
                    continue;
                }
                float s = 0;
                for (size_t i = 0; i < P->k; i++)
                    for (size_t j = 0; j < P->k; j++)
                        s += xp[(oh * P->stride + i) * P->w + ow * P->stride + j];
                yp[oh * P->ow + ow] = s * inv;
            }
    }
    return KD_OK;
}

/*
 * dy: (B, C, OH, OW) -> dx: (B, C, H, W): to the argmax (max) or spread 1/K^2 (avg).
 */
static kd_status pool_backward(kd_layer *l, const kd_layer_run *r, const kd_layer_in *x,
                               const float *y, const float *dy, float *dx)
{
    kd_pool *P = (kd_pool *)l;
    if (!dx) return KD_OK;
    size_t planes = r->batch * P->c, hw = P->h * P->w, ohw = P->oh * P->ow;
    float inv = 1.0f / (float)(P->k * P->k);
    memset(dx, 0, planes * hw * sizeof(float));
    for (size_t pl = 0; pl < planes; pl++) {
        const float *xp = x->x + pl * hw, *gp = dy + pl * ohw;
        float *dp = dx + pl * hw;
        for (size_t oh = 0; oh < P->oh; oh++)
            for (size_t ow = 0; ow < P->ow; ow++) {
                float g = gp[oh * P->ow + ow];
                if (!P->avg) {
                    dp[pool_argmax(P, xp, oh, ow)] += g;
                    continue;
                }
                for (size_t i = 0; i < P->k; i++)
                    for (size_t j = 0; j < P->k; j++)
                        dp[(oh * P->stride + i) * P->w + ow * P->stride + j] += g * inv;
            }
    }
    return KD_OK;
}

static void pool_spec(const kd_layer *l, kd__sb *sb)
{
    const kd_pool *P = (const kd_pool *)l;
    kd__sb_printf(sb, "%s %zu", P->avg ? "avgpool" : "maxpool", P->k);
    if (P->stride != P->k) kd__sb_printf(sb, " stride %zu", P->stride);
}

static const kd_layer_vtable pool_vt = {
    KD_LAYER_ABI_VERSION, "pool", pool_tensor_count, pool_tensor_desc, NULL, NULL,
    NULL, pool_forward, pool_backward, pool_spec, NULL, NULL, NULL, NULL,
};

static kd_status pool_parse(kd__spec_parser *p, const kd_shape *in, int avg, kd_layer **out)
{
    if (in->kind != KD_DATA_DENSE || in->rank != 3)
        return kd__spec_error(p, "%s needs a CxHxW input", avg ? "avgpool" : "maxpool");
    size_t k, s;
    kd_status st = kd__spec_uint(p, "pool size", 1024, &k);
    if (st != KD_OK) return st;
    s = k;
    if (kd__spec_accept(p, "stride") && (st = kd__spec_uint(p, "pool stride", 1024, &s)) != KD_OK)
        return st;
    size_t oh = window_out(in->d[1], k, s, 0), ow = window_out(in->d[2], k, s, 0);
    if (oh == 0 || ow == 0) return kd__spec_error(p, "pool window larger than the input");
    kd_pool *P = (kd_pool *)kd__calloc(p->ctx, 1, sizeof *P);
    if (!P) return KD_E_NOMEM;
    P->base.vt = &pool_vt;
    P->base.in = *in;
    P->base.out = *in;
    P->base.out.d[1] = oh;
    P->base.out.d[2] = ow;
    P->c = in->d[0];
    P->h = in->d[1];
    P->w = in->d[2];
    P->k = k;
    P->stride = s;
    P->oh = oh;
    P->ow = ow;
    P->avg = avg;
    *out = &P->base;
    return KD_OK;
}

static kd_status maxpool_parse(kd__spec_parser *p, const kd_shape *in, kd_layer **out)
{
    return pool_parse(p, in, 0, out);
}

static kd_status avgpool_parse(kd__spec_parser *p, const kd_shape *in, kd_layer **out)
{
    return pool_parse(p, in, 1, out);
}

const kd_layer_kind kd__kind_maxpool = {"maxpool", maxpool_parse};
const kd_layer_kind kd__kind_avgpool = {"avgpool", avgpool_parse};
