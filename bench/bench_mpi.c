/* bench_mpi.c - data-parallel training and the allreduce it rests on (issue 10).
 *
 *   mpirun --allow-run-as-root --oversubscribe --mca btl self,vader -np 2 build-mpi/bench/bench_mpi
 *
 * 1. MPI_Allreduce (float sum, in place) from 4 B to 16 MiB: median time per call, and a
 *    least-squares fit t = alpha + bytes / bw over the sizes (the alpha-beta terms of
 *    docs/DISTRIBUTED.md).
 * 2. kd_mpi_fit of an MLP student against the anchor kd_fit in one process (rank 0 alone,
 *    the other ranks sleeping), same data and batch, interleaved, medians of 5 runs:
 *    bench=dp_fit ... speedup=<anchor time / data-parallel time>.
 *    shard_compute_s is one rank's share of the compute alone (rows/N rows, batch/N, the
 *    same step count), and comm_ms_per_step the time kd_mpi_fit spent in its collectives.
 * KD_BENCH_BUCKET=<bytes> sets kd_mpi_fit_config.bucket_bytes (default 4 MiB).
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "bench_util.h"
#include "kd/kd_mpi.h"

static int rank, size;

/* Waits for the others without spinning on a core (Open MPI's barrier busy-polls). */
static void idle_barrier(void)
{
    MPI_Request r;
    MPI_Ibarrier(MPI_COMM_WORLD, &r);
    int done = 0;
    struct timespec ms = {0, 1000000};
    while (!done) {
        MPI_Test(&r, &done, MPI_STATUS_IGNORE);
        if (!done) nanosleep(&ms, NULL);
    }
}

static void bench_allreduce(void)
{
    enum { SIZES = 13, REPS = 7 };
    size_t max = (size_t)4 << 22;
    float *buf = calloc(max / sizeof(float), sizeof(float));
    double xs[SIZES], ys[SIZES];
    size_t ns = 0;
    for (size_t bytes = 4; bytes <= max && ns < SIZES; bytes *= 4, ns++) {
        int count = (int)(bytes / sizeof(float));
        int iters = bytes < 65536 ? 200 : bytes < (1 << 20) ? 20 : 4;
        double t[REPS];
        for (int r = 0; r < REPS; r++) {
            MPI_Barrier(MPI_COMM_WORLD);
            double t0 = MPI_Wtime();
            for (int i = 0; i < iters; i++) MPI_Allreduce(MPI_IN_PLACE, buf, count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
            double mine = (MPI_Wtime() - t0) / iters, slowest;
            MPI_Allreduce(&mine, &slowest, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
            t[r] = slowest;
        }
        xs[ns] = (double)bytes;
        ys[ns] = bench_median(t, REPS);
        if (rank == 0)
            printf("bench=allreduce ranks=%d bytes=%zu us=%.2f GBps=%.3f\n", size, bytes, ys[ns] * 1e6,
                   (double)bytes / ys[ns] / 1e9);
    }
    /* alpha: median of the three smallest sizes; 1/bw: slope between 1 MiB and 16 MiB. */
    double a = (ys[0] + ys[1] + ys[2]) / 3.0, small[3] = {ys[0], ys[1], ys[2]};
    a = bench_median(small, 3);
    double slope = (ys[ns - 1] - ys[ns - 3]) / (xs[ns - 1] - xs[ns - 3]);
    if (rank == 0)
        printf("bench=allreduce_model ranks=%d alpha_us=%.2f bw_GBps=%.3f\n", size, a * 1e6, 1.0 / slope / 1e9);
    free(buf);
}

typedef struct {
    kd_context *ctx;
    kd_model *m;
    kd_optimizer *opt;
    kd_loss *loss;
    kd_student *s;
} student;

static void student_make(student *st, const char *spec)
{
    kd_context_config cc;
    kd_context_config_default(&cc);
    cc.seed = 3;
    kd_context_create(&cc, &st->ctx);
    kd_model_create_from_spec(st->ctx, spec, &st->m);
    kd_optimizer_config oc;
    kd_optimizer_config_default(&oc, KD_OPTIM_ADAMW);
    kd_optimizer_create(st->m, &oc, &st->opt);
    kd_student_create(st->ctx, st->m, st->opt, NULL, &st->s);
    kd_loss_create(st->ctx, kd_loss_hinton(), NULL, &st->loss);
    kd_student_add_loss(st->s, st->loss, 1.0f, 0);
}

static void student_free(student *st)
{
    kd_student_destroy(st->s);
    kd_loss_destroy(st->loss);
    kd_optimizer_destroy(st->opt);
    kd_model_destroy(st->m);
    kd_context_destroy(st->ctx);
}

static void bench_fit(const char *name, const char *spec, size_t dim, size_t rows, size_t batch)
{
    const size_t classes = 10;
    float *x = malloc(rows * dim * sizeof *x);
    int32_t *y = malloc(rows * sizeof *y);
    kd_rng rng;
    kd_rng_seed(&rng, 1, 1);
    for (size_t i = 0; i < rows * dim; i++) x[i] = kd_rng_normal(&rng);
    for (size_t i = 0; i < rows; i++) y[i] = (int32_t)kd_rng_below(&rng, classes);
    kd_dataset ds = {(uint32_t)sizeof ds, x, rows, dim, y};
    kd_fit_config fc;
    kd_fit_config_default(&fc);
    fc.batch = batch;
    fc.epochs = 1;
    kd_mpi_comm *comm = NULL;
    MPI_Comm world = MPI_COMM_WORLD;
    student tch;
    student_make(&tch, spec);
    kd_teacher *teacher = NULL;
    kd_teacher_from_model(tch.ctx, tch.m, &teacher);
    kd_mpi_comm_create(tch.ctx, &world, &comm);
    enum { REPS = 5 };
    double ta[REPS], td[REPS], tshard[REPS];
    uint64_t bytes_per_step = 0, calls_per_step = 0;
    size_t bucket = 0;
    double commt[REPS], art[REPS];
    for (int r = 0; r < REPS; r++) {
        /* anchor: one process, the whole batch */
        if (rank == 0) {
            student s;
            student_make(&s, spec);
            double t0 = bench_now();
            kd_fit(s.s, teacher, &ds, &fc);
            ta[r] = bench_now() - t0;
            student_free(&s);
            /* one rank's share of the compute alone: rows/N rows in batches of batch/N,
             * the same number of steps as the data-parallel run */
            kd_dataset part = ds;
            part.n = rows / (size_t)size;
            kd_fit_config pc = fc;
            pc.batch = batch / (size_t)size;
            student_make(&s, spec);
            t0 = bench_now();
            kd_fit(s.s, teacher, &part, &pc);
            tshard[r] = bench_now() - t0;
            student_free(&s);
        }
        idle_barrier();
        student s;
        student_make(&s, spec);
        kd_mpi_comm_stats_reset(comm);
        MPI_Barrier(MPI_COMM_WORLD);
        double t0 = bench_now();
        kd_mpi_fit_config mc;
        kd_mpi_fit_config_default(&mc);
        if (getenv("KD_BENCH_BUCKET")) mc.bucket_bytes = (size_t)strtoull(getenv("KD_BENCH_BUCKET"), NULL, 10);
        bucket = mc.bucket_bytes;
        kd_status st = kd_mpi_fit(comm, s.s, teacher, &ds, &fc, &mc);
        td[r] = bench_now() - t0;
        if (st != KD_OK && rank == 0) fprintf(stderr, "kd_mpi_fit: %s\n", kd_mpi_comm_last_error(comm));
        kd_mpi_stats stats;
        stats.struct_size = sizeof stats;
        kd_mpi_comm_stats(comm, &stats);
        bytes_per_step = stats.steps ? stats.allreduce_bytes / stats.steps : 0;
        calls_per_step = stats.steps ? stats.allreduce_calls / stats.steps : 0;
        art[r] = stats.steps ? stats.allreduce_seconds / (double)stats.steps : 0.0;
        commt[r] = stats.steps ? stats.comm_seconds / (double)stats.steps : 0.0;
        student_free(&s);
    }
    if (rank == 0) {
        double a = bench_median(ta, REPS), d = bench_median(td, REPS);
        printf("bench=dp_fit case=%s ranks=%d rows=%zu batch=%zu params=%zu allreduce_bytes_per_step=%llu "
               "bucket_bytes=%zu allreduce_calls_per_step=%llu comm_ms_per_step=%.3f allreduce_ms_per_step=%.3f shard_compute_s=%.4f anchor_s=%.4f dp_s=%.4f speedup=%.2f\n",
               name, size, rows, batch, kd_model_param_count(tch.m), (unsigned long long)bytes_per_step,
               bucket, (unsigned long long)calls_per_step, bench_median(commt, REPS) * 1e3, bench_median(art, REPS) * 1e3, bench_median(tshard, REPS), a, d, a / d);
    }
    kd_mpi_comm_destroy(comm);
    kd_teacher_destroy(teacher);
    student_free(&tch);
    free(x);
    free(y);
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    bench_allreduce();
    /* compute-heavy (wide MLP, large batch) and communication-heavy (many small steps) */
    bench_fit("mlp784x512x10_b512", "input 784; linear 512; relu; linear 10", 784, 8192, 512);
    bench_fit("mlp784x512x10_b32", "input 784; linear 512; relu; linear 10", 784, 2048, 32);
    MPI_Finalize();
    return 0;
}
