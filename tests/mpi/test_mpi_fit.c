/* test_mpi_fit.c - data-parallel training over MPI: N ranks give the weights of one process
 * on the combined batch; ranks that disagree or fail make every rank return the same status. */
#include <math.h>
#include <stdlib.h>

#include "mpi_test.h"

#define NROWS 50
#define DIM 6
#define CLASSES 5
static const char *const TEACHER_SPEC = "input 6; linear 16; relu; linear 5";
static const char *const STUDENT_SPEC = "input 6; linear 12; tanh; linear 5";

static float X[NROWS * DIM];
static int32_t Y[NROWS];

static void make_data(void)
{
    kd_rng rng;
    kd_rng_seed(&rng, 42, 1);
    for (size_t i = 0; i < NROWS * DIM; i++) X[i] = kd_rng_normal(&rng);
    for (size_t i = 0; i < NROWS; i++) Y[i] = (int32_t)kd_rng_below(&rng, CLASSES);
}

static kd_context *new_ctx(uint64_t seed)
{
    kd_context_config cc;
    kd_context_config_default(&cc);
    cc.seed = seed;
    kd_context *ctx = NULL;
    kd_context_create(&cc, &ctx);
    return ctx;
}

/* A student (model, optimizer, CE + Hinton terms) built identically on every rank;
 * `seed` decides its initial weights. */
typedef struct {
    kd_context *ctx;
    kd_model *m;
    kd_optimizer *opt;
    kd_loss *ce, *kd;
    kd_student *s;
} student;

static int student_make(student *st, uint64_t seed, const char *spec, kd_optimizer_kind kind)
{
    memset(st, 0, sizeof *st);
    st->ctx = new_ctx(seed);
    if (!st->ctx || kd_model_create_from_spec(st->ctx, spec, &st->m) != KD_OK) return 0;
    kd_optimizer_config oc;
    kd_optimizer_config_default(&oc, kind);
    oc.lr = 0.05f;
    if (kind == KD_OPTIM_SGD) oc.momentum = 0.9f;
    kd_student_config sc;
    kd_student_config_default(&sc);
    sc.max_grad_norm = 0.5f; /* clipping acts on the averaged gradient */
    kd_loss_hinton_config hc;
    kd_loss_hinton_config_default(&hc);
    hc.temperature = 2.0f;
    return kd_optimizer_create(st->m, &oc, &st->opt) == KD_OK &&
           kd_student_create(st->ctx, st->m, st->opt, &sc, &st->s) == KD_OK &&
           kd_loss_create(st->ctx, kd_loss_cross_entropy(), NULL, &st->ce) == KD_OK &&
           kd_loss_create(st->ctx, kd_loss_hinton(), &hc, &st->kd) == KD_OK &&
           kd_student_add_loss(st->s, st->ce, 0.3f, 0) == KD_OK &&
           kd_student_add_loss(st->s, st->kd, 1.0f, 0) == KD_OK;
}

static void student_free(student *st)
{
    kd_student_destroy(st->s);
    kd_loss_destroy(st->ce);
    kd_loss_destroy(st->kd);
    kd_optimizer_destroy(st->opt);
    kd_model_destroy(st->m);
    kd_context_destroy(st->ctx);
}

static float max_rel_diff(kd_model *a, kd_model *b)
{
    float *pa, *pb;
    size_t na, nb;
    if (kd_model_blocks(a, &pa, NULL, &na) != KD_OK || kd_model_blocks(b, &pb, NULL, &nb) != KD_OK || na != nb)
        return INFINITY;
    float worst = 0.0f;
    for (size_t i = 0; i < na; i++) {
        float d = fabsf(pa[i] - pb[i]) / fmaxf(1.0f, fabsf(pb[i]));
        if (!(d <= worst)) worst = d;
    }
    return worst;
}

static kd_dataset dataset(void)
{
    kd_dataset ds = {(uint32_t)sizeof ds, X, NROWS, DIM, Y};
    return ds;
}

/* Tolerance on weights (relative, |w| < 1 absolute) after 3 epochs: float rounding of
 * the reduction order and of GEMMs over shards of the batch. Measured on 2 and 4 ranks:
 * at most 2.7e-7; a plain (unweighted) average of unequal shards is off by 0.27. */
#define TOL 2e-6f

static int use_augment;

/* Jitter drawn only from the stream kd_fit passes, so every rank draws the same. */
static int jitter(void *user, const float *x, float *out, size_t batch, size_t dim, kd_rng *rng)
{
    (void)user;
    for (size_t i = 0; i < batch * dim; i++) out[i] = x[i] + 0.1f * kd_rng_normal(rng);
    return 0;
}

static void check_equivalence(kd_mpi_comm *comm, kd_teacher *teacher, kd_optimizer_kind kind, int cache,
                              size_t batch, size_t bucket_bytes)
{
    kd_dataset ds = dataset();
    kd_fit_config fc;
    kd_fit_config_default(&fc);
    fc.epochs = 3;
    fc.batch = batch;
    fc.seed = 9;
    fc.cache_teacher = cache;
    if (use_augment) fc.augment = jitter;
    /* Reference: one process, the whole batch, rank 0's initial weights. */
    student ref, dp;
    MT_CHECK(student_make(&ref, 100, STUDENT_SPEC, kind), "reference student");
    MT_CHECK(kd_fit(ref.s, teacher, &ds, &fc) == KD_OK, "%s", kd_context_last_error(ref.ctx));
    /* Distributed: each rank starts from different weights; rank 0's are broadcast. */
    MT_CHECK(student_make(&dp, 100 + (uint64_t)mt_rank, STUDENT_SPEC, kind), "dp student");
    kd_mpi_fit_config mc;
    kd_mpi_fit_config_default(&mc);
    mc.bucket_bytes = bucket_bytes;
    kd_mpi_comm_stats_reset(comm);
    kd_status st = kd_mpi_fit(comm, dp.s, teacher, &ds, &fc, &mc);
    MT_CHECK(st == KD_OK, "kd_mpi_fit: %s", kd_mpi_comm_last_error(comm));
    float diff = max_rel_diff(dp.m, ref.m);
    if (mt_rank == 0)
        printf("equivalence: optimizer %d cache %d batch %zu bucket %zu: max relative weight difference %.3g\n",
               (int)kind, cache, batch, bucket_bytes, (double)diff);
    MT_CHECK(diff <= TOL, "kind %d cache %d batch %zu: max relative weight difference %g", (int)kind, cache,
             batch, (double)diff);
    /* The model moved: the comparison is not between two untouched copies. */
    student init;
    MT_CHECK(student_make(&init, 100, STUDENT_SPEC, kind), "init student");
    MT_CHECK(max_rel_diff(dp.m, init.m) > 1e-3f, "weights did not move");
    student_free(&init);
    /* Counted communication: every step allreduces the whole gradient block once, in
     * ceil(bytes / bucket) buckets. */
    kd_mpi_stats stats;
    stats.struct_size = sizeof stats;
    MT_CHECK(kd_mpi_comm_stats(comm, &stats) == KD_OK, "stats");
    size_t steps = 3 * ((NROWS + batch - 1) / batch), bytes = kd_model_param_count(dp.m) * sizeof(float);
    size_t per_bucket = (bucket_bytes ? bucket_bytes : ((size_t)4 << 20)) / sizeof(float) * sizeof(float);
    MT_CHECK(stats.steps == steps, "steps %llu, expected %zu", (unsigned long long)stats.steps, steps);
    MT_CHECK(stats.allreduce_bytes == steps * bytes, "allreduced %llu bytes, expected %zu",
             (unsigned long long)stats.allreduce_bytes, steps * bytes);
    MT_CHECK(stats.allreduce_calls == steps * ((bytes + per_bucket - 1) / per_bucket), "allreduce calls %llu",
             (unsigned long long)stats.allreduce_calls);
    student_free(&dp);
    student_free(&ref);
}

/* ---- failure injection --------------------------------------------------- */

typedef struct {
    kd_teacher *inner;
    int fail_rank;
    int calls, fail_at;
} flaky;

static int flaky_teacher(void *user, const float *x, size_t batch, size_t input_dim, float *logits, size_t classes)
{
    flaky *f = (flaky *)user;
    (void)input_dim;
    (void)classes;
    if (mt_rank == f->fail_rank && ++f->calls == f->fail_at) return 1;
    return kd_teacher_logits(f->inner, x, batch, logits) == KD_OK ? 0 : 1;
}

static int stop_progress(void *user, const kd_progress *p)
{
    (void)p;
    int *left = (int *)user;
    return mt_rank == 1 && --*left == 0;
}

static void check_failures(kd_mpi_comm *comm, kd_teacher *teacher)
{
    kd_dataset ds = dataset();
    kd_fit_config fc;
    kd_fit_config_default(&fc);
    fc.batch = 16;
    fc.epochs = 2;
    const int last = mt_size - 1;
    char want[64];

    /* A model of another shape on the last rank: KD_E_SHAPE everywhere, no hang. */
    student st;
    MT_CHECK(student_make(&st, 5, mt_rank == last ? "input 6; linear 13; tanh; linear 5" : STUDENT_SPEC,
                          KD_OPTIM_ADAMW), "student");
    kd_status s = kd_mpi_fit(comm, st.s, teacher, &ds, &fc, NULL);
    MT_CHECK(s == KD_E_SHAPE, "status %d: %s", (int)s, kd_mpi_comm_last_error(comm));
    snprintf(want, sizeof want, "on rank %d", last);
    MT_CHECK(strstr(kd_mpi_comm_last_error(comm), "disagree") && strstr(kd_mpi_comm_last_error(comm), want),
             "reason: %s", kd_mpi_comm_last_error(comm));
    student_free(&st);

    MT_CHECK(student_make(&st, 5, STUDENT_SPEC, KD_OPTIM_ADAMW), "student");
    /* Another batch size on the last rank. */
    kd_fit_config other = fc;
    if (mt_rank == last) other.batch = 17;
    s = kd_mpi_fit(comm, st.s, teacher, &ds, &other, NULL);
    MT_CHECK(s == KD_E_INVALID && strstr(kd_mpi_comm_last_error(comm), "batch is 17"), "status %d: %s", (int)s,
             kd_mpi_comm_last_error(comm));
    /* Different data on the last rank (CRC-32C check). */
    float save = X[7];
    if (mt_rank == last) X[7] += 1.0f;
    s = kd_mpi_fit(comm, st.s, teacher, &ds, &fc, NULL);
    MT_CHECK(s == KD_E_INVALID && strstr(kd_mpi_comm_last_error(comm), "CRC-32C of the dataset"), "status %d: %s",
             (int)s, kd_mpi_comm_last_error(comm));
    X[7] = save;
    /* A NaN in the last rank's copy of the data (check_data off): its step fails before
     * the gradient exchange; every rank returns KD_E_NUMERIC with its reason. */
    kd_mpi_fit_config mc;
    kd_mpi_fit_config_default(&mc);
    mc.check_data = 0;
    for (size_t r = 0; r < NROWS; r++)
        if (mt_rank == last) X[r * DIM] = NAN;
    s = kd_mpi_fit(comm, st.s, teacher, &ds, &fc, &mc);
    make_data();
    MT_CHECK(s == KD_E_NUMERIC, "status %d: %s", (int)s, kd_mpi_comm_last_error(comm));
    snprintf(want, sizeof want, "rank %d: ", last);
    MT_CHECK(strncmp(kd_mpi_comm_last_error(comm), want, strlen(want)) == 0, "reason: %s",
             kd_mpi_comm_last_error(comm));
    /* A teacher (not cached) failing on rank 1 at its 3rd call, mid-epoch. */
    flaky f = {teacher, 1, 0, 3};
    kd_teacher *ft = NULL;
    MT_CHECK(kd_teacher_from_callback(st.ctx, DIM, CLASSES, flaky_teacher, &f, &ft) == KD_OK, "callback teacher");
    kd_fit_config nc = fc;
    nc.cache_teacher = 0;
    s = kd_mpi_fit(comm, st.s, ft, &ds, &nc, NULL);
    MT_CHECK(s == KD_E_CALLBACK && strstr(kd_mpi_comm_last_error(comm), "rank 1: "), "status %d: %s", (int)s,
             kd_mpi_comm_last_error(comm));
    /* A failure after the gradient exchange (rank 1's progress callback stops it at its
     * 2nd step, or at the very last step): the others are released at the next round. */
    for (int at = 2; at <= 8; at += 6) {
        int left = at;
        kd_fit_config pc = fc;
        pc.progress = stop_progress;
        pc.progress_user = &left;
        s = kd_mpi_fit(comm, st.s, teacher, &ds, &pc, NULL);
        MT_CHECK(s == KD_E_CALLBACK && strstr(kd_mpi_comm_last_error(comm), "rank 1: kd_mpi_fit: stopped"),
                 "at %d: status %d: %s", at, (int)s, kd_mpi_comm_last_error(comm));
    }
    /* Hostile arguments, on one rank only or on all. */
    MT_CHECK(kd_mpi_fit(NULL, st.s, teacher, &ds, &fc, NULL) == KD_E_INVALID, "NULL comm");
    s = kd_mpi_fit(comm, mt_rank == 0 ? NULL : st.s, teacher, &ds, &fc, NULL);
    MT_CHECK(s == KD_E_INVALID && strstr(kd_mpi_comm_last_error(comm), "rank 0: kd_mpi_fit: NULL student"),
             "status %d: %s", (int)s, kd_mpi_comm_last_error(comm));
    kd_dataset bad = ds;
    bad.dim = 7;
    s = kd_mpi_fit(comm, st.s, teacher, mt_rank == last ? &bad : &ds, &fc, NULL);
    MT_CHECK(s == KD_E_SHAPE, "status %d: %s", (int)s, kd_mpi_comm_last_error(comm));
    kd_fit_config zero = fc;
    zero.batch = 0;
    MT_CHECK(kd_mpi_fit(comm, st.s, teacher, &ds, &zero, NULL) == KD_E_INVALID, "batch 0");
    kd_mpi_fit_config big;
    kd_mpi_fit_config_default(&big);
    big.struct_size = 4096;
    MT_CHECK(kd_mpi_fit(comm, st.s, teacher, &ds, &fc, &big) == KD_E_VERSION, "struct_size");
    /* After all that the communicator still works: a normal run succeeds. */
    s = kd_mpi_fit(comm, st.s, teacher, &ds, &fc, NULL);
    MT_CHECK(s == KD_OK, "%s", kd_mpi_comm_last_error(comm));
    kd_teacher_destroy(ft);
    student_free(&st);
}

/* kd_mpi_allreduce_grads on its own: rank r holds gradient r + 1 everywhere and rows
 * r + 1, so the result is sum (r+1)^2 / sum (r+1). */
static void check_allreduce(kd_mpi_comm *comm)
{
    student st;
    MT_CHECK(student_make(&st, 3, STUDENT_SPEC, KD_OPTIM_SGD), "student");
    float *g = NULL;
    size_t n = 0;
    MT_CHECK(kd_model_blocks(st.m, NULL, &g, &n) == KD_OK, "blocks");
    for (size_t i = 0; i < n; i++) g[i] = (float)(mt_rank + 1);
    MT_CHECK(kd_mpi_allreduce_grads(comm, st.m, (size_t)mt_rank + 1, 64) == KD_OK, "%s",
             kd_mpi_comm_last_error(comm));
    double num = 0, den = 0;
    for (int r = 0; r < mt_size; r++) {
        num += (double)(r + 1) * (r + 1);
        den += r + 1;
    }
    float worst = 0;
    for (size_t i = 0; i < n; i++) worst = fmaxf(worst, fabsf(g[i] - (float)(num / den)));
    MT_CHECK(worst <= 1e-5f, "weighted mean off by %g", (double)worst);
    /* Broadcast: after it every rank holds rank 0's weights. */
    student other;
    MT_CHECK(student_make(&other, 3 + (uint64_t)mt_rank, STUDENT_SPEC, KD_OPTIM_SGD), "student");
    MT_CHECK(kd_mpi_broadcast_model(comm, other.m, 0) == KD_OK, "%s", kd_mpi_comm_last_error(comm));
    MT_CHECK(max_rel_diff(other.m, st.m) == 0.0f, "broadcast weights differ");
    MT_CHECK(kd_mpi_broadcast_model(comm, other.m, mt_size) == KD_E_INVALID, "root out of range");
    student_free(&other);
    student_free(&st);
}

int main(int argc, char **argv)
{
    mt_init(&argc, &argv);
    make_data();
    kd_context *ctx = new_ctx(1);
    kd_mpi_comm *comm = NULL;
    MPI_Comm world = MPI_COMM_WORLD;
    MT_CHECK(kd_mpi_comm_create(NULL, &world, &comm) == KD_E_INVALID, "NULL ctx");
    MT_CHECK(kd_mpi_comm_create(ctx, NULL, &comm) == KD_E_INVALID, "NULL comm");
    MT_CHECK(kd_mpi_comm_create(ctx, &world, &comm) == KD_OK, "create");
    MT_CHECK(kd_mpi_comm_rank(comm) == mt_rank && kd_mpi_comm_size(comm) == mt_size, "rank/size");
    MT_CHECK(kd_mpi_comm_rank(NULL) == -1 && kd_mpi_comm_size(NULL) == 0, "NULL rank/size");
    MT_CHECK(strcmp(kd_mpi_comm_last_error(NULL), "no communicator") == 0, "NULL reason");

    kd_model *tm = NULL;
    kd_teacher *teacher = NULL;
    MT_CHECK(kd_model_create_from_spec(ctx, TEACHER_SPEC, &tm) == KD_OK, "teacher model");
    MT_CHECK(kd_teacher_from_model(ctx, tm, &teacher) == KD_OK, "teacher");

    /* batch 16 over 50 rows: the last batch has 2 rows, so on 4 ranks two shards are empty. */
    check_equivalence(comm, teacher, KD_OPTIM_ADAMW, 1, 16, 0);
    check_equivalence(comm, teacher, KD_OPTIM_SGD, 0, 16, 256);
    check_equivalence(comm, teacher, KD_OPTIM_ADAMW, 1, 3, 100); /* shards of 0 or 1 rows */
    check_equivalence(comm, teacher, KD_OPTIM_SGD, 1, 64, 0);    /* one batch of all rows */
    use_augment = 1; /* every rank augments the whole global batch, then takes its shard */
    check_equivalence(comm, teacher, KD_OPTIM_ADAMW, 1, 16, 0);
    use_augment = 0;
    check_allreduce(comm);
    if (mt_size >= 2) check_failures(comm, teacher); /* they need a second rank to disagree */

    kd_teacher_destroy(teacher);
    kd_model_destroy(tm);
    kd_mpi_comm_destroy(comm);
    kd_mpi_comm_destroy(NULL);
    kd_context_destroy(ctx);
    return mt_finish("test_mpi_fit");
}
