/*
 * kd_model.c - the model handle: a list of layers, one parameter block, one
 * gradient block, one buffer block, activation plans, forward/backward,
 * tensors by name and index, batch-norm folding.
 */
#include <math.h>

#include "kd_seq.h"

/* Activations for one mode, sized for up to cap batch. */
typedef struct kd_plan {
    float *mem;
    size_t cap;       /* batch capacity, 0 = none */
    size_t region;    /* floats of the sequence region at cap */
    size_t scratch;   /* floats of scratch at cap */
} kd_plan;

struct kd_model {
    kd_context *ctx;
    kd_shape in;
    kd_layer **layers;
    size_t n_layers, cap_layers;
    int built;               /* blocks allocated and initialised */
    float *param, *grad, *buf;
    size_t n_param, n_buf;
    kd_rng init_rng, drop_rng;
    kd_plan train, infer;
    /* last training forward, for backward */
    int have_train;
    size_t train_batch;
    kd_layer_in train_x;
    /* tensor directory, built with the blocks */
    size_t n_tensors;
    char (*names)[KD_TENSOR_NAME_MAX];
    kd_tensor_desc *descs;
    float **tdata;
    float **tgrad;           /* NULL entries for buffers; filled when grads exist */
};

/* ---- creation ----------------------------------------------------------- */

static kd_status parse_input(kd__spec_parser *p, kd_shape *in)
{
    memset(in, 0, sizeof *in);
    if (!kd__spec_accept(p, "input")) return kd__spec_error(p, "spec must start with 'input'");
    const char *t;
    size_t n = kd__spec_peek(p, &t);
    if (n == 3 && memcmp(t, "ids", 3) == 0) {
        kd__spec_skip(p, n);
        in->kind = KD_DATA_IDS;
        in->rank = 1;
        return kd__spec_uint(p, "ids per sample", KD_NN_MAX_NUMEL, &in->d[0]);
    }
    if (n == 4 && memcmp(t, "bags", 4) == 0) {
        kd__spec_skip(p, n);
        in->kind = KD_DATA_BAGS;
        in->rank = 0;
        return KD_OK;
    }
    /* D1xD2x...: digits separated by 'x'. */
    if (n == 0 || t[0] < '0' || t[0] > '9') return kd__spec_error(p, "expected input dims like 1x28x28");
    size_t i = 0, numel = 1;
    in->kind = KD_DATA_DENSE;
    while (i < n) {
        if (in->rank == KD_SHAPE_MAX_RANK) return kd__spec_error(p, "input has more than 4 dims");
        size_t v = 0, digits = 0;
        while (i < n && t[i] >= '0' && t[i] <= '9') {
            v = v * 10 + (size_t)(t[i] - '0');
            if (v > KD_NN_MAX_NUMEL) return kd__spec_error(p, "input dim too large");
            i++;
            digits++;
        }
        if (digits == 0 || v == 0) return kd__spec_error(p, "input dims must be positive integers");
        if (numel > KD_NN_MAX_NUMEL / v) return kd__spec_error(p, "input has more than 2^31 elements");
        numel *= v;
        in->d[in->rank++] = v;
        if (i < n) {
            if (t[i] != 'x' || i + 1 == n) return kd__spec_error(p, "bad input dims");
            i++;
        }
    }
    kd__spec_skip(p, n);
    return KD_OK;
}

static void free_layers(kd_context *ctx, kd_layer **list, size_t n)
{
    for (size_t i = 0; i < n; i++) kd__layer_destroy(list[i], ctx);
    kd__free(ctx, list);
}

/* Parses items (after an input line) with input shape in, into a new list. */
static kd_status parse_tail(kd__spec_parser *p, const kd_shape *in, kd_layer ***list,
                            size_t *n, size_t *cap)
{
    kd_status st = kd__spec_parse_items(p, in, list, n, cap, 0);
    if (st != KD_OK) return st;
    const char *t;
    if (kd__spec_peek(p, &t) != 0) return kd__spec_error(p, "unexpected '%c'", t[0]);
    return KD_OK;
}

static kd_status check_spec_string(kd_context *ctx, const char *spec, size_t *len)
{
    size_t n = 0;
    while (n <= KD_SPEC_MAX_LEN && spec[n]) n++;
    if (n > KD_SPEC_MAX_LEN)
        return kd__fail(ctx, KD_E_FORMAT, "model spec longer than %d bytes", KD_SPEC_MAX_LEN);
    *len = n;
    return KD_OK;
}

kd_status kd_model_create_from_spec(kd_context *ctx, const char *spec, kd_model **out)
{
    if (!ctx) return KD_E_INVALID;
    if (!spec || !out) return kd__fail(ctx, KD_E_INVALID, "kd_model_create_from_spec: NULL argument");
    size_t len = 0;
    kd_status st = check_spec_string(ctx, spec, &len);
    if (st != KD_OK) return st;
    kd_model *m = (kd_model *)kd__calloc(ctx, 1, sizeof *m);
    if (!m) return KD_E_NOMEM;
    m->ctx = ctx;
    kd__spec_parser p = {ctx, spec, len, 0, 0, 0};
    st = parse_input(&p, &m->in);
    if (st == KD_OK) {
        const char *t;
        size_t n = kd__spec_peek(&p, &t);
        if (n == 1 && t[0] == ';') {
            kd__spec_skip(&p, 1);
            st = parse_tail(&p, &m->in, &m->layers, &m->n_layers, &m->cap_layers);
        } else if (n != 0) {
            st = kd__spec_error(&p, "expected ';' after the input");
        }
    }
    if (st != KD_OK) {
        free_layers(ctx, m->layers, m->n_layers);
        kd__free(ctx, m);
        return st;
    }
    kd_rng *cr = kd_context_rng(ctx);
    uint64_t s1 = ((uint64_t)kd_rng_u32(cr) << 32) | kd_rng_u32(cr);
    uint64_t s2 = ((uint64_t)kd_rng_u32(cr) << 32) | kd_rng_u32(cr);
    kd_rng_seed(&m->init_rng, s1, 1);
    kd_rng_seed(&m->drop_rng, s2, 2);
    *out = m;
    return KD_OK;
}

kd_status kd_model_append(kd_model *m, const char *spec)
{
    if (!m) return KD_E_INVALID;
    kd_context *ctx = m->ctx;
    if (!spec) return kd__fail(ctx, KD_E_INVALID, "kd_model_append: NULL spec");
    if (m->built)
        return kd__fail(ctx, KD_E_STATE, "kd_model_append: the model was already used; append before the first use");
    size_t len = 0;
    kd_status st = check_spec_string(ctx, spec, &len);
    if (st != KD_OK) return st;
    kd__spec_parser p = {ctx, spec, len, 0, 0, m->n_layers};
    kd_layer **list = NULL;
    size_t n = 0, cap = 0, old_n = m->n_layers;
    const kd_shape *in = m->n_layers ? &m->layers[m->n_layers - 1]->out : &m->in;
    st = parse_tail(&p, in, &list, &n, &cap);
    for (size_t i = 0; st == KD_OK && i < n; i++)
        st = kd__layer_list_push(ctx, &m->layers, &m->n_layers, &m->cap_layers, list[i]);
    if (st != KD_OK) {
        m->n_layers = old_n; /* the new layers are all still in list */
        free_layers(ctx, list, n);
        return st;
    }
    kd__free(ctx, list);
    return KD_OK;
}

static void plan_free(kd_model *m, kd_plan *pl)
{
    kd__free(m->ctx, pl->mem);
    memset(pl, 0, sizeof *pl);
}

static void free_directory(kd_model *m)
{
    kd__free(m->ctx, m->tgrad);
    kd__free(m->ctx, m->tdata);
    kd__free(m->ctx, m->descs);
    m->tgrad = NULL;
    m->tdata = NULL;
    m->descs = NULL;
    m->n_tensors = 0;
}

void kd_model_destroy(kd_model *m)
{
    if (!m) return;
    kd_context *ctx = m->ctx;
    plan_free(m, &m->infer);
    plan_free(m, &m->train);
    free_directory(m);
    kd__free(ctx, m->grad);
    kd__free(ctx, m->buf);
    kd__free(ctx, m->param);
    free_layers(ctx, m->layers, m->n_layers);
    kd__free(ctx, m);
}

/* ---- blocks and the tensor directory ------------------------------------ */

static size_t desc_numel(const kd_tensor_desc *d)
{
    size_t e = 1;
    for (uint32_t k = 0; k < d->rank; k++) e *= d->shape[k];
    return e;
}

/* Binds every layer to the blocks and fills the tensor directory pointers. */
static void bind_all(kd_model *m)
{
    size_t po = 0, bo = 0, t = 0;
    for (size_t i = 0; i < m->n_layers; i++) {
        kd_layer *l = m->layers[i];
        size_t np, nb;
        kd__layer_sizes(l, &np, &nb);
        kd__layer_bind(l, m->param + po, m->grad ? m->grad + po : NULL, m->buf + bo);
        size_t lpo = po, lbo = bo, cnt = l->vt->tensor_count(l);
        for (size_t k = 0; k < cnt; k++, t++) {
            kd_tensor_desc *d = &m->descs[t];
            size_t e = desc_numel(d);
            if (d->is_buffer) {
                m->tdata[t] = m->buf + lbo;
                m->tgrad[t] = NULL;
                lbo += e;
            } else {
                m->tdata[t] = m->param + lpo;
                m->tgrad[t] = m->grad ? m->grad + lpo : NULL;
                lpo += e;
            }
        }
        po += np;
        bo += nb;
    }
}

/* Counts tensors, sizes the blocks, builds the directory (names with the
 * layer index prefix, parameters first then buffers, per layer order:
 * PyTorch's state_dict order is per module, parameters then buffers). */
static kd_status build_directory(kd_model *m)
{
    kd_context *ctx = m->ctx;
    size_t nt = 0, np = 0, nb = 0;
    for (size_t i = 0; i < m->n_layers; i++) {
        size_t a, b;
        kd__layer_sizes(m->layers[i], &a, &b);
        if (kd__add_overflow(np, a, &np) || kd__add_overflow(nb, b, &nb))
            return kd__fail(ctx, KD_E_OVERFLOW, "model parameter count overflows");
        nt += m->layers[i]->vt->tensor_count(m->layers[i]);
    }
    if (np > SIZE_MAX / sizeof(float) || nb > SIZE_MAX / sizeof(float))
        return kd__fail(ctx, KD_E_OVERFLOW, "model parameter block too large");
    kd_tensor_desc *descs = (kd_tensor_desc *)kd__calloc(ctx, nt ? nt : 1, sizeof *descs);
    float **tdata = descs ? (float **)kd__calloc(ctx, nt ? nt : 1, sizeof *tdata) : NULL;
    float **tgrad = tdata ? (float **)kd__calloc(ctx, nt ? nt : 1, sizeof *tgrad) : NULL;
    if (!tgrad) {
        kd__free(ctx, tdata);
        kd__free(ctx, descs);
        return KD_E_NOMEM;
    }
    size_t t = 0;
    for (size_t i = 0; i < m->n_layers; i++) {
        kd_layer *l = m->layers[i];
        size_t cnt = l->vt->tensor_count(l);
        for (size_t k = 0; k < cnt; k++, t++) {
            kd_tensor_desc d;
            l->vt->tensor_desc(l, k, &d);
            descs[t] = d;
            kd__fmt(descs[t].name, sizeof descs[t].name, "%zu.%s", i, d.name);
        }
    }
    m->descs = descs;
    m->tdata = tdata;
    m->tgrad = tgrad;
    m->n_tensors = nt;
    m->n_param = np;
    m->n_buf = nb;
    return KD_OK;
}

/* Allocates the parameter and buffer blocks and initialises them (once). */
static kd_status ensure_built(kd_model *m)
{
    if (m->built) return KD_OK;
    kd_context *ctx = m->ctx;
    if (m->n_layers == 0) return kd__fail(ctx, KD_E_STATE, "model has no layers");
    kd_status st = build_directory(m);
    if (st != KD_OK) return st;
    m->param = (float *)kd__calloc(ctx, m->n_param ? m->n_param : 1, sizeof(float));
    m->buf = m->param ? (float *)kd__calloc(ctx, m->n_buf ? m->n_buf : 1, sizeof(float)) : NULL;
    if (!m->buf) {
        kd__free(ctx, m->param);
        m->param = NULL;
        free_directory(m);
        return KD_E_NOMEM;
    }
    bind_all(m);
    for (size_t i = 0; i < m->n_layers; i++)
        if (m->layers[i]->vt->init) m->layers[i]->vt->init(m->layers[i], &m->init_rng);
    m->built = 1;
    return KD_OK;
}

static kd_status ensure_grad(kd_model *m)
{
    kd_status st = ensure_built(m);
    if (st != KD_OK || m->grad) return st;
    m->grad = (float *)kd__calloc(m->ctx, m->n_param ? m->n_param : 1, sizeof(float));
    if (!m->grad) return KD_E_NOMEM;
    bind_all(m);
    return KD_OK;
}

kd_context *kd__model_context(const kd_model *m)
{
    return m->ctx;
}

kd_layer *kd__model_layer(const kd_model *m, size_t i)
{
    return m && i < m->n_layers ? m->layers[i] : NULL;
}

size_t kd_model_layer_count(const kd_model *m)
{
    return m ? m->n_layers : 0;
}

static void shape_out(const kd_shape *s, size_t shape[KD_TENSOR_MAX_RANK], uint32_t *rank)
{
    if (shape)
        for (uint32_t i = 0; i < KD_TENSOR_MAX_RANK; i++) shape[i] = i < s->rank ? s->d[i] : 0;
    if (rank) *rank = s->rank;
}

kd_status kd_model_input_shape(const kd_model *m, size_t shape[KD_TENSOR_MAX_RANK],
                               uint32_t *rank, int *is_ids)
{
    if (!m) return KD_E_INVALID;
    shape_out(&m->in, shape, rank);
    if (is_ids) *is_ids = m->in.kind != KD_DATA_DENSE;
    return KD_OK;
}

kd_status kd_model_output_shape(const kd_model *m, size_t shape[KD_TENSOR_MAX_RANK],
                                uint32_t *rank, size_t *numel)
{
    if (!m) return KD_E_INVALID;
    const kd_shape *s = m->n_layers ? &m->layers[m->n_layers - 1]->out : &m->in;
    shape_out(s, shape, rank);
    if (numel) *numel = kd__shape_numel(s);
    return KD_OK;
}

size_t kd_model_param_count(const kd_model *m)
{
    if (!m) return 0;
    size_t np = 0;
    for (size_t i = 0; i < m->n_layers; i++) {
        size_t a, b;
        kd__layer_sizes(m->layers[i], &a, &b);
        np += a;
    }
    return np;
}

kd_status kd_model_blocks(kd_model *m, float **params, float **grads, size_t *n)
{
    if (!m) return KD_E_INVALID;
    kd_status st = grads ? ensure_grad(m) : ensure_built(m);
    if (st != KD_OK) return st;
    if (params) *params = m->param;
    if (grads) *grads = m->grad;
    if (n) *n = m->n_param;
    return KD_OK;
}

size_t kd_model_tensor_count(const kd_model *m)
{
    if (!m) return 0;
    size_t nt = 0;
    for (size_t i = 0; i < m->n_layers; i++) nt += m->layers[i]->vt->tensor_count(m->layers[i]);
    return nt;
}

static kd_status check_index(kd_model *m, size_t i)
{
    kd_status st = ensure_built(m);
    if (st != KD_OK) return st;
    if (i >= m->n_tensors)
        return kd__fail(m->ctx, KD_E_INVALID, "tensor index %zu out of range (%zu tensors)", i,
                        m->n_tensors);
    return KD_OK;
}

kd_status kd_model_tensor_name(const kd_model *cm, size_t i, const char **name)
{
    if (!cm) return KD_E_INVALID;
    kd_model *m = (kd_model *)cm; /* building the directory is not a visible change */
    if (!name) return kd__fail(m->ctx, KD_E_INVALID, "kd_model_tensor_name: NULL name");
    kd_status st = check_index(m, i);
    if (st != KD_OK) return st;
    *name = m->descs[i].name;
    return KD_OK;
}

kd_status kd_model_tensor_find(const kd_model *cm, const char *name, size_t *index)
{
    if (!cm) return KD_E_INVALID;
    kd_model *m = (kd_model *)cm;
    if (!name || !index) return kd__fail(m->ctx, KD_E_INVALID, "kd_model_tensor_find: NULL argument");
    kd_status st = ensure_built(m);
    if (st != KD_OK) return st;
    for (size_t i = 0; i < m->n_tensors; i++)
        if (strncmp(m->descs[i].name, name, KD_TENSOR_NAME_MAX) == 0) {
            *index = i;
            return KD_OK;
        }
    return kd__fail(m->ctx, KD_E_NOT_FOUND, "no tensor named '%.64s'", name);
}

kd_status kd_model_tensor(kd_model *m, size_t i, float **data, size_t *numel,
                          size_t shape[KD_TENSOR_MAX_RANK], uint32_t *rank, int *trainable)
{
    if (!m) return KD_E_INVALID;
    kd_status st = check_index(m, i);
    if (st != KD_OK) return st;
    const kd_tensor_desc *d = &m->descs[i];
    if (data) *data = m->tdata[i];
    if (numel) *numel = desc_numel(d);
    if (shape)
        for (uint32_t k = 0; k < KD_TENSOR_MAX_RANK; k++) shape[k] = k < d->rank ? d->shape[k] : 0;
    if (rank) *rank = d->rank;
    if (trainable) *trainable = !d->is_buffer;
    return KD_OK;
}

kd_status kd_model_tensor_grad(kd_model *m, size_t i, float **grad, size_t *numel)
{
    if (!m) return KD_E_INVALID;
    kd_status st = check_index(m, i);
    if (st != KD_OK) return st;
    if (m->descs[i].is_buffer)
        return kd__fail(m->ctx, KD_E_INVALID, "tensor '%s' is a buffer: it has no gradient",
                        m->descs[i].name);
    if ((st = ensure_grad(m)) != KD_OK) return st;
    if (grad) *grad = m->tgrad[i];
    if (numel) *numel = desc_numel(&m->descs[i]);
    return KD_OK;
}

kd_status kd_model_zero_grad(kd_model *m)
{
    if (!m) return KD_E_INVALID;
    kd_status st = ensure_grad(m);
    if (st != KD_OK) return st;
    memset(m->grad, 0, m->n_param * sizeof(float));
    return KD_OK;
}

/* ---- plans, forward, backward ------------------------------------------- */

/* Floats needed by a plan for batch (region + scratch), overflow-checked. */
static kd_status plan_size_ctx(kd_context *ctx, const kd_model *m, int train, size_t batch,
                               size_t *region, size_t *scratch)
{
    /* Every per-sample size is <= 2^31 elements; the largest single term is
     * batch * numel, and a layer's saved/scratch is a small multiple of its
     * (input + output) * batch. Check a generous bound first so that the
     * unchecked arithmetic in the layers cannot overflow. */
    size_t worst = 0;
    for (size_t i = 0; i < m->n_layers; i++) {
        size_t o = kd__shape_numel(&m->layers[i]->out), in = kd__shape_numel(&m->layers[i]->in);
        if (o > worst) worst = o;
        if (in > worst) worst = in;
    }
    size_t bound;
    if (kd__mul_overflow(batch, worst + 64, &bound) ||
        kd__mul_overflow(bound, 64 * (m->n_layers + 4), &bound) ||
        bound > SIZE_MAX / sizeof(float) / 4)
        return kd__fail(ctx, KD_E_OVERFLOW, "batch %zu is too large for this model", batch);
    *region = kd__seq_region(m->layers, m->n_layers, batch, train, scratch);
    return KD_OK;
}

static kd_status plan_size(kd_model *m, int train, size_t batch, size_t *region, size_t *scratch)
{
    return plan_size_ctx(m->ctx, m, train, batch, region, scratch);
}

static kd_status ensure_plan(kd_model *m, int train, size_t batch)
{
    kd_plan *pl = train ? &m->train : &m->infer;
    if (pl->mem && pl->cap >= batch) return KD_OK;
    size_t region, scratch, total;
    kd_status st = plan_size(m, train, batch, &region, &scratch);
    if (st != KD_OK) return st;
    total = region + kd__align_floats(scratch);
    if (train) m->have_train = 0; /* the old activations go away */
    plan_free(m, pl);
    pl->mem = (float *)kd__calloc(m->ctx, total ? total : 1, sizeof(float));
    if (!pl->mem) return KD_E_NOMEM;
    pl->cap = batch;
    pl->region = region;
    pl->scratch = scratch;
    return KD_OK;
}

kd_status kd_model_workspace_size(kd_model *m, kd_mode mode, size_t batch, size_t *bytes)
{
    if (!m) return KD_E_INVALID;
    if (!bytes || batch == 0 || (mode != KD_MODE_INFER && mode != KD_MODE_TRAIN))
        return kd__fail(m->ctx, KD_E_INVALID, "kd_model_workspace_size: bad argument");
    if (m->n_layers == 0) return kd__fail(m->ctx, KD_E_STATE, "model has no layers");
    size_t region, scratch;
    kd_status st = plan_size(m, mode == KD_MODE_TRAIN, batch, &region, &scratch);
    if (st != KD_OK) return st;
    size_t total = region + kd__align_floats(scratch) + 16;
    if (mode == KD_MODE_TRAIN && !m->grad) total += kd_model_param_count(m) + 16;
    if (!m->built) {
        size_t np = 0, nb = 0;
        for (size_t i = 0; i < m->n_layers; i++) {
            size_t a, b;
            kd__layer_sizes(m->layers[i], &a, &b);
            np += a;
            nb += b;
        }
        size_t nt = kd_model_tensor_count(m);
        total += np + nb + 32 + (nt * (sizeof(kd_tensor_desc) + 2 * sizeof(float *))) / sizeof(float) + 64;
    }
    if (total > SIZE_MAX / sizeof(float) - 16)
        return kd__fail(m->ctx, KD_E_OVERFLOW, "workspace too large");
    *bytes = total * sizeof(float) + 8 * KD_ALIGN;
    return KD_OK;
}

static kd_status run_forward(kd_model *m, kd_mode mode, const kd_layer_in *x, size_t batch,
                             const float **y)
{
    kd_context *ctx = m->ctx;
    int train = mode == KD_MODE_TRAIN;
    kd_status st = ensure_built(m);
    if (st != KD_OK) return st;
    if (train && (st = ensure_grad(m)) != KD_OK) return st;
    if ((st = ensure_plan(m, train, batch)) != KD_OK) return st;
    kd_plan *pl = train ? &m->train : &m->infer;
    kd_layer_run r = {ctx, batch, train, NULL, NULL, &m->drop_rng};
    size_t region = kd__seq_region(m->layers, m->n_layers, batch, train, NULL);
    r.scratch = pl->mem + region;
    if (train) m->have_train = 0;
    float *out = NULL;
    st = kd__seq_forward(m->layers, m->n_layers, &r, pl->mem, x, &out);
    if (st != KD_OK) return st;
    if (train) {
        m->have_train = 1;
        m->train_batch = batch;
        m->train_x = *x;
    }
    *y = out;
    return KD_OK;
}

/*
 * x: (batch, in...) dense floats -> y: (batch, out...).
 */
kd_status kd_model_forward(kd_model *m, kd_mode mode, const float *x, size_t n_x,
                           size_t batch, const float **y)
{
    if (!m) return KD_E_INVALID;
    kd_context *ctx = m->ctx;
    if (!x || !y) return kd__fail(ctx, KD_E_INVALID, "kd_model_forward: NULL argument");
    if (mode != KD_MODE_INFER && mode != KD_MODE_TRAIN)
        return kd__fail(ctx, KD_E_INVALID, "kd_model_forward: unknown mode %d", (int)mode);
    if (batch == 0) return kd__fail(ctx, KD_E_INVALID, "kd_model_forward: batch is 0");
    if (m->in.kind != KD_DATA_DENSE)
        return kd__fail(ctx, KD_E_INVALID, "kd_model_forward: this model takes token ids (use kd_model_forward_ids)");
    size_t want;
    if (kd__mul_overflow(batch, kd__shape_numel(&m->in), &want))
        return kd__fail(ctx, KD_E_OVERFLOW, "kd_model_forward: batch %zu is too large", batch);
    if (n_x != want)
        return kd__fail(ctx, KD_E_SHAPE, "kd_model_forward: got %zu input floats, batch %zu needs %zu",
                        n_x, batch, want);
    kd_layer_in in = {x, NULL, NULL, 0};
    return run_forward(m, mode, &in, batch, y);
}

/* Checks ids/offsets against an id model's input (what: the caller's name). */
static kd_status check_ids_input(kd_context *ctx, const kd_model *m, const char *what,
                                 const int32_t *ids, size_t n_ids, const int32_t *offsets,
                                 size_t batch)
{
    (void)ids;
    if (m->in.kind == KD_DATA_IDS) {
        size_t want;
        if (offsets)
            return kd__fail(ctx, KD_E_INVALID, "%s: 'input ids' takes no offsets", what);
        if (kd__mul_overflow(batch, m->in.d[0], &want))
            return kd__fail(ctx, KD_E_OVERFLOW, "%s: batch too large", what);
        if (n_ids != want)
            return kd__fail(ctx, KD_E_SHAPE, "%s: %zu ids for batch %zu x %zu", what, n_ids, batch,
                            m->in.d[0]);
    } else {
        if (!offsets) return kd__fail(ctx, KD_E_INVALID, "%s: bags need offsets", what);
        if (batch == SIZE_MAX) return kd__fail(ctx, KD_E_OVERFLOW, "%s: batch too large", what);
        if (offsets[0] != 0) return kd__fail(ctx, KD_E_INVALID, "%s: offsets[0] must be 0", what);
        for (size_t b = 0; b < batch; b++)
            if (offsets[b + 1] < offsets[b])
                return kd__fail(ctx, KD_E_INVALID, "%s: offsets decrease at %zu", what, b);
        if ((size_t)offsets[batch] != n_ids)
            return kd__fail(ctx, KD_E_INVALID, "%s: offsets[batch] = %d but n_ids = %zu", what,
                            (int)offsets[batch], n_ids);
    }
    return KD_OK;
}

/*
 * ids: 'ids T' -> (batch, T) int32; 'bags' -> CSR (offsets: batch + 1, ids: n_ids).
 */
kd_status kd_model_forward_ids(kd_model *m, kd_mode mode, const int32_t *ids, size_t n_ids,
                               const int32_t *offsets, size_t batch, const float **y)
{
    if (!m) return KD_E_INVALID;
    kd_context *ctx = m->ctx;
    if (!y || (!ids && n_ids)) return kd__fail(ctx, KD_E_INVALID, "kd_model_forward_ids: NULL argument");
    if (mode != KD_MODE_INFER && mode != KD_MODE_TRAIN)
        return kd__fail(ctx, KD_E_INVALID, "kd_model_forward_ids: unknown mode %d", (int)mode);
    if (batch == 0) return kd__fail(ctx, KD_E_INVALID, "kd_model_forward_ids: batch is 0");
    if (m->in.kind == KD_DATA_DENSE)
        return kd__fail(ctx, KD_E_INVALID, "kd_model_forward_ids: this model takes dense floats");
    kd_status st = check_ids_input(ctx, m, "kd_model_forward_ids", ids, n_ids, offsets, batch);
    if (st != KD_OK) return st;
    kd_layer_in in = {NULL, ids, offsets, n_ids};
    return run_forward(m, mode, &in, batch, y);
}

/* ---- shared inference: caller-owned workspace, model read only ---------- */

/* Checks that m can serve kd_model_infer (built, every layer shareable) and
 * sizes the workspace in floats for batch. */
static kd_status infer_plan(kd_context *ctx, const kd_model *m, const char *what, size_t batch,
                            size_t *region, size_t *floats)
{
    if (batch == 0) return kd__fail(ctx, KD_E_INVALID, "%s: batch is 0", what);
    if (m->n_layers == 0) return kd__fail(ctx, KD_E_STATE, "%s: model has no layers", what);
    if (!m->built)
        return kd__fail(ctx, KD_E_STATE,
                        "%s: the model has no weights yet (load them, or call kd_model_blocks once, before sharing it)",
                        what);
    for (size_t i = 0; i < m->n_layers; i++)
        if (!kd__layer_infer_shared(m->layers[i]))
            return kd__fail(ctx, KD_E_UNSUPPORTED,
                            "%s: layer %zu (%s) keeps state in its forward; give each thread its own model",
                            what, i, m->layers[i]->vt->kind);
    size_t scratch;
    kd_status st = plan_size_ctx(ctx, m, 0, batch, region, &scratch);
    if (st != KD_OK) return st;
    /* plan_size_ctx bounded region and scratch far below SIZE_MAX / 16. */
    *floats = *region + kd__align_floats(scratch);
    return KD_OK;
}

kd_status kd_model_infer_workspace_size(const kd_model *m, size_t batch, size_t *bytes)
{
    if (!m) return KD_E_INVALID;
    if (!bytes) return KD_E_INVALID;
    size_t region, floats;
    kd_status st = infer_plan(NULL, m, "kd_model_infer_workspace_size", batch, &region, &floats);
    if (st != KD_OK) return st;
    *bytes = floats * sizeof(float) + KD_ALIGN; /* any alignment of the caller's buffer */
    return KD_OK;
}

/* Runs the inference forward inside ws and copies the output to y. */
static kd_status infer_run(kd_context *ctx, const kd_model *m, const char *what,
                           const kd_layer_in *x, size_t batch, float *y, size_t n_y, void *ws,
                           size_t ws_bytes)
{
    size_t region, floats;
    kd_status st = infer_plan(ctx, m, what, batch, &region, &floats);
    if (st != KD_OK) return st;
    size_t out_n = batch * kd__shape_numel(&m->layers[m->n_layers - 1]->out);
    if (n_y != out_n)
        return kd__fail(ctx, KD_E_SHAPE, "%s: y holds %zu floats, batch %zu needs %zu", what, n_y,
                        batch, out_n);
    if (!ws) return kd__fail(ctx, KD_E_INVALID, "%s: NULL workspace", what);
    uintptr_t a = (uintptr_t)ws, aligned = (a + (KD_ALIGN - 1)) & ~(uintptr_t)(KD_ALIGN - 1);
    size_t pad = (size_t)(aligned - a);
    if (ws_bytes < pad || (ws_bytes - pad) / sizeof(float) < floats)
        return kd__fail(ctx, KD_E_INVALID,
                        "%s: workspace of %zu bytes is too small; batch %zu needs %zu "
                        "(kd_model_infer_workspace_size)",
                        what, ws_bytes, batch, floats * sizeof(float) + KD_ALIGN);
    float *mem = (float *)aligned;
    /* Inference never draws from the dropout stream; a local one keeps the
     * model untouched should a layer ever do. */
    kd_rng rng;
    kd_rng_seed(&rng, 0, 0);
    kd_layer_run r = {ctx, batch, 0, NULL, mem + region, &rng};
    float *out = NULL;
    st = kd__seq_forward(m->layers, m->n_layers, &r, mem, x, &out);
    if (st != KD_OK) return st;
    memcpy(y, out, out_n * sizeof(float));
    return KD_OK;
}

kd_status kd_model_infer(const kd_model *m, kd_context *ctx, const float *x, size_t n_x,
                         size_t batch, float *y, size_t n_y, void *workspace,
                         size_t workspace_bytes)
{
    if (!m || !ctx) return KD_E_INVALID;
    if (!x || !y) return kd__fail(ctx, KD_E_INVALID, "kd_model_infer: NULL argument");
    if (m->in.kind != KD_DATA_DENSE)
        return kd__fail(ctx, KD_E_INVALID, "kd_model_infer: this model takes token ids (use kd_model_infer_ids)");
    if (batch == 0) return kd__fail(ctx, KD_E_INVALID, "kd_model_infer: batch is 0");
    size_t want;
    if (kd__mul_overflow(batch, kd__shape_numel(&m->in), &want))
        return kd__fail(ctx, KD_E_OVERFLOW, "kd_model_infer: batch %zu is too large", batch);
    if (n_x != want)
        return kd__fail(ctx, KD_E_SHAPE, "kd_model_infer: got %zu input floats, batch %zu needs %zu",
                        n_x, batch, want);
    kd_layer_in in = {x, NULL, NULL, 0};
    return infer_run(ctx, m, "kd_model_infer", &in, batch, y, n_y, workspace, workspace_bytes);
}

kd_status kd_model_infer_ids(const kd_model *m, kd_context *ctx, const int32_t *ids,
                             size_t n_ids, const int32_t *offsets, size_t batch, float *y,
                             size_t n_y, void *workspace, size_t workspace_bytes)
{
    if (!m || !ctx) return KD_E_INVALID;
    if (!y || (!ids && n_ids)) return kd__fail(ctx, KD_E_INVALID, "kd_model_infer_ids: NULL argument");
    if (batch == 0) return kd__fail(ctx, KD_E_INVALID, "kd_model_infer_ids: batch is 0");
    if (m->in.kind == KD_DATA_DENSE)
        return kd__fail(ctx, KD_E_INVALID, "kd_model_infer_ids: this model takes dense floats");
    kd_status st = check_ids_input(ctx, m, "kd_model_infer_ids", ids, n_ids, offsets, batch);
    if (st != KD_OK) return st;
    kd_layer_in in = {NULL, ids, offsets, n_ids};
    return infer_run(ctx, m, "kd_model_infer_ids", &in, batch, y, n_y, workspace, workspace_bytes);
}

/*
 * dy: (batch, out...) -> parameter grads +=, dx: (batch, in...) (optional).
 */
kd_status kd_model_backward(kd_model *m, const float *dy, size_t n_dy, float *dx, size_t n_dx)
{
    if (!m) return KD_E_INVALID;
    kd_context *ctx = m->ctx;
    if (!dy) return kd__fail(ctx, KD_E_INVALID, "kd_model_backward: NULL dy");
    if (!m->have_train)
        return kd__fail(ctx, KD_E_STATE, "kd_model_backward: no training forward to go back through");
    if (dx && m->in.kind != KD_DATA_DENSE)
        return kd__fail(ctx, KD_E_INVALID, "kd_model_backward: an id model has no input gradient");
    size_t want_dy = m->train_batch * kd__shape_numel(&m->layers[m->n_layers - 1]->out);
    if (n_dy != want_dy)
        return kd__fail(ctx, KD_E_SHAPE, "kd_model_backward: got %zu output gradients, batch %zu needs %zu",
                        n_dy, m->train_batch, want_dy);
    if (dx && n_dx != m->train_batch * kd__shape_numel(&m->in))
        return kd__fail(ctx, KD_E_SHAPE, "kd_model_backward: dx holds %zu floats, batch %zu needs %zu",
                        n_dx, m->train_batch, m->train_batch * kd__shape_numel(&m->in));
    kd_layer_run r = {ctx, m->train_batch, 1, NULL, NULL, &m->drop_rng};
    size_t region = kd__seq_region(m->layers, m->n_layers, m->train_batch, 1, NULL);
    r.scratch = m->train.mem + region;
    return kd__seq_backward(m->layers, m->n_layers, &r, m->train.mem, &m->train_x, dy, dx);
}

kd_status kd_model_clip_grad_norm(kd_model *m, float max_norm, float *norm)
{
    if (!m) return KD_E_INVALID;
    if (!(max_norm > 0) || isinf(max_norm))
        return kd__fail(m->ctx, KD_E_INVALID, "kd_model_clip_grad_norm: max_norm must be finite and > 0");
    kd_status st = ensure_grad(m);
    if (st != KD_OK) return st;
    double s = 0;
    for (size_t i = 0; i < m->n_param; i++) s += (double)m->grad[i] * m->grad[i];
    double total = sqrt(s);
    if (norm) *norm = (float)total;
    if (!isfinite(total))
        return kd__fail(m->ctx, KD_E_NUMERIC, "kd_model_clip_grad_norm: gradient norm is not finite");
    float coef = (float)((double)max_norm / (total + 1e-6));
    if (coef < 1.0f)
        for (size_t i = 0; i < m->n_param; i++) m->grad[i] *= coef;
    return KD_OK;
}

/* ---- spec printing ------------------------------------------------------ */

static void print_spec(const kd_model *m, kd__sb *sb)
{
    kd__sb_puts(sb, "input ");
    if (m->in.kind == KD_DATA_IDS) {
        kd__sb_printf(sb, "ids %zu", m->in.d[0]);
    } else if (m->in.kind == KD_DATA_BAGS) {
        kd__sb_puts(sb, "bags");
    } else {
        for (uint32_t i = 0; i < m->in.rank; i++) kd__sb_printf(sb, i ? "x%zu" : "%zu", m->in.d[i]);
    }
    if (m->n_layers) {
        kd__sb_puts(sb, "; ");
        kd__spec_print_items(m->layers, m->n_layers, sb);
    }
}

kd_status kd_model_spec(const kd_model *m, char *buf, size_t size, size_t *needed)
{
    if (!m) return KD_E_INVALID;
    if (!buf && size) return kd__fail(m->ctx, KD_E_INVALID, "kd_model_spec: NULL buffer");
    kd__sb sb = {buf, size, 0};
    print_spec(m, &sb);
    if (needed) *needed = sb.len;
    if (sb.len >= size) {
        if (size) buf[size - 1] = '\0';
        return kd__fail(m->ctx, KD_E_OVERFLOW, "kd_model_spec: need %zu bytes", sb.len + 1);
    }
    return KD_OK;
}

/* ---- batch-norm folding -------------------------------------------------- */

/* Rebuilds the blocks after layers changed their tensor lists, keeping the
 * values of tensors whose (name, size) are unchanged and zeroing new ones. */
static kd_status relayout(kd_model *m)
{
    kd_context *ctx = m->ctx;
    size_t old_n = m->n_tensors;
    kd_tensor_desc *old_desc = m->descs;
    float **old_data = m->tdata, **old_grad = m->tgrad;
    float *old_param = m->param, *old_buf = m->buf;
    m->descs = NULL;
    m->tdata = NULL;
    m->tgrad = NULL;
    kd_status st = build_directory(m);
    float *np = NULL, *nb = NULL;
    if (st == KD_OK) {
        np = (float *)kd__calloc(ctx, m->n_param ? m->n_param : 1, sizeof(float));
        nb = np ? (float *)kd__calloc(ctx, m->n_buf ? m->n_buf : 1, sizeof(float)) : NULL;
        if (!nb) {
            kd__free(ctx, np);
            free_directory(m);
            st = KD_E_NOMEM;
        }
    }
    if (st != KD_OK) {
        m->descs = old_desc;
        m->tdata = old_data;
        m->tgrad = old_grad;
        m->n_tensors = old_n;
        return st;
    }
    float *og = m->grad;
    m->param = np;
    m->buf = nb;
    m->grad = NULL;
    bind_all(m);
    for (size_t t = 0; t < m->n_tensors; t++)
        for (size_t o = 0; o < old_n; o++)
            if (strcmp(m->descs[t].name, old_desc[o].name) == 0 &&
                desc_numel(&m->descs[t]) == desc_numel(&old_desc[o])) {
                memcpy(m->tdata[t], old_data[o], desc_numel(&old_desc[o]) * sizeof(float));
                break;
            }
    kd__free(ctx, old_grad);
    kd__free(ctx, old_data);
    kd__free(ctx, old_desc);
    kd__free(ctx, og);
    kd__free(ctx, old_buf);
    kd__free(ctx, old_param);
    plan_free(m, &m->train);
    plan_free(m, &m->infer);
    m->have_train = 0;
    return KD_OK;
}

kd_status kd_model_fold_batchnorm(kd_model *m, size_t *folded)
{
    if (!m) return KD_E_INVALID;
    kd_context *ctx = m->ctx;
    kd_status st = ensure_built(m);
    if (st != KD_OK) return st;
    size_t count = 0;
    for (size_t i = 1; i < m->n_layers; i++) {
        kd_layer *prev = m->layers[i - 1], *bn = m->layers[i];
        if (!bn->vt->inference_affine || !prev->vt->fold_scale_shift) continue;
        if (bn->in.rank == 0) continue;
        size_t ch = bn->in.d[0];
        float *scale = (float *)kd__calloc(ctx, ch, 2 * sizeof(float));
        if (!scale) return KD_E_NOMEM;
        float *shift = scale + ch;
        if (!bn->vt->inference_affine(bn, ch, scale, shift)) {
            kd__free(ctx, scale);
            continue;
        }
        kd_layer *id = NULL;
        if ((st = kd__identity_create(ctx, &bn->out, &id)) != KD_OK) {
            kd__free(ctx, scale);
            return st;
        }
        int r = prev->vt->fold_scale_shift(prev, ch, scale, shift);
        if (r < 0 && prev->vt->enable_bias) {
            prev->vt->enable_bias(prev);
            if ((st = relayout(m)) != KD_OK) {
                /* Undo is not possible for the bias flag; the layer simply has a zero bias. */
                kd__free(ctx, scale);
                kd__layer_destroy(id, ctx);
                return st;
            }
            r = prev->vt->fold_scale_shift(prev, ch, scale, shift);
        }
        kd__free(ctx, scale);
        if (r <= 0) {
            kd__layer_destroy(id, ctx);
            continue;
        }
        m->layers[i] = id;
        kd__layer_destroy(bn, ctx);
        count++;
    }
    if (count && (st = relayout(m)) != KD_OK) return st;
    if (folded) *folded = count;
    return KD_OK;
}
