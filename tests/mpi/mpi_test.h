/* mpi_test.h - a tiny harness for the MPI test programs (Check forks, which MPI forbids).
 * Every rank counts its checks; failures print "rank R: file:line: ..." to stderr; at the
 * end rank 0 prints Check's summary line ("Checks: N, Failures: F, Errors: 0"), which
 * scripts/count_tests.py reads, with F summed over the ranks. */
#ifndef KD_MPI_TEST_H
#define KD_MPI_TEST_H

#include <mpi.h>
#include <stdio.h>
#include <string.h>

#include "kd/kd_mpi.h"

static int mt_rank, mt_size, mt_checks, mt_failures;

#define MT_CHECK(cond, ...)                                                                  \
    do {                                                                                     \
        mt_checks++;                                                                         \
        if (!(cond)) {                                                                       \
            mt_failures++;                                                                   \
            fprintf(stderr, "rank %d: %s:%d: failed: %s: ", mt_rank, __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                                    \
            fputc('\n', stderr);                                                             \
        }                                                                                    \
    } while (0)

static void mt_init(int *argc, char ***argv)
{
    MPI_Init(argc, argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &mt_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &mt_size);
}

static int mt_finish(const char *name)
{
    int f = 0, c = 0;
    MPI_Allreduce(&mt_failures, &f, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    MPI_Allreduce(&mt_checks, &c, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    if (mt_rank == 0) {
        printf("%s on %d ranks: %d%%: Checks: %d, Failures: %d, Errors: 0\n", name, mt_size,
               c ? 100 * (c - (f < c ? f : c)) / c : 0, c, f < c ? f : c);
        fflush(stdout);
    }
    MPI_Finalize();
    return f ? 1 : 0;
}

#endif
