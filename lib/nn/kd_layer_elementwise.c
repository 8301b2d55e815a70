/*
 * kd_layer_elementwise.c - shape-preserving element-wise layers: ReLU, GELU
 * (erf, or tanh approximation), SiLU, tanh, sigmoid, dropout; and the
 * reshaping layers flatten and identity.
 */
#include <math.h>

#include "kd_layer.h"

enum {
    OP_RELU, OP_GELU, OP_GELU_TANH, OP_SILU, OP_TANH, OP_SIGMOID, OP_DROPOUT, OP_FLATTEN,
    OP_IDENTITY
};

typedef struct {
    kd_layer base;
    int op;
    float p; /* dropout probability */
} kd_elem;

static size_t elem_tensor_count(const kd_layer *l)
{
    (void)l;
    return 0;
}

static void elem_tensor_desc(const kd_layer *l, size_t i, kd_tensor_desc *d)
{
    (void)l;
    (void)i;
    memset(d, 0, sizeof *d);
}

static void elem_workspace(const kd_layer *l, size_t batch, int train, size_t *saved,
                           size_t *scratch)
{
    const kd_elem *E = (const kd_elem *)l;
    *scratch = 0;
    *saved = (E->op == OP_DROPOUT && train) ? batch * kd__shape_numel(&l->in) : 0;
}

static inline float sigmoidf_(float x)
{
    if (x >= 0) return 1.0f / (1.0f + expf(-x));
    float e = expf(x);
    return e / (1.0f + e);
}

#define KD_SQRT1_2 0.70710678118654752440f
#define KD_INV_SQRT_2PI 0.39894228040143267794f
#define KD_SQRT_2_PI 0.79788456080286535588f

/* ReLU and its gradient, vectorised (NaN passes forward: a <= 0 is false). */
KD_NN_CLONES
static void relu_fwd(float *restrict y, const float *restrict a, size_t n)
{
    for (size_t i = 0; i < n; i++) y[i] = a[i] <= 0.0f ? 0.0f : a[i];
}

KD_NN_CLONES
static void relu_bwd(float *restrict dx, const float *restrict a, const float *restrict dy,
                     size_t n)
{
    for (size_t i = 0; i < n; i++) dx[i] = a[i] > 0.0f ? dy[i] : 0.0f;
}

/*
 * x: (B, N) -> y: (B, N), y = f(x) element-wise (N = per-sample numel).
 */
static kd_status elem_forward(kd_layer *l, const kd_layer_run *r, const kd_layer_in *x,
                              float *y)
{
    kd_elem *E = (kd_elem *)l;
    size_t n = r->batch * kd__shape_numel(&l->in);
    const float *a = x->x;
    switch (E->op) {
    case OP_RELU:
        relu_fwd(y, a, n);
        break;
    case OP_GELU:
        for (size_t i = 0; i < n; i++) y[i] = 0.5f * a[i] * (1.0f + erff(a[i] * KD_SQRT1_2));
        break;
    case OP_GELU_TANH:
        for (size_t i = 0; i < n; i++) {
            float v = a[i];
            y[i] = 0.5f * v * (1.0f + tanhf(KD_SQRT_2_PI * (v + 0.044715f * v * v * v)));
        }
        break;
    case OP_SILU:
        for (size_t i = 0; i < n; i++) y[i] = a[i] * sigmoidf_(a[i]);
        break;
    case OP_TANH:
        for (size_t i = 0; i < n; i++) y[i] = tanhf(a[i]);
        break;
    case OP_SIGMOID:
        for (size_t i = 0; i < n; i++) y[i] = sigmoidf_(a[i]);
        break;
    default:
        if (E->op != OP_DROPOUT || !r->train) {
            memcpy(y, a, n * sizeof(float)); /* flatten, identity, dropout at inference */
            break;
        }
        {
            /* mask in saved: 0 (dropped) or 1/(1-p) (kept); one draw per element. */
            float keep = E->p < 1.0f ? 1.0f / (1.0f - E->p) : 0.0f;
            float *mask = r->saved;
            for (size_t i = 0; i < n; i++) {
                mask[i] = kd_rng_uniform(r->rng) < E->p ? 0.0f : keep;
                y[i] = a[i] * mask[i];
            }
            break;
        }
    }
    return KD_OK;
}

/*
 * dy: (B, N) -> dx: (B, N) = f'(x) * dy
 */
static kd_status elem_backward(kd_layer *l, const kd_layer_run *r, const kd_layer_in *x,
                               const float *y, const float *dy, float *dx)
{
    kd_elem *E = (kd_elem *)l;
    if (!dx) return KD_OK;
    size_t n = r->batch * kd__shape_numel(&l->in);
    const float *a = x->x;
    switch (E->op) {
    case OP_RELU:
        relu_bwd(dx, a, dy, n);
        break;
    case OP_GELU:
        for (size_t i = 0; i < n; i++) {
            float v = a[i];
            float cdf = 0.5f * (1.0f + erff(v * KD_SQRT1_2));
            float pdf = KD_INV_SQRT_2PI * expf(-0.5f * v * v);
            dx[i] = dy[i] * (cdf + v * pdf);
        }
        break;
    case OP_GELU_TANH:
        for (size_t i = 0; i < n; i++) {
            float v = a[i];
            float t = tanhf(KD_SQRT_2_PI * (v + 0.044715f * v * v * v));
            float du = KD_SQRT_2_PI * (1.0f + 3.0f * 0.044715f * v * v);
            dx[i] = dy[i] * (0.5f * (1.0f + t) + 0.5f * v * (1.0f - t * t) * du);
        }
        break;
    case OP_SILU:
        for (size_t i = 0; i < n; i++) {
            float s = sigmoidf_(a[i]);
            dx[i] = dy[i] * s * (1.0f + a[i] * (1.0f - s));
        }
        break;
    case OP_TANH:
        for (size_t i = 0; i < n; i++) dx[i] = dy[i] * (1.0f - y[i] * y[i]);
        break;
    case OP_SIGMOID:
        for (size_t i = 0; i < n; i++) dx[i] = dy[i] * y[i] * (1.0f - y[i]);
        break;
    case OP_DROPOUT:
        for (size_t i = 0; i < n; i++) dx[i] = dy[i] * r->saved[i];
        break;
    default:
        memcpy(dx, dy, n * sizeof(float));
        break;
    }
    return KD_OK;
}

static void elem_spec(const kd_layer *l, kd__sb *sb)
{
    const kd_elem *E = (const kd_elem *)l;
    static const char *const names[] = {"relu", "gelu", "gelu tanh", "silu", "tanh",
                                        "sigmoid", "dropout", "flatten", "identity"};
    kd__sb_puts(sb, names[E->op]);
    if (E->op == OP_DROPOUT) {
        kd__sb_puts(sb, " ");
        kd__sb_float(sb, E->p);
    }
}

static const kd_layer_vtable elem_vt = {
    KD_LAYER_ABI_VERSION, "elementwise", elem_tensor_count, elem_tensor_desc, NULL, NULL,
    elem_workspace, elem_forward, elem_backward, elem_spec, NULL, NULL, NULL, NULL,
    kd__layer_infer_shared_yes,
};

static kd_status elem_make(kd_context *ctx, const kd_shape *in, int op, float pr,
                           kd_layer **out)
{
    kd_elem *E = (kd_elem *)kd__calloc(ctx, 1, sizeof *E);
    if (!E) return KD_E_NOMEM;
    E->base.vt = &elem_vt;
    E->base.in = *in;
    E->base.out = *in;
    if (op == OP_FLATTEN) {
        E->base.out.rank = 1;
        E->base.out.d[0] = kd__shape_numel(in);
        for (int i = 1; i < KD_SHAPE_MAX_RANK; i++) E->base.out.d[i] = 0;
    }
    E->op = op;
    E->p = pr;
    *out = &E->base;
    return KD_OK;
}

kd_status kd__identity_create(kd_context *ctx, const kd_shape *s, kd_layer **out)
{
    return elem_make(ctx, s, OP_IDENTITY, 0, out);
}

static kd_status elem_parse(kd__spec_parser *p, const kd_shape *in, int op, kd_layer **out)
{
    static const char *const names[] = {"relu", "gelu", "gelu", "silu", "tanh",
                                        "sigmoid", "dropout", "flatten", "identity"};
    if (in->kind != KD_DATA_DENSE) return kd__spec_error(p, "%s needs dense input", names[op]);
    float pr = 0;
    if (op == OP_GELU && kd__spec_accept(p, "tanh")) op = OP_GELU_TANH;
    if (op == OP_DROPOUT) {
        kd_status st = kd__spec_float(p, "dropout probability", 0.0f, 1.0f, &pr);
        if (st != KD_OK) return st;
    }
    return elem_make(p->ctx, in, op, pr, out);
}

#define ELEM_KIND(fn, kw, op)                                                          \
    static kd_status parse_##fn(kd__spec_parser *p, const kd_shape *in, kd_layer **out) \
    {                                                                                  \
        return elem_parse(p, in, op, out);                                             \
    }                                                                                  \
    const kd_layer_kind kd__kind_##fn = {kw, parse_##fn};

ELEM_KIND(relu, "relu", OP_RELU)
ELEM_KIND(gelu, "gelu", OP_GELU)
ELEM_KIND(silu, "silu", OP_SILU)
ELEM_KIND(tanh, "tanh", OP_TANH)
ELEM_KIND(sigmoid, "sigmoid", OP_SIGMOID)
ELEM_KIND(dropout, "dropout", OP_DROPOUT)
ELEM_KIND(flatten, "flatten", OP_FLATTEN)
ELEM_KIND(identity, "identity", OP_IDENTITY)
