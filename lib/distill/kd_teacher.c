/* kd_teacher.c - teachers: a frozen model, a weighted ensemble, a user callback. */
#include <math.h>

#include "kd/kd_distill.h"
#include "kd_distill_internal.h"
#include "kd_internal.h"

typedef enum { T_MODEL, T_CALLBACK, T_ENSEMBLE, T_OWNED } teacher_kind;

struct kd_teacher {
    kd_context *ctx;
    teacher_kind kind;
    size_t input_dim;
    size_t classes;
    kd_model *model;            /* T_MODEL, borrowed */
    kd_teacher_fn fn;           /* T_CALLBACK */
    void *user;
    kd_teacher **members;       /* T_ENSEMBLE: array owned, members borrowed */
    float *weights;             /* normalised, owned */
    size_t n_members;
    kd_ensemble_mode mode;
    float *scratch;             /* ensemble: one member's logits, grown on demand */
    size_t scratch_len;
    kd__teacher_run_fn run;     /* T_OWNED: another layer's teacher (user owned) */
    void (*release)(void *user);
    int stateful;
};

static kd_status teacher_new(kd_context *ctx, teacher_kind kind, size_t in, size_t classes,
                             kd_teacher **out)
{
    kd_teacher *t = (kd_teacher *)kd__calloc(ctx, 1, sizeof *t);
    if (!t) return kd_context_last_status(ctx);
    t->ctx = ctx;
    t->kind = kind;
    t->input_dim = in;
    t->classes = classes;
    *out = t;
    return KD_OK;
}

kd_status kd_teacher_from_model(kd_context *ctx, kd_model *m, kd_teacher **out)
{
    if (!ctx) return KD_E_INVALID;
    if (!m || !out) return kd__fail(ctx, KD_E_INVALID, "kd_teacher_from_model: NULL model or out");
    *out = NULL;
    size_t shape[KD_TENSOR_MAX_RANK], classes = 0, in = kd__model_input_numel(m);
    uint32_t rank = 0;
    if (in == 0)
        return kd__fail(ctx, KD_E_SHAPE, "kd_teacher_from_model: the model takes token ids, not dense inputs");
    kd_status st = kd_model_output_shape(m, shape, &rank, &classes);
    if (st != KD_OK) return st;
    if (classes == 0) return kd__fail(ctx, KD_E_SHAPE, "kd_teacher_from_model: empty output");
    st = teacher_new(ctx, T_MODEL, in, classes, out);
    if (st == KD_OK) (*out)->model = m;
    return st;
}

kd_status kd_teacher_from_callback(kd_context *ctx, size_t input_dim, size_t classes,
                                   kd_teacher_fn fn, void *user, kd_teacher **out)
{
    if (!ctx) return KD_E_INVALID;
    if (!fn || !out) return kd__fail(ctx, KD_E_INVALID, "kd_teacher_from_callback: NULL fn or out");
    *out = NULL;
    if (input_dim == 0 || classes == 0)
        return kd__fail(ctx, KD_E_INVALID, "kd_teacher_from_callback: input_dim and classes must be > 0");
    kd_status st = teacher_new(ctx, T_CALLBACK, input_dim, classes, out);
    if (st == KD_OK) {
        (*out)->fn = fn;
        (*out)->user = user;
    }
    return st;
}

kd_status kd_teacher_ensemble(kd_context *ctx, kd_teacher *const *members, size_t n,
                              const float *weights, kd_ensemble_mode mode, kd_teacher **out)
{
    if (!ctx) return KD_E_INVALID;
    if (!members || !out || n == 0)
        return kd__fail(ctx, KD_E_INVALID, "kd_teacher_ensemble: NULL members/out or n == 0");
    *out = NULL;
    if ((unsigned)mode > KD_ENSEMBLE_PROBS)
        return kd__fail(ctx, KD_E_INVALID, "kd_teacher_ensemble: unknown mode %d", (int)mode);
    double wsum = 0.0;
    for (size_t i = 0; i < n; i++) {
        if (!members[i]) return kd__fail(ctx, KD_E_INVALID, "kd_teacher_ensemble: member %zu is NULL", i);
        if (members[i]->input_dim != members[0]->input_dim ||
            members[i]->classes != members[0]->classes)
            return kd__fail(ctx, KD_E_SHAPE,
                            "kd_teacher_ensemble: member %zu maps %zu -> %zu, member 0 %zu -> %zu", i,
                            members[i]->input_dim, members[i]->classes, members[0]->input_dim,
                            members[0]->classes);
        float w = weights ? weights[i] : 1.0f;
        if (!isfinite(w) || w < 0.0f)
            return kd__fail(ctx, KD_E_INVALID, "kd_teacher_ensemble: weight %zu is %g", i, (double)w);
        wsum += w;
    }
    if (!(wsum > 0.0)) return kd__fail(ctx, KD_E_INVALID, "kd_teacher_ensemble: weights sum to 0");
    kd_teacher *t = NULL;
    kd_status st = teacher_new(ctx, T_ENSEMBLE, members[0]->input_dim, members[0]->classes, &t);
    if (st != KD_OK) return st;
    t->members = (kd_teacher **)kd__calloc(ctx, n, sizeof *t->members);
    t->weights = (float *)kd__calloc(ctx, n, sizeof *t->weights);
    if (!t->members || !t->weights) {
        kd_teacher_destroy(t);
        return kd_context_last_status(ctx);
    }
    for (size_t i = 0; i < n; i++) {
        t->members[i] = members[i];
        t->stateful |= members[i]->stateful; /* one changing member changes the mix */
        t->weights[i] = (float)((weights ? weights[i] : 1.0f) / wsum);
    }
    t->n_members = n;
    t->mode = mode;
    *out = t;
    return KD_OK;
}

kd_status kd__teacher_create_owned(kd_context *ctx, size_t input_dim, size_t classes,
                                   kd__teacher_run_fn run, void (*release)(void *user),
                                   void *user, int stateful, kd_teacher **out)
{
    kd_status st = teacher_new(ctx, T_OWNED, input_dim, classes, out);
    if (st == KD_OK) {
        (*out)->run = run;
        (*out)->release = release;
        (*out)->user = user;
        (*out)->stateful = stateful;
    }
    return st;
}

int kd_teacher_stateful(const kd_teacher *t)
{
    return t && t->stateful;
}

void kd_teacher_destroy(kd_teacher *t)
{
    if (!t) return;
    kd_context *ctx = t->ctx;
    if (t->kind == T_OWNED && t->release) t->release(t->user);
    kd__free(ctx, t->scratch);
    kd__free(ctx, t->weights);
    kd__free(ctx, t->members);
    kd__free(ctx, t);
}

size_t kd_teacher_input_dim(const kd_teacher *t) { return t ? t->input_dim : 0; }
size_t kd_teacher_classes(const kd_teacher *t) { return t ? t->classes : 0; }

/* Softmax of one row (in place allowed). A probability ensemble sums
 * w_i p_i (each in [0, 1]: no overflow) and takes the log at the end. */
static void softmax_row(const float *z, size_t c, float *p)
{
    float mx = z[0];
    for (size_t j = 1; j < c; j++) mx = z[j] > mx ? z[j] : mx;
    double s = 0.0;
    for (size_t j = 0; j < c; j++) s += exp((double)z[j] - mx);
    for (size_t j = 0; j < c; j++) p[j] = (float)(exp((double)z[j] - mx) / s);
}

static kd_status teacher_logits(kd_teacher *t, const float *x, size_t batch, float *logits,
                                int train)
{
    kd_context *ctx = t->ctx;
    if (!x || !logits || batch == 0)
        return kd__fail(ctx, KD_E_INVALID, "kd_teacher_logits: NULL input/output or batch 0");
    size_t n_x, n_y;
    if (kd__mul_overflow(batch, t->input_dim, &n_x) || kd__mul_overflow(batch, t->classes, &n_y))
        return kd__fail(ctx, KD_E_OVERFLOW, "kd_teacher_logits: batch %zu too large", batch);
    kd_status st = KD_OK;
    switch (t->kind) {
    case T_MODEL: {
        const float *y = NULL;
        st = kd_model_forward(t->model, KD_MODE_INFER, x, n_x, batch, &y);
        if (st != KD_OK) return st;
        memcpy(logits, y, n_y * sizeof *logits);
        break;
    }
    case T_OWNED:
        if ((st = t->run(t->user, x, batch, logits, train)) != KD_OK) return st;
        break;
    case T_CALLBACK:
        if (t->fn(t->user, x, batch, t->input_dim, logits, t->classes) != 0)
            return kd__fail(ctx, KD_E_CALLBACK, "teacher callback failed");
        break;
    case T_ENSEMBLE: {
        if (t->scratch_len < n_y) {
            float *s2 = (float *)kd__calloc(ctx, n_y, sizeof *s2);
            if (!s2) return kd_context_last_status(ctx);
            kd__free(ctx, t->scratch);
            t->scratch = s2;
            t->scratch_len = n_y;
        }
        for (size_t j = 0; j < n_y; j++) logits[j] = 0.0f;
        for (size_t i = 0; i < t->n_members; i++) {
            st = teacher_logits(t->members[i], x, batch, t->scratch, train);
            if (st != KD_OK) return st;
            const float w = t->weights[i];
            if (t->mode == KD_ENSEMBLE_LOGITS) {
                for (size_t j = 0; j < n_y; j++) logits[j] += w * t->scratch[j];
            } else {
                for (size_t b = 0; b < batch; b++) {
                    float *z = t->scratch + b * t->classes;
                    softmax_row(z, t->classes, z);
                    for (size_t j = 0; j < t->classes; j++) logits[b * t->classes + j] += w * z[j];
                }
            }
        }
        if (t->mode == KD_ENSEMBLE_PROBS)
            for (size_t j = 0; j < n_y; j++) logits[j] = logf(logits[j]); /* 0 -> -inf: masked */
        break;
    }
    }
    for (size_t j = 0; j < n_y; j++)
        if (isnan(logits[j]) || logits[j] == INFINITY)
            return kd__fail(ctx, KD_E_NUMERIC, "teacher produced a non-finite logit at row %zu, class %zu",
                            j / t->classes, j % t->classes);
    return KD_OK;
}

kd_status kd_teacher_logits(kd_teacher *t, const float *x, size_t batch, float *logits)
{
    if (!t) return KD_E_INVALID;
    return teacher_logits(t, x, batch, logits, 1);
}

kd_status kd_teacher_logits_mode(kd_teacher *t, const float *x, size_t batch, float *logits,
                                 kd_mode mode)
{
    if (!t) return KD_E_INVALID;
    if (mode != KD_MODE_INFER && mode != KD_MODE_TRAIN)
        return kd__fail(t->ctx, KD_E_INVALID, "kd_teacher_logits_mode: unknown mode %d", (int)mode);
    return teacher_logits(t, x, batch, logits, mode == KD_MODE_TRAIN);
}
