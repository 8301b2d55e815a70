/*
 * kd_retrieval.h - learned sparse retrieval: SPLADE head and regularisers,
 * an exact inverted index over quantised impacts, BM25, persistence.
 *
 * Sparse vectors cross the API as plain arrays: `term_ids[nnz]` (uint32_t)
 * and `weights[nnz]` (float), so FFI callers need no wrapper types. Dense
 * per-batch matrices are row-major float arrays with explicit sizes.
 *
 * Scoring. For a query with learned part (q_t) and BM25 tokens, a document's
 * score is
 *     score = weight_sparse * S_learned + weight_bm25 * S_bm25
 * where
 *   - S_learned = sum_t q_t * w_dt, computed exactly on integers: document
 *     weights are quantised at build time to `quant_bits` (default 8) impacts
 *     i_dt = clamp(round(w_dt / scale), 1, 2^bits - 1) (a non-zero weight never
 *     quantises to 0; scale = max weight / (2^bits - 1) unless fixed), and query
 *     weights to 16 bits relative to the query's largest weight,
 *     qq_t = max(1, round(65535 * q_t / max_q)). Then
 *     S_learned = (float)(sum_t qq_t * i_dt * scale * max_q / 65535).
 *   - S_bm25 = sum over distinct query tokens t (ascending token id) of
 *     qtf_t * idf_t * tf (k1 + 1) / (tf + k1 (1 - b + b dl / avgdl)), with the
 *     Lucene idf log(1 + (N - df + 0.5) / (df + 0.5)), N the number of
 *     documents in the index, dl the document's token count, qtf_t how often
 *     the token occurs in the query. Each term is evaluated in float by one
 *     function and summed in ascending token order.
 * Every algorithm (MaxScore, Block-Max WAND, exhaustive) returns the same
 * top-k bit for bit: score descending, ties broken by the smaller doc id.
 * Documents that match no query term are never returned.
 *
 * Thread safety: a built or loaded kd_sparse_index is immutable. Any number
 * of threads may search one index at the same time provided each thread
 * passes its own kd_context to the search functions (the context receives
 * scratch allocations and error text), or each thread uses its own
 * kd_sparse_searcher (which keeps that scratch between queries).
 * kd_sparse_index_search_batch runs its own worker threads (pthreads, hosted
 * builds only).
 */
#ifndef KD_RETRIEVAL_H
#define KD_RETRIEVAL_H

#include <stddef.h>
#include <stdint.h>

#include "kd_core.h"

#ifdef __cplusplus
extern "C" {
#endif

/** @defgroup retrieval Retrieval: SPLADE, sparse index, BM25
 *  @{ */

/** A sparse vector as plain arrays (borrowed by every function taking one). */
typedef struct kd_sparse_vector {
    const uint32_t *term_ids; /**< nnz term ids */
    const float *weights;     /**< nnz weights, finite and >= 0 for indexing */
    size_t nnz;
} kd_sparse_vector;

/* ---- SPLADE head ------------------------------------------------------- */

/** Aggregation over tokens in the SPLADE head. */
typedef enum kd_splade_agg {
    KD_SPLADE_MAX = 0, /**< w_j = max_i log(1 + relu(x_ij))  (SPLADE v2 / "max") */
    KD_SPLADE_SUM = 1  /**< w_j = sum_i log(1 + relu(x_ij))  (original SPLADE) */
} kd_splade_agg;

/**
 * SPLADE head forward.
 *   logits [batch x tokens x vocab]  per-token vocabulary logits
 *   mask   [batch x tokens]          nonzero = token counts; NULL = all tokens
 *   out    [batch x vocab]           written (overwritten)
 * A sequence whose tokens are all masked gives an all-zero row. Non-finite
 * logits give KD_E_NUMERIC.
 */
KD_API kd_status kd_splade_forward(kd_context *ctx, const float *logits, const uint8_t *mask,
                                   size_t batch, size_t tokens, size_t vocab, kd_splade_agg agg,
                                   float *out);

/**
 * SPLADE head backward: accumulates (+=) into dlogits [batch x tokens x vocab]
 * the gradient of the loss given dout [batch x vocab] = dL/dw. With MAX the
 * gradient goes to the first token attaining the maximum; log(1 + relu(x))
 * has derivative 1 / (1 + x) for x > 0 and 0 for x <= 0.
 */
KD_API kd_status kd_splade_backward(kd_context *ctx, const float *logits, const uint8_t *mask,
                                    size_t batch, size_t tokens, size_t vocab, kd_splade_agg agg,
                                    const float *dout, float *dlogits);

/* ---- regularisers ------------------------------------------------------ */

/**
 * FLOPS regulariser (Paria et al. 2020, as used by SPLADE):
 *   L = weight * sum_j (1/B sum_i |w_ij|)^2,   w [batch x vocab].
 * *loss receives L; grad (optional, [batch x vocab]) accumulates dL/dw.
 */
KD_API kd_status kd_sparse_flops(kd_context *ctx, const float *w, size_t batch, size_t vocab,
                                 float weight, float *loss, float *grad);

/**
 * Per-term weighted FLOPS: L = weight * sum_j term_weight_j (1/B sum_i |w_ij|)^2.
 * term_weight [vocab], each finite and >= 0 (e.g. a document-frequency penalty).
 */
KD_API kd_status kd_sparse_flops_weighted(kd_context *ctx, const float *w, size_t batch,
                                          size_t vocab, const float *term_weight, float weight,
                                          float *loss, float *grad);

/**
 * IDF-aware FLOPS for inference-free retrievers (Geng et al. 2024, "Towards
 * Competitive Search Relevance For Inference-Free Learned Sparse Retrievers";
 * restated by the same group as the document FLOPS term of "Exploring l0
 * Sparsification for Inference-free Sparse Retrievers", Shen et al. 2025).
 * The query side is its tokens weighted by IDF, so a document term's effect
 * on the score is idf_j * w_j; FLOPS is taken on that effect, i.e. on the
 * IDF-weighted document representation:
 *   L = weight * sum_j (idf_j * 1/B sum_i |w_ij|)^2
 *     = weight * sum_j idf_j^2 (1/B sum_i |w_ij|)^2,
 *   dL/dw_ij = weight * 2 idf_j^2 (1/B sum_i |w_ij|) sign(w_ij) / B.
 * Per unit of score every term is penalised alike, so, relative to plain
 * FLOPS on w, a low-IDF term (which needs a large w_j to move the score) is
 * penalised less per unit of w and a high-IDF term more.
 * idf [vocab], each finite and >= 0.
 */
KD_API kd_status kd_sparse_flops_idf(kd_context *ctx, const float *w, size_t batch,
                                     size_t vocab, const float *idf, float weight, float *loss,
                                     float *grad);

/** L1: L = weight * 1/B sum_i sum_j |w_ij|; grad (optional) accumulates dL/dw. */
KD_API kd_status kd_sparse_l1(kd_context *ctx, const float *w, size_t batch, size_t vocab,
                              float weight, float *loss, float *grad);

/**
 * Quadratic warm-up of a regulariser weight (SPLADE):
 *   lambda(step) = lambda_max * min(1, (step / warmup_steps)^2);
 * warmup_steps == 0 gives lambda_max at every step.
 */
KD_API float kd_sparse_reg_schedule(float lambda_max, uint64_t step, uint64_t warmup_steps);

/**
 * Keeps the k largest weights of a sparse vector in place (ties: smaller term
 * id wins); the kept entries are sorted by term id. *out_nnz = min(k, nnz).
 */
KD_API kd_status kd_sparse_topk_prune(kd_context *ctx, uint32_t *term_ids, float *weights,
                                      size_t nnz, size_t k, size_t *out_nnz);

/**
 * Dense row [vocab] to sparse: entries with value > threshold, ascending id.
 * Writes at most cap entries; *out_nnz is the number of qualifying entries
 * (KD_E_SHAPE when it exceeds cap; the first cap are written).
 */
KD_API kd_status kd_sparse_from_dense(kd_context *ctx, const float *dense, size_t vocab,
                                      float threshold, uint32_t *term_ids, float *weights,
                                      size_t cap, size_t *out_nnz);

/* ---- index building ---------------------------------------------------- */

/** Index build configuration. Fill with kd_sparse_index_config_default(). */
typedef struct kd_sparse_index_config {
    uint32_t struct_size; /**< sizeof(kd_sparse_index_config) */
    uint32_t quant_bits;  /**< impact bits, 1..8 (default 8) */
    /** > 0: fixed quantisation range [0, quant_max] (larger weights clip);
     *  0 (default): the largest weight added. */
    float quant_max;
} kd_sparse_index_config;

KD_API void kd_sparse_index_config_default_sized(kd_sparse_index_config *cfg, size_t size);
#define kd_sparse_index_config_default(cfg) kd_sparse_index_config_default_sized((cfg), sizeof(kd_sparse_index_config))

typedef struct kd_sparse_index_builder kd_sparse_index_builder;
typedef struct kd_sparse_index kd_sparse_index;

/** Creates a builder (cfg NULL = defaults). Release with _builder_destroy. */
KD_API kd_status kd_sparse_index_builder_create(kd_context *ctx, const kd_sparse_index_config *cfg,
                                                kd_sparse_index_builder **out);

/**
 * Adds one document. Copies everything.
 *   doc_id            caller's id (unique; returned by search)
 *   term_ids/weights  learned sparse vector, nnz entries (NULL allowed when
 *                     nnz == 0); weights finite and >= 0; zeros are dropped;
 *                     repeated term ids are summed
 *   tokens            the document's token ids for BM25 (NULL when ntokens
 *                     == 0); dl = ntokens
 */
KD_API kd_status kd_sparse_index_builder_add(kd_sparse_index_builder *b, uint32_t doc_id,
                                             const uint32_t *term_ids, const float *weights,
                                             size_t nnz, const uint32_t *tokens, size_t ntokens);

/**
 * Builds an index from everything added so far (duplicate doc ids give
 * KD_E_INVALID). The builder stays valid and unchanged. *out owns the index.
 */
KD_API kd_status kd_sparse_index_build(kd_sparse_index_builder *b, kd_sparse_index **out);

/** NULL is a no-op. */
KD_API void kd_sparse_index_builder_destroy(kd_sparse_index_builder *b);

/** NULL is a no-op. Unmaps a loaded file. */
KD_API void kd_sparse_index_destroy(kd_sparse_index *idx);

/** Index statistics. */
typedef struct kd_sparse_index_stats {
    uint32_t struct_size;
    uint64_t n_docs;
    uint64_t n_terms;           /**< learned terms with postings */
    uint64_t n_postings;        /**< learned postings */
    uint64_t n_bm25_terms;
    uint64_t n_bm25_postings;
    uint64_t bytes;             /**< size of the index image (= file size) */
    uint64_t postings_bytes;    /**< compressed learned postings incl. block tables */
    uint64_t bm25_postings_bytes;
    float quant_scale;          /**< weight per impact unit */
    uint32_t quant_bits;
    double avg_doc_len;         /**< BM25 avgdl */
} kd_sparse_index_stats;

KD_API kd_status kd_sparse_index_stats_get(const kd_sparse_index *idx, kd_sparse_index_stats *st);

/* ---- search ------------------------------------------------------------ */

typedef enum kd_sparse_algo {
    KD_SPARSE_MAXSCORE = 0,   /**< MaxScore (Turtle & Flood 1995) over windows of documents
                                   with block-max bounds: usually the fastest */
    KD_SPARSE_BMW = 1,        /**< Block-Max WAND (Ding & Suel 2011); hands the rest of a
                                   query to MaxScore when its block bounds stop skipping
                                   (frequent terms with high impacts everywhere) */
    KD_SPARSE_EXHAUSTIVE = 2  /**< term-at-a-time over every posting: the oracle */
} kd_sparse_algo;

/** Search configuration. Fill with kd_sparse_search_config_default(). */
typedef struct kd_sparse_search_config {
    uint32_t struct_size;
    kd_sparse_algo algo;  /**< default KD_SPARSE_MAXSCORE */
    float weight_sparse;  /**< >= 0, default 1 */
    float weight_bm25;    /**< >= 0, default 1 */
    float bm25_k1;        /**< >= 0, default 0.9 */
    float bm25_b;         /**< in [0, 1], default 0.4 */
    int threads;          /**< batch search: 0 = the context's thread count */
} kd_sparse_search_config;

KD_API void kd_sparse_search_config_default_sized(kd_sparse_search_config *cfg, size_t size);
#define kd_sparse_search_config_default(cfg) kd_sparse_search_config_default_sized((cfg), sizeof(kd_sparse_search_config))

/**
 * Top-k search for one query. ctx: scratch + errors (NULL: the index's own
 * context, which must then not be used concurrently). The learned part is
 * (term_ids, weights, nnz), weights finite and >= 0; the BM25 part is
 * tokens[ntokens]; either may be empty. Terms absent from the index are
 * ignored. out_ids / out_scores (each room for k; out_scores may be NULL)
 * receive *out_count = min(k, matching docs) results, best first.
 * Allocates its scratch on every call; for a stream of queries use a
 * kd_sparse_searcher.
 */
KD_API kd_status kd_sparse_index_search(kd_context *ctx, const kd_sparse_index *idx,
                                        const kd_sparse_search_config *cfg,
                                        const uint32_t *term_ids, const float *weights, size_t nnz,
                                        const uint32_t *tokens, size_t ntokens, size_t k,
                                        uint32_t *out_ids, float *out_scores, size_t *out_count);

/**
 * A reusable search handle. kd_sparse_index_search allocates its scratch
 * (cursors, result heap, MaxScore window accumulators) on every call; a
 * searcher allocates it once, keeps it between queries and grows it when a
 * query needs more (more distinct terms, a larger k, or the exhaustive
 * algorithm's per-document accumulators), so a stream of queries of similar
 * size allocates nothing after the first. It also keeps each document's
 * BM25 length normalisation for the k1 and b of the last BM25 query
 * (4 bytes per indexed document, computed by the first BM25 query and again
 * when k1 or b change), which one-shot searches compute posting by posting.
 * Results are identical to kd_sparse_index_search's, bit for bit.
 *
 * Ownership: idx is borrowed and must outlive the searcher. ctx (NULL: the
 * index's context) is kept: it receives the scratch allocations and the error
 * text of every search through this searcher.
 * Thread safety: a searcher is used by one thread at a time. For concurrent
 * search give each thread its own searcher with its own context; any number
 * of searchers may share one index.
 */
typedef struct kd_sparse_searcher kd_sparse_searcher;

KD_API kd_status kd_sparse_searcher_create(kd_context *ctx, const kd_sparse_index *idx,
                                           kd_sparse_searcher **out);

/** Top-k search with the searcher's scratch; arguments and results exactly as
 *  kd_sparse_index_search. On failure the searcher stays usable. */
KD_API kd_status kd_sparse_searcher_search(kd_sparse_searcher *s, const kd_sparse_search_config *cfg,
                                           const uint32_t *term_ids, const float *weights,
                                           size_t nnz, const uint32_t *tokens, size_t ntokens,
                                           size_t k, uint32_t *out_ids, float *out_scores,
                                           size_t *out_count);

/** NULL is a no-op. */
KD_API void kd_sparse_searcher_destroy(kd_sparse_searcher *s);

/**
 * Searches n queries in parallel (hosted builds). Queries are in CSR form:
 * query q's learned part is term_ids/weights[q_offsets[q] .. q_offsets[q+1])
 * and its tokens are tokens[t_offsets[q] .. t_offsets[q+1]); either offsets
 * array may be NULL (no such part). Results: out_ids/out_scores [n x k]
 * (out_scores may be NULL), out_counts [n].
 */
KD_API kd_status kd_sparse_index_search_batch(kd_context *ctx, const kd_sparse_index *idx,
                                              const kd_sparse_search_config *cfg, size_t n,
                                              const size_t *q_offsets, const uint32_t *term_ids,
                                              const float *weights, const size_t *t_offsets,
                                              const uint32_t *tokens, size_t k, uint32_t *out_ids,
                                              float *out_scores, size_t *out_counts);

/* ---- persistence ------------------------------------------------------- */

/**
 * Writes the index to path atomically (temporary file, fsync, rename).
 * File format: see docs in lib/retrieval/kd_sparse_format.h (little-endian,
 * versioned, one CRC-32C per section).
 */
KD_API kd_status kd_sparse_index_save(const kd_sparse_index *idx, const char *path);

/**
 * Maps an index file read-only (hosted builds). Every offset, count and
 * posting block is validated and every section checksummed before use: a
 * damaged or hostile file gives KD_E_FORMAT, KD_E_CORRUPT or KD_E_VERSION
 * with a reason, never a crash. Postings are used in place, not copied.
 */
KD_API kd_status kd_sparse_index_load(kd_context *ctx, const char *path, kd_sparse_index **out);

/**
 * Opens an index image held in memory, validated as kd_sparse_index_load.
 * Borrows data until kd_sparse_index_destroy when it is 8-byte aligned;
 * otherwise copies it.
 */
KD_API kd_status kd_sparse_index_load_memory(kd_context *ctx, const void *data, size_t size,
                                             kd_sparse_index **out);

/** @} */

#ifdef __cplusplus
}
#endif

#endif /* KD_RETRIEVAL_H */
