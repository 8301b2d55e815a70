/* kd_fit.c - epochs over an in-memory dataset, chains of students, evaluation. */
#include <math.h>
#if !defined(KD_EMBEDDED)
#include <time.h>
#endif

#include "kd/kd_distill.h"
#include "kd_distill_internal.h"
#include "kd_internal.h"

static double now_seconds(void)
{
#if !defined(KD_EMBEDDED) && defined(CLOCK_MONOTONIC)
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
#else
    return 0.0;
#endif
}

void kd_fit_config_default_sized(kd_fit_config *out, size_t size)
{
    kd_fit_config d, *cfg = &d;
    memset(cfg, 0, sizeof *cfg);
    cfg->struct_size = (uint32_t)sizeof *cfg;
    cfg->epochs = 1;
    cfg->batch = 128;
    cfg->seed = 1;
    cfg->cache_teacher = 1;
    kd__default_out(out, size, cfg, sizeof *cfg);
}

kd_status kd__check_dataset(kd_context *ctx, const kd_dataset *ds, size_t dim, const char *fn)
{
    if (!ds) return kd__fail(ctx, KD_E_INVALID, "%s: NULL dataset", fn);
    if (ds->struct_size < sizeof *ds) return kd__fail(ctx, KD_E_VERSION, "%s: set dataset struct_size", fn);
    if (ds->n == 0 || !ds->x) return kd__fail(ctx, KD_E_INVALID, "%s: empty dataset", fn);
    if (ds->dim != dim)
        return kd__fail(ctx, KD_E_SHAPE, "%s: dataset rows have %zu floats, the model takes %zu", fn,
                        ds->dim, dim);
    size_t cells;
    if (kd__mul_overflow(ds->n, ds->dim, &cells)) return kd__fail(ctx, KD_E_OVERFLOW, "%s: dataset too large", fn);
    return KD_OK;
}

size_t kd__model_input_numel(kd_model *m)
{
    size_t shape[KD_TENSOR_MAX_RANK], in = 1;
    uint32_t rank = 0;
    int is_ids = 0;
    if (kd_model_input_shape(m, shape, &rank, &is_ids) != KD_OK || rank == 0 || is_ids) return 0;
    for (uint32_t i = 0; i < rank; i++) in *= shape[i];
    return in;
}

static size_t model_classes(kd_model *m)
{
    size_t shape[KD_TENSOR_MAX_RANK], numel = 0;
    uint32_t rank = 0;
    if (kd_model_output_shape(m, shape, &rank, &numel) != KD_OK) return 0;
    return numel;
}

/* Every trainer (kd_fit, kd_fit_cached, kd_mpi_fit) draws its row order
 * here, so the same seed visits rows in the same order whatever the teacher. */
kd_status kd_fit_shuffle(size_t *order, size_t n, uint64_t seed, size_t epoch)
{
    if (!order && n > 0) return KD_E_INVALID;
    kd_rng rng;
    kd_rng_seed(&rng, seed, 0x6669740000ull + epoch);
    for (size_t i = n > 0 ? n - 1 : 0; i > 0; i--) {
        size_t j = (size_t)kd_rng_below(&rng, (uint32_t)(i + 1 > 0xffffffffu ? 0xffffffffu : i + 1));
        size_t t = order[i];
        order[i] = order[j];
        order[j] = t;
    }
    return KD_OK;
}

void kd__fit_gather(const kd_dataset *ds, size_t dim, const size_t *rows, size_t b, float *xb,
                    int32_t *yb)
{
    for (size_t r = 0; r < b; r++) {
        memcpy(xb + r * dim, ds->x + rows[r] * dim, dim * sizeof *xb);
        yb[r] = ds->labels ? ds->labels[rows[r]] : KD_LOSS_IGNORE_INDEX;
    }
}

kd_status kd__fit_progress(kd_context *ctx, const kd_fit_config *cfg, const char *fn, size_t epoch,
                           size_t step, size_t steps, double running, double seconds)
{
    if (!cfg->progress) return KD_OK;
    kd_progress p = {(uint32_t)sizeof p, epoch, cfg->epochs, step + 1, steps, running, seconds,
                     step + 1 == steps};
    if (cfg->progress(cfg->progress_user, &p) != 0)
        return kd__fail(ctx, KD_E_CALLBACK, "%s: stopped by the progress callback", fn);
    return KD_OK;
}

kd_status kd_fit(kd_student *s, kd_teacher *teacher, const kd_dataset *ds, const kd_fit_config *cfg_in)
{
    if (!s) return KD_E_INVALID;
    kd_model *m = kd_student_model(s);
    kd_context *ctx = kd__student_context(s);
    kd_fit_config cfg;
    kd_fit_config_default(&cfg);
    if (cfg_in && kd__config_copy(&cfg, sizeof cfg, cfg_in, cfg_in->struct_size, sizeof cfg) != KD_OK)
        return kd__fail(ctx, KD_E_VERSION, "kd_fit: config struct_size not supported");
    size_t dim = kd__model_input_numel(m), classes = model_classes(m);
    kd_status st = kd__check_dataset(ctx, ds, dim, "kd_fit");
    if (st != KD_OK) return st;
    if (cfg.batch == 0) return kd__fail(ctx, KD_E_INVALID, "kd_fit: batch must be > 0");
    if (teacher && (kd_teacher_input_dim(teacher) != dim || kd_teacher_classes(teacher) != classes))
        return kd__fail(ctx, KD_E_SHAPE, "kd_fit: teacher maps %zu -> %zu, student %zu -> %zu",
                        kd_teacher_input_dim(teacher), kd_teacher_classes(teacher), dim, classes);
    const size_t n = ds->n, bsz = cfg.batch < n ? cfg.batch : n;
    size_t *order = (size_t *)kd__calloc(ctx, n, sizeof *order);
    float *xb = (float *)kd__calloc(ctx, bsz * dim, sizeof *xb);
    float *xa = cfg.augment ? (float *)kd__calloc(ctx, bsz * dim, sizeof *xa) : NULL;
    int32_t *yb = (int32_t *)kd__calloc(ctx, bsz, sizeof *yb);
    float *tb = teacher ? (float *)kd__calloc(ctx, bsz * classes, sizeof *tb) : NULL;
    int cache = teacher && cfg.cache_teacher && !cfg.augment && !kd_teacher_stateful(teacher);
    float *tcache = cache ? (float *)kd__calloc(ctx, n, classes * sizeof *tcache) : NULL;
    if (!order || !xb || !yb || (cfg.augment && !xa) || (teacher && !tb) || (cache && !tcache)) {
        st = kd_context_last_status(ctx);
        goto done;
    }
    if (cache) {
        for (size_t i = 0; i < n && st == KD_OK; i += bsz) {
            size_t b = n - i < bsz ? n - i : bsz;
            st = kd_teacher_logits(teacher, ds->x + i * dim, b, tcache + i * classes);
        }
        if (st != KD_OK) goto done;
    }
    for (size_t i = 0; i < n; i++) order[i] = i;
    const size_t steps = cfg.drop_last ? n / bsz : (n + bsz - 1) / bsz;
    const double t0 = now_seconds();
    for (size_t epoch = 0; epoch < cfg.epochs; epoch++) {
        kd_fit_shuffle(order, n, cfg.seed, epoch);
        /* augmentation draws from its own stream of the same seed */
        kd_rng rng;
        kd_rng_seed(&rng, cfg.seed, 0x6175670000ull + epoch);
        double running = 0.0;
        for (size_t step = 0; step < steps; step++) {
            size_t first = step * bsz, b = n - first < bsz ? n - first : bsz;
            kd__fit_gather(ds, dim, order + first, b, xb, yb);
            for (size_t r = 0; cache && r < b; r++)
                memcpy(tb + r * classes, tcache + order[first + r] * classes, classes * sizeof *tb);
            const float *xin = xb;
            if (cfg.augment) {
                if (cfg.augment(cfg.augment_user, xb, xa, b, dim, &rng) != 0) {
                    st = kd__fail(ctx, KD_E_CALLBACK, "kd_fit: augmentation callback failed");
                    goto done;
                }
                xin = xa;
            }
            if (teacher && !cache && (st = kd_teacher_logits(teacher, xin, b, tb)) != KD_OK) goto done;
            kd_step_report rep;
            memset(&rep, 0, sizeof rep);
            rep.struct_size = (uint32_t)sizeof rep;
            st = kd_student_step(s, xin, b, ds->labels ? yb : NULL, tb, &rep);
            if (st != KD_OK) goto done;
            running += (rep.total - running) / (double)(step + 1);
            st = kd__fit_progress(ctx, &cfg, "kd_fit", epoch, step, steps, running, now_seconds() - t0);
            if (st != KD_OK) goto done;
        }
    }
done:
    kd__free(ctx, tcache);
    kd__free(ctx, tb);
    kd__free(ctx, yb);
    kd__free(ctx, xa);
    kd__free(ctx, xb);
    kd__free(ctx, order);
    return st;
}

kd_status kd_fit_chain(kd_context *ctx, kd_teacher *teacher, kd_model *const *models, size_t n,
                       kd_stage_fn make_student, void *user, const kd_dataset *ds,
                       const kd_fit_config *cfg)
{
    if (!ctx) return KD_E_INVALID;
    if (!teacher || !models || n == 0 || !make_student)
        return kd__fail(ctx, KD_E_INVALID, "kd_fit_chain: NULL teacher, models or callback, or n == 0");
    kd_teacher *current = teacher, *owned = NULL;
    kd_status st = KD_OK;
    for (size_t k = 0; k < n && st == KD_OK; k++) {
        if (!models[k]) {
            st = kd__fail(ctx, KD_E_INVALID, "kd_fit_chain: model %zu is NULL", k);
            break;
        }
        kd_student *s = NULL;
        if ((st = make_student(user, k, models[k], &s)) != KD_OK) break;
        if (!s || kd_student_model(s) != models[k]) {
            kd_student_destroy(s);
            st = kd__fail(ctx, KD_E_CALLBACK, "kd_fit_chain: stage %zu did not build a student of its model", k);
            break;
        }
        st = kd_fit(s, current, ds, cfg);
        kd_student_destroy(s);
        if (st != KD_OK) break;
        kd_teacher_destroy(owned);
        owned = NULL;
        if (k + 1 < n) {
            if ((st = kd_teacher_from_model(ctx, models[k], &owned)) != KD_OK) break;
            current = owned;
        }
    }
    kd_teacher_destroy(owned);
    return st;
}

/* ---- evaluation ---------------------------------------------------------- */

static size_t argmax_row(const float *z, size_t c)
{
    size_t best = 0;
    for (size_t j = 1; j < c; j++)
        if (z[j] > z[best]) best = j;
    return best;
}

static kd_status check_logits(kd_context *ctx, const float *z, size_t n, size_t classes, const char *fn)
{
    if (!ctx) return KD_E_INVALID;
    if (!z || n == 0 || classes == 0) return kd__fail(ctx, KD_E_INVALID, "%s: NULL logits or empty shape", fn);
    size_t cells;
    if (kd__mul_overflow(n, classes, &cells)) return kd__fail(ctx, KD_E_OVERFLOW, "%s: n x classes overflows", fn);
    return KD_OK;
}

kd_status kd_eval_accuracy(kd_context *ctx, const float *logits, size_t n, size_t classes,
                           const int32_t *labels, double *accuracy)
{
    kd_status st = check_logits(ctx, logits, n, classes, "kd_eval_accuracy");
    if (st != KD_OK) return st;
    if (!labels || !accuracy) return kd__fail(ctx, KD_E_INVALID, "kd_eval_accuracy: NULL labels or output");
    size_t right = 0, seen = 0;
    for (size_t i = 0; i < n; i++) {
        if (labels[i] == KD_LOSS_IGNORE_INDEX) continue;
        if (labels[i] < 0 || (size_t)labels[i] >= classes)
            return kd__fail(ctx, KD_E_INVALID, "kd_eval_accuracy: label %d at row %zu out of range", labels[i], i);
        seen++;
        right += argmax_row(logits + i * classes, classes) == (size_t)labels[i];
    }
    *accuracy = seen ? (double)right / (double)seen : 0.0;
    return KD_OK;
}

kd_status kd_eval_agreement(kd_context *ctx, const float *a, const float *b, size_t n, size_t classes,
                            double *agreement)
{
    kd_status st = check_logits(ctx, a, n, classes, "kd_eval_agreement");
    if (st != KD_OK) return st;
    if (!b || !agreement) return kd__fail(ctx, KD_E_INVALID, "kd_eval_agreement: NULL input or output");
    size_t same = 0;
    for (size_t i = 0; i < n; i++)
        same += argmax_row(a + i * classes, classes) == argmax_row(b + i * classes, classes);
    *agreement = (double)same / (double)n;
    return KD_OK;
}

/* Softmax confidence of the argmax: 1 / sum_j exp(z_j - z_max). */
static double max_prob(const float *z, size_t c)
{
    float mx = z[argmax_row(z, c)];
    double s = 0.0;
    for (size_t j = 0; j < c; j++) s += exp((double)z[j] - mx);
    return 1.0 / s;
}

kd_status kd_eval_ece(kd_context *ctx, const float *logits, size_t n, size_t classes,
                      const int32_t *labels, size_t bins, double *ece)
{
    kd_status st = check_logits(ctx, logits, n, classes, "kd_eval_ece");
    if (st != KD_OK) return st;
    if (!labels || !ece) return kd__fail(ctx, KD_E_INVALID, "kd_eval_ece: NULL labels or output");
    if (bins == 0 || bins > 10000) return kd__fail(ctx, KD_E_INVALID, "kd_eval_ece: bins must be in [1, 10000]");
    double *acc = (double *)kd__calloc(ctx, 3 * bins, sizeof *acc);
    if (!acc) return kd_context_last_status(ctx);
    double *conf = acc + bins, *cnt = acc + 2 * bins, total = 0.0;
    for (size_t i = 0; i < n; i++) {
        if (labels[i] == KD_LOSS_IGNORE_INDEX) continue;
        if (labels[i] < 0 || (size_t)labels[i] >= classes) {
            kd__free(ctx, acc);
            return kd__fail(ctx, KD_E_INVALID, "kd_eval_ece: label %d at row %zu out of range", labels[i], i);
        }
        const float *z = logits + i * classes;
        double p = max_prob(z, classes);
        size_t b = (size_t)(p * (double)bins);
        if (b >= bins) b = bins - 1;
        acc[b] += argmax_row(z, classes) == (size_t)labels[i];
        conf[b] += p;
        cnt[b] += 1.0;
        total += 1.0;
    }
    double e = 0.0;
    for (size_t b = 0; b < bins && total > 0; b++)
        if (cnt[b] > 0) e += cnt[b] / total * fabs(acc[b] / cnt[b] - conf[b] / cnt[b]);
    kd__free(ctx, acc);
    *ece = e;
    return KD_OK;
}

kd_status kd_evaluate(kd_context *ctx, kd_model *m, kd_teacher *teacher, const kd_dataset *ds,
                      size_t batch, kd_eval_report *report)
{
    if (!ctx) return KD_E_INVALID;
    if (!m || !report) return kd__fail(ctx, KD_E_INVALID, "kd_evaluate: NULL model or report");
    if (report->struct_size < sizeof *report)
        return kd__fail(ctx, KD_E_VERSION, "kd_evaluate: set report->struct_size");
    size_t dim = kd__model_input_numel(m), classes = model_classes(m);
    kd_status st = kd__check_dataset(ctx, ds, dim, "kd_evaluate");
    if (st != KD_OK) return st;
    if (batch == 0) return kd__fail(ctx, KD_E_INVALID, "kd_evaluate: batch must be > 0");
    if (teacher && kd_teacher_classes(teacher) != classes)
        return kd__fail(ctx, KD_E_SHAPE, "kd_evaluate: teacher has %zu classes, model %zu",
                        kd_teacher_classes(teacher), classes);
    float *all = (float *)kd__calloc(ctx, ds->n, classes * sizeof *all);
    float *tl = teacher ? (float *)kd__calloc(ctx, batch, classes * sizeof *tl) : NULL;
    if (!all || (teacher && !tl)) {
        kd__free(ctx, tl);
        kd__free(ctx, all);
        return kd_context_last_status(ctx);
    }
    size_t agree = 0;
    double nll = 0.0;
    size_t labelled = 0;
    for (size_t i = 0; i < ds->n && st == KD_OK; i += batch) {
        size_t b = ds->n - i < batch ? ds->n - i : batch;
        const float *y = NULL;
        st = kd_model_forward(m, KD_MODE_INFER, ds->x + i * dim, b * dim, b, &y);
        if (st != KD_OK) break;
        memcpy(all + i * classes, y, b * classes * sizeof *all);
        if (teacher) {
            /* evaluation never trains the teacher (a SAR router takes no step) */
            if ((st = kd_teacher_logits_mode(teacher, ds->x + i * dim, b, tl, KD_MODE_INFER)) != KD_OK)
                break;
            for (size_t r = 0; r < b; r++)
                agree += argmax_row(y + r * classes, classes) == argmax_row(tl + r * classes, classes);
        }
    }
    if (st == KD_OK && ds->labels) {
        st = kd_eval_accuracy(ctx, all, ds->n, classes, ds->labels, &report->accuracy);
        if (st == KD_OK) st = kd_eval_ece(ctx, all, ds->n, classes, ds->labels, 15, &report->ece);
        for (size_t i = 0; st == KD_OK && i < ds->n; i++) {
            if (ds->labels[i] == KD_LOSS_IGNORE_INDEX) continue;
            const float *z = all + i * classes;
            float mx = z[argmax_row(z, classes)];
            double s = 0.0;
            for (size_t j = 0; j < classes; j++) s += exp((double)z[j] - mx);
            nll += log(s) - ((double)z[ds->labels[i]] - mx);
            labelled++;
        }
    }
    if (st == KD_OK) {
        if (!ds->labels) report->accuracy = report->ece = 0.0;
        report->agreement = teacher ? (double)agree / (double)ds->n : 0.0;
        report->nll = labelled ? nll / (double)labelled : 0.0;
        report->labelled = labelled;
    }
    kd__free(ctx, tl);
    kd__free(ctx, all);
    return st;
}
