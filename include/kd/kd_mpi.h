/*
 * kd_mpi.h - libkd over MPI (optional component, library libkd_mpi,
 * pkg-config module kd-mpi): data-parallel distillation, a sharded sparse
 * index, a teacher-logit cache written by every rank and expert-parallel MoE
 * inference. Not included by kd.h; the core libkd has no MPI dependency.
 * Guide: docs/DISTRIBUTED.md.
 *
 * This header does not include mpi.h. A communicator crosses the API as a
 * pointer to the caller's MPI_Comm, read only during kd_mpi_comm_create:
 *
 *     MPI_Comm world = MPI_COMM_WORLD;
 *     kd_mpi_comm *comm;
 *     kd_mpi_comm_create(ctx, &world, &comm);
 *
 * The library duplicates it (MPI_Comm_dup), so its messages never meet the
 * caller's, and sets MPI_ERRORS_RETURN on the duplicate so an MPI failure
 * comes back as a status instead of aborting the job. The caller initialises
 * MPI (MPI_Init or MPI_Init_thread) before kd_mpi_comm_create and finalises it
 * after kd_mpi_comm_destroy. libkd_mpi must be built against the same MPI the
 * program uses (Debian: Open MPI, libopenmpi-dev).
 *
 * Collective calls. Every function below marked COLLECTIVE must be called by
 * every rank of the communicator, in the same order. They never hang on a
 * local failure: a rank whose local part fails (bad argument, NaN loss,
 * allocation) still takes part in an agreement round, and then EVERY rank
 * returns the failing rank's status, and kd_mpi_comm_last_error gives
 * "rank R: <reason>" on every rank (the lowest failing rank wins). Ranks that
 * disagree on shapes or configuration fail the same way, with the
 * disagreeing values in the reason. A rank that crashes or never calls is
 * outside what any MPI library can detect without timeouts; mpirun ends the
 * job when a process dies.
 *
 * Errors: the reason of a failure is kept in the communicator handle
 * (kd_mpi_comm_last_error), not in the kd_context, because libkd_mpi is a
 * separate library; when the failure came from a libkd call, the reason
 * includes the context's reason.
 *
 * Threads: a kd_mpi_comm is used by one thread at a time. MPI_THREAD_SINGLE
 * (MPI_Init) is enough.
 */
#ifndef KD_MPI_H
#define KD_MPI_H

#include "kd_cache.h"
#include "kd_core.h"
#include "kd_distill.h"
#include "kd_moe.h"
#include "kd_nn.h"
#include "kd_retrieval.h"

#ifdef __cplusplus
extern "C" {
#endif

/** @defgroup mpi MPI: data-parallel training, sharded retrieval, distributed cache
 *  @{ */

typedef struct kd_mpi_comm kd_mpi_comm;

/**
 * COLLECTIVE. Binds a communicator: mpi_comm points to the caller's MPI_Comm
 * (borrowed during the call; the library keeps its own duplicate). ctx is
 * borrowed and must outlive the handle (memory comes from it). Errors:
 * KD_E_INVALID (NULL), KD_E_STATE (MPI not initialised), KD_E_IO (an MPI
 * call failed), KD_E_NOMEM. On failure *out is NULL (there is no handle to
 * hold a reason; the status says which).
 */
KD_API kd_status kd_mpi_comm_create(kd_context *ctx, const void *mpi_comm, kd_mpi_comm **out);

/** COLLECTIVE (MPI_Comm_free). NULL is a no-op. Call before MPI_Finalize. */
KD_API void kd_mpi_comm_destroy(kd_mpi_comm *comm);

/** This process's rank and the number of ranks (-1 and 0 for NULL). */
KD_API int kd_mpi_comm_rank(const kd_mpi_comm *comm);
KD_API int kd_mpi_comm_size(const kd_mpi_comm *comm);

/** Reason of the last failure ("" when none, "no communicator" for NULL).
 *  Valid until the next call with comm. */
KD_API const char *kd_mpi_comm_last_error(const kd_mpi_comm *comm);

/** Communication counters of this rank since create (or the last reset). */
typedef struct kd_mpi_stats {
    uint32_t struct_size;         /**< sizeof(kd_mpi_stats) */
    uint64_t allreduce_calls;     /**< gradient allreduce operations (one per bucket) */
    uint64_t allreduce_bytes;     /**< payload bytes given to those allreduces */
    uint64_t steps;               /**< data-parallel steps taken */
    uint64_t control_calls;       /**< small agreement / header collectives */
    uint64_t bcast_bytes;         /**< payload bytes broadcast (weights, reasons) */
    uint64_t gather_bytes;        /**< payload bytes this rank contributed to gathers */
    /** Wall seconds kd_mpi_fit spent in its per-step collectives (header
     *  round and gradient allreduce), waiting for slower ranks included. */
    double comm_seconds;
    /** The part of comm_seconds spent in the gradient allreduce alone (the
     *  rest is the header round, which absorbs waiting for slower ranks). */
    double allreduce_seconds;
} kd_mpi_stats;

/** Copies the counters (stats->struct_size must be set). */
KD_API kd_status kd_mpi_comm_stats(const kd_mpi_comm *comm, kd_mpi_stats *stats);
/** Clears the counters. */
KD_API void kd_mpi_comm_stats_reset(kd_mpi_comm *comm);

/**
 * COLLECTIVE. Every rank's model must have the same spec and parameter
 * count; KD_E_SHAPE otherwise, naming the first disagreeing rank and both
 * values. Then root's parameters and buffers (batch-norm statistics) are
 * broadcast into every rank's model. Optimizer state is not touched: call it
 * before the first step.
 */
KD_API kd_status kd_mpi_broadcast_model(kd_mpi_comm *comm, kd_model *m, int root);

/**
 * COLLECTIVE. Averages the gradient block of m over the ranks, weighting
 * rank r by rows_r / sum(rows): grad = sum_r rows_r * g_r / sum_r rows_r,
 * which is the gradient of a batch-mean loss over the union of the shards.
 * rows may be 0 (the rank contributes nothing). The block is reduced in
 * buckets of bucket_bytes (0: the default, 4 MiB), one in-place
 * MPI_Allreduce each (backward is one call, so there is nothing to overlap
 * with). A sum of rows of 0 over all ranks leaves zeros.
 */
KD_API kd_status kd_mpi_allreduce_grads(kd_mpi_comm *comm, kd_model *m, size_t rows,
                                        size_t bucket_bytes);

/** kd_mpi_fit configuration. Fill with kd_mpi_fit_config_default(). */
typedef struct kd_mpi_fit_config {
    uint32_t struct_size;   /**< sizeof(kd_mpi_fit_config) */
    /** Gradient bucket size in bytes (default 4 MiB; rounded to whole floats). */
    size_t bucket_bytes;
    /** Nonzero (default): broadcast rank 0's weights before training. */
    int broadcast_initial;
    /** Nonzero (default): compare a CRC-32C of the dataset (x and labels)
     *  across ranks and fail with KD_E_INVALID when they differ. */
    int check_data;
} kd_mpi_fit_config;

/** Defaults; fills min(size, sizeof) bytes. Use the macro. */
KD_API void kd_mpi_fit_config_default_sized(kd_mpi_fit_config *cfg, size_t size);
#define kd_mpi_fit_config_default(p) kd_mpi_fit_config_default_sized((p), sizeof *(p))

/**
 * COLLECTIVE. Data-parallel kd_fit. Every rank passes the SAME dataset view
 * contents, configuration and an identically built student (same spec, loss
 * terms and optimizer settings); weights need not agree when
 * broadcast_initial is set. Each epoch every rank draws the row order kd_fit
 * draws; each global batch of fit->batch rows is cut into contiguous shards,
 * rank r taking rows [r*b/N, (r+1)*b/N); each rank runs the student (and the
 * teacher when not cached) on its shard only, the gradients are averaged by
 * kd_mpi_allreduce_grads (weighted by shard rows), and every rank applies
 * the same clipped update. With fit->cache_teacher (and no augmentation) the
 * teacher runs once over 1/N of the dataset per rank and the logits are
 * all-gathered. A shard with no rows (batch smaller than the rank count)
 * runs a zero-weight step so optimizer state stays in step.
 *
 * Equivalence: for students whose loss terms are means over all rows of the
 * batch (every row labelled or KD_TERM_NO_LABELS terms, no batch norm in
 * training mode, no dropout), the weights after kd_mpi_fit on N ranks equal
 * those of kd_fit in one process on the same data and configuration up to
 * float rounding of the reduction order (tests/mpi/test_mpi_fit.c). Terms that
 * average over labelled rows only are weighted by shard rows, not labelled
 * rows; batch norm uses per-shard statistics (like PyTorch DDP without
 * SyncBatchNorm).
 *
 * The progress callback runs on every rank with the global running loss.
 * fit and mcfg may be NULL (defaults). Errors: those of kd_fit, plus
 * KD_E_SHAPE / KD_E_INVALID when ranks disagree, KD_E_IO for MPI failures;
 * every rank returns the same status.
 */
KD_API kd_status kd_mpi_fit(kd_mpi_comm *comm, kd_student *s, kd_teacher *teacher,
                            const kd_dataset *ds, const kd_fit_config *fit,
                            const kd_mpi_fit_config *mcfg);

/**
 * COLLECTIVE. Top-k over an index sharded across the ranks: each rank holds
 * a kd_sparse_index over its own documents (doc ids unique over all ranks),
 * searches its shard, and the per-rank top-k lists are all-gathered and
 * merged (score descending, ties by smaller doc id), so every rank receives
 * the top-k the single index over all documents returns, bit for bit, for
 * the learned part: the shards must share quant_bits and the quantisation
 * scale (build every shard with the same fixed quant_max; checked:
 * KD_E_INVALID otherwise). BM25 needs corpus-wide statistics (N, df, avgdl)
 * that shards do not have: cfg->weight_bm25 > 0 with tokens is
 * KD_E_UNSUPPORTED.
 * Queries, k and cfg must be the same on every rank (checked by CRC-32C:
 * KD_E_INVALID). Arguments and results as kd_sparse_index_search_batch
 * (n queries in CSR form; t_offsets/tokens may be NULL); out_scores may be
 * NULL. ctx: scratch for the local search (NULL: the index's context).
 */
KD_API kd_status kd_mpi_sparse_search_batch(kd_mpi_comm *comm, kd_context *ctx,
                                            const kd_sparse_index *idx,
                                            const kd_sparse_search_config *cfg, size_t n,
                                            const size_t *q_offsets, const uint32_t *term_ids,
                                            const float *weights, const size_t *t_offsets,
                                            const uint32_t *tokens, size_t k, uint32_t *out_ids,
                                            float *out_scores, size_t *out_counts);

/**
 * COLLECTIVE. kd_cache_write_teacher spread over the ranks, giving the same
 * single cache file at path. The dataset's blocks of cfg->block_positions
 * rows are split into N contiguous runs; rank r runs the teacher on its run
 * only and writes it, crash-safe and resumable (resume != 0), to its part
 * file "<path>.part<r>of<N>" on its own disk. Then the parts travel to rank 0
 * over MPI (no shared file system needed), which renumbers their blocks
 * (first position and block CRC), writes header, blocks, index and footer
 * through a temporary file, fsync and rename, and validates the result with
 * kd_logit_cache_open; on success every rank removes its part. The file is
 * byte-identical to kd_cache_write_teacher in one process when the teacher
 * gives each row the same logits whatever batch it is in.
 * Every rank passes the same dataset contents, path and config (checked).
 * Rank 0 holds one part in memory at a time. Errors: those of
 * kd_cache_write_teacher, KD_E_INVALID when ranks disagree, KD_E_IO.
 */
KD_API kd_status kd_mpi_cache_write_teacher(kd_mpi_comm *comm, kd_teacher *teacher,
                                            const kd_dataset *ds, const char *path,
                                            const kd_cache_config *cfg, int resume);

typedef struct kd_mpi_moe kd_mpi_moe;

/**
 * COLLECTIVE. Expert-parallel inference of an MoE layer: rank r keeps the
 * gate and experts [E r/N, E (r+1)/N) of moe (copied: moe may be destroyed
 * afterwards), cfg being the configuration moe was created with (the same on
 * every rank: checked). Supported: linear gate, no shared experts, dropless
 * routing (capacity_factor 0), token-choice routers other than hash
 * (KD_E_UNSUPPORTED otherwise, since expert choice, hash routing and capacity
 * depend on the global token order); E >= N. Errors: KD_E_INVALID,
 * KD_E_UNSUPPORTED, KD_E_VERSION, KD_E_NOMEM.
 */
KD_API kd_status kd_mpi_moe_create(kd_mpi_comm *comm, kd_moe *moe, const kd_moe_config *cfg,
                                   kd_mpi_moe **out);

/** NULL is a no-op (not collective). */
KD_API void kd_mpi_moe_destroy(kd_mpi_moe *ep);

/** Experts held by this rank (0 for NULL). */
KD_API size_t kd_mpi_moe_local_experts(const kd_mpi_moe *ep);

/**
 * COLLECTIVE. y (n x d, overwritten) for this rank's n tokens x (n x d; n may
 * be 0 on some ranks). Each rank routes its tokens, sends each (token,
 * expert) row to the expert's owner with MPI_Alltoallv, the owners run their
 * experts (lib/moe's own expert compute, weight 1) and send the outputs
 * back, and the source rank sums w * FFN_e(x_t). Equal to kd_moe_forward in
 * inference mode on the same tokens up to float summation order
 * (tests/mpi/test_mpi_moe.c). Traffic: 2 x assignments x d floats per call.
 */
KD_API kd_status kd_mpi_moe_forward(kd_mpi_moe *ep, const float *x, size_t n, float *y);

/** @} */

#ifdef __cplusplus
}
#endif

#endif /* KD_MPI_H */
