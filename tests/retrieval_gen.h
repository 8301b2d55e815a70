/* retrieval_gen.h - random sparse corpora and queries for the retrieval
 * tests (static helpers, included by each test_retrieval_*.c). */
#ifndef RETRIEVAL_GEN_H
#define RETRIEVAL_GEN_H

#include <stdlib.h>
#include <string.h>

#include "kd_test.h"

typedef enum { GEN_UNIFORM = 0, GEN_ZIPF_TIES, GEN_ALL_EQUAL, GEN_LONG_LISTS, GEN_COUNT } gen_kind;

typedef struct gen_doc {
    uint32_t id;
    uint32_t nnz, ntok;
    uint32_t terms[40];
    float w[40];
    uint32_t toks[60];
} gen_doc;

typedef struct gen_corpus {
    size_t n;
    uint32_t vocab, tvocab;
    gen_doc *docs;
} gen_corpus;

/* Zipf-ish draw in [0, n): floor(n * u^3) puts most mass on small ids. */
static uint32_t gen_skewed(kd_rng *r, uint32_t n)
{
    float u = kd_rng_uniform(r);
    uint32_t v = (uint32_t)((float)n * u * u * u);
    return v < n ? v : n - 1;
}

static void gen_corpus_make(gen_corpus *c, gen_kind kind, size_t n, uint64_t seed)
{
    kd_rng r;
    kd_rng_seed(&r, seed, 11);
    c->n = n;
    c->vocab = kind == GEN_LONG_LISTS ? 12 : kind == GEN_UNIFORM ? 60 : 300;
    c->tvocab = kind == GEN_LONG_LISTS ? 15 : 80;
    c->docs = (gen_doc *)calloc(n, sizeof *c->docs);
    /* ids: a shuffled, gappy set so internal and external ids differ */
    for (size_t i = 0; i < n; i++) c->docs[i].id = (uint32_t)(i * 3 + 7);
    for (size_t i = n; i > 1; i--) {
        size_t j = kd_rng_below(&r, (uint32_t)i);
        uint32_t t = c->docs[i - 1].id;
        c->docs[i - 1].id = c->docs[j].id;
        c->docs[j].id = t;
    }
    for (size_t i = 0; i < n; i++) {
        gen_doc *d = &c->docs[i];
        d->nnz = kd_rng_below(&r, kind == GEN_LONG_LISTS ? 8 : 30);
        for (uint32_t j = 0; j < d->nnz; j++) {
            d->terms[j] = kind == GEN_UNIFORM || kind == GEN_LONG_LISTS ? kd_rng_below(&r, c->vocab)
                                                                         : gen_skewed(&r, c->vocab);
            switch (kind) {
            case GEN_ZIPF_TIES: d->w[j] = 0.5f * (float)(1 + kd_rng_below(&r, 3)); break;
            case GEN_ALL_EQUAL: d->w[j] = 1.0f; break;
            default: d->w[j] = 0.01f + 3.0f * kd_rng_uniform(&r); break;
            }
        }
        d->ntok = kd_rng_below(&r, kind == GEN_ALL_EQUAL ? 4 : 60);
        for (uint32_t j = 0; j < d->ntok; j++)
            d->toks[j] = kind == GEN_ALL_EQUAL ? 1 + (j % 2) : gen_skewed(&r, c->tvocab);
    }
}

static void gen_corpus_free(gen_corpus *c) { free(c->docs); }

static kd_sparse_index *gen_build(kd_context *ctx, const gen_corpus *c, const kd_sparse_index_config *cfg)
{
    kd_sparse_index_builder *b = NULL;
    ck_assert_int_eq(kd_sparse_index_builder_create(ctx, cfg, &b), KD_OK);
    for (size_t i = 0; i < c->n; i++) {
        const gen_doc *d = &c->docs[i];
        ck_assert_int_eq(kd_sparse_index_builder_add(b, d->id, d->terms, d->w, d->nnz, d->toks, d->ntok), KD_OK);
    }
    kd_sparse_index *idx = NULL;
    kd_status st = kd_sparse_index_build(b, &idx);
    ck_assert_msg(st == KD_OK, "build: %s", kd_context_last_error(ctx));
    kd_sparse_index_builder_destroy(b);
    return idx;
}

typedef struct gen_query {
    uint32_t nnz, ntok;
    uint32_t terms[12];
    float w[12];
    uint32_t toks[8];
} gen_query;

static void gen_query_make(gen_query *q, const gen_corpus *c, kd_rng *r)
{
    q->nnz = kd_rng_below(r, 10);
    for (uint32_t j = 0; j < q->nnz; j++) {
        /* some ids beyond the vocabulary: terms absent from the index */
        q->terms[j] = kd_rng_below(r, c->vocab + 5);
        q->w[j] = kd_rng_below(r, 4) == 0 ? 1.0f : 0.05f + 2.0f * kd_rng_uniform(r);
    }
    q->ntok = kd_rng_below(r, 7);
    for (uint32_t j = 0; j < q->ntok; j++) q->toks[j] = kd_rng_below(r, c->tvocab + 3);
}

#endif
