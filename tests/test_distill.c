/* test_distill.c - teachers of all three kinds train students; evaluation; hostile input. */
#include <string.h>

#include "kd_test.h"

#define DIM 8
#define CLASSES 4
#define N 512

/* The ground truth: labels = argmax(W x), W fixed. */
static float truth_w[CLASSES][DIM];
static float data_x[N * DIM];
static int32_t data_y[N];

static void make_data(void)
{
    kd_test_fill(&truth_w[0][0], CLASSES * DIM, -1, 1, 99);
    kd_test_fill(data_x, N * DIM, -1, 1, 100);
    for (int i = 0; i < N; i++) {
        int best = 0;
        float bv = -1e30f;
        for (int c = 0; c < CLASSES; c++) {
            float s = 0;
            for (int d = 0; d < DIM; d++) s += truth_w[c][d] * data_x[i * DIM + d];
            if (s > bv) { bv = s; best = c; }
        }
        data_y[i] = best;
    }
}

static int callback_calls;
/* Teacher callback: logits = 3 W x (a confident copy of the truth). */
static int truth_teacher(void *user, const float *x, size_t batch, size_t dim, float *logits, size_t classes)
{
    (void)user;
    callback_calls++;
    for (size_t b = 0; b < batch; b++)
        for (size_t c = 0; c < classes; c++) {
            float s = 0;
            for (size_t d = 0; d < dim; d++) s += truth_w[c][d] * x[b * dim + d];
            logits[b * classes + c] = 3.0f * s;
        }
    return 0;
}

static int failing_teacher(void *user, const float *x, size_t batch, size_t dim, float *logits, size_t classes)
{
    (void)user; (void)x; (void)batch; (void)dim; (void)logits; (void)classes;
    return 7;
}

static int nan_teacher(void *user, const float *x, size_t batch, size_t dim, float *logits, size_t classes)
{
    truth_teacher(user, x, batch, dim, logits, classes);
    logits[classes + 1] = NAN;
    return 0;
}

/* A model teacher with the same function as truth_teacher. */
static kd_model *truth_model(kd_context *ctx)
{
    kd_model *m = NULL;
    ck_assert_int_eq(kd_model_create_from_spec(ctx, "input 8; linear 4", &m), KD_OK);
    size_t w, b;
    ck_assert_int_eq(kd_model_tensor_find(m, "0.weight", &w), KD_OK);
    ck_assert_int_eq(kd_model_tensor_find(m, "0.bias", &b), KD_OK);
    float *wd, *bd;
    ck_assert_int_eq(kd_model_tensor(m, w, &wd, NULL, NULL, NULL, NULL), KD_OK);
    ck_assert_int_eq(kd_model_tensor(m, b, &bd, NULL, NULL, NULL, NULL), KD_OK);
    for (int c = 0; c < CLASSES; c++) {
        bd[c] = 0;
        for (int d = 0; d < DIM; d++) wd[c * DIM + d] = 3.0f * truth_w[c][d];
    }
    return m;
}

START_TEST(teacher_kinds_agree)
{
    make_data();
    kd_context *ctx = kd_test_ctx();
    kd_model *tm = truth_model(ctx);
    kd_teacher *t_model = NULL, *t_cb = NULL, *t_ens = NULL, *t_probs = NULL;
    ck_assert_int_eq(kd_teacher_from_model(ctx, tm, &t_model), KD_OK);
    ck_assert_int_eq(kd_teacher_from_callback(ctx, DIM, CLASSES, truth_teacher, NULL, &t_cb), KD_OK);
    ck_assert_uint_eq(kd_teacher_input_dim(t_model), DIM);
    ck_assert_uint_eq(kd_teacher_classes(t_model), CLASSES);
    kd_teacher *both[2] = {t_model, t_cb};
    const float w[2] = {1, 3};
    ck_assert_int_eq(kd_teacher_ensemble(ctx, both, 2, w, KD_ENSEMBLE_LOGITS, &t_ens), KD_OK);
    ck_assert_int_eq(kd_teacher_ensemble(ctx, both, 2, NULL, KD_ENSEMBLE_PROBS, &t_probs), KD_OK);
    float a[16 * CLASSES], b[16 * CLASSES], e[16 * CLASSES], p[16 * CLASSES];
    ck_assert_int_eq(kd_teacher_logits(t_model, data_x, 16, a), KD_OK);
    ck_assert_int_eq(kd_teacher_logits(t_cb, data_x, 16, b), KD_OK);
    ck_assert_int_eq(kd_teacher_logits(t_ens, data_x, 16, e), KD_OK);
    ck_assert_int_eq(kd_teacher_logits(t_probs, data_x, 16, p), KD_OK);
    kd_assert_close(a, b, 16 * CLASSES, 1e-5, 1e-5);
    /* Mean of identical logits is those logits; the log of the mean of
     * identical distributions is their log-softmax. */
    kd_assert_close(e, b, 16 * CLASSES, 1e-5, 1e-5);
    kd_test_assert_log_softmax(p, b, 16, CLASSES, 1e-4);
    kd_teacher_destroy(t_probs);
    kd_teacher_destroy(t_ens);
    kd_teacher_destroy(t_cb);
    kd_teacher_destroy(t_model);
    kd_model_destroy(tm);
    kd_context_destroy(ctx);
}
END_TEST

/* A probability ensemble of two different teachers equals the hand mixture. */
START_TEST(ensemble_probs_mixture)
{
    make_data();
    kd_context *ctx = kd_test_ctx();
    kd_model *m1 = NULL, *m2 = NULL;
    ck_assert_int_eq(kd_model_create_from_spec(ctx, "input 8; linear 4", &m1), KD_OK);
    ck_assert_int_eq(kd_model_create_from_spec(ctx, "input 8; linear 4", &m2), KD_OK);
    kd_teacher *t1, *t2, *ens;
    ck_assert_int_eq(kd_teacher_from_model(ctx, m1, &t1), KD_OK);
    ck_assert_int_eq(kd_teacher_from_model(ctx, m2, &t2), KD_OK);
    kd_teacher *both[2] = {t1, t2};
    const float w[2] = {0.25f, 0.75f};
    ck_assert_int_eq(kd_teacher_ensemble(ctx, both, 2, w, KD_ENSEMBLE_PROBS, &ens), KD_OK);
    float z1[CLASSES], z2[CLASSES], z[CLASSES];
    ck_assert_int_eq(kd_teacher_logits(t1, data_x, 1, z1), KD_OK);
    ck_assert_int_eq(kd_teacher_logits(t2, data_x, 1, z2), KD_OK);
    ck_assert_int_eq(kd_teacher_logits(ens, data_x, 1, z), KD_OK);
    double s1 = 0, s2 = 0;
    for (int c = 0; c < CLASSES; c++) { s1 += exp(z1[c]); s2 += exp(z2[c]); }
    for (int c = 0; c < CLASSES; c++)
        ck_assert_double_eq_tol(z[c], log(0.25 * exp(z1[c]) / s1 + 0.75 * exp(z2[c]) / s2), 1e-5);
    kd_teacher_destroy(ens);
    kd_teacher_destroy(t2);
    kd_teacher_destroy(t1);
    kd_model_destroy(m2);
    kd_model_destroy(m1);
    kd_context_destroy(ctx);
}
END_TEST

static kd_dataset dataset(int with_labels)
{
    kd_dataset ds = {sizeof(kd_dataset), data_x, N, DIM, with_labels ? data_y : NULL};
    return ds;
}

/* Every teacher kind teaches a student that never sees a label. */
START_TEST(students_learn_from_every_teacher_kind)
{
    make_data();
    for (int kind = 0; kind < 3; kind++) {
        kd_context *ctx = kd_test_ctx();
        kd_model *tm = truth_model(ctx);
        kd_teacher *tmodel, *tcb, *t;
        ck_assert_int_eq(kd_teacher_from_model(ctx, tm, &tmodel), KD_OK);
        ck_assert_int_eq(kd_teacher_from_callback(ctx, DIM, CLASSES, truth_teacher, NULL, &tcb), KD_OK);
        kd_teacher *both[2] = {tmodel, tcb};
        if (kind == 0) t = tmodel;
        else if (kind == 1) t = tcb;
        else ck_assert_int_eq(kd_teacher_ensemble(ctx, both, 2, NULL, KD_ENSEMBLE_PROBS, &t), KD_OK);
        kd_test_rig r;
        kd_test_rig_make(ctx, &r, "input 8; linear 32; relu; linear 4", 1e-2f);
        kd_dataset ds = dataset(1), unlabelled = dataset(0);
        kd_eval_report before = {sizeof before}, after = {sizeof after};
        ck_assert_int_eq(kd_evaluate(ctx, r.model, t, &ds, 100, &before), KD_OK);
        kd_fit_config fc;
        kd_fit_config_default(&fc);
        fc.epochs = 15;
        fc.batch = 32;
        callback_calls = 0;
        ck_assert_int_eq(kd_fit(r.student, t, &unlabelled, &fc), KD_OK);
        if (kind == 1) ck_assert_int_eq(callback_calls, (N + 31) / 32); /* cached once, reused */
        ck_assert_int_eq(kd_evaluate(ctx, r.model, t, &ds, 100, &after), KD_OK);
        ck_assert_msg(after.accuracy > 0.9 && after.agreement > 0.9,
                      "kind %d: accuracy %.3f agreement %.3f (before %.3f)", kind, after.accuracy,
                      after.agreement, before.accuracy);
        ck_assert(after.accuracy > before.accuracy + 0.2);
        ck_assert(after.nll < before.nll);
        ck_assert_uint_eq(after.labelled, N);
        kd_test_rig_free(&r);
        if (kind == 2) kd_teacher_destroy(t);
        kd_teacher_destroy(tcb);
        kd_teacher_destroy(tmodel);
        kd_model_destroy(tm);
        kd_context_destroy(ctx);
    }
}
END_TEST

static void train_once(float *out, size_t *n_out)
{
    kd_context *ctx = kd_test_ctx();
    kd_teacher *t;
    ck_assert_int_eq(kd_teacher_from_callback(ctx, DIM, CLASSES, truth_teacher, NULL, &t), KD_OK);
    kd_test_rig r;
    kd_test_rig_make(ctx, &r, "input 8; linear 16; relu; dropout 0.1; linear 4", 1e-2f);
    kd_dataset ds = dataset(1);
    kd_fit_config fc;
    kd_fit_config_default(&fc);
    fc.epochs = 2;
    fc.batch = 50;
    fc.seed = 5;
    ck_assert_int_eq(kd_fit(r.student, t, &ds, &fc), KD_OK);
    float *p;
    size_t n;
    ck_assert_int_eq(kd_model_blocks(r.model, &p, NULL, &n), KD_OK);
    memcpy(out, p, n * sizeof *p);
    *n_out = n;
    kd_test_rig_free(&r);
    kd_teacher_destroy(t);
    kd_context_destroy(ctx);
}

START_TEST(training_is_deterministic)
{
    make_data();
    static float a[4096], b[4096];
    size_t na, nb;
    train_once(a, &na);
    train_once(b, &nb);
    ck_assert_uint_eq(na, nb);
    ck_assert(memcmp(a, b, na * sizeof *a) == 0);
}
END_TEST

/* A NaN in the batch stops the step before the update: weights unchanged. */
START_TEST(nan_never_reaches_the_weights)
{
    make_data();
    kd_context *ctx = kd_test_ctx();
    kd_test_rig r;
    kd_test_rig_make(ctx, &r, "input 8; linear 4", 1e-2f);
    float *p;
    size_t n;
    ck_assert_int_eq(kd_model_blocks(r.model, &p, NULL, &n), KD_OK);
    float saved[64];
    memcpy(saved, p, n * sizeof *p);
    float x[4 * DIM], t[4 * CLASSES];
    memcpy(x, data_x, sizeof x);
    truth_teacher(NULL, x, 4, DIM, t, CLASSES);
    x[5] = NAN;
    ck_assert_int_eq(kd_student_step(r.student, x, 4, NULL, t, NULL), KD_E_NUMERIC);
    ck_assert(memcmp(saved, p, n * sizeof *p) == 0);
    x[5] = 0;
    t[3] = NAN;
    ck_assert_int_eq(kd_student_step(r.student, x, 4, NULL, t, NULL), KD_E_NUMERIC);
    ck_assert(memcmp(saved, p, n * sizeof *p) == 0);
    t[3] = 0;
    kd_step_report rep = {sizeof rep};
    ck_assert_int_eq(kd_student_step(r.student, x, 4, NULL, t, &rep), KD_OK);
    ck_assert(memcmp(saved, p, n * sizeof *p) != 0);
    ck_assert_uint_eq(rep.n_terms, 1);
    ck_assert_uint_eq(rep.step, 1);
    ck_assert(rep.total > 0 && rep.grad_norm > 0);
    kd_teacher *tn;
    ck_assert_int_eq(kd_teacher_from_callback(ctx, DIM, CLASSES, nan_teacher, NULL, &tn), KD_OK);
    ck_assert_int_eq(kd_teacher_logits(tn, data_x, 4, t), KD_E_NUMERIC);
    kd_teacher_destroy(tn);
    kd_test_rig_free(&r);
    kd_context_destroy(ctx);
}
END_TEST

START_TEST(eval_metrics_exact)
{
    kd_context *ctx = kd_test_ctx();
    /* 3 rows, 2 classes: argmax 1, 0, 0 (a tie goes to class 0). */
    const float z[6] = {0, 1, 2, 0, 5, 5};
    const float z2[6] = {1, 0, 3, 0, 0, 5};
    const int32_t y[3] = {1, 1, KD_LOSS_IGNORE_INDEX};
    double acc, agree, ece;
    ck_assert_int_eq(kd_eval_accuracy(ctx, z, 3, 2, y, &acc), KD_OK);
    ck_assert_double_eq_tol(acc, 0.5, 1e-12);
    ck_assert_int_eq(kd_eval_agreement(ctx, z, z2, 3, 2, &agree), KD_OK);
    ck_assert_double_eq_tol(agree, 1.0 / 3.0, 1e-12);
    /* Labelled rows: confidences p1 = sigmoid(1) (right), p2 = sigmoid(2) (wrong).
     * With one bin: |1/2 - (p1 + p2)/2|; with 10 bins they fall in bins 7 and 8. */
    double p1 = 1 / (1 + exp(-1.0)), p2 = 1 / (1 + exp(-2.0));
    ck_assert_int_eq(kd_eval_ece(ctx, z, 3, 2, y, 1, &ece), KD_OK);
    ck_assert_double_eq_tol(ece, fabs(0.5 - (p1 + p2) / 2), 1e-9);
    ck_assert_int_eq(kd_eval_ece(ctx, z, 3, 2, y, 10, &ece), KD_OK);
    ck_assert_double_eq_tol(ece, 0.5 * fabs(1 - p1) + 0.5 * fabs(0 - p2), 1e-9);
    const int32_t bad[3] = {2, 0, 0};
    ck_assert_int_eq(kd_eval_accuracy(ctx, z, 3, 2, bad, &acc), KD_E_INVALID);
    ck_assert_int_eq(kd_eval_ece(ctx, z, 3, 2, bad, 10, &ece), KD_E_INVALID);
    ck_assert_int_eq(kd_eval_ece(ctx, z, 3, 2, y, 0, &ece), KD_E_INVALID);
    ck_assert_int_eq(kd_eval_accuracy(ctx, NULL, 3, 2, y, &acc), KD_E_INVALID);
    ck_assert_int_eq(kd_eval_accuracy(ctx, z, SIZE_MAX, 2, y, &acc), KD_E_OVERFLOW);
    ck_assert_int_eq(kd_eval_agreement(NULL, z, z2, 3, 2, &agree), KD_E_INVALID);
    ck_assert_int_eq(kd_eval_agreement(ctx, z, NULL, 3, 2, &agree), KD_E_INVALID);
    kd_context_destroy(ctx);
}
END_TEST

static int stop_after_two(void *user, const kd_progress *p)
{
    int *calls = (int *)user;
    ck_assert_uint_eq(p->struct_size, sizeof *p);
    ck_assert(p->loss >= 0 && p->steps_per_epoch == (N + 63) / 64);
    return ++*calls >= 2;
}

static int bad_augment(void *user, const float *x, float *out, size_t batch, size_t dim, kd_rng *rng)
{
    (void)user; (void)x; (void)out; (void)batch; (void)dim; (void)rng;
    return 1;
}

START_TEST(distill_hostile)
{
    make_data();
    kd_context *ctx = kd_test_ctx();
    kd_teacher *t = (kd_teacher *)0x1;
    ck_assert_int_eq(kd_teacher_from_model(NULL, NULL, &t), KD_E_INVALID);
    ck_assert_int_eq(kd_teacher_from_model(ctx, NULL, &t), KD_E_INVALID);
    ck_assert_int_eq(kd_teacher_from_callback(ctx, 0, 4, truth_teacher, NULL, &t), KD_E_INVALID);
    ck_assert_int_eq(kd_teacher_from_callback(ctx, 8, 4, NULL, NULL, &t), KD_E_INVALID);
    ck_assert_int_eq(kd_teacher_ensemble(ctx, NULL, 1, NULL, KD_ENSEMBLE_LOGITS, &t), KD_E_INVALID);
    kd_model *ids = NULL;
    ck_assert_int_eq(kd_model_create_from_spec(ctx, "input ids 4; embedding 10 3", &ids), KD_OK);
    ck_assert_int_eq(kd_teacher_from_model(ctx, ids, &t), KD_E_SHAPE);
    kd_model_destroy(ids);

    kd_teacher *good, *fail, *other;
    ck_assert_int_eq(kd_teacher_from_callback(ctx, DIM, CLASSES, truth_teacher, NULL, &good), KD_OK);
    ck_assert_int_eq(kd_teacher_from_callback(ctx, DIM, CLASSES, failing_teacher, NULL, &fail), KD_OK);
    ck_assert_int_eq(kd_teacher_from_callback(ctx, DIM, 5, truth_teacher, NULL, &other), KD_OK);
    kd_teacher *pair[2] = {good, other};
    ck_assert_int_eq(kd_teacher_ensemble(ctx, pair, 2, NULL, KD_ENSEMBLE_LOGITS, &t), KD_E_SHAPE);
    pair[1] = good;
    const float negw[2] = {1, -1}, zerow[2] = {0, 0};
    ck_assert_int_eq(kd_teacher_ensemble(ctx, pair, 2, negw, KD_ENSEMBLE_LOGITS, &t), KD_E_INVALID);
    ck_assert_int_eq(kd_teacher_ensemble(ctx, pair, 2, zerow, KD_ENSEMBLE_LOGITS, &t), KD_E_INVALID);
    ck_assert_int_eq(kd_teacher_ensemble(ctx, pair, 2, NULL, (kd_ensemble_mode)9, &t), KD_E_INVALID);
    float out[CLASSES * 2];
    ck_assert_int_eq(kd_teacher_logits(fail, data_x, 2, out), KD_E_CALLBACK);
    ck_assert_int_eq(kd_teacher_logits(good, NULL, 2, out), KD_E_INVALID);
    ck_assert_int_eq(kd_teacher_logits(good, data_x, 0, out), KD_E_INVALID);
    ck_assert_int_eq(kd_teacher_logits(good, data_x, SIZE_MAX / 2, out), KD_E_OVERFLOW);
    ck_assert_int_eq(kd_teacher_logits(NULL, data_x, 1, out), KD_E_INVALID);
    ck_assert_uint_eq(kd_teacher_classes(NULL), 0);

    kd_test_rig r;
    kd_test_rig_make(ctx, &r, "input 8; linear 4", 1e-3f);
    kd_student *s2;
    ck_assert_int_eq(kd_student_create(ctx, NULL, r.opt, NULL, &s2), KD_E_INVALID);
    kd_student_config sc;
    kd_student_config_default(&sc);
    sc.max_grad_norm = NAN;
    ck_assert_int_eq(kd_student_create(ctx, r.model, r.opt, &sc, &s2), KD_E_INVALID);
    sc.max_grad_norm = 0;
    sc.struct_size = 2;
    ck_assert_int_eq(kd_student_create(ctx, r.model, r.opt, &sc, &s2), KD_E_VERSION);
    ck_assert_int_eq(kd_student_add_loss(r.student, NULL, 1, 0), KD_E_INVALID);
    ck_assert_int_eq(kd_student_add_loss(r.student, r.kd, -1, 0), KD_E_INVALID);
    ck_assert_int_eq(kd_student_add_loss(r.student, r.kd, 1, 0x80), KD_E_INVALID);
    for (int i = 1; i < KD_STUDENT_MAX_TERMS; i++)
        ck_assert_int_eq(kd_student_add_loss(r.student, r.kd, 0, 0), KD_OK);
    ck_assert_int_eq(kd_student_add_loss(r.student, r.kd, 1, 0), KD_E_STATE);
    ck_assert_int_eq(kd_student_step(r.student, NULL, 4, NULL, NULL, NULL), KD_E_INVALID);
    kd_step_report tiny = {4};
    ck_assert_int_eq(kd_student_step(r.student, data_x, 4, NULL, NULL, &tiny), KD_E_VERSION);
    /* A KD term without teacher logits: the loss reports it. */
    ck_assert_int_eq(kd_student_step(r.student, data_x, 4, NULL, NULL, NULL), KD_E_INVALID);

    kd_dataset ds = dataset(1);
    kd_fit_config fc;
    kd_fit_config_default(&fc);
    ck_assert_int_eq(kd_fit(r.student, other, &ds, &fc), KD_E_SHAPE);
    kd_dataset wrong = ds;
    wrong.dim = 7;
    ck_assert_int_eq(kd_fit(r.student, good, &wrong, &fc), KD_E_SHAPE);
    wrong = ds;
    wrong.struct_size = 0;
    ck_assert_int_eq(kd_fit(r.student, good, &wrong, &fc), KD_E_VERSION);
    ck_assert_int_eq(kd_fit(r.student, good, NULL, &fc), KD_E_INVALID);
    fc.batch = 0;
    ck_assert_int_eq(kd_fit(r.student, good, &ds, &fc), KD_E_INVALID);
    fc.batch = 64;
    int calls = 0;
    fc.progress = stop_after_two;
    fc.progress_user = &calls;
    ck_assert_int_eq(kd_fit(r.student, good, &ds, &fc), KD_E_CALLBACK);
    ck_assert_int_eq(calls, 2);
    fc.progress = NULL;
    fc.augment = bad_augment;
    ck_assert_int_eq(kd_fit(r.student, good, &ds, &fc), KD_E_CALLBACK);
    fc.augment = NULL;
    ck_assert_int_eq(kd_fit(r.student, fail, &ds, &fc), KD_E_CALLBACK);
    ck_assert_int_eq(kd_fit(NULL, good, &ds, &fc), KD_E_INVALID);
    kd_eval_report er = {sizeof er};
    ck_assert_int_eq(kd_evaluate(ctx, r.model, other, &ds, 10, &er), KD_E_SHAPE);
    ck_assert_int_eq(kd_evaluate(ctx, r.model, NULL, &ds, 0, &er), KD_E_INVALID);
    er.struct_size = 1;
    ck_assert_int_eq(kd_evaluate(ctx, r.model, NULL, &ds, 10, &er), KD_E_VERSION);
    ck_assert_int_eq(kd_fit_chain(ctx, NULL, NULL, 0, NULL, NULL, &ds, &fc), KD_E_INVALID);
    kd_test_rig_free(&r);
    kd_teacher_destroy(other);
    kd_teacher_destroy(fail);
    kd_teacher_destroy(good);
    kd_student_destroy(NULL);
    kd_teacher_destroy(NULL);
    kd_context_destroy(ctx);
}
END_TEST

/* Born-again chain: stage 0 learns from the callback teacher, stage 1 from stage 0. */
typedef struct {
    kd_context *ctx;
    kd_optimizer *opt[2];
    kd_loss *loss[2];
} chain_state;

static kd_status make_stage(void *user, size_t stage, kd_model *model, kd_student **out)
{
    chain_state *cs = (chain_state *)user;
    kd_optimizer_config oc;
    kd_optimizer_config_default(&oc, KD_OPTIM_ADAMW);
    oc.lr = 1e-2f;
    kd_status st = kd_optimizer_create(model, &oc, &cs->opt[stage]);
    if (st != KD_OK) return st;
    if ((st = kd_loss_create(cs->ctx, kd_loss_hinton(), NULL, &cs->loss[stage])) != KD_OK) return st;
    if ((st = kd_student_create(cs->ctx, model, cs->opt[stage], NULL, out)) != KD_OK) return st;
    return kd_student_add_loss(*out, cs->loss[stage], 1.0f, 0);
}

START_TEST(born_again_chain)
{
    make_data();
    kd_context *ctx = kd_test_ctx();
    kd_teacher *t;
    ck_assert_int_eq(kd_teacher_from_callback(ctx, DIM, CLASSES, truth_teacher, NULL, &t), KD_OK);
    kd_model *models[2];
    for (int i = 0; i < 2; i++)
        ck_assert_int_eq(kd_model_create_from_spec(ctx, "input 8; linear 16; relu; linear 4", &models[i]), KD_OK);
    chain_state cs = {ctx, {NULL, NULL}, {NULL, NULL}};
    kd_dataset ds = dataset(1);
    kd_fit_config fc;
    kd_fit_config_default(&fc);
    fc.epochs = 15;
    fc.batch = 32;
    ck_assert_int_eq(kd_fit_chain(ctx, t, models, 2, make_stage, &cs, &ds, &fc), KD_OK);
    for (int i = 0; i < 2; i++) {
        kd_eval_report er = {sizeof er};
        ck_assert_int_eq(kd_evaluate(ctx, models[i], NULL, &ds, 128, &er), KD_OK);
        ck_assert_msg(er.accuracy > 0.85, "generation %d accuracy %.3f", i, er.accuracy);
        kd_loss_destroy(cs.loss[i]);
        kd_optimizer_destroy(cs.opt[i]);
        kd_model_destroy(models[i]);
    }
    kd_teacher_destroy(t);
    kd_context_destroy(ctx);
}
END_TEST

static kd_status ensemble_body(kd_context *ctx, void *user)
{
    (void)user;
    kd_teacher *a = NULL, *e = NULL;
    kd_status st = kd_teacher_from_callback(ctx, DIM, CLASSES, truth_teacher, NULL, &a);
    if (st != KD_OK) return st;
    kd_teacher *m[2] = {a, a};
    st = kd_teacher_ensemble(ctx, m, 2, NULL, KD_ENSEMBLE_PROBS, &e);
    float z[2 * CLASSES];
    if (st == KD_OK) st = kd_teacher_logits(e, data_x, 2, z);
    kd_teacher_destroy(e);
    kd_teacher_destroy(a);
    return st;
}

START_TEST(teacher_allocation_failures)
{
    make_data();
    ck_assert_int_ge(kd_test_alloc_failures(ensemble_body, NULL), 3);
}
END_TEST

/* kd_fit's row order is public: a permutation, the same for the same seed
 * and epoch, another for another epoch; NULL is refused. */
START_TEST(fit_shuffle_is_a_seeded_permutation)
{
    enum { NS = 257 };
    size_t a[NS], b[NS], seen[NS];
    for (size_t i = 0; i < NS; i++) a[i] = b[i] = i;
    ck_assert_int_eq(kd_fit_shuffle(a, NS, 9, 0), KD_OK);
    ck_assert_int_eq(kd_fit_shuffle(b, NS, 9, 0), KD_OK);
    ck_assert_mem_eq(a, b, sizeof a);
    memset(seen, 0, sizeof seen);
    size_t moved = 0;
    for (size_t i = 0; i < NS; i++) {
        ck_assert_uint_lt(a[i], NS);
        seen[a[i]]++;
        moved += a[i] != i;
    }
    for (size_t i = 0; i < NS; i++) ck_assert_uint_eq(seen[i], 1);
    ck_assert_uint_gt(moved, NS / 2);
    ck_assert_int_eq(kd_fit_shuffle(b, NS, 9, 1), KD_OK); /* epoch 1 from epoch 0's order */
    ck_assert_int_ne(memcmp(a, b, sizeof a), 0);
    ck_assert_int_eq(kd_fit_shuffle(NULL, 3, 9, 0), KD_E_INVALID);
    ck_assert_int_eq(kd_fit_shuffle(NULL, 0, 9, 0), KD_OK);
}
END_TEST

Suite *kd_test_suite(void)
{
    Suite *s = suite_create("distill");
    TCase *tc = tcase_create("distill");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, teacher_kinds_agree);
    tcase_add_test(tc, fit_shuffle_is_a_seeded_permutation);
    tcase_add_test(tc, ensemble_probs_mixture);
    tcase_add_test(tc, students_learn_from_every_teacher_kind);
    tcase_add_test(tc, training_is_deterministic);
    tcase_add_test(tc, nan_never_reaches_the_weights);
    tcase_add_test(tc, eval_metrics_exact);
    tcase_add_test(tc, distill_hostile);
    tcase_add_test(tc, born_again_chain);
    tcase_add_test(tc, teacher_allocation_failures);
    suite_add_tcase(s, tc);
    return s;
}
