/* kd_mpi_internal.h - shared internals of libkd_mpi (hidden, not installed). */
#ifndef KD_MPI_INTERNAL_H
#define KD_MPI_INTERNAL_H

#include <mpi.h>
#include <stdarg.h>

#include "kd/kd_mpi.h"

#define KD_MPI_REASON_MAX 512

struct kd_mpi_comm {
    kd_context *ctx;
    MPI_Comm comm;
    int rank, size;
    kd_mpi_stats stats;
    char reason[KD_MPI_REASON_MAX];
};

/* Records a reason ("fn: ..." printf-style) and returns status. */
kd_status kd__mpi_fail(kd_mpi_comm *c, kd_status status, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;
/* Records "what: <the context's reason>" for a status a libkd call returned. */
kd_status kd__mpi_fail_ctx(kd_mpi_comm *c, kd_status status, const char *what);
/* KD_E_IO with MPI's text for rc, when rc != MPI_SUCCESS. */
kd_status kd__mpi_check(kd_mpi_comm *c, int rc, const char *what);

/*
 * Agreement round (COLLECTIVE): every rank passes its local status (and has
 * recorded its reason in c->reason). Returns KD_OK when all ranks are OK;
 * otherwise every rank returns the lowest failing rank's status, with
 * c->reason = "rank R: <its reason>".
 */
kd_status kd__mpi_agree(kd_mpi_comm *c, kd_status local);

/*
 * Checks that every rank has the same n values (COLLECTIVE, one allgather).
 * names[i] names value i in the reason. Returns KD_OK or `status` on every
 * rank, reason "<fn>: <name> is X on rank R but Y on rank 0".
 */
kd_status kd__mpi_same(kd_mpi_comm *c, const uint64_t *vals, const char *const *names, size_t n,
                       kd_status status, const char *fn);

void *kd__mpi_alloc(kd_mpi_comm *c, size_t n, size_t size);
void kd__mpi_free(kd_mpi_comm *c, void *p);

#endif
