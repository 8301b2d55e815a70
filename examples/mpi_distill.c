/* mpi_distill.c - data-parallel distillation with libkd_mpi (docs/DISTRIBUTED.md).
 *
 *   mpirun -np 2 build/examples/mpi_distill              (one machine)
 *   mpirun --hostfile hosts -np 4 --map-by ppr:1:socket --bind-to socket \
 *          -x KD_THREADS=16 build/examples/mpi_distill   (a cluster: one rank per socket)
 *
 * Every rank builds the same synthetic dataset, teacher and student; kd_mpi_fit trains
 * the student over the ranks; rank 0 reports accuracy, agreement with the teacher and
 * the communication counted by kd_mpi_comm_stats, and saves the student. */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

#include "kd/kd.h"
#include "kd/kd_mpi.h"

#define ROWS 4096
#define DIM 32
#define CLASSES 10

#define CHECK(call)                                                                          \
    do {                                                                                     \
        kd_status st_ = (call);                                                              \
        if (st_ != KD_OK) {                                                                  \
            fprintf(stderr, "rank %d: %s: %s (%s)\n", rank, #call, kd_status_string(st_),    \
                    comm ? kd_mpi_comm_last_error(comm) : kd_context_last_error(ctx));        \
            MPI_Abort(MPI_COMM_WORLD, 1);                                                    \
        }                                                                                    \
    } while (0)

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    int rank = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    kd_mpi_comm *comm = NULL;
    kd_context_config cc;
    kd_context_config_default(&cc);
    cc.threads = getenv("KD_THREADS") ? atoi(getenv("KD_THREADS")) : 1; /* cores per rank */
    cc.seed = 1;
    kd_context *ctx = NULL;
    if (kd_context_create(&cc, &ctx) != KD_OK) MPI_Abort(MPI_COMM_WORLD, 1);
    MPI_Comm world = MPI_COMM_WORLD;
    CHECK(kd_mpi_comm_create(ctx, &world, &comm));

    /* The same data on every rank (seeded): labels from a random linear map. */
    float *x = malloc(sizeof(float) * ROWS * DIM);
    int32_t *y = malloc(sizeof(int32_t) * ROWS);
    float w[CLASSES * DIM];
    kd_rng rng;
    kd_rng_seed(&rng, 7, 0);
    for (size_t i = 0; i < CLASSES * DIM; i++) w[i] = kd_rng_normal(&rng);
    for (size_t r = 0; r < ROWS; r++) {
        float best = -1e30f;
        for (size_t i = 0; i < DIM; i++) x[r * DIM + i] = kd_rng_normal(&rng);
        for (int c = 0; c < CLASSES; c++) {
            float z = 0;
            for (size_t i = 0; i < DIM; i++) z += w[c * DIM + i] * x[r * DIM + i];
            if (z > best) best = z, y[r] = c;
        }
    }
    kd_dataset ds = {sizeof ds, x, ROWS, DIM, y};

    /* Teacher: a wider MLP trained on the labels first (data-parallel too). */
    kd_model *tm = NULL, *sm = NULL;
    kd_optimizer *topt = NULL, *sopt = NULL;
    kd_loss *ce = NULL, *kd = NULL;
    kd_student *ts = NULL, *ss = NULL;
    CHECK(kd_model_create_from_spec(ctx, "input 32; linear 256; relu; linear 10", &tm));
    CHECK(kd_model_create_from_spec(ctx, "input 32; linear 32; relu; linear 10", &sm));
    kd_optimizer_config oc;
    kd_optimizer_config_default(&oc, KD_OPTIM_ADAMW);
    oc.lr = 3e-3f;
    CHECK(kd_optimizer_create(tm, &oc, &topt));
    CHECK(kd_optimizer_create(sm, &oc, &sopt));
    CHECK(kd_loss_create(ctx, kd_loss_cross_entropy(), NULL, &ce));
    CHECK(kd_loss_create(ctx, kd_loss_hinton(), NULL, &kd));
    CHECK(kd_student_create(ctx, tm, topt, NULL, &ts));
    CHECK(kd_student_add_loss(ts, ce, 1.0f, 0));
    kd_fit_config fc;
    kd_fit_config_default(&fc);
    fc.epochs = 10;
    fc.batch = 256;
    CHECK(kd_mpi_fit(comm, ts, NULL, &ds, &fc, NULL));
    kd_teacher *teacher = NULL;
    CHECK(kd_teacher_from_model(ctx, tm, &teacher));

    /* Student: Hinton KD from the teacher, over the ranks. */
    CHECK(kd_student_create(ctx, sm, sopt, NULL, &ss));
    CHECK(kd_student_add_loss(ss, kd, 1.0f, 0));
    kd_mpi_comm_stats_reset(comm);
    double t0 = MPI_Wtime();
    CHECK(kd_mpi_fit(comm, ss, teacher, &ds, &fc, NULL));
    double secs = MPI_Wtime() - t0;
    kd_mpi_stats st = {.struct_size = sizeof st};
    CHECK(kd_mpi_comm_stats(comm, &st));
    if (rank == 0) {
        kd_eval_report er = {.struct_size = sizeof er};
        CHECK(kd_evaluate(ctx, sm, teacher, &ds, 512, &er));
        printf("ranks=%d student: accuracy %.3f, agreement with the teacher %.3f, %.2f s\n",
               kd_mpi_comm_size(comm), er.accuracy, er.agreement, secs);
        printf("steps=%llu allreduce: %llu calls, %llu bytes (%llu per step), %.3f s in step collectives\n",
               (unsigned long long)st.steps, (unsigned long long)st.allreduce_calls,
               (unsigned long long)st.allreduce_bytes,
               (unsigned long long)(st.steps ? st.allreduce_bytes / st.steps : 0), st.comm_seconds);
        CHECK(kd_model_save(sm, "mpi_student.safetensors"));
    }
    kd_student_destroy(ss);
    kd_student_destroy(ts);
    kd_teacher_destroy(teacher);
    kd_loss_destroy(kd);
    kd_loss_destroy(ce);
    kd_optimizer_destroy(sopt);
    kd_optimizer_destroy(topt);
    kd_model_destroy(sm);
    kd_model_destroy(tm);
    kd_mpi_comm_destroy(comm);
    kd_context_destroy(ctx);
    free(x);
    free(y);
    MPI_Finalize();
    return 0;
}
