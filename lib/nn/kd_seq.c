/*
 * kd_seq.c - running an ordered list of layers (a model's body, a residual's
 * body): activation layout, forward, backward; and per-layer helpers.
 */
#include "kd_seq.h"

void kd__layer_sizes(const kd_layer *l, size_t *n_param, size_t *n_buf)
{
    size_t np = 0, nb = 0, cnt = l->vt->tensor_count(l);
    for (size_t i = 0; i < cnt; i++) {
        kd_tensor_desc d;
        l->vt->tensor_desc(l, i, &d);
        size_t e = 1;
        for (uint32_t k = 0; k < d.rank; k++) e *= d.shape[k];
        if (d.is_buffer) nb += e;
        else np += e;
    }
    *n_param = np;
    *n_buf = nb;
}

void kd__layer_bind(kd_layer *l, float *param, float *grad, float *buf)
{
    if (l->vt->bind) {
        l->vt->bind(l, param, grad, buf);
    } else {
        l->param = param;
        l->grad = grad;
        l->buf = buf;
    }
}

int kd__layer_infer_shared(const kd_layer *l)
{
    return l->vt->abi_version >= 2 && l->vt->infer_shared && l->vt->infer_shared(l);
}

int kd__layer_infer_shared_yes(const kd_layer *l)
{
    (void)l;
    return 1;
}

void kd__layer_destroy(kd_layer *l, kd_context *ctx)
{
    if (!l) return;
    if (l->vt->destroy) l->vt->destroy(l, ctx);
    else kd__free(ctx, l);
}

void kd__layer_workspace(const kd_layer *l, size_t batch, int train, size_t *saved,
                         size_t *scratch)
{
    *saved = 0;
    *scratch = 0;
    if (l->vt->workspace) l->vt->workspace(l, batch, train, saved, scratch);
}

kd_status kd__layer_list_push(kd_context *ctx, kd_layer ***list, size_t *n, size_t *cap,
                              kd_layer *l)
{
    if (*n == *cap) {
        size_t nc = *cap ? *cap * 2 : 8;
        kd_layer **nl = (kd_layer **)kd__calloc(ctx, nc, sizeof *nl);
        if (!nl) return KD_E_NOMEM;
        if (*n) memcpy(nl, *list, *n * sizeof *nl);
        kd__free(ctx, *list);
        *list = nl;
        *cap = nc;
    }
    (*list)[(*n)++] = l;
    return KD_OK;
}

void kd__spec_print_items(kd_layer *const *list, size_t n, kd__sb *sb)
{
    for (size_t i = 0; i < n; i++) {
        if (i) kd__sb_puts(sb, "; ");
        list[i]->vt->spec(list[i], sb);
    }
}

/* Largest per-sample element count among the sequence's input and outputs. */
static size_t seq_max_numel(kd_layer *const *list, size_t n)
{
    size_t mx = n ? kd__shape_numel(&list[0]->in) : 0;
    for (size_t i = 0; i < n; i++) {
        size_t o = kd__shape_numel(&list[i]->out);
        if (o > mx) mx = o;
    }
    return mx;
}

/*
 * Region layout (floats), sizes computed for `batch`:
 *   train: act_0 saved_0 act_1 saved_1 ... act_{n-1} saved_{n-1} g_a g_b
 *   infer: p_a p_b saved_0 ... saved_{n-1}
 * act_i holds layer i's output for backward; g_a/g_b are the backward
 * ping-pong for gradients; p_a/p_b the inference ping-pong. Every part is
 * aligned to 16 floats. Sizes cannot overflow: shapes are capped at 2^31
 * elements per sample and the model checks batch * size before calling.
 */
size_t kd__seq_region(kd_layer *const *list, size_t n, size_t batch, int train,
                      size_t *scratch)
{
    size_t total = 0, scr = 0, sv, sc;
    size_t pp = kd__align_floats(batch * seq_max_numel(list, n));
    for (size_t i = 0; i < n; i++) {
        kd__layer_workspace(list[i], batch, train, &sv, &sc);
        if (train) total += kd__align_floats(batch * kd__shape_numel(&list[i]->out));
        total += kd__align_floats(sv);
        if (sc > scr) scr = sc;
    }
    total += 2 * pp;
    if (scratch) *scratch = scr;
    return total;
}

kd_status kd__seq_forward(kd_layer *const *list, size_t n, const kd_layer_run *r,
                          float *region, const kd_layer_in *x, float **y)
{
    size_t pp = kd__align_floats(r->batch * seq_max_numel(list, n));
    float *p = r->train ? region : region + 2 * pp;
    float *ping[2] = {region, region + pp};
    kd_layer_in cur = *x;
    float *out = NULL;
    for (size_t i = 0; i < n; i++) {
        size_t sv, sc;
        kd__layer_workspace(list[i], r->batch, r->train, &sv, &sc);
        if (r->train) {
            out = p;
            p += kd__align_floats(r->batch * kd__shape_numel(&list[i]->out));
        } else {
            out = ping[i & 1];
        }
        kd_layer_run lr = *r;
        lr.saved = p;
        p += kd__align_floats(sv);
        kd_status st = list[i]->vt->forward(list[i], &lr, &cur, out);
        if (st != KD_OK) return st;
        cur.x = out;
        cur.ids = NULL;
        cur.offsets = NULL;
        cur.n_ids = 0;
    }
    *y = out;
    return KD_OK;
}

kd_status kd__seq_backward(kd_layer *const *list, size_t n, const kd_layer_run *r,
                           float *region, const kd_layer_in *x, const float *dy, float *dx)
{
    size_t pp = kd__align_floats(r->batch * seq_max_numel(list, n));
    /* Recompute where each act/saved sits (same walk as forward). */
    float *p = region;
    for (size_t i = 0; i < n; i++) {
        size_t sv, sc;
        kd__layer_workspace(list[i], r->batch, 1, &sv, &sc);
        p += kd__align_floats(r->batch * kd__shape_numel(&list[i]->out)) + kd__align_floats(sv);
    }
    float *g[2] = {p, p + pp};
    const float *gin = dy;
    int which = 0;
    for (size_t k = n; k-- > 0;) {
        /* Locate act_{k-1}, act_k and saved_k. */
        float *q = region, *act_prev = NULL, *act = NULL, *saved = NULL;
        for (size_t i = 0; i <= k; i++) {
            size_t sv, sc;
            kd__layer_workspace(list[i], r->batch, 1, &sv, &sc);
            if (i + 1 == k) act_prev = q;
            if (i == k) act = q;
            q += kd__align_floats(r->batch * kd__shape_numel(&list[i]->out));
            if (i == k) saved = q;
            q += kd__align_floats(sv);
        }
        kd_layer_in in;
        if (k == 0) {
            in = *x;
        } else {
            in.x = act_prev;
            in.ids = NULL;
            in.offsets = NULL;
            in.n_ids = 0;
        }
        float *gout = k == 0 ? dx : g[which];
        kd_layer_run lr = *r;
        lr.saved = saved;
        kd_status st = list[k]->vt->backward(list[k], &lr, &in, act, gin, gout);
        if (st != KD_OK) return st;
        gin = gout;
        which ^= 1;
    }
    return KD_OK;
}
