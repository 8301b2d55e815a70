/* kd_mpi_comm.c - the communicator handle, reasons, agreement rounds, weight broadcast. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kd_mpi_internal.h"

/* libkd_mpi is hosted-only and cannot reach libkd's internal allocator, so it
 * uses the C library's; every size product is checked before the call. */
void *kd__mpi_alloc(kd_mpi_comm *c, size_t n, size_t size)
{
    if (n == 0 || size == 0) n = size = 1;
    if (n > SIZE_MAX / size) {
        kd__mpi_fail(c, KD_E_OVERFLOW, "allocation of %zu x %zu bytes overflows", n, size);
        return NULL;
    }
    void *p = calloc(n, size);
    if (!p) kd__mpi_fail(c, KD_E_NOMEM, "out of memory (%zu bytes)", n * size);
    return p;
}

void kd__mpi_free(kd_mpi_comm *c, void *p)
{
    (void)c;
    free(p);
}

kd_status kd__mpi_fail(kd_mpi_comm *c, kd_status status, const char *fmt, ...)
{
    if (!c) return status;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->reason, sizeof c->reason, fmt, ap);
    va_end(ap);
    return status;
}

kd_status kd__mpi_fail_ctx(kd_mpi_comm *c, kd_status status, const char *what)
{
    const char *why = kd_context_last_error(c->ctx);
    return kd__mpi_fail(c, status, "%s: %s", what, why && *why ? why : kd_status_string(status));
}

kd_status kd__mpi_check(kd_mpi_comm *c, int rc, const char *what)
{
    if (rc == MPI_SUCCESS) return KD_OK;
    char text[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(rc, text, &len) != MPI_SUCCESS) snprintf(text, sizeof text, "MPI error %d", rc);
    return kd__mpi_fail(c, KD_E_IO, "%s failed: %s", what, text);
}

kd_status kd__mpi_agree(kd_mpi_comm *c, kd_status local)
{
    /* One MIN-allreduce finds the lowest failing rank (size when none). */
    int mine = local == KD_OK ? c->size : c->rank, first = c->size;
    c->stats.control_calls++;
    int rc = MPI_Allreduce(&mine, &first, 1, MPI_INT, MPI_MIN, c->comm);
    if (rc != MPI_SUCCESS) return kd__mpi_check(c, rc, "agreement MPI_Allreduce");
    if (first == c->size) return KD_OK;
    struct {
        int status;
        char reason[KD_MPI_REASON_MAX];
    } msg;
    memset(&msg, 0, sizeof msg);
    if (c->rank == first) {
        msg.status = (int)local;
        memcpy(msg.reason, c->reason, sizeof msg.reason);
        msg.reason[sizeof msg.reason - 1] = '\0';
    }
    c->stats.bcast_bytes += sizeof msg;
    rc = MPI_Bcast(&msg, (int)sizeof msg, MPI_BYTE, first, c->comm);
    if (rc != MPI_SUCCESS) return kd__mpi_check(c, rc, "agreement MPI_Bcast");
    msg.reason[sizeof msg.reason - 1] = '\0';
    kd_status st = msg.status > 0 && msg.status < KD_STATUS_COUNT ? (kd_status)msg.status : KD_E_INTERNAL;
    char tmp[KD_MPI_REASON_MAX];
    snprintf(tmp, sizeof tmp, "rank %d: %.480s", first, msg.reason); /* long reasons are cut */
    memcpy(c->reason, tmp, sizeof tmp);
    return st;
}

kd_status kd__mpi_same(kd_mpi_comm *c, const uint64_t *vals, const char *const *names, size_t n,
                       kd_status status, const char *fn)
{
    uint64_t *all = (uint64_t *)kd__mpi_alloc(c, (size_t)c->size * n, sizeof *all);
    kd_status st = kd__mpi_agree(c, all ? KD_OK : KD_E_NOMEM);
    if (st != KD_OK) {
        kd__mpi_free(c, all);
        return st;
    }
    c->stats.control_calls++;
    c->stats.gather_bytes += n * sizeof *vals;
    int rc = MPI_Allgather(vals, (int)n, MPI_UINT64_T, all, (int)n, MPI_UINT64_T, c->comm);
    if (rc != MPI_SUCCESS) {
        kd__mpi_free(c, all);
        return kd__mpi_check(c, rc, "MPI_Allgather");
    }
    st = KD_OK;
    for (int r = 1; r < c->size && st == KD_OK; r++)
        for (size_t i = 0; i < n; i++)
            if (all[(size_t)r * n + i] != all[i]) {
                st = kd__mpi_fail(c, status, "%s: ranks disagree: %s is %llu on rank %d but %llu on rank 0",
                                  fn, names[i], (unsigned long long)all[(size_t)r * n + i], r,
                                  (unsigned long long)all[i]);
                break;
            }
    kd__mpi_free(c, all);
    return st;
}

kd_status kd_mpi_comm_create(kd_context *ctx, const void *mpi_comm, kd_mpi_comm **out)
{
    if (out) *out = NULL;
    if (!ctx || !mpi_comm || !out) return KD_E_INVALID;
    int inited = 0, finalized = 0;
    MPI_Initialized(&inited);
    MPI_Finalized(&finalized);
    if (!inited || finalized) return KD_E_STATE;
    kd_mpi_comm *c = (kd_mpi_comm *)calloc(1, sizeof *c);
    if (!c) return KD_E_NOMEM;
    c->ctx = ctx;
    c->stats.struct_size = (uint32_t)sizeof c->stats;
    if (MPI_Comm_dup(*(const MPI_Comm *)mpi_comm, &c->comm) != MPI_SUCCESS) {
        free(c);
        return KD_E_IO;
    }
    MPI_Comm_set_errhandler(c->comm, MPI_ERRORS_RETURN);
    MPI_Comm_rank(c->comm, &c->rank);
    MPI_Comm_size(c->comm, &c->size);
    *out = c;
    return KD_OK;
}

void kd_mpi_comm_destroy(kd_mpi_comm *comm)
{
    if (!comm) return;
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Comm_free(&comm->comm);
    free(comm);
}

int kd_mpi_comm_rank(const kd_mpi_comm *comm) { return comm ? comm->rank : -1; }
int kd_mpi_comm_size(const kd_mpi_comm *comm) { return comm ? comm->size : 0; }

const char *kd_mpi_comm_last_error(const kd_mpi_comm *comm)
{
    return comm ? comm->reason : "no communicator";
}

kd_status kd_mpi_comm_stats(const kd_mpi_comm *comm, kd_mpi_stats *stats)
{
    if (!comm || !stats || stats->struct_size < sizeof *stats) return KD_E_INVALID;
    *stats = comm->stats;
    return KD_OK;
}

void kd_mpi_comm_stats_reset(kd_mpi_comm *comm)
{
    if (!comm) return;
    memset(&comm->stats, 0, sizeof comm->stats);
    comm->stats.struct_size = (uint32_t)sizeof comm->stats;
}

/* The model's spec, its CRC and its sizes: what every rank must agree on. */
static kd_status model_signature(kd_mpi_comm *c, kd_model *m, uint64_t sig[3])
{
    size_t need = 0;
    kd_status st = kd_model_spec(m, NULL, 0, &need);
    if (st != KD_OK && st != KD_E_OVERFLOW) return kd__mpi_fail_ctx(c, st, "kd_model_spec");
    char *spec = (char *)kd__mpi_alloc(c, need + 1, 1);
    if (!spec) return KD_E_NOMEM;
    if ((st = kd_model_spec(m, spec, need + 1, NULL)) != KD_OK) {
        kd__mpi_free(c, spec);
        return kd__mpi_fail_ctx(c, st, "kd_model_spec");
    }
    sig[0] = kd_crc32c(0, spec, need);
    sig[1] = kd_model_param_count(m);
    sig[2] = kd_model_tensor_count(m);
    kd__mpi_free(c, spec);
    return KD_OK;
}

kd_status kd__mpi_check_model(kd_mpi_comm *c, kd_model *m, const char *fn);
kd_status kd__mpi_check_model(kd_mpi_comm *c, kd_model *m, const char *fn)
{
    uint64_t sig[3] = {0, 0, 0};
    kd_status st = m ? model_signature(c, m, sig) : kd__mpi_fail(c, KD_E_INVALID, "%s: NULL model", fn);
    if ((st = kd__mpi_agree(c, st)) != KD_OK) return st;
    static const char *const names[3] = {"the CRC-32C of the model spec", "the parameter count",
                                         "the tensor count"};
    return kd__mpi_same(c, sig, names, 3, KD_E_SHAPE, fn);
}

kd_status kd_mpi_broadcast_model(kd_mpi_comm *comm, kd_model *m, int root)
{
    if (!comm) return KD_E_INVALID;
    comm->reason[0] = '\0';
    kd_status st = KD_OK;
    if (root < 0 || root >= comm->size)
        st = kd__mpi_fail(comm, KD_E_INVALID, "kd_mpi_broadcast_model: root %d outside [0, %d)", root, comm->size);
    uint64_t r = (uint64_t)(root < 0 ? 0 : root);
    static const char *const rname[1] = {"root"};
    if ((st = kd__mpi_agree(comm, st)) != KD_OK) return st;
    if ((st = kd__mpi_same(comm, &r, rname, 1, KD_E_INVALID, "kd_mpi_broadcast_model")) != KD_OK) return st;
    if ((st = kd__mpi_check_model(comm, m, "kd_mpi_broadcast_model")) != KD_OK) return st;
    size_t nt = kd_model_tensor_count(m);
    for (size_t i = 0; i < nt; i++) {
        float *data = NULL;
        size_t numel = 0;
        st = kd_model_tensor(m, i, &data, &numel, NULL, NULL, NULL);
        if ((st = kd__mpi_agree(comm, st == KD_OK ? KD_OK
                                                  : kd__mpi_fail_ctx(comm, st, "kd_mpi_broadcast_model"))) != KD_OK)
            return st;
        /* Tensors are at most 2^31 elements per sample dimension, but a
         * whole tensor may exceed INT_MAX floats: broadcast in chunks. */
        for (size_t off = 0; off < numel;) {
            size_t part = numel - off < (size_t)1 << 30 ? numel - off : (size_t)1 << 30;
            comm->stats.bcast_bytes += part * sizeof(float);
            int rc = MPI_Bcast(data + off, (int)part, MPI_FLOAT, root, comm->comm);
            if (rc != MPI_SUCCESS) return kd__mpi_check(comm, rc, "kd_mpi_broadcast_model: MPI_Bcast");
            off += part;
        }
    }
    return KD_OK;
}
