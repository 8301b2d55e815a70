/* test_loss_core.c - the loss vtable and handle: a user-defined loss through
 * the same path as the built-ins, versioning, configs, hostile inputs and
 * allocation failures. */
#include <string.h>

#include "kd_test.h"

/* ---- a user loss: l_i = sum_j (s_ij + bias - t_ij)^2 with a trainable bias ---- */

typedef struct {
    uint32_t struct_size;
    float init_bias;
} user_config;

typedef struct {
    float bias, gbias;
    int creates, computes, steps;
    uint64_t last_step;
} user_state;

static int user_destroyed;

static kd_status user_create(kd_loss *loss, void *state, const void *config)
{
    user_state *s = (user_state *)state;
    const user_config *c = (const user_config *)config;
    if (c && c->struct_size != sizeof *c) return kd_loss_fail(loss, KD_E_VERSION, "bad config");
    if (c && !(c->init_bias == c->init_bias)) return kd_loss_fail(loss, KD_E_INVALID, "NaN bias");
    s->bias = c ? c->init_bias : 0.0f;
    s->creates++;
    return KD_OK;
}
static void user_destroy(kd_loss *loss, void *state)
{
    (void)loss;
    (void)state;
    user_destroyed++;
}
static kd_status user_compute(kd_loss *loss, void *state, const kd_loss_batch *b, double *value,
                              const kd_loss_grad *grad)
{
    (void)loss;
    user_state *s = (user_state *)state;
    double total = 0;
    for (size_t i = 0; i < b->rows; i++)
        for (size_t j = 0; j < b->classes; j++) {
            double e = b->student_logits[i * b->classes + j] + s->bias - b->teacher_logits[i * b->classes + j];
            total += e * e;
            if (grad) {
                if (grad->student_logits) grad->student_logits[i * b->classes + j] += (float)(grad->scale * 2 * e);
                s->gbias += (float)(grad->scale * 2 * e);
            }
        }
    s->computes++;
    *value = total;
    return KD_OK;
}
static kd_status user_step(kd_loss *loss, void *state, uint64_t step)
{
    (void)loss;
    user_state *s = (user_state *)state;
    s->steps++;
    s->last_step = step;
    return KD_OK;
}
static size_t user_param_count(const kd_loss *loss, const void *state)
{
    (void)loss;
    (void)state;
    return 1;
}
static kd_status user_param(kd_loss *loss, void *state, size_t index, kd_loss_param *out)
{
    (void)loss;
    (void)index;
    user_state *s = (user_state *)state;
    *out = (kd_loss_param){"bias", &s->bias, &s->gbias, 1, 1, 1};
    return KD_OK;
}

static const kd_loss_vtable user_vtable = {
    KD_LOSS_ABI_VERSION, "user_l2", KD_LOSS_IN_STUDENT_LOGITS | KD_LOSS_IN_TEACHER_LOGITS, 0,
    sizeof(user_state), user_create, user_destroy, user_compute, user_step, user_param_count,
    user_param};

START_TEST(user_loss_through_vtable)
{
    kd_context *ctx = kd_test_ctx();
    kd_loss *loss = NULL;
    user_config cfg = {sizeof cfg, 0.5f};
    user_destroyed = 0;
    ck_assert_int_eq(kd_loss_create(ctx, &user_vtable, &cfg, &loss), KD_OK);
    ck_assert_str_eq(kd_loss_name(loss), "user_l2");
    ck_assert_ptr_eq(kd_loss_context(loss), ctx);
    float s[4] = {1, 2, 3, 4}, t[4] = {1, 1, 1, 1}, g[4] = {0};
    kd_loss_batch b;
    kd_loss_batch_default(&b);
    b.rows = 2;
    b.classes = 2;
    b.student_logits = s;
    b.teacher_logits = t;
    kd_loss_grad gr;
    kd_loss_grad_default(&gr);
    gr.student_logits = g;
    double v;
    ck_assert_int_eq(kd_loss_compute(loss, &b, &v, &gr), KD_OK);
    ck_assert(fabs(v - (0.25 + 2.25 + 6.25 + 12.25)) < 1e-9);
    ck_assert(g[0] == 1.0f && g[3] == 7.0f);
    /* the library validated for it: NaN never reaches the user's compute */
    s[1] = NAN;
    ck_assert_int_eq(kd_loss_compute(loss, &b, &v, &gr), KD_E_NUMERIC);
    ck_assert(strstr(kd_context_last_error(ctx), "student_logits[0][1] is NaN") != NULL);
    s[1] = 2;
    /* parameters and their gradient */
    ck_assert_uint_eq(kd_loss_param_count(loss), 1);
    kd_loss_param p;
    ck_assert_int_eq(kd_loss_get_param(loss, 0, &p), KD_OK);
    ck_assert_str_eq(p.name, "bias");
    ck_assert(*p.data == 0.5f && *p.grad == 16.0f);
    ck_assert_int_eq(kd_loss_get_param(loss, 1, &p), KD_E_NOT_FOUND);
    ck_assert_int_eq(kd_loss_get_param(loss, 0, NULL), KD_E_INVALID);
    ck_assert_int_eq(kd_loss_zero_grad(loss), KD_OK);
    ck_assert(*p.grad == 0.0f);
    /* an optimizer step through the exposed pointers changes the loss */
    *p.data = 0.0f;
    ck_assert_int_eq(kd_loss_compute(loss, &b, &v, NULL), KD_OK);
    ck_assert(fabs(v - 14.0) < 1e-9);
    ck_assert_int_eq(kd_loss_step(loss, 17), KD_OK);
    /* a user failure reason lands in the context */
    user_config bad = {sizeof bad, NAN};
    kd_loss *l2 = NULL;
    ck_assert_int_eq(kd_loss_create(ctx, &user_vtable, &bad, &l2), KD_E_INVALID);
    ck_assert_ptr_null(l2);
    ck_assert_str_eq(kd_context_last_error(ctx), "user_l2: NaN bias");
    kd_loss_destroy(loss);
    ck_assert_int_eq(user_destroyed, 1);
    kd_context_destroy(ctx);
}
END_TEST

/* A vtable written for a newer library (abi_version 2 with an extra slot)
 * still works through the version-1 slots; version 0 and a missing compute
 * are refused. */
typedef struct {
    kd_loss_vtable v1;
    kd_status (*future_slot)(void);
} future_vtable;

START_TEST(vtable_versions)
{
    kd_context *ctx = kd_test_ctx();
    kd_loss *loss = NULL;
    future_vtable fv = {user_vtable, NULL};
    fv.v1.abi_version = 2;
    ck_assert_int_eq(kd_loss_create(ctx, &fv.v1, NULL, &loss), KD_OK);
    kd_loss_destroy(loss);
    kd_loss_vtable v = user_vtable;
    v.abi_version = 0;
    ck_assert_int_eq(kd_loss_create(ctx, &v, NULL, &loss), KD_E_VERSION);
    ck_assert(strstr(kd_context_last_error(ctx), "abi_version") != NULL);
    v = user_vtable;
    v.compute = NULL;
    ck_assert_int_eq(kd_loss_create(ctx, &v, NULL, &loss), KD_E_INVALID);
    /* minimal vtable: only compute */
    kd_loss_vtable m = {1, NULL, 0, 0, 0, NULL, NULL, user_compute, NULL, NULL, NULL};
    m.state_size = sizeof(user_state);
    ck_assert_int_eq(kd_loss_create(ctx, &m, NULL, &loss), KD_OK);
    ck_assert_str_eq(kd_loss_name(loss), "");
    ck_assert_uint_eq(kd_loss_param_count(loss), 0);
    ck_assert_int_eq(kd_loss_step(loss, 1), KD_OK);
    ck_assert_int_eq(kd_loss_zero_grad(loss), KD_OK);
    kd_loss_destroy(loss);
    ck_assert_int_eq(kd_loss_create(NULL, &user_vtable, NULL, &loss), KD_E_INVALID);
    ck_assert_int_eq(kd_loss_create(ctx, NULL, NULL, &loss), KD_E_INVALID);
    ck_assert_int_eq(kd_loss_create(ctx, &user_vtable, NULL, NULL), KD_E_INVALID);
    kd_loss_destroy(NULL);
    ck_assert_str_eq(kd_loss_name(NULL), "");
    ck_assert_ptr_null(kd_loss_context(NULL));
    ck_assert_uint_eq(kd_loss_param_count(NULL), 0);
    ck_assert_int_eq(kd_loss_zero_grad(NULL), KD_E_INVALID);
    ck_assert_int_eq(kd_loss_get_param(NULL, 0, NULL), KD_E_INVALID);
    ck_assert_int_eq(kd_loss_fail(NULL, KD_E_IO, "x"), KD_E_IO);
    kd_sparse_logits_default(NULL);
    kd_loss_batch_default(NULL);
    kd_loss_grad_default(NULL);
    kd_context_destroy(ctx);
}
END_TEST

/* ---- configs ---------------------------------------------------------------- */

static kd_status try_create(const kd_loss_vtable *vt, const void *cfg)
{
    kd_context *ctx = kd_test_ctx();
    kd_loss *loss = NULL;
    kd_status st = kd_loss_create(ctx, vt, cfg, &loss);
    if (st != KD_OK) ck_assert_ptr_null(loss);
    ck_assert_msg(st == KD_OK || strlen(kd_context_last_error(ctx)) > 0, "no reason left");
    kd_loss_destroy(loss);
    kd_context_destroy(ctx);
    return st;
}

START_TEST(bad_configs)
{
    kd_loss_hinton_config h;
    kd_loss_hinton_config_default(&h);
    ck_assert_int_eq(try_create(kd_loss_hinton(), &h), KD_OK);
    ck_assert_int_eq(try_create(kd_loss_hinton(), NULL), KD_OK);
    h.temperature = 0;
    ck_assert_int_eq(try_create(kd_loss_hinton(), &h), KD_E_INVALID);
    h.temperature = -1;
    ck_assert_int_eq(try_create(kd_loss_hinton(), &h), KD_E_INVALID);
    h.temperature = NAN;
    ck_assert_int_eq(try_create(kd_loss_hinton(), &h), KD_E_INVALID);
    h.temperature = INFINITY;
    ck_assert_int_eq(try_create(kd_loss_hinton(), &h), KD_E_INVALID);
    kd_loss_hinton_config_default(&h);
    h.alpha = 1.5f;
    ck_assert_int_eq(try_create(kd_loss_hinton(), &h), KD_E_INVALID);
    h.alpha = -0.1f;
    ck_assert_int_eq(try_create(kd_loss_hinton(), &h), KD_E_INVALID);
    kd_loss_hinton_config_default(&h);
    h.label_smoothing = 1.0f;
    ck_assert_int_eq(try_create(kd_loss_hinton(), &h), KD_E_INVALID);
    kd_loss_hinton_config_default(&h);
    h.reduction = (kd_loss_reduction)7;
    ck_assert_int_eq(try_create(kd_loss_hinton(), &h), KD_E_INVALID);
    /* struct_size: too small, or larger with a non-zero unknown tail */
    kd_loss_hinton_config_default(&h);
    h.struct_size = 4;
    ck_assert_int_eq(try_create(kd_loss_hinton(), &h), KD_E_VERSION);
    struct {
        kd_loss_hinton_config c;
        uint32_t future;
    } big;
    memset(&big, 0, sizeof big);
    kd_loss_hinton_config_default(&big.c);
    big.c.struct_size = sizeof big;
    ck_assert_int_eq(try_create(kd_loss_hinton(), &big), KD_OK);
    big.future = 1;
    ck_assert_int_eq(try_create(kd_loss_hinton(), &big), KD_E_VERSION);

    kd_loss_ce_config ce;
    kd_loss_ce_config_default(&ce);
    ce.label_smoothing = -0.1f;
    ck_assert_int_eq(try_create(kd_loss_cross_entropy(), &ce), KD_E_INVALID);

    kd_loss_divergence_config d;
    kd_loss_divergence_config_default(&d);
    d.jsd_beta = 0;
    ck_assert_int_eq(try_create(kd_loss_jsd(), &d), KD_E_INVALID);
    d.jsd_beta = 1;
    ck_assert_int_eq(try_create(kd_loss_jsd(), &d), KD_E_INVALID);
    ck_assert_int_eq(try_create(kd_loss_reverse_kl(), &d), KD_OK); /* reads only T */
    kd_loss_divergence_config_default(&d);
    d.skew_alpha = 1;
    ck_assert_int_eq(try_create(kd_loss_skew_kl(), &d), KD_E_INVALID);
    ck_assert_int_eq(try_create(kd_loss_skew_reverse_kl(), &d), KD_E_INVALID);
    d.skew_alpha = 0;
    ck_assert_int_eq(try_create(kd_loss_skew_kl(), &d), KD_OK);
    d.temperature = 0;
    ck_assert_int_eq(try_create(kd_loss_reverse_kl(), &d), KD_E_INVALID);

    kd_loss_taid_config t;
    kd_loss_taid_config_default(&t);
    t.t_start = 1.0f;
    ck_assert_int_eq(try_create(kd_loss_taid(), &t), KD_E_INVALID);
    kd_loss_taid_config_default(&t);
    t.t_end = 0.3f;
    ck_assert_int_eq(try_create(kd_loss_taid(), &t), KD_E_INVALID);
    kd_loss_taid_config_default(&t);
    t.beta = 1.0f;
    ck_assert_int_eq(try_create(kd_loss_taid(), &t), KD_E_INVALID);
    kd_loss_taid_config_default(&t);
    t.alpha = 2.0f;
    ck_assert_int_eq(try_create(kd_loss_taid(), &t), KD_E_INVALID);
    kd_loss_taid_config_default(&t);
    t.mix = (kd_taid_mix)9;
    ck_assert_int_eq(try_create(kd_loss_taid(), &t), KD_E_INVALID);
    kd_loss_taid_config_default(&t);
    t.adaptive = 2;
    ck_assert_int_eq(try_create(kd_loss_taid(), &t), KD_E_INVALID);

    kd_loss_dkd_config k;
    kd_loss_dkd_config_default(&k);
    k.beta = -1;
    ck_assert_int_eq(try_create(kd_loss_dkd(), &k), KD_E_INVALID);
    kd_loss_dkd_config_default(&k);
    k.temperature = 0;
    ck_assert_int_eq(try_create(kd_loss_dkd(), &k), KD_E_INVALID);

    kd_loss_feature_config f;
    kd_loss_feature_config_default(&f);
    ck_assert_int_eq(try_create(kd_loss_feature_mse(), &f), KD_E_INVALID); /* dims 0 */
    ck_assert_int_eq(try_create(kd_loss_feature_mse(), NULL), KD_E_INVALID);
    f.student_dim = 4;
    f.teacher_dim = 3;
    f.projection = 0;
    ck_assert_int_eq(try_create(kd_loss_feature_cosine(), &f), KD_E_SHAPE);
    f.projection = 1;
    f.cosine_eps = 0;
    ck_assert_int_eq(try_create(kd_loss_feature_cosine(), &f), KD_E_INVALID);
    f.cosine_eps = 1e-8f;
    f.student_dim = SIZE_MAX / 2;
    ck_assert_int_eq(try_create(kd_loss_feature_mse(), &f), KD_E_OVERFLOW);
    f.student_dim = (size_t)1 << 40; /* fits size_t, not memory */
    f.teacher_dim = (size_t)1 << 20;
    ck_assert_int_eq(try_create(kd_loss_feature_mse(), &f), KD_E_NOMEM);

    kd_loss_rkd_config r;
    kd_loss_rkd_config_default(&r);
    r.huber_delta = 0;
    ck_assert_int_eq(try_create(kd_loss_rkd_distance(), &r), KD_E_INVALID);
    ck_assert_int_eq(try_create(kd_loss_rkd_angle(), &r), KD_E_INVALID);

    kd_loss_rank_config q;
    kd_loss_rank_config_default(&q);
    q.temperature = -2;
    ck_assert_int_eq(try_create(kd_loss_listwise_kl(), &q), KD_E_INVALID);
    q.temperature = 1;
    q.reduction = (kd_loss_reduction)-1;
    ck_assert_int_eq(try_create(kd_loss_margin_mse(), &q), KD_E_INVALID);
}
END_TEST

/* ---- hostile compute inputs ---------------------------------------------- */

typedef struct {
    kd_context *ctx;
    kd_loss *loss;
    float s[3 * 4], t[3 * 4], g[3 * 4];
    int32_t y[3];
    float w[3];
    kd_loss_batch b;
    kd_loss_grad gr;
} fixture;

static void setup(fixture *f, const kd_loss_vtable *vt, const void *cfg)
{
    memset(f, 0, sizeof *f);
    f->ctx = kd_test_ctx();
    ck_assert_int_eq(kd_loss_create(f->ctx, vt, cfg, &f->loss), KD_OK);
    kd_test_fill(f->s, 12, -2, 2, 1);
    kd_test_fill(f->t, 12, -2, 2, 2);
    f->y[0] = 1;
    f->y[1] = 3;
    f->y[2] = 0;
    f->w[0] = f->w[1] = f->w[2] = 1;
    kd_loss_batch_default(&f->b);
    f->b.rows = 3;
    f->b.classes = 4;
    f->b.student_logits = f->s;
    f->b.teacher_logits = f->t;
    f->b.labels = f->y;
    kd_loss_grad_default(&f->gr);
    f->gr.student_logits = f->g;
}

static void teardown(fixture *f)
{
    kd_loss_destroy(f->loss);
    kd_context_destroy(f->ctx);
}

static kd_status run(fixture *f, const char *reason)
{
    double v = 12345;
    memset(f->g, 0, sizeof f->g);
    kd_status st = kd_loss_compute(f->loss, &f->b, &v, &f->gr);
    if (st != KD_OK) {
        ck_assert(v == 12345); /* untouched */
        for (int i = 0; i < 12; i++) ck_assert_msg(f->g[i] == 0.0f, "gradient written on failure");
        if (reason)
            ck_assert_msg(strstr(kd_context_last_error(f->ctx), reason) != NULL, "reason '%s' lacks '%s'",
                          kd_context_last_error(f->ctx), reason);
    }
    return st;
}

START_TEST(hostile_logits)
{
    kd_loss_hinton_config hc;
    kd_loss_hinton_config_default(&hc);
    hc.alpha = 0.5f;
    fixture f;
    setup(&f, kd_loss_hinton(), &hc);
    double v;
    ck_assert_int_eq(run(&f, NULL), KD_OK);
    ck_assert_int_eq(kd_loss_compute(NULL, &f.b, &v, NULL), KD_E_INVALID);
    ck_assert_int_eq(kd_loss_compute(f.loss, NULL, &v, NULL), KD_E_INVALID);
    ck_assert_int_eq(kd_loss_compute(f.loss, &f.b, NULL, NULL), KD_E_INVALID);
    f.b.struct_size = 8;
    ck_assert_int_eq(run(&f, "struct_size"), KD_E_VERSION);
    f.b.struct_size = sizeof f.b;
    f.gr.struct_size = 2;
    ck_assert_int_eq(run(&f, "kd_loss_grad"), KD_E_VERSION);
    f.gr.struct_size = sizeof f.gr;
    f.gr.scale = NAN;
    ck_assert_int_eq(run(&f, "scale"), KD_E_NUMERIC);
    f.gr.scale = 1;
    /* missing inputs */
    f.b.student_logits = NULL;
    ck_assert_int_eq(run(&f, "student_logits is NULL"), KD_E_INVALID);
    f.b.student_logits = f.s;
    f.b.teacher_logits = NULL;
    ck_assert_int_eq(run(&f, "teacher_logits is NULL"), KD_E_INVALID);
    kd_sparse_logits sp;
    kd_sparse_logits_default(&sp);
    f.b.teacher_sparse = &sp;
    /* hinton accepts sparse teachers (kd_loss_vocab.c); an empty one is invalid */
    ck_assert_int_eq(run(&f, "k > 0"), KD_E_INVALID);
    f.b.teacher_sparse = NULL;
    f.b.teacher_logits = f.t;
    f.b.labels = NULL;
    ck_assert_int_eq(run(&f, "needs labels"), KD_E_INVALID);
    f.b.labels = f.y;
    /* shapes and sizes */
    f.b.classes = 0;
    ck_assert_int_eq(run(&f, "classes is 0"), KD_E_SHAPE);
    f.b.classes = 4;
    f.b.teacher_classes = 5;
    ck_assert_int_eq(run(&f, "map the vocabularies"), KD_E_SHAPE);
    f.b.teacher_classes = 4;
    ck_assert_int_eq(run(&f, NULL), KD_OK);
    f.b.teacher_classes = 0;
    f.b.rows = SIZE_MAX / 2;
    ck_assert_int_eq(run(&f, "beyond size_t"), KD_E_OVERFLOW);
    f.b.rows = 3;
    f.b.classes = SIZE_MAX / 3 + 1;
    ck_assert_int_eq(run(&f, "beyond size_t"), KD_E_OVERFLOW);
    f.b.classes = 4;
    f.b.rows = 0;
    ck_assert_int_eq(kd_loss_compute(f.loss, &f.b, &v, &f.gr), KD_OK);
    ck_assert(v == 0.0);
    f.b.rows = 3;
    /* labels */
    f.y[1] = 4;
    ck_assert_int_eq(run(&f, "labels[1] = 4 outside [0, 4)"), KD_E_INVALID);
    f.y[1] = -1;
    ck_assert_int_eq(run(&f, "labels[1] = -1"), KD_E_INVALID);
    f.y[1] = INT32_MAX;
    ck_assert_int_eq(run(&f, NULL), KD_E_INVALID);
    f.y[1] = -100;
    ck_assert_int_eq(run(&f, NULL), KD_OK);
    f.b.ignore_index = -1;
    ck_assert_int_eq(run(&f, NULL), KD_E_INVALID);
    f.b.ignore_index = -100;
    f.y[1] = 3;
    /* non-finite values */
    f.s[5] = NAN;
    ck_assert_int_eq(run(&f, "student_logits[1][1] is NaN"), KD_E_NUMERIC);
    f.s[5] = INFINITY;
    ck_assert_int_eq(run(&f, "+inf"), KD_E_NUMERIC);
    f.s[5] = 0;
    f.t[11] = NAN;
    ck_assert_int_eq(run(&f, "teacher_logits[2][3] is NaN"), KD_E_NUMERIC);
    f.t[11] = 0;
    for (int j = 4; j < 8; j++) f.t[j] = -INFINITY;
    ck_assert_int_eq(run(&f, "every entry of teacher_logits row 1"), KD_E_INVALID);
    kd_test_fill(f.t, 12, -2, 2, 2);
    /* divergence infinite: teacher mass on a class the student masks */
    f.s[2] = -INFINITY;
    ck_assert_int_eq(run(&f, "row 0 class 2"), KD_E_NUMERIC);
    f.t[2] = -INFINITY;
    ck_assert_int_eq(run(&f, NULL), KD_OK);
    /* the label on a masked class */
    f.y[0] = 2;
    ck_assert_int_eq(run(&f, "the label's class is masked"), KD_E_NUMERIC);
    f.y[0] = 1;
    /* weights */
    f.b.weights = f.w;
    f.w[2] = -1;
    ck_assert_int_eq(run(&f, "weights[2] < 0"), KD_E_INVALID);
    f.w[2] = NAN;
    ck_assert_int_eq(run(&f, "weights[2]"), KD_E_NUMERIC);
    f.w[0] = f.w[1] = f.w[2] = 0;
    ck_assert_int_eq(kd_loss_compute(f.loss, &f.b, &v, &f.gr), KD_OK);
    ck_assert(v == 0.0);
    teardown(&f);
}
END_TEST

/* Reductions: SUM = MEAN x sum of participating weights; ignored rows drop out. */
START_TEST(reductions)
{
    kd_loss_divergence_config d;
    kd_loss_divergence_config_default(&d);
    fixture a, s;
    setup(&a, kd_loss_jsd(), &d);
    d.reduction = KD_REDUCE_SUM;
    setup(&s, kd_loss_jsd(), &d);
    a.w[0] = s.w[0] = 0.5f;
    a.w[1] = s.w[1] = 3.0f;
    a.w[2] = s.w[2] = 7.0f;
    a.b.weights = a.w;
    s.b.weights = s.w;
    a.y[2] = s.y[2] = -100;
    double vm, vs;
    ck_assert_int_eq(kd_loss_compute(a.loss, &a.b, &vm, NULL), KD_OK);
    ck_assert_int_eq(kd_loss_compute(s.loss, &s.b, &vs, NULL), KD_OK);
    ck_assert(fabs(vs - 3.5 * vm) < 1e-12 * fabs(vs));
    ck_assert(vm > 0);
    teardown(&a);
    teardown(&s);
}
END_TEST

START_TEST(hostile_features_and_scores)
{
    kd_context *ctx = kd_test_ctx();
    kd_loss *mse = NULL, *rkd = NULL, *mm = NULL;
    kd_loss_feature_config fc;
    kd_loss_feature_config_default(&fc);
    fc.student_dim = 3;
    fc.teacher_dim = 2;
    ck_assert_int_eq(kd_loss_create(ctx, kd_loss_feature_mse(), &fc, &mse), KD_OK);
    ck_assert_int_eq(kd_loss_create(ctx, kd_loss_rkd_distance(), NULL, &rkd), KD_OK);
    ck_assert_int_eq(kd_loss_create(ctx, kd_loss_margin_mse(), NULL, &mm), KD_OK);
    float xs[4 * 3], xt[4 * 3], w[4] = {1, 1, 1, 1}; /* xt sized for the Dt = 3 probe */
    kd_test_fill(xs, 12, -1, 1, 3);
    kd_test_fill(xt, 12, -1, 1, 4);
    kd_loss_batch b;
    kd_loss_batch_default(&b);
    b.rows = 4;
    b.student_features = xs;
    b.teacher_features = xt;
    b.student_dim = 3;
    b.teacher_dim = 2;
    double v;
    ck_assert_int_eq(kd_loss_compute(mse, &b, &v, NULL), KD_OK);
    b.teacher_dim = 3;
    ck_assert_int_eq(kd_loss_compute(mse, &b, &v, NULL), KD_E_SHAPE);
    b.teacher_dim = 0;
    ck_assert_int_eq(kd_loss_compute(mse, &b, &v, NULL), KD_E_SHAPE);
    b.teacher_dim = 2;
    xs[4] = -INFINITY; /* no masks in features */
    ck_assert_int_eq(kd_loss_compute(mse, &b, &v, NULL), KD_E_NUMERIC);
    xs[4] = 0.25f;
    b.student_features = NULL;
    ck_assert_int_eq(kd_loss_compute(mse, &b, &v, NULL), KD_E_INVALID);
    b.student_features = xs;
    b.rows = SIZE_MAX / 3;
    ck_assert_int_eq(kd_loss_compute(rkd, &b, &v, NULL), KD_E_OVERFLOW);
    b.rows = 4;
    b.weights = w;
    ck_assert_int_eq(kd_loss_compute(rkd, &b, &v, NULL), KD_E_UNSUPPORTED);
    b.weights = NULL;
    float same[4 * 3];
    for (int i = 0; i < 12; i++) same[i] = 1.0f;
    b.student_features = same;
    ck_assert_int_eq(kd_loss_compute(rkd, &b, &v, NULL), KD_E_NUMERIC);
    ck_assert(strstr(kd_context_last_error(ctx), "mean pairwise distance") != NULL);
    b.student_features = xs;
    b.rows = 1;
    ck_assert_int_eq(kd_loss_compute(rkd, &b, &v, NULL), KD_OK);
    ck_assert(v == 0.0);
    /* ranking */
    float ss[2 * 3] = {1, 2, 3, 4, 5, 6}, ts[2 * 3] = {3, 1, -INFINITY, 2, 2, 2};
    int32_t pos[2] = {0, 2};
    kd_loss_batch r;
    kd_loss_batch_default(&r);
    r.rows = 2;
    r.candidates = 3;
    r.student_scores = ss;
    r.teacher_scores = ts;
    r.labels = pos;
    ck_assert_int_eq(kd_loss_compute(mm, &r, &v, NULL), KD_OK);
    pos[0] = 2; /* positive unscored by the teacher */
    ck_assert_int_eq(kd_loss_compute(mm, &r, &v, NULL), KD_E_NUMERIC);
    ck_assert(strstr(kd_context_last_error(ctx), "positive") != NULL);
    pos[0] = 3;
    ck_assert_int_eq(kd_loss_compute(mm, &r, &v, NULL), KD_E_INVALID);
    pos[0] = 0;
    r.candidates = 0;
    ck_assert_int_eq(kd_loss_compute(mm, &r, &v, NULL), KD_E_SHAPE);
    r.candidates = 3;
    r.teacher_scores = NULL;
    ck_assert_int_eq(kd_loss_compute(mm, &r, &v, NULL), KD_E_INVALID);
    kd_loss_destroy(mse);
    kd_loss_destroy(rkd);
    kd_loss_destroy(mm);
    kd_context_destroy(ctx);
}
END_TEST

/* ---- allocation failures along every create path --------------------------- */

typedef struct {
    const kd_loss_vtable *vt;
    const void *cfg;
    int compute_rkd;
} alloc_case;

static kd_status alloc_body(kd_context *ctx, void *user)
{
    const alloc_case *c = (const alloc_case *)user;
    kd_loss *loss = NULL;
    kd_status st = kd_loss_create(ctx, c->vt, c->cfg, &loss);
    if (st == KD_OK && c->compute_rkd) {
        float xs[5 * 3], xt[5 * 2];
        kd_test_fill(xs, 15, -1, 1, 1);
        kd_test_fill(xt, 10, -1, 1, 2);
        kd_loss_batch b;
        kd_loss_batch_default(&b);
        b.rows = 5;
        b.student_features = xs;
        b.teacher_features = xt;
        b.student_dim = 3;
        b.teacher_dim = 2;
        double v;
        st = kd_loss_compute(loss, &b, &v, NULL);
    }
    kd_loss_destroy(loss);
    return st;
}

START_TEST(alloc_failures)
{
    kd_loss_feature_config fc;
    kd_loss_feature_config_default(&fc);
    fc.student_dim = 8;
    fc.teacher_dim = 4;
    alloc_case cases[] = {
        {kd_loss_cross_entropy(), NULL, 0}, {kd_loss_hinton(), NULL, 0},
        {kd_loss_reverse_kl(), NULL, 0},    {kd_loss_jsd(), NULL, 0},
        {kd_loss_skew_kl(), NULL, 0},       {kd_loss_skew_reverse_kl(), NULL, 0},
        {kd_loss_taid(), NULL, 0},          {kd_loss_dkd(), NULL, 0},
        {kd_loss_feature_mse(), &fc, 0},    {kd_loss_feature_cosine(), &fc, 0},
        {kd_loss_rkd_distance(), NULL, 1},  {kd_loss_rkd_angle(), NULL, 1},
        {kd_loss_margin_mse(), NULL, 0},    {kd_loss_listwise_kl(), NULL, 0},
        {&user_vtable, NULL, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        ck_assert_int_ge(kd_test_alloc_failures(alloc_body, &cases[i]), 1);
}
END_TEST

Suite *kd_test_suite(void)
{
    Suite *s = suite_create("loss_core");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, user_loss_through_vtable);
    tcase_add_test(tc, vtable_versions);
    tcase_add_test(tc, bad_configs);
    tcase_add_test(tc, hostile_logits);
    tcase_add_test(tc, reductions);
    tcase_add_test(tc, hostile_features_and_scores);
    tcase_add_test(tc, alloc_failures);
    suite_add_tcase(s, tc);
    return s;
}
