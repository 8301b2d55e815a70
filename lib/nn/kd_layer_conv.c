/*
 * kd_layer_conv.c - 2-D convolution (im2col + GEMM, NCHW), max and average
 * pooling.
 */
#include <math.h>

#include "kd_layer.h"
#include "kd_simd.h"

/* Vector helpers are static and always inlined: the psABI note about
 * passing 64-byte vectors does not apply. */
#pragma GCC diagnostic ignored "-Wpsabi"

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

/*
 * Batched im2col. A chunk of NB samples is unrolled into one column matrix
 * col (C*K*K, NB*OH*OW) (sample s occupies columns [s*OH*OW, (s+1)*OH*OW)),
 * so each layer runs one GEMM per chunk rather than one per sample:
 *   forward   Y (OC, NB*OHW) = W (OC, CKK) . col
 *   backward  dW += dY . col^T; dcol = W^T . dY (overwriting col); col2im
 * Y / dY sit in scratch next to col and are copied from / to the (B, OC,
 * OH, OW) activations with the bias folded into that copy. A chunk is the
 * whole batch unless the scratch would exceed kd__conv_chunk_floats (huge
 * batches or layers); a chunk of one sample skips the copies.
 */
size_t kd__conv_chunk_floats = (size_t)1 << 24; /* 64 MiB; see kd_layer.h */

/* Samples per chunk for batch. */
static size_t conv_chunk(const kd_conv *C, size_t batch)
{
    /* each term <= 2^31 (checked at parse); the sum saturates */
    size_t a = C->c * C->k * C->k * C->oh * C->ow, b = C->oc * C->oh * C->ow;
    size_t per = a > SIZE_MAX - b ? SIZE_MAX : a + b;
    size_t nb = kd__conv_chunk_floats / per;
    if (nb < 1) nb = 1;
    return nb < batch ? nb : batch;
}

static void conv_workspace(const kd_layer *l, size_t batch, int train, size_t *saved,
                           size_t *scratch)
{
    const kd_conv *C = (const kd_conv *)l;
    size_t nb = conv_chunk(C, batch), ohw = C->oh * C->ow;
    (void)train;
    *saved = 0;
    *scratch = kd__align_floats(C->c * C->k * C->k * nb * ohw) + C->oc * nb * ohw;
}

/* Valid output columns [lo, hi) for kernel column kj: 0 <= ow*S + kj - P < W. */
static void conv_valid(size_t n_out, size_t S, size_t kj, size_t P, size_t W, size_t *lo,
                       size_t *hi)
{
    size_t a = kj < P ? (P - kj + S - 1) / S : 0;
    /* ow*S + kj < P + W  <=>  ow < (P + W - kj + S - 1) / S */
    size_t b = P + W > kj ? (P + W - kj + S - 1) / S : 0;
    if (b > n_out) b = n_out;
    if (a > b) a = b;
    *lo = a;
    *hi = b;
}

/* x: (C, H, W) -> col rows (C*K*K) x (OH*OW) with row stride ld, zero
 * outside the padded image. */
KD_NN_CLONES
static void im2col(const kd_conv *C, const float *x, float *col, size_t ld)
{
    size_t K = C->k, OH = C->oh, OW = C->ow, S = C->stride, P = C->pad;
    for (size_t c = 0; c < C->c; c++)
        for (size_t ki = 0; ki < K; ki++)
            for (size_t kj = 0; kj < K; kj++) {
                float *row = col + ((c * K + ki) * K + kj) * ld;
                size_t lo, hi;
                conv_valid(OW, S, kj, P, C->w, &lo, &hi);
                for (size_t oh = 0; oh < OH; oh++) {
                    float *r = row + oh * OW;
                    size_t ihp = oh * S + ki; /* ih = ihp - P */
                    if (ihp < P || ihp - P >= C->h) {
                        memset(r, 0, OW * sizeof(float));
                        continue;
                    }
                    /* iw = ow*S + kj - P >= 0 for ow >= lo */
                    const float *xr = x + (c * C->h + (ihp - P)) * C->w;
                    for (size_t ow = 0; ow < lo; ow++) r[ow] = 0.0f;
                    if (S == 1 && hi > lo)
                        memcpy(r + lo, xr + (lo + kj - P), (hi - lo) * sizeof(float));
                    else
                        for (size_t ow = lo; ow < hi; ow++) r[ow] = xr[ow * S + kj - P];
                    for (size_t ow = hi; ow < OW; ow++) r[ow] = 0.0f;
                }
            }
}

/* col rows (C*K*K) x (OH*OW), row stride ld -> dx: (C, H, W) +=, the adjoint
 * of im2col. */
KD_NN_CLONES
static void col2im(const kd_conv *C, const float *col, size_t ld, float *dx)
{
    size_t K = C->k, OH = C->oh, OW = C->ow, S = C->stride, P = C->pad;
    for (size_t c = 0; c < C->c; c++)
        for (size_t ki = 0; ki < K; ki++)
            for (size_t kj = 0; kj < K; kj++) {
                const float *row = col + ((c * K + ki) * K + kj) * ld;
                size_t lo, hi;
                conv_valid(OW, S, kj, P, C->w, &lo, &hi);
                for (size_t oh = 0; oh < OH; oh++) {
                    size_t ihp = oh * S + ki;
                    if (ihp < P || ihp - P >= C->h) continue;
                    float *xr = dx + (c * C->h + (ihp - P)) * C->w;
                    const float *r = row + oh * OW;
                    if (S == 1 && hi > lo) {
                        float *d = xr + (lo + kj - P);
                        const float *src = r + lo;
                        for (size_t t = 0; t < hi - lo; t++) d[t] += src[t];
                    } else {
                        for (size_t ow = lo; ow < hi; ow++) xr[ow * S + kj - P] += r[ow];
                    }
                }
            }
}

/* Y (OC, NB*OHW) -> y (NB, OC, OHW) + b[o] (b may be NULL). */
KD_NN_CLONES
static void conv_scatter(const float *Y, size_t oc, size_t nb, size_t ohw, const float *b,
                         float *y)
{
    size_t ld = nb * ohw;
    for (size_t s = 0; s < nb; s++)
        for (size_t o = 0; o < oc; o++) {
            const float *src = Y + o * ld + s * ohw;
            float *dst = y + (s * oc + o) * ohw;
            float bo = b ? b[o] : 0.0f;
            for (size_t j = 0; j < ohw; j++) dst[j] = src[j] + bo;
        }
}

/* y (OHW) += b, for the OC planes of one sample. */
KD_NN_CLONES
static void conv_bias_inplace(float *y, size_t oc, size_t ohw, const float *b)
{
    for (size_t o = 0; o < oc; o++) {
        float bo = b[o];
        float *p = y + o * ohw;
        for (size_t j = 0; j < ohw; j++) p[j] += bo;
    }
}

/* dy (NB, OC, OHW) -> dY (OC, NB*OHW) (when dY != NULL), and db[o] += the sum
 * of plane o over the chunk (when db != NULL). */
KD_NN_CLONES
static void conv_gather(const float *dy, size_t oc, size_t nb, size_t ohw, float *dY, float *db)
{
    size_t ld = nb * ohw;
    for (size_t s = 0; s < nb; s++)
        for (size_t o = 0; o < oc; o++) {
            const float *src = dy + (s * oc + o) * ohw;
            if (dY) memcpy(dY + o * ld + s * ohw, src, ohw * sizeof(float));
            if (db) {
                float acc = 0.0f;
                for (size_t j = 0; j < ohw; j++) acc += src[j];
                db[o] += acc;
            }
        }
}

/*
 * x: (B, C, H, W), W: (OC, C, K, K), b: (OC) -> y: (B, OC, OH, OW)
 * per chunk of NB samples: Y (OC, NB*OHW) = W (OC, CKK) . col (CKK, NB*OHW);
 * y = Y transposed to (NB, OC, OHW) + b.
 */
static kd_status conv_forward(kd_layer *l, const kd_layer_run *r, const kd_layer_in *x,
                              float *y)
{
    kd_conv *C = (kd_conv *)l;
    size_t ckk = C->c * C->k * C->k, ohw = C->oh * C->ow, in_n = C->c * C->h * C->w;
    size_t nbmax = conv_chunk(C, r->batch), out_n = C->oc * ohw;
    float *col = r->scratch, *Y = col + kd__align_floats(ckk * nbmax * ohw);
    const float *W = l->param, *b = C->has_bias ? W + C->oc * ckk : NULL;
    for (size_t n0 = 0; n0 < r->batch; n0 += nbmax) {
        size_t nb = r->batch - n0 < nbmax ? r->batch - n0 : nbmax, ld = nb * ohw;
        for (size_t s = 0; s < nb; s++) im2col(C, x->x + (n0 + s) * in_n, col + s * ohw, ld);
        if (nb == 1) {
            kd__gemm(r->ctx, 0, 0, C->oc, ld, ckk, 1.0f, W, ckk, col, ld, 0.0f, y + n0 * out_n, ld);
            if (b) conv_bias_inplace(y + n0 * out_n, C->oc, ohw, b);
        } else {
            kd__gemm(r->ctx, 0, 0, C->oc, ld, ckk, 1.0f, W, ckk, col, ld, 0.0f, Y, ld);
            conv_scatter(Y, C->oc, nb, ohw, b, y + n0 * out_n);
        }
    }
    return KD_OK;
}

/*
 * dy: (B, OC, OH, OW) -> per chunk, with dY (OC, NB*OHW) = dy transposed:
 *   dW (OC, CKK) += dY . col^T; db += row sums of dY;
 *   dcol (CKK, NB*OHW) = W^T . dY; dx_n = col2im(dcol_n)
 */
static kd_status conv_backward(kd_layer *l, const kd_layer_run *r, const kd_layer_in *x,
                               const float *y, const float *dy, float *dx)
{
    kd_conv *C = (kd_conv *)l;
    size_t ckk = C->c * C->k * C->k, ohw = C->oh * C->ow, in_n = C->c * C->h * C->w;
    size_t nbmax = conv_chunk(C, r->batch), out_n = C->oc * ohw;
    float *col = r->scratch, *Y = col + kd__align_floats(ckk * nbmax * ohw);
    const float *W = l->param;
    float *dW = l->grad, *db = C->has_bias ? dW + C->oc * ckk : NULL;
    for (size_t n0 = 0; n0 < r->batch; n0 += nbmax) {
        size_t nb = r->batch - n0 < nbmax ? r->batch - n0 : nbmax, ld = nb * ohw;
        const float *dyc = dy + n0 * out_n, *dY = dyc;
        if (nb > 1) {
            conv_gather(dyc, C->oc, nb, ohw, Y, db);
            dY = Y;
        } else if (db) {
            conv_gather(dyc, C->oc, 1, ohw, NULL, db);
        }
        for (size_t s = 0; s < nb; s++) im2col(C, x->x + (n0 + s) * in_n, col + s * ohw, ld);
        kd__gemm(r->ctx, 0, 1, C->oc, ckk, ld, 1.0f, dY, ld, col, ld, 1.0f, dW, ckk);
        if (dx) {
            kd__gemm(r->ctx, 1, 0, ckk, ld, C->oc, 1.0f, W, ckk, dY, ld, 0.0f, col, ld);
            for (size_t s = 0; s < nb; s++) {
                float *dxn = dx + (n0 + s) * in_n;
                memset(dxn, 0, in_n * sizeof(float));
                col2im(C, col + s * ohw, ld, dxn);
            }
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
    conv_fold, conv_enable_bias, NULL, kd__layer_infer_shared_yes,
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

/*
 * Max pooling keeps, in training mode, the index (within its plane) of each
 * window's max in the layer's saved region, so backward is a scatter. The
 * window scan matches PyTorch's CPU kernel: row-major, the first strictly
 * larger value wins, and a NaN wins over any number. Loops are written
 * branch-free over a row of outputs so that they vectorise; 2x2 windows with
 * stride 2 (the common case) have their own loop with constant strides.
 */
static void pool_workspace(const kd_layer *l, size_t batch, int train, size_t *saved,
                           size_t *scratch)
{
    const kd_pool *P = (const kd_pool *)l;
    *scratch = 0;
    *saved = (train && !P->avg) ? batch * P->c * P->oh * P->ow : 0;
}

/* v replaces m: strictly larger, or NaN over a number (v <= m is false
 * exactly when v > m or either is NaN). */
static inline int pool_takes(float v, float m)
{
    return !(v <= m) & (m == m);
}

/* GCC/Clang vector extensions: 16 lanes (one AVX-512 register, two AVX2 or
 * four SSE registers, whichever the clone targets). */
typedef kd_v16 kd_v16f;
typedef float kd_v16fu __attribute__((vector_size(64), aligned(4), may_alias));
typedef int32_t kd_v16iu __attribute__((vector_size(64), aligned(4), may_alias));
#define KD_VINLINE static inline __attribute__((always_inline))

/* Even / odd lanes of the 32 floats a:b. */
#if defined(__clang__)
#define KD_EVEN(a, b) \
    __builtin_shufflevector(a, b, 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30)
#define KD_ODD(a, b) \
    __builtin_shufflevector(a, b, 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31)
#else
#define KD_EVEN(a, b) \
    __builtin_shuffle(a, b, (kd_v16i){0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30})
#define KD_ODD(a, b) \
    __builtin_shuffle(a, b, (kd_v16i){1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31})
#endif

KD_VINLINE kd_v16f vld(const float *p) { return *(const kd_v16fu *)p; }
KD_VINLINE kd_v16i vldi(const int32_t *p) { return *(const kd_v16iu *)p; }
KD_VINLINE void vst(float *p, kd_v16f v) { *(kd_v16fu *)p = v; }
KD_VINLINE void vsti(int32_t *p, kd_v16i v) { *(kd_v16iu *)p = v; }

/* Lane-wise v > m as all-ones / zero lanes (callers rule out NaN): the sign
 * of key(m) - key(v) on the integer order keys (kd_simd.h), taken without
 * overflow (Hacker's Delight 2-12: x < y iff (x - y) ^ ((x ^ y) & ((x - y) ^ x))
 * is negative). No compare operator: GCC 12 lowers every compare of a
 * 64-byte vector, float or integer (kd_gt too), lane by lane in the AVX2 and
 * baseline clones (16 scalar compares and setcc), while this arithmetic
 * stays in vector registers. Same answer as v > m for every non-NaN pair;
 * -0 and +0 share a key, so neither beats the other (as with floats). */
KD_VINLINE kd_v16i vtakes(kd_v16f v, kd_v16f m)
{
    kd_v16w x = (kd_v16w)kd_key(m), y = (kd_v16w)kd_key(v), d = x - y;
    return (kd_v16i)(d ^ ((x ^ y) & (d ^ x))) >> 31;
}

/* Lanes of t pick v, the others m. */
KD_VINLINE kd_v16f vself(kd_v16i t, kd_v16f v, kd_v16f m)
{
    return (kd_v16f)(((kd_v16i)v & t) | ((kd_v16i)m & ~t));
}
KD_VINLINE kd_v16i vseli(kd_v16i t, kd_v16i v, kd_v16i m)
{
    return (v & t) | (m & ~t);
}

/* Scalar end of stage 1 below (kept out of the vectoriser: GCC 12 turns
 * it into lane-by-lane code slower than plain scalar). */
#if defined(__GNUC__) && !defined(__clang__)
__attribute__((noinline, optimize("no-tree-vectorize")))
#endif
static void max2x2_tail(const float *x, size_t i, size_t n1, int32_t off, float *h, int32_t *hi)
{
    for (; i < n1; i++) {
        float a = x[2 * i], b = x[2 * i + 1];
        int t = b > a;
        h[i] = t ? b : a;
        hi[i] = off + 2 * (int32_t)i + t;
    }
}

/* Any NaN among n floats: a magnitude (bits & 0x7fffffff) above +inf's
 * 0x7f800000, any sign or payload, i.e. a negative 0x7f800000 - magnitude
 * (no overflow: both are in [0, 2^31)). Arithmetic on integer lanes: x != x
 * is one scalar compare per float in GCC 12 (not vectorised), and a 64-byte
 * vector compare would run lane by lane (see vtakes). */
KD_VINLINE int has_nan(const float *x, size_t n)
{
    size_t i = 0;
    kd_v16i any = {0};
    for (; i + 16 <= n; i += 16) any |= 0x7f800000 - ((kd_v16i)vld(x + i) & 0x7fffffff);
    int found = 0;
    for (int k = 0; k < 16; k++) found |= any[k] < 0;
    for (; i < n; i++) {
        uint32_t b;
        memcpy(&b, x + i, sizeof b);
        found |= (b & 0x7fffffffu) > 0x7f800000u;
    }
    return found;
}

/*
 * 2x2 windows, stride 2, even W, no NaN in the plane: rows [r0, r0 + 2*np) of one plane (r0
 * even) -> np output rows. Row-major scan order equals picking within the
 * horizontal pairs first and then between the two rows, so:
 *   stage 1: h[i] = pick(x[2i], x[2i+1]) over the rows, flat (W = 2*OW);
 *   stage 2: y[k][ow] = pick(h[2k][ow], h[2k+1][ow]), 16 lanes at a time
 *            running past the row end into a buffer with slack (the extra
 *            lanes are overwritten by the next row or dropped).
 * h, hi hold 2*np*OW + 16 entries, yb, yi np*OW + 16.
 */
KD_VINLINE void max2x2_rows(const float *x, size_t OW, size_t np, int32_t off, float *h,
                            int32_t *hi, float *yb, int32_t *yi)
{
    size_t n1 = 2 * np * OW, i = 0;
    const kd_v16i even = {0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30};
    for (; i + 16 <= n1; i += 16) {
        kd_v16f x0 = vld(x + 2 * i), x1 = vld(x + 2 * i + 16);
        kd_v16f a = KD_EVEN(x0, x1), b = KD_ODD(x0, x1);
        kd_v16i t = vtakes(b, a);
        kd_v16i at = off + 2 * (int32_t)i + even;
        vst(h + i, vself(t, b, a));
        vsti(hi + i, at - t); /* t is -1 where b wins */
    }
    max2x2_tail(x, i, n1, off, h, hi);
    for (size_t k = 0; k < 16; k++) {
        h[n1 + k] = 0.0f;
        hi[n1 + k] = 0;
    }
    for (size_t k = 0; k < np; k++) {
        const float *top = h + 2 * k * OW, *bot = top + OW;
        const int32_t *ti = hi + 2 * k * OW, *bi = ti + OW;
        for (size_t ow = 0; ow < OW; ow += 16) {
            kd_v16f tv = vld(top + ow), bv = vld(bot + ow);
            kd_v16i t = vtakes(bv, tv);
            vst(yb + k * OW + ow, vself(t, bv, tv));
            vsti(yi + k * OW + ow, vseli(t, vldi(bi + ow), vldi(ti + ow)));
        }
    }
}

#define KD_POOL_BUF 2048

/* One plane of max pooling: y (OH, OW), idx (OH, OW) window-max positions
 * or NULL. Planes with a NaN take the general scan (NaN rules). */
KD_NN_CLONES
static void maxpool_plane(const kd_pool *P, const float *xp, float *yp, int32_t *idx)
{
    size_t OW = P->ow, Wd = P->w, S = P->stride, K = P->k;
    if (K == 2 && S == 2 && Wd == 2 * OW && 2 * OW <= KD_POOL_BUF / 2 &&
        !has_nan(xp, P->h * Wd)) {
        float h[KD_POOL_BUF + 16], yb[KD_POOL_BUF / 2 + 16];
        int32_t hi[KD_POOL_BUF + 16], yi[KD_POOL_BUF / 2 + 16];
        size_t per = KD_POOL_BUF / (2 * OW); /* output rows per chunk */
        for (size_t oh = 0; oh < P->oh; oh += per) {
            size_t np = P->oh - oh < per ? P->oh - oh : per;
            max2x2_rows(xp + 2 * oh * Wd, OW, np, (int32_t)(2 * oh * Wd), h, hi, yb, yi);
            memcpy(yp + oh * OW, yb, np * OW * sizeof(float));
            if (idx) memcpy(idx + oh * OW, yi, np * OW * sizeof(int32_t));
        }
        return;
    }
    for (size_t oh = 0; oh < P->oh; oh++) {
        float *yr = yp + oh * OW;
        size_t base = oh * S * Wd;
        for (size_t ow = 0; ow < OW; ow++) {
            size_t first = base + ow * S;
            float m = xp[first];
            int32_t at = (int32_t)first;
            for (size_t i = 0; i < K; i++)
                for (size_t j = 0; j < K; j++) {
                    size_t q = first + i * Wd + j;
                    float v = xp[q];
                    int t = pool_takes(v, m);
                    m = t ? v : m;
                    at = t ? (int32_t)q : at;
                }
            yr[ow] = m;
            if (idx) idx[oh * OW + ow] = at;
        }
    }
}

/* One plane of average pooling. */
KD_NN_CLONES
static void avgpool_plane(const kd_pool *P, const float *xp, float *yp)
{
    size_t OW = P->ow, Wd = P->w, S = P->stride, K = P->k;
    float inv = 1.0f / (float)(K * K);
    for (size_t oh = 0; oh < P->oh; oh++) {
        float *yr = yp + oh * OW;
        const float *xr = xp + oh * S * Wd;
        for (size_t ow = 0; ow < OW; ow++) {
            float s = 0;
            for (size_t i = 0; i < K; i++)
                for (size_t j = 0; j < K; j++) s += xr[i * Wd + ow * S + j];
            yr[ow] = s * inv;
        }
    }
}

/*
 * x: (B, C, H, W) -> y: (B, C, OH, OW), max or mean over K x K windows;
 * training max pooling also writes the argmax (B, C, OH, OW) to saved.
 */
static kd_status pool_forward(kd_layer *l, const kd_layer_run *r, const kd_layer_in *x,
                              float *y)
{
    kd_pool *P = (kd_pool *)l;
    size_t planes = r->batch * P->c, hw = P->h * P->w, ohw = P->oh * P->ow;
    int32_t *idx = (r->train && !P->avg) ? (int32_t *)r->saved : NULL;
    for (size_t pl = 0; pl < planes; pl++) {
        if (P->avg)
            avgpool_plane(P, x->x + pl * hw, y + pl * ohw);
        else
            maxpool_plane(P, x->x + pl * hw, y + pl * ohw, idx ? idx + pl * ohw : NULL);
    }
    return KD_OK;
}

/* dx plane (H, W) += dy spread 1/K^2 over each window. */
KD_NN_CLONES
static void avgpool_back_plane(const kd_pool *P, const float *gp, float *dp)
{
    size_t OW = P->ow, Wd = P->w, S = P->stride, K = P->k;
    float inv = 1.0f / (float)(K * K);
    for (size_t oh = 0; oh < P->oh; oh++)
        for (size_t i = 0; i < K; i++) {
            float *dr = dp + (oh * S + i) * Wd;
            const float *gr = gp + oh * OW;
            for (size_t ow = 0; ow < OW; ow++) {
                float g = gr[ow] * inv;
                for (size_t j = 0; j < K; j++) dr[ow * S + j] += g;
            }
        }
}

/*
 * dy: (B, C, OH, OW) -> dx: (B, C, H, W): to the saved argmax (max) or
 * spread 1/K^2 (avg).
 */
static kd_status pool_backward(kd_layer *l, const kd_layer_run *r, const kd_layer_in *x,
                               const float *y, const float *dy, float *dx)
{
    kd_pool *P = (kd_pool *)l;
    if (!dx) return KD_OK;
    size_t planes = r->batch * P->c, hw = P->h * P->w, ohw = P->oh * P->ow;
    memset(dx, 0, planes * hw * sizeof(float));
    const int32_t *idx = (const int32_t *)r->saved;
    for (size_t pl = 0; pl < planes; pl++) {
        const float *gp = dy + pl * ohw;
        float *dp = dx + pl * hw;
        if (P->avg) {
            avgpool_back_plane(P, gp, dp);
            continue;
        }
        const int32_t *ip = idx + pl * ohw;
        for (size_t q = 0; q < ohw; q++) dp[ip[q]] += gp[q];
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
    pool_workspace, pool_forward, pool_backward, pool_spec, NULL, NULL, NULL, NULL,
    kd__layer_infer_shared_yes,
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
