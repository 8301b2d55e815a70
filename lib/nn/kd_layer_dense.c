/*
 * kd_layer_dense.c - linear (GEMM), embedding and embedding-bag layers.
 */
#include <math.h>

#include "kd_layer.h"

/* ---- linear ------------------------------------------------------------- */

typedef struct {
    kd_layer base;
    size_t in_f, out_f, rows; /* rows: per-sample rows (leading dims product) */
    int has_bias;
} kd_linear;

static size_t linear_tensor_count(const kd_layer *l)
{
    return ((const kd_linear *)l)->has_bias ? 2 : 1;
}

static void linear_tensor_desc(const kd_layer *l, size_t i, kd_tensor_desc *d)
{
    const kd_linear *L = (const kd_linear *)l;
    memset(d, 0, sizeof *d);
    if (i == 0) {
        kd__fmt(d->name, sizeof d->name, "weight");
        d->rank = 2;
        d->shape[0] = L->out_f;
        d->shape[1] = L->in_f;
    } else {
        kd__fmt(d->name, sizeof d->name, "bias");
        d->rank = 1;
        d->shape[0] = L->out_f;
    }
}

/* U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias: PyTorch's default. */
static void uniform_fill(float *p, size_t n, float bound, kd_rng *rng)
{
    for (size_t i = 0; i < n; i++) p[i] = bound * (2.0f * kd_rng_uniform(rng) - 1.0f);
}

static void linear_init(kd_layer *l, kd_rng *rng)
{
    kd_linear *L = (kd_linear *)l;
    float bound = 1.0f / sqrtf((float)L->in_f);
    uniform_fill(l->param, L->out_f * L->in_f, bound, rng);
    if (L->has_bias) uniform_fill(l->param + L->out_f * L->in_f, L->out_f, bound, rng);
}

/* y (rows, out) += b (out) on every row. */
KD_NN_CLONES
static void add_bias_rows(float *restrict y, size_t rows, size_t out, const float *restrict b)
{
    for (size_t i = 0; i < rows; i++) {
        float *yr = y + i * out;
        for (size_t j = 0; j < out; j++) yr[j] += b[j];
    }
}

/* db (out) += column sums of dy (rows, out), rows in order. */
KD_NN_CLONES
static void sum_rows(float *restrict db, const float *restrict dy, size_t rows, size_t out)
{
    for (size_t i = 0; i < rows; i++) {
        const float *g = dy + i * out;
        for (size_t j = 0; j < out; j++) db[j] += g[j];
    }
}

/*
 * x: (B*R, IN), W: (OUT, IN), b: (OUT) -> y: (B*R, OUT) = x W^T + b
 */
static kd_status linear_forward(kd_layer *l, const kd_layer_run *r, const kd_layer_in *x,
                                float *y)
{
    kd_linear *L = (kd_linear *)l;
    size_t rows = r->batch * L->rows, in = L->in_f, out = L->out_f;
    const float *W = l->param;
    kd__gemm(r->ctx, 0, 1, rows, out, in, 1.0f, x->x, in, W, in, 0.0f, y, out);
    if (L->has_bias) add_bias_rows(y, rows, out, W + out * in);
    return KD_OK;
}

/*
 * dy: (B*R, OUT) -> dW (OUT, IN) += dy^T x; db (OUT) += sum_rows dy;
 *                   dx (B*R, IN) = dy W
 */
static kd_status linear_backward(kd_layer *l, const kd_layer_run *r, const kd_layer_in *x,
                                 const float *y, const float *dy, float *dx)
{
    kd_linear *L = (kd_linear *)l;
    size_t rows = r->batch * L->rows, in = L->in_f, out = L->out_f;
    float *dW = l->grad;
    kd__gemm(r->ctx, 1, 0, out, in, rows, 1.0f, dy, out, x->x, in, 1.0f, dW, in);
    if (L->has_bias) sum_rows(dW + out * in, dy, rows, out);
    if (dx) kd__gemm(r->ctx, 0, 0, rows, in, out, 1.0f, dy, out, l->param, in, 0.0f, dx, in);
    return KD_OK;
}

static void linear_spec(const kd_layer *l, kd__sb *sb)
{
    const kd_linear *L = (const kd_linear *)l;
    kd__sb_printf(sb, "linear %zu%s", L->out_f, L->has_bias ? "" : " nobias");
}

static int linear_fold(kd_layer *l, size_t ch, const float *scale, const float *shift)
{
    kd_linear *L = (kd_linear *)l;
    if (ch != L->out_f || L->base.out.rank != 1) return 0;
    if (!L->has_bias) return -1;
    float *W = l->param, *b = W + L->out_f * L->in_f;
    for (size_t c = 0; c < ch; c++) {
        for (size_t k = 0; k < L->in_f; k++) W[c * L->in_f + k] *= scale[c];
        b[c] = b[c] * scale[c] + shift[c];
    }
    return 1;
}

static void linear_enable_bias(kd_layer *l)
{
    ((kd_linear *)l)->has_bias = 1;
}

static const kd_layer_vtable linear_vt = {
    KD_LAYER_ABI_VERSION, "linear", linear_tensor_count, linear_tensor_desc, NULL, linear_init,
    NULL, linear_forward, linear_backward, linear_spec, NULL,
    linear_fold, linear_enable_bias, NULL, kd__layer_infer_shared_yes,
};

static kd_status linear_parse(kd__spec_parser *p, const kd_shape *in, kd_layer **out)
{
    if (in->kind != KD_DATA_DENSE || in->rank == 0)
        return kd__spec_error(p, "linear needs dense input");
    size_t o;
    kd_status st = kd__spec_uint(p, "linear output features", KD_NN_MAX_NUMEL, &o);
    if (st != KD_OK) return st;
    int bias = !kd__spec_accept(p, "nobias");
    size_t in_f = in->d[in->rank - 1], rows = kd__shape_numel(in) / in_f, w;
    if (kd__mul_overflow(o, in_f, &w) || w > KD_NN_MAX_NUMEL || rows > KD_NN_MAX_NUMEL / o)
        return kd__spec_error(p, "linear layer too large");
    kd_linear *L = (kd_linear *)kd__calloc(p->ctx, 1, sizeof *L);
    if (!L) return KD_E_NOMEM;
    L->base.vt = &linear_vt;
    L->base.in = *in;
    L->base.out = *in;
    L->base.out.d[in->rank - 1] = o;
    L->in_f = in_f;
    L->out_f = o;
    L->rows = rows;
    L->has_bias = bias;
    *out = &L->base;
    return KD_OK;
}

const kd_layer_kind kd__kind_linear = {"linear", linear_parse};

/* ---- embedding and embedding-bag ------------------------------------------ */

typedef struct {
    kd_layer base;
    size_t vocab, dim;
    int bag;   /* 0: embedding (ids T), 1: bag */
    int mean;  /* bag mode */
} kd_embed;

static size_t embed_tensor_count(const kd_layer *l)
{
    (void)l;
    return 1;
}

static void embed_tensor_desc(const kd_layer *l, size_t i, kd_tensor_desc *d)
{
    const kd_embed *E = (const kd_embed *)l;
    (void)i;
    memset(d, 0, sizeof *d);
    kd__fmt(d->name, sizeof d->name, "weight");
    d->rank = 2;
    d->shape[0] = E->vocab;
    d->shape[1] = E->dim;
}

/* N(0, 1): PyTorch's nn.Embedding / nn.EmbeddingBag default. */
static void embed_init(kd_layer *l, kd_rng *rng)
{
    kd_embed *E = (kd_embed *)l;
    for (size_t i = 0; i < E->vocab * E->dim; i++) l->param[i] = kd_rng_normal(rng);
}

static kd_status check_ids(const kd_layer_run *r, const kd_embed *E, const kd_layer_in *x)
{
    for (size_t i = 0; i < x->n_ids; i++)
        if (x->ids[i] < 0 || (size_t)x->ids[i] >= E->vocab)
            return kd__fail(r->ctx, KD_E_INVALID, "%s: id %d at position %zu is outside [0, %zu)",
                            E->bag ? "embeddingbag" : "embedding", (int)x->ids[i], i, E->vocab);
    return KD_OK;
}

/*
 * embedding: ids (B, T) -> y (B, T, D), y[b,t] = W[ids[b,t]]
 * bag:       ids CSR (B lists) -> y (B, D), y[b] = sum (or mean) of W[id]
 */
static kd_status embed_forward(kd_layer *l, const kd_layer_run *r, const kd_layer_in *x,
                               float *y)
{
    kd_embed *E = (kd_embed *)l;
    kd_status st = check_ids(r, E, x);
    if (st != KD_OK) return st;
    size_t D = E->dim;
    const float *W = l->param;
    if (!E->bag) {
        for (size_t i = 0; i < x->n_ids; i++) memcpy(y + i * D, W + (size_t)x->ids[i] * D, D * sizeof(float));
        return KD_OK;
    }
    for (size_t b = 0; b < r->batch; b++) {
        float *yb = y + b * D;
        memset(yb, 0, D * sizeof(float));
        size_t s = (size_t)x->offsets[b], e = (size_t)x->offsets[b + 1];
        for (size_t j = s; j < e; j++) {
            const float *w = W + (size_t)x->ids[j] * D;
            for (size_t k = 0; k < D; k++) yb[k] += w[k];
        }
        if (E->mean && e > s) {
            float inv = 1.0f / (float)(e - s);
            for (size_t k = 0; k < D; k++) yb[k] *= inv;
        }
    }
    return KD_OK;
}

/*
 * dy (B, T, D) or (B, D) -> dW[id] += dy (scaled by 1/count for mean); no dx.
 */
static kd_status embed_backward(kd_layer *l, const kd_layer_run *r, const kd_layer_in *x,
                                const float *y, const float *dy, float *dx)
{
    kd_embed *E = (kd_embed *)l;
    size_t D = E->dim;
    float *dW = l->grad;
    (void)dx;
    if (!E->bag) {
        for (size_t i = 0; i < x->n_ids; i++) {
            float *g = dW + (size_t)x->ids[i] * D;
            for (size_t k = 0; k < D; k++) g[k] += dy[i * D + k];
        }
        return KD_OK;
    }
    for (size_t b = 0; b < r->batch; b++) {
        size_t s = (size_t)x->offsets[b], e = (size_t)x->offsets[b + 1];
        float sc = (E->mean && e > s) ? 1.0f / (float)(e - s) : 1.0f;
        for (size_t j = s; j < e; j++) {
            float *g = dW + (size_t)x->ids[j] * D;
            for (size_t k = 0; k < D; k++) g[k] += sc * dy[b * D + k];
        }
    }
    return KD_OK;
}

static void embed_spec(const kd_layer *l, kd__sb *sb)
{
    const kd_embed *E = (const kd_embed *)l;
    if (E->bag) kd__sb_printf(sb, "embeddingbag %zu %zu %s", E->vocab, E->dim, E->mean ? "mean" : "sum");
    else kd__sb_printf(sb, "embedding %zu %zu", E->vocab, E->dim);
}

static const kd_layer_vtable embed_vt = {
    KD_LAYER_ABI_VERSION, "embedding", embed_tensor_count, embed_tensor_desc, NULL, embed_init,
    NULL, embed_forward, embed_backward, embed_spec, NULL, NULL, NULL, NULL,
    kd__layer_infer_shared_yes,
};

static kd_status embed_parse_common(kd__spec_parser *p, const kd_shape *in, int bag,
                                    kd_layer **out)
{
    const char *name = bag ? "embeddingbag" : "embedding";
    if (in->kind != (bag ? KD_DATA_BAGS : KD_DATA_IDS))
        return kd__spec_error(p, "%s must be the first layer, after 'input %s'", name,
                              bag ? "bags" : "ids T");
    size_t v, d, w;
    kd_status st = kd__spec_uint(p, "vocabulary size", (size_t)INT32_MAX, &v);
    if (st == KD_OK) st = kd__spec_uint(p, "embedding dim", KD_NN_MAX_NUMEL, &d);
    if (st != KD_OK) return st;
    if (kd__mul_overflow(v, d, &w) || w > KD_NN_MAX_NUMEL)
        return kd__spec_error(p, "%s table too large", name);
    if (!bag && in->d[0] > KD_NN_MAX_NUMEL / d) return kd__spec_error(p, "embedding output too large");
    int mean = 0;
    if (bag) {
        if (kd__spec_accept(p, "mean")) mean = 1;
        else kd__spec_accept(p, "sum");
    }
    kd_embed *E = (kd_embed *)kd__calloc(p->ctx, 1, sizeof *E);
    if (!E) return KD_E_NOMEM;
    E->base.vt = &embed_vt;
    E->base.in = *in;
    E->base.out.kind = KD_DATA_DENSE;
    if (bag) {
        E->base.out.rank = 1;
        E->base.out.d[0] = d;
    } else {
        E->base.out.rank = 2;
        E->base.out.d[0] = in->d[0];
        E->base.out.d[1] = d;
    }
    E->vocab = v;
    E->dim = d;
    E->bag = bag;
    E->mean = mean;
    *out = &E->base;
    return KD_OK;
}

static kd_status embedding_parse(kd__spec_parser *p, const kd_shape *in, kd_layer **out)
{
    return embed_parse_common(p, in, 0, out);
}

static kd_status embeddingbag_parse(kd__spec_parser *p, const kd_shape *in, kd_layer **out)
{
    return embed_parse_common(p, in, 1, out);
}

const kd_layer_kind kd__kind_embedding = {"embedding", embedding_parse};
const kd_layer_kind kd__kind_embeddingbag = {"embeddingbag", embeddingbag_parse};
