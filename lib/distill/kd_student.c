/* kd_student.c - a model, an optimizer and weighted loss terms; one update per call. */
#include <math.h>

#include "kd/kd_cache.h"
#include "kd/kd_distill.h"
#include "kd_distill_internal.h"
#include "kd_internal.h"

typedef struct {
    kd_loss *loss;
    float weight;
    uint32_t flags;
} student_term;

struct kd_student {
    kd_context *ctx;
    kd_model *model;
    kd_optimizer *opt;
    float max_grad_norm;
    int has_schedule;
    kd_schedule_config schedule;
    student_term terms[KD_STUDENT_MAX_TERMS];
    size_t n_terms;
    size_t classes;
    size_t input_dim;
    float *dlogits;        /* batch x classes, grown on demand */
    size_t dlogits_len;
    kd_grad_hook_fn grad_hook; /* after backward, before clipping (libkd_mpi) */
    void *grad_hook_user;
};

void kd_student_config_default_sized(kd_student_config *out, size_t size)
{
    kd_student_config d, *cfg = &d;
    memset(cfg, 0, sizeof *cfg);
    cfg->struct_size = (uint32_t)sizeof *cfg;
    kd__default_out(out, size, cfg, sizeof *cfg);
}

kd_status kd_student_create(kd_context *ctx, kd_model *m, kd_optimizer *opt,
                            const kd_student_config *cfg_in, kd_student **out)
{
    if (!ctx) return KD_E_INVALID;
    if (!m || !opt || !out) return kd__fail(ctx, KD_E_INVALID, "kd_student_create: NULL model, optimizer or out");
    *out = NULL;
    kd_student_config cfg;
    kd_student_config_default(&cfg);
    if (cfg_in && kd__config_copy(&cfg, sizeof cfg, cfg_in, cfg_in->struct_size, sizeof cfg) != KD_OK)
        return kd__fail(ctx, KD_E_VERSION, "kd_student_create: struct_size %u not supported",
                        (unsigned)cfg_in->struct_size);
    if (!isfinite(cfg.max_grad_norm) || cfg.max_grad_norm < 0.0f)
        return kd__fail(ctx, KD_E_INVALID, "kd_student_create: max_grad_norm must be finite and >= 0");
    size_t shape[KD_TENSOR_MAX_RANK], classes = 0, in = kd__model_input_numel(m);
    uint32_t rank = 0;
    if (in == 0)
        return kd__fail(ctx, KD_E_SHAPE, "kd_student_create: models over token ids are not supported yet");
    kd_status st = kd_model_output_shape(m, shape, &rank, &classes);
    if (st != KD_OK) return st;
    if (cfg.schedule) {
        float lr;
        if ((st = kd_schedule_lr(ctx, cfg.schedule, 0, &lr)) != KD_OK) return st;
    }
    kd_student *s = (kd_student *)kd__calloc(ctx, 1, sizeof *s);
    if (!s) return kd_context_last_status(ctx);
    s->ctx = ctx;
    s->model = m;
    s->opt = opt;
    s->max_grad_norm = cfg.max_grad_norm;
    if (cfg.schedule) {
        s->has_schedule = 1;
        kd_schedule_config_default(&s->schedule);
        kd__config_copy(&s->schedule, sizeof s->schedule, cfg.schedule, cfg.schedule->struct_size,
                        sizeof s->schedule);
    }
    s->classes = classes;
    s->input_dim = in;
    *out = s;
    return KD_OK;
}

void kd_student_destroy(kd_student *s)
{
    if (!s) return;
    kd__free(s->ctx, s->dlogits);
    kd__free(s->ctx, s);
}

kd_model *kd_student_model(const kd_student *s) { return s ? s->model : NULL; }

kd_context *kd__student_context(const kd_student *s) { return s ? s->ctx : NULL; }

kd_status kd_student_set_grad_hook(kd_student *s, kd_grad_hook_fn fn, void *user)
{
    if (!s) return KD_E_INVALID;
    s->grad_hook = fn;
    s->grad_hook_user = fn ? user : NULL;
    return KD_OK;
}

kd_status kd_student_add_loss(kd_student *s, kd_loss *loss, float weight, uint32_t flags)
{
    if (!s) return KD_E_INVALID;
    if (!loss) return kd__fail(s->ctx, KD_E_INVALID, "kd_student_add_loss: NULL loss");
    if (!isfinite(weight) || weight < 0.0f)
        return kd__fail(s->ctx, KD_E_INVALID, "kd_student_add_loss: weight %g must be finite and >= 0",
                        (double)weight);
    if (flags & ~(uint32_t)KD_TERM_NO_LABELS)
        return kd__fail(s->ctx, KD_E_INVALID, "kd_student_add_loss: unknown flags 0x%x", flags);
    if (s->n_terms == KD_STUDENT_MAX_TERMS)
        return kd__fail(s->ctx, KD_E_STATE, "kd_student_add_loss: at most %d terms", KD_STUDENT_MAX_TERMS);
    s->terms[s->n_terms++] = (student_term){loss, weight, flags};
    return KD_OK;
}

static kd_status student_step(kd_student *s, const float *x, size_t batch, const int32_t *labels,
                              const float *teacher_logits, const kd_sparse_logits *teacher_sparse,
                              kd_step_report *report);

kd_status kd_student_step(kd_student *s, const float *x, size_t batch, const int32_t *labels,
                          const float *teacher_logits, kd_step_report *report)
{
    return student_step(s, x, batch, labels, teacher_logits, NULL, report);
}

/* Declared in kd_cache.h: the same step fed by a sparse teacher (the cache). */
kd_status kd_student_step_sparse(kd_student *s, const float *x, size_t batch, const int32_t *labels,
                                 const kd_sparse_logits *teacher, kd_step_report *report)
{
    return student_step(s, x, batch, labels, NULL, teacher, report);
}

static kd_status student_step(kd_student *s, const float *x, size_t batch, const int32_t *labels,
                              const float *teacher_logits, const kd_sparse_logits *teacher_sparse,
                              kd_step_report *report)
{
    if (!s) return KD_E_INVALID;
    kd_context *ctx = s->ctx;
    if (!x || batch == 0) return kd__fail(ctx, KD_E_INVALID, "kd_student_step: NULL input or batch 0");
    if (report && report->struct_size < sizeof *report)
        return kd__fail(ctx, KD_E_VERSION, "kd_student_step: set report->struct_size");
    if (s->n_terms == 0) return kd__fail(ctx, KD_E_STATE, "kd_student_step: the student has no loss terms");
    size_t n_x, n_y;
    if (kd__mul_overflow(batch, s->input_dim, &n_x) || kd__mul_overflow(batch, s->classes, &n_y))
        return kd__fail(ctx, KD_E_OVERFLOW, "kd_student_step: batch %zu too large", batch);
    if (s->dlogits_len < n_y) {
        float *d = (float *)kd__calloc(ctx, n_y, sizeof *d);
        if (!d) return kd_context_last_status(ctx);
        kd__free(ctx, s->dlogits);
        s->dlogits = d;
        s->dlogits_len = n_y;
    }
    float lr = 0.0f;
    kd_status st;
    if (s->has_schedule) {
        if ((st = kd_schedule_lr(ctx, &s->schedule, kd_optimizer_steps(s->opt), &lr)) != KD_OK) return st;
        if ((st = kd_optimizer_set_lr(s->opt, lr)) != KD_OK) return st;
    }
    const float *y = NULL;
    if ((st = kd_model_forward(s->model, KD_MODE_TRAIN, x, n_x, batch, &y)) != KD_OK) return st;
    memset(s->dlogits, 0, n_y * sizeof *s->dlogits);

    double total = 0.0, values[KD_STUDENT_MAX_TERMS];
    for (size_t i = 0; i < s->n_terms; i++) {
        kd_loss_batch b;
        kd_loss_batch_default(&b);
        b.rows = batch;
        b.classes = s->classes;
        b.student_logits = y;
        b.teacher_logits = teacher_logits;
        b.teacher_sparse = teacher_sparse;
        b.labels = (s->terms[i].flags & KD_TERM_NO_LABELS) ? NULL : labels;
        kd_loss_grad g;
        kd_loss_grad_default(&g);
        g.scale = s->terms[i].weight;
        g.student_logits = s->dlogits;
        if ((st = kd_loss_compute(s->terms[i].loss, &b, &values[i], &g)) != KD_OK) return st;
        if (!isfinite(values[i]))
            return kd__fail(ctx, KD_E_NUMERIC, "loss term %zu (%s) is not finite; no update made", i,
                            kd_loss_name(s->terms[i].loss));
        total += s->terms[i].weight * values[i];
    }
    if ((st = kd_model_zero_grad(s->model)) != KD_OK) return st;
    if ((st = kd_model_backward(s->model, s->dlogits, n_y, NULL, 0)) != KD_OK) return st;
    if (s->grad_hook && s->grad_hook(s->grad_hook_user, s->model, batch, total) != 0)
        return kd__fail(ctx, KD_E_CALLBACK, "kd_student_step: the gradient hook failed; no update made");
    float norm = 0.0f;
    /* A huge max_norm measures without clipping; a non-finite norm stops
     * the step before the optimizer can spread it into the weights. */
    st = kd_model_clip_grad_norm(s->model, s->max_grad_norm > 0.0f ? s->max_grad_norm : 3.0e38f, &norm);
    if (st == KD_E_NUMERIC)
        return kd__fail(ctx, KD_E_NUMERIC, "non-finite gradient norm; no update made");
    if (st != KD_OK) return st;
    if ((st = kd_optimizer_step(s->opt)) != KD_OK) return st;
    uint64_t step = kd_optimizer_steps(s->opt);
    for (size_t i = 0; i < s->n_terms; i++)
        if ((st = kd_loss_step(s->terms[i].loss, step)) != KD_OK) return st;
    if (report) {
        report->total = total;
        for (size_t i = 0; i < s->n_terms; i++) report->terms[i] = values[i];
        report->n_terms = s->n_terms;
        report->grad_norm = norm;
        report->lr = s->has_schedule ? lr : 0.0f;
        report->step = step;
    }
    return KD_OK;
}
