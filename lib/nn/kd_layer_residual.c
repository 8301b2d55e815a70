/*
 * kd_layer_residual.c - residual wrapper y = x + f(x), f a sequence of
 * layers whose output shape equals its input shape. A container: its
 * tensors are its children's, named "body.<j>.<name>", laid out back to back
 * in its parameter region; its saved region holds the body's activations.
 */
#include "kd_seq.h"

typedef struct {
    kd_layer base;
    kd_layer **body;
    size_t n, cap;
} kd_residual;

static size_t res_tensor_count(const kd_layer *l)
{
    const kd_residual *R = (const kd_residual *)l;
    size_t c = 0;
    for (size_t j = 0; j < R->n; j++) c += R->body[j]->vt->tensor_count(R->body[j]);
    return c;
}

/* Finds child j and its tensor k for overall index i; states the prefix. */
static void res_tensor_desc(const kd_layer *l, size_t i, kd_tensor_desc *d)
{
    const kd_residual *R = (const kd_residual *)l;
    for (size_t j = 0; j < R->n; j++) {
        size_t c = R->body[j]->vt->tensor_count(R->body[j]);
        if (i < c) {
            kd_tensor_desc cd;
            R->body[j]->vt->tensor_desc(R->body[j], i, &cd);
            *d = cd;
            kd__fmt(d->name, sizeof d->name, "body.%zu.%s", j, cd.name);
            return;
        }
        i -= c;
    }
    memset(d, 0, sizeof *d);
}

static void res_bind(kd_layer *l, float *param, float *grad, float *buf)
{
    kd_residual *R = (kd_residual *)l;
    l->param = param;
    l->grad = grad;
    l->buf = buf;
    for (size_t j = 0; j < R->n; j++) {
        size_t np, nb;
        kd__layer_sizes(R->body[j], &np, &nb);
        kd__layer_bind(R->body[j], param, grad, buf);
        param += np;
        if (grad) grad += np;
        buf += nb;
    }
}

static void res_init(kd_layer *l, kd_rng *rng)
{
    kd_residual *R = (kd_residual *)l;
    for (size_t j = 0; j < R->n; j++)
        if (R->body[j]->vt->init) R->body[j]->vt->init(R->body[j], rng);
}

static void res_workspace(const kd_layer *l, size_t batch, int train, size_t *saved,
                          size_t *scratch)
{
    const kd_residual *R = (const kd_residual *)l;
    *saved = kd__seq_region(R->body, R->n, batch, train, scratch);
}

/*
 * x: (B, N) -> y: (B, N) = x + f(x)
 */
static kd_status res_forward(kd_layer *l, const kd_layer_run *r, const kd_layer_in *x, float *y)
{
    kd_residual *R = (kd_residual *)l;
    float *fx = NULL;
    kd_status st = kd__seq_forward(R->body, R->n, r, r->saved, x, &fx);
    if (st != KD_OK) return st;
    size_t n = r->batch * kd__shape_numel(&l->in);
    for (size_t i = 0; i < n; i++) y[i] = x->x[i] + fx[i];
    return KD_OK;
}

/*
 * dy: (B, N) -> dx = dy + J_f(x)^T dy; the body accumulates its gradients.
 * The body's input gradient goes to the backward ping-pong buffer the
 * sequence leaves free: we pass dx itself when given (then add dy).
 */
static kd_status res_backward(kd_layer *l, const kd_layer_run *r, const kd_layer_in *x,
                              const float *y, const float *dy, float *dx)
{
    kd_residual *R = (kd_residual *)l;
    kd_status st = kd__seq_backward(R->body, R->n, r, r->saved, x, dy, dx);
    if (st != KD_OK || !dx) return st;
    size_t n = r->batch * kd__shape_numel(&l->in);
    for (size_t i = 0; i < n; i++) dx[i] += dy[i];
    return KD_OK;
}

static void res_spec(const kd_layer *l, kd__sb *sb)
{
    const kd_residual *R = (const kd_residual *)l;
    kd__sb_puts(sb, "residual { ");
    kd__spec_print_items(R->body, R->n, sb);
    kd__sb_puts(sb, " }");
}

/* Shareable when every layer of the body is. */
static int res_infer_shared(const kd_layer *l)
{
    const kd_residual *R = (const kd_residual *)l;
    for (size_t j = 0; j < R->n; j++)
        if (!kd__layer_infer_shared(R->body[j])) return 0;
    return 1;
}

static void res_destroy(kd_layer *l, kd_context *ctx)
{
    kd_residual *R = (kd_residual *)l;
    for (size_t j = 0; j < R->n; j++) kd__layer_destroy(R->body[j], ctx);
    kd__free(ctx, R->body);
    kd__free(ctx, R);
}

static const kd_layer_vtable res_vt = {
    KD_LAYER_ABI_VERSION, "residual", res_tensor_count, res_tensor_desc, res_bind, res_init,
    res_workspace, res_forward, res_backward, res_spec, res_destroy, NULL, NULL, NULL,
    res_infer_shared,
};

static kd_status res_parse(kd__spec_parser *p, const kd_shape *in, kd_layer **out)
{
    if (in->kind != KD_DATA_DENSE) return kd__spec_error(p, "residual needs dense input");
    const char *t;
    if (kd__spec_peek(p, &t) != 1 || t[0] != '{') return kd__spec_error(p, "expected '{' after residual");
    kd__spec_skip(p, 1);
    kd_residual *R = (kd_residual *)kd__calloc(p->ctx, 1, sizeof *R);
    if (!R) return KD_E_NOMEM;
    R->base.vt = &res_vt;
    R->base.in = *in;
    R->base.out = *in;
    p->depth++;
    kd_status st = kd__spec_parse_items(p, in, &R->body, &R->n, &R->cap, 1);
    p->depth--;
    if (st == KD_OK && R->n == 0) st = kd__spec_error(p, "empty residual body");
    if (st == KD_OK && !kd__shape_equal(&R->body[R->n - 1]->out, in))
        st = kd__spec_error(p, "residual body changes the shape");
    if (st == KD_OK) kd__spec_skip(p, 1); /* the '}' */
    if (st != KD_OK) {
        res_destroy(&R->base, p->ctx);
        return st;
    }
    *out = &R->base;
    return KD_OK;
}

const kd_layer_kind kd__kind_residual = {"residual", res_parse};
