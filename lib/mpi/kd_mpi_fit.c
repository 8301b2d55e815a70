/* kd_mpi_fit.c - data-parallel training: shards of each global batch, bucketed gradient allreduce. */
#include <limits.h>
#include <math.h>
#include <string.h>
#include <time.h>

#include "kd_mpi_internal.h"

kd_status kd__mpi_check_model(kd_mpi_comm *c, kd_model *m, const char *fn);

#define DEFAULT_BUCKET_BYTES ((size_t)4 << 20)

void kd_mpi_fit_config_default_sized(kd_mpi_fit_config *cfg, size_t size)
{
    if (!cfg) return;
    kd_mpi_fit_config d;
    memset(&d, 0, sizeof d);
    d.struct_size = (uint32_t)sizeof d;
    d.bucket_bytes = DEFAULT_BUCKET_BYTES;
    d.broadcast_initial = 1;
    d.check_data = 1;
    size_t n = size < sizeof d ? size : sizeof d;
    memcpy(cfg, &d, n);
    if (n >= sizeof(uint32_t)) cfg->struct_size = (uint32_t)n;
}

/* Sums grads (weighted rows / total) over the ranks, in buckets. */
static kd_status reduce_grads(kd_mpi_comm *c, kd_model *m, size_t rows, double total, size_t bucket_bytes)
{
    float *g = NULL;
    size_t n = 0;
    kd_status st = kd_model_blocks(m, NULL, &g, &n);
    if (st != KD_OK) return kd__mpi_fail_ctx(c, st, "gradient allreduce: kd_model_blocks");
    if (n == 0) return KD_OK;
    if (rows == 0 || total <= 0.0) {
        memset(g, 0, n * sizeof *g);
    } else if ((double)rows != total) {
        const float w = (float)((double)rows / total);
        for (size_t i = 0; i < n; i++) g[i] *= w;
    }
    size_t bf = (bucket_bytes ? bucket_bytes : DEFAULT_BUCKET_BYTES) / sizeof(float);
    if (bf == 0) bf = 1;
    if (bf > (size_t)INT_MAX) bf = (size_t)INT_MAX;
    /* One blocking allreduce per bucket: kd_model_backward is one call, so there
     * is no per-layer point to overlap with; non-blocking MPI_Iallreduce buckets
     * measured no better here (docs/DISTRIBUTED.md). */
    int rc = MPI_SUCCESS;
    for (size_t off = 0; off < n && rc == MPI_SUCCESS; off += bf) {
        size_t cnt = n - off < bf ? n - off : bf;
        c->stats.allreduce_calls++;
        c->stats.allreduce_bytes += cnt * sizeof(float);
        rc = MPI_Allreduce(MPI_IN_PLACE, g + off, (int)cnt, MPI_FLOAT, MPI_SUM, c->comm);
    }
    return kd__mpi_check(c, rc, "gradient MPI_Allreduce");
}

kd_status kd_mpi_allreduce_grads(kd_mpi_comm *comm, kd_model *m, size_t rows, size_t bucket_bytes)
{
    if (!comm) return KD_E_INVALID;
    comm->reason[0] = '\0';
    kd_status st = kd__mpi_check_model(comm, m, "kd_mpi_allreduce_grads");
    if (st != KD_OK) return st;
    double mine = (double)rows, total = 0.0;
    comm->stats.control_calls++;
    int rc = MPI_Allreduce(&mine, &total, 1, MPI_DOUBLE, MPI_SUM, comm->comm);
    if (rc != MPI_SUCCESS) return kd__mpi_check(comm, rc, "kd_mpi_allreduce_grads: MPI_Allreduce");
    st = reduce_grads(comm, m, rows, total, bucket_bytes);
    return kd__mpi_agree(comm, st);
}

/* ---- kd_mpi_fit ---------------------------------------------------------- */

typedef struct {
    kd_mpi_comm *c;
    size_t bucket_bytes;
    size_t rows;          /* real rows of this rank's shard in the current step */
    int header_done;      /* this step's header round happened (inside the hook) */
    int remote_fail;      /* a header round reported a failure somewhere */
    double step_loss;     /* global rows-weighted mean loss of the step */
} dp_state;

/*
 * A header round: SUM-allreduce of {failures, rows, rows * loss}. Every rank
 * takes part in exactly the same sequence of rounds: one per step (inside the
 * gradient hook, or by hand on a rank whose step failed before it), one at the
 * end; a rank stops after the first round that reports a failure, or after
 * contributing a failure. So a rank that fails never leaves the others
 * blocked in a collective.
 */
static kd_status header_round(dp_state *d, int fail, size_t rows, double loss, double out[3])
{
    double h[3] = {fail ? 1.0 : 0.0, (double)rows, rows ? loss * (double)rows : 0.0};
    d->c->stats.control_calls++;
    int rc = MPI_Allreduce(h, out, 3, MPI_DOUBLE, MPI_SUM, d->c->comm);
    return kd__mpi_check(d->c, rc, "header MPI_Allreduce");
}

static int dp_hook(void *user, kd_model *m, size_t batch, double loss)
{
    dp_state *d = (dp_state *)user;
    (void)batch;
    double h[3], t0 = MPI_Wtime();
    if (header_round(d, 0, d->rows, loss, h) != KD_OK) return 1;
    d->header_done = 1;
    if (h[0] > 0.0) {
        d->remote_fail = 1;
        return 1;
    }
    d->step_loss = h[1] > 0.0 ? h[2] / h[1] : 0.0;
    double t1 = MPI_Wtime();
    kd_status st = reduce_grads(d->c, m, d->rows, h[1], d->bucket_bytes);
    double t2 = MPI_Wtime();
    d->c->stats.comm_seconds += t2 - t0;
    d->c->stats.allreduce_seconds += t2 - t1;
    return st == KD_OK ? 0 : 1;
}

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static size_t model_in(kd_model *m)
{
    size_t shape[KD_TENSOR_MAX_RANK], in = 1;
    uint32_t rank = 0;
    int ids = 0;
    if (!m || kd_model_input_shape(m, shape, &rank, &ids) != KD_OK || rank == 0 || ids) return 0;
    for (uint32_t i = 0; i < rank; i++) in *= shape[i];
    return in;
}

static size_t model_out(kd_model *m)
{
    size_t shape[KD_TENSOR_MAX_RANK], numel = 0;
    uint32_t rank = 0;
    if (!m || kd_model_output_shape(m, shape, &rank, &numel) != KD_OK) return 0;
    return numel;
}

/* Local argument checks; the caller turns the result into an agreement. */
static kd_status check_args(kd_mpi_comm *c, kd_student *s, kd_teacher *teacher, const kd_dataset *ds,
                            const kd_fit_config *fit_in, const kd_mpi_fit_config *mcfg_in,
                            kd_fit_config *fit, kd_mpi_fit_config *mcfg)
{
    kd_fit_config_default(fit);
    kd_mpi_fit_config_default(mcfg);
    if (!s) return kd__mpi_fail(c, KD_E_INVALID, "kd_mpi_fit: NULL student");
    if (fit_in) {
        if (fit_in->struct_size < sizeof(uint32_t) || fit_in->struct_size > sizeof *fit)
            return kd__mpi_fail(c, KD_E_VERSION, "kd_mpi_fit: kd_fit_config struct_size %u not supported",
                                (unsigned)fit_in->struct_size);
        memcpy(fit, fit_in, fit_in->struct_size);
        fit->struct_size = (uint32_t)sizeof *fit;
    }
    if (mcfg_in) {
        if (mcfg_in->struct_size < sizeof(uint32_t) || mcfg_in->struct_size > sizeof *mcfg)
            return kd__mpi_fail(c, KD_E_VERSION, "kd_mpi_fit: kd_mpi_fit_config struct_size %u not supported",
                                (unsigned)mcfg_in->struct_size);
        memcpy(mcfg, mcfg_in, mcfg_in->struct_size);
    }
    kd_model *m = kd_student_model(s);
    size_t dim = model_in(m), classes = model_out(m);
    if (!ds) return kd__mpi_fail(c, KD_E_INVALID, "kd_mpi_fit: NULL dataset");
    if (ds->struct_size < sizeof *ds) return kd__mpi_fail(c, KD_E_VERSION, "kd_mpi_fit: set dataset struct_size");
    if (ds->n == 0 || !ds->x) return kd__mpi_fail(c, KD_E_INVALID, "kd_mpi_fit: empty dataset");
    if (dim == 0) return kd__mpi_fail(c, KD_E_SHAPE, "kd_mpi_fit: the student's model takes token ids");
    if (ds->dim != dim)
        return kd__mpi_fail(c, KD_E_SHAPE, "kd_mpi_fit: dataset rows have %zu floats, the model takes %zu",
                            ds->dim, dim);
    if (ds->n > SIZE_MAX / ds->dim / sizeof(float))
        return kd__mpi_fail(c, KD_E_OVERFLOW, "kd_mpi_fit: dataset too large");
    if (fit->batch == 0) return kd__mpi_fail(c, KD_E_INVALID, "kd_mpi_fit: batch must be > 0");
    if (teacher && (kd_teacher_input_dim(teacher) != dim || kd_teacher_classes(teacher) != classes))
        return kd__mpi_fail(c, KD_E_SHAPE, "kd_mpi_fit: teacher maps %zu -> %zu, student %zu -> %zu",
                            kd_teacher_input_dim(teacher), kd_teacher_classes(teacher), dim, classes);
    return KD_OK;
}

/* Teacher logits for the whole dataset: rank r computes rows [n r/N, n (r+1)/N)
 * in chunks of bsz, then every rank all-gathers the rest. */
static kd_status cache_teacher(kd_mpi_comm *c, kd_teacher *t, const kd_dataset *ds, size_t bsz,
                               size_t classes, float *cache)
{
    const size_t n = ds->n, N = (size_t)c->size;
    kd_status st = KD_OK;
    if (n * classes > (size_t)INT_MAX)
        return kd__mpi_agree(c, kd__mpi_fail(c, KD_E_OVERFLOW,
                                             "kd_mpi_fit: teacher cache of %zu x %zu floats exceeds MPI's int counts",
                                             n, classes));
    size_t lo = n * (size_t)c->rank / N, hi = n * ((size_t)c->rank + 1) / N;
    for (size_t i = lo; i < hi && st == KD_OK; i += bsz) {
        size_t b = hi - i < bsz ? hi - i : bsz;
        st = kd_teacher_logits(t, ds->x + i * ds->dim, b, cache + i * classes);
        if (st != KD_OK) kd__mpi_fail_ctx(c, st, "kd_mpi_fit: teacher");
    }
    if ((st = kd__mpi_agree(c, st)) != KD_OK) return st;
    int *counts = (int *)kd__mpi_alloc(c, 2 * N, sizeof *counts);
    if ((st = kd__mpi_agree(c, counts ? KD_OK : KD_E_NOMEM)) != KD_OK) {
        kd__mpi_free(c, counts);
        return st;
    }
    for (size_t r = 0; r < N; r++) {
        size_t a = n * r / N, b = n * (r + 1) / N;
        counts[r] = (int)((b - a) * classes);
        counts[N + r] = (int)(a * classes);
    }
    c->stats.gather_bytes += (hi - lo) * classes * sizeof(float);
    int rc = MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, cache, counts, counts + N, MPI_FLOAT, c->comm);
    kd__mpi_free(c, counts);
    return kd__mpi_check(c, rc, "kd_mpi_fit: teacher cache MPI_Allgatherv");
}

kd_status kd_mpi_fit(kd_mpi_comm *comm, kd_student *s, kd_teacher *teacher, const kd_dataset *ds,
                     const kd_fit_config *fit_in, const kd_mpi_fit_config *mcfg_in)
{
    if (!comm) return KD_E_INVALID;
    kd_mpi_comm *c = comm;
    c->reason[0] = '\0';
    kd_fit_config cfg;
    kd_mpi_fit_config mcfg;
    kd_status st = check_args(c, s, teacher, ds, fit_in, mcfg_in, &cfg, &mcfg);
    if ((st = kd__mpi_agree(c, st)) != KD_OK) return st;

    kd_model *m = kd_student_model(s);
    const size_t dim = ds->dim, classes = model_out(m), n = ds->n;
    /* Everything that decides the sequence of collectives must agree. */
    uint64_t sig[13] = {n, dim, classes, ds->labels != NULL, cfg.epochs, cfg.batch, cfg.seed,
                        cfg.drop_last != 0, cfg.cache_teacher != 0, cfg.augment != NULL, teacher != NULL,
                        mcfg.broadcast_initial != 0, 0};
    if (mcfg.check_data) {
        uint32_t crc = kd_crc32c(0, ds->x, n * dim * sizeof(float));
        if (ds->labels) crc = kd_crc32c(crc, ds->labels, n * sizeof(int32_t));
        sig[12] = crc;
    }
    static const char *const names[13] = {"dataset rows", "dataset row width", "classes", "labels present",
                                          "epochs", "batch", "seed", "drop_last", "cache_teacher",
                                          "augmentation present", "teacher present", "broadcast_initial",
                                          "the CRC-32C of the dataset"};
    if ((st = kd__mpi_same(c, sig, names, 13, KD_E_INVALID, "kd_mpi_fit")) != KD_OK) return st;
    if ((st = kd__mpi_check_model(c, m, "kd_mpi_fit")) != KD_OK) return st;
    if (mcfg.broadcast_initial && (st = kd_mpi_broadcast_model(c, m, 0)) != KD_OK) return st;

    const size_t bsz = cfg.batch < n ? cfg.batch : n, N = (size_t)c->size, R = (size_t)c->rank;
    const int cache = teacher && cfg.cache_teacher && !cfg.augment && !kd_teacher_stateful(teacher);
    size_t *order = (size_t *)kd__mpi_alloc(c, n, sizeof *order);
    float *xb = (float *)kd__mpi_alloc(c, bsz * dim, sizeof *xb);
    float *xa = cfg.augment ? (float *)kd__mpi_alloc(c, bsz * dim, sizeof *xa) : NULL;
    int32_t *yb = (int32_t *)kd__mpi_alloc(c, bsz, sizeof *yb);
    float *tb = teacher ? (float *)kd__mpi_alloc(c, bsz * classes, sizeof *tb) : NULL;
    float *tcache = cache ? (float *)kd__mpi_alloc(c, n * classes, sizeof *tcache) : NULL;
    int ok = order && xb && yb && (!cfg.augment || xa) && (!teacher || tb) && (!cache || tcache);
    if ((st = kd__mpi_agree(c, ok ? KD_OK : KD_E_NOMEM)) != KD_OK) goto done;
    if (cache && (st = cache_teacher(c, teacher, ds, bsz, classes, tcache)) != KD_OK) goto done;

    dp_state d;
    memset(&d, 0, sizeof d);
    d.c = c;
    d.bucket_bytes = mcfg.bucket_bytes;
    if ((st = kd_student_set_grad_hook(s, dp_hook, &d)) != KD_OK) goto done;

    for (size_t i = 0; i < n; i++) order[i] = i;
    const size_t steps = cfg.drop_last ? n / bsz : (n + bsz - 1) / bsz;
    const double t0 = now_seconds();
    kd_status local = KD_OK;  /* this rank's own failure */
    int rounds_over = 0;      /* no more header rounds for this rank */
    int pending = 0;          /* failed after its step's header round: owes one failing round */
    for (size_t epoch = 0; epoch < cfg.epochs && local == KD_OK && !rounds_over; epoch++) {
        kd_fit_shuffle(order, n, cfg.seed, epoch); /* kd_fit's row order */
        kd_rng rng;
        kd_rng_seed(&rng, cfg.seed, 0x6175670000ull + epoch);
        double running = 0.0;
        for (size_t step = 0; step < steps; step++) {
            size_t first = step * bsz, b = n - first < bsz ? n - first : bsz;
            for (size_t r = 0; r < b; r++) {
                size_t row = order[first + r];
                memcpy(xb + r * dim, ds->x + row * dim, dim * sizeof *xb);
                yb[r] = ds->labels ? ds->labels[row] : KD_LOSS_IGNORE_INDEX;
                if (cache) memcpy(tb + r * classes, tcache + row * classes, classes * sizeof *tb);
            }
            const float *xin = xb;
            /* Every rank augments the whole global batch from the same
             * stream, so shards see exactly kd_fit's augmented rows. */
            if (cfg.augment) {
                if (cfg.augment(cfg.augment_user, xb, xa, b, dim, &rng) != 0)
                    local = kd__mpi_fail(c, KD_E_CALLBACK, "kd_mpi_fit: augmentation callback failed");
                xin = xa;
            }
            size_t lo = b * R / N, hi = b * (R + 1) / N, cnt = hi - lo;
            d.rows = cnt;
            if (cnt == 0) { /* zero-weight step on one real row: keeps the optimizer in step */
                lo = 0;
                cnt = 1;
            }
            const float *tsh = NULL;
            if (teacher && local == KD_OK) {
                if (cache) {
                    tsh = tb + lo * classes;
                } else {
                    kd_status ts = kd_teacher_logits(teacher, xin + lo * dim, cnt, tb);
                    if (ts != KD_OK) local = kd__mpi_fail_ctx(c, ts, "kd_mpi_fit: teacher");
                    tsh = tb;
                }
            }
            d.header_done = 0;
            if (local == KD_OK) {
                kd_step_report rep;
                memset(&rep, 0, sizeof rep);
                rep.struct_size = (uint32_t)sizeof rep;
                kd_status ss = kd_student_step(s, xin + lo * dim, cnt, ds->labels ? yb + lo : NULL, tsh, &rep);
                if (ss != KD_OK) {
                    if (d.remote_fail) {
                        rounds_over = 1; /* another rank failed; its reason comes at the end */
                        break;
                    }
                    local = kd__mpi_fail_ctx(c, ss, "kd_mpi_fit: kd_student_step");
                }
            }
            if (local != KD_OK) {
                if (!d.header_done) { /* the others wait in this step's round */
                    double h[3];
                    header_round(&d, 1, 0, 0.0, h);
                    rounds_over = 1;
                } else {
                    pending = 1;
                }
                break;
            }
            c->stats.steps++;
            running += (d.step_loss - running) / (double)(step + 1);
            if (cfg.progress) {
                kd_progress p = {(uint32_t)sizeof p, epoch, cfg.epochs, step + 1, steps, running,
                                 now_seconds() - t0, step + 1 == steps};
                if (cfg.progress(cfg.progress_user, &p) != 0) {
                    local = kd__mpi_fail(c, KD_E_CALLBACK, "kd_mpi_fit: stopped by the progress callback");
                    pending = 1;
                    break;
                }
            }
        }
    }
    kd_student_set_grad_hook(s, NULL, NULL);
    if (!rounds_over) {
        /* The closing round: a rank that failed after its last header round
         * reports here, where the others are either in their next step's
         * round or in this one. */
        double h[3];
        kd_status hs = header_round(&d, pending || local != KD_OK, 0, 0.0, h);
        if (hs != KD_OK && local == KD_OK) local = hs;
    }
    st = kd__mpi_agree(c, local);
done:
    kd__mpi_free(c, tcache);
    kd__mpi_free(c, tb);
    kd__mpi_free(c, yb);
    kd__mpi_free(c, xa);
    kd__mpi_free(c, xb);
    kd__mpi_free(c, order);
    return st;
}
