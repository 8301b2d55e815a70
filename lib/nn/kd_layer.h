/*
 * kd_layer.h - the internal layer vtable (never installed).
 *
 * A model is an ordered list of kd_layer objects. The model code knows layers
 * only through this vtable and through the kind table (kd__layer_kinds), so a
 * new kind (the MoE layer in lib/moe) plugs in by providing a vtable, a
 * constructor and one kd_layer_kind entry, with no change to kd_model.c.
 *
 * Contract
 * --------
 * Construction. A kind's parse function reads its arguments from the spec
 * tokenizer, is given the per-sample input shape, allocates the layer with
 * kd__alloc (the derived struct begins with `kd_layer base`), and sets
 * base.vt, base.in and base.out (the output shape is a function of the input
 * shape and the arguments; impossible shapes are a KD_E_FORMAT with a reason).
 *
 * Tensors. tensor_count / tensor_desc list the layer's tensors in state_dict
 * order: trainable parameters first, then buffers. Names are relative
 * ("weight"; a container prefixes its children's: "body.0.weight"). The
 * model lays every layer's parameters out back to back in its single
 * parameter block (and the same offsets in its gradient block) and its
 * buffers in its buffer block, then calls bind with pointers to the start of
 * this layer's region in each (grad may be NULL: no gradient block yet; a
 * later bind supplies it). A layer's own tensors sit in its region in the
 * order tensor_desc lists them. init fills parameters and buffers
 * (deterministically from rng).
 *
 * Workspace. workspace(batch, train) gives two sizes in floats:
 *   saved   - written by a training forward, read by the matching backward
 *             (masks, statistics; containers keep their children's
 *             activations here). Distinct per layer. 0 in inference mode is
 *             expected but not required.
 *   scratch - temporary during one forward or backward call (im2col
 *             columns); shared by all layers of the model.
 * Both are multiples of nothing in particular; the model aligns regions.
 *
 * forward(run, x, y): x is run->batch samples of shape `in` (dense floats in
 * x->x, or ids for the first layer), y receives run->batch samples of shape
 * `out` (overwritten). Must not allocate. Returns KD_OK or a status with
 * kd__fail (e.g. an id out of range) and then leaves y unspecified.
 *
 * backward(run, x, y, dy, dx): called after forward in training mode with
 * the same x and its y (and the same saved region). Accumulates (+=) into
 * the layer's parameter gradients and overwrites dx with dL/dx; dx may be
 * NULL (the caller does not need it; still accumulate parameter gradients).
 * x, y, dy, dx never alias. Must not allocate.
 *
 * spec appends the layer's canonical spec item ("linear 10 nobias") to sb;
 * parsing that text with the same input shape must rebuild the same layer.
 *
 * destroy releases what the layer allocated (children too) with kd__free.
 *
 * Optional slots (NULL when not supported; check abi_version before calling
 * anything appended after version 1):
 *   fold_scale_shift(channels, scale, shift): the layer's output channel c
 *     becomes out_c * scale[c] + shift[c] by rewriting its own parameters
 *     (linear, conv). Returns 0 when channels does not match. The layer may
 *     need a bias it lacks: then it returns -1 and the model first calls
 *     enable_bias (which changes tensor_count), relays out, and retries.
 *   enable_bias: see above.
 *   inference_affine(channels, scale, shift): in inference mode this layer
 *     is y = x * scale[c] + shift[c] per channel c (batch norm); returns 0
 *     when channels does not match.
 *   infer_shared (abi_version >= 2): returns 1 when the layer's forward in
 *     inference mode reads the layer and its tensors only and writes nothing
 *     but y, r->saved and r->scratch (a container: when all its children
 *     do). Then several threads may run inference through one model at
 *     once (kd_model_infer). NULL: the layer keeps state in its forward.
 */
#ifndef KD_LAYER_H
#define KD_LAYER_H

#include "kd/kd_nn.h"
#include "kd_internal.h"

#define KD_LAYER_ABI_VERSION 2u
#define KD_SHAPE_MAX_RANK 4
/* Largest per-sample element count and any single dimension (2^31). */
#define KD_NN_MAX_NUMEL ((size_t)1 << 31)

typedef enum kd_data_kind {
    KD_DATA_DENSE = 0, /* floats */
    KD_DATA_IDS = 1,   /* d[0] int32 ids per sample */
    KD_DATA_BAGS = 2   /* CSR id lists, rank 0 */
} kd_data_kind;

/* Per-sample shape (no batch dimension). */
typedef struct kd_shape {
    uint32_t kind;
    uint32_t rank;
    size_t d[KD_SHAPE_MAX_RANK];
} kd_shape;

/* Elements per sample of a dense shape (1 for rank 0). */
static inline size_t kd__shape_numel(const kd_shape *s)
{
    size_t n = 1;
    for (uint32_t i = 0; i < s->rank; i++) n *= s->d[i];
    return s->kind == KD_DATA_DENSE ? n : 0;
}
static inline int kd__shape_equal(const kd_shape *a, const kd_shape *b)
{
    if (a->kind != b->kind || a->rank != b->rank) return 0;
    for (uint32_t i = 0; i < a->rank; i++)
        if (a->d[i] != b->d[i]) return 0;
    return 1;
}

/* A growing string with the length it would need (like snprintf). */
typedef struct kd__sb {
    char *buf;
    size_t size;
    size_t len;
} kd__sb;
void kd__sb_puts(kd__sb *sb, const char *s);
void kd__sb_printf(kd__sb *sb, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
/* A float printed so that kd__parse_float reads back the same float. */
void kd__sb_float(kd__sb *sb, float v);

typedef struct kd_tensor_desc {
    char name[KD_TENSOR_NAME_MAX];
    uint32_t rank;
    size_t shape[KD_TENSOR_MAX_RANK];
    int is_buffer;
} kd_tensor_desc;

typedef struct kd_layer kd_layer;

/* What one forward/backward call of a layer gets besides its tensors. */
typedef struct kd_layer_run {
    kd_context *ctx;
    size_t batch;
    int train;
    float *saved;    /* this layer's saved region (see contract) */
    float *scratch;  /* shared scratch */
    kd_rng *rng;     /* the model's dropout stream */
} kd_layer_run;

/* A layer's input: dense floats, or ids for the first layer. */
typedef struct kd_layer_in {
    const float *x;
    const int32_t *ids;
    const int32_t *offsets; /* batch + 1 CSR offsets ('bags') or NULL */
    size_t n_ids;
} kd_layer_in;

typedef struct kd_layer_vtable {
    uint32_t abi_version; /* KD_LAYER_ABI_VERSION the layer was written against */
    const char *kind;     /* the spec keyword */
    size_t (*tensor_count)(const kd_layer *l);
    void (*tensor_desc)(const kd_layer *l, size_t i, kd_tensor_desc *d);
    void (*bind)(kd_layer *l, float *param, float *grad, float *buf); /* NULL: store in base */
    void (*init)(kd_layer *l, kd_rng *rng);                           /* NULL: nothing */
    void (*workspace)(const kd_layer *l, size_t batch, int train, size_t *saved,
                      size_t *scratch);                              /* NULL: 0, 0 */
    kd_status (*forward)(kd_layer *l, const kd_layer_run *r, const kd_layer_in *x, float *y);
    kd_status (*backward)(kd_layer *l, const kd_layer_run *r, const kd_layer_in *x,
                          const float *y, const float *dy, float *dx);
    void (*spec)(const kd_layer *l, kd__sb *sb);
    void (*destroy)(kd_layer *l, kd_context *ctx); /* NULL: kd__free(ctx, l) */
    /* optional */
    int (*fold_scale_shift)(kd_layer *l, size_t channels, const float *scale, const float *shift);
    void (*enable_bias)(kd_layer *l);
    int (*inference_affine)(const kd_layer *l, size_t channels, float *scale, float *shift);
    /* abi_version 2 */
    int (*infer_shared)(const kd_layer *l);
} kd_layer_vtable;

struct kd_layer {
    const kd_layer_vtable *vt;
    kd_shape in, out;
    float *param; /* start of this layer's parameters in the model's block */
    float *grad;  /* same offsets in the gradient block, or NULL */
    float *buf;   /* start of this layer's buffers */
};

/* ---- layer sizes ------------------------------------------------------- */

/* The layer's infer_shared answer (0 when the slot is absent). */
int kd__layer_infer_shared(const kd_layer *l);
/* An infer_shared slot for layers that keep no state in inference. */
int kd__layer_infer_shared_yes(const kd_layer *l);

/* Total parameter / buffer floats of a layer (from tensor_desc). */
void kd__layer_sizes(const kd_layer *l, size_t *n_param, size_t *n_buf);
void kd__layer_bind(kd_layer *l, float *param, float *grad, float *buf);
void kd__layer_destroy(kd_layer *l, kd_context *ctx);
void kd__layer_workspace(const kd_layer *l, size_t batch, int train, size_t *saved,
                         size_t *scratch);

/* Hot element-wise loops (bias, activations, pooling, im2col, optimizer
 * updates) are compiled for the x86-64-v4 (AVX-512), x86-64-v3 (AVX2+FMA)
 * and baseline levels and picked at load time (KD_TARGET_CLONES: feature
 * levels, never "arch=<cpu>" clones, which dispatch on the CPU model and
 * would leave an AMD Zen 4 on SSE2). fp-contract=fast lets GCC fuse a * b + c
 * into an FMA, which ISO C mode (-std=c11) otherwise forbids. */
#if defined(__GNUC__) && !defined(__clang__)
#define KD_NN_CLONES KD_TARGET_CLONES __attribute__((optimize("fp-contract=fast")))
#else
#define KD_NN_CLONES KD_TARGET_CLONES
#endif

/* Rounds a float count up to a multiple of 16 (64 bytes). */
static inline size_t kd__align_floats(size_t n)
{
    return (n + 15u) & ~(size_t)15u;
}

/* ---- spec parsing -------------------------------------------------------- */

typedef struct kd__spec_parser {
    kd_context *ctx;
    const char *s;   /* whole spec */
    size_t len;
    size_t pos;
    int depth;
    size_t layers;   /* layers parsed so far (limit) */
} kd__spec_parser;

/* Tokens: words [A-Za-z0-9_.+-]+ and the single characters ';' '{' '}'. 'x'
 * inside dims is part of the word ("1x28x28"). peek returns the next token's
 * length (0 at end) and start; next consumes it. */
size_t kd__spec_peek(kd__spec_parser *p, const char **tok);
void kd__spec_skip(kd__spec_parser *p, size_t n);
int kd__spec_accept(kd__spec_parser *p, const char *word);
kd_status kd__spec_uint(kd__spec_parser *p, const char *what, size_t max, size_t *v);
kd_status kd__spec_float(kd__spec_parser *p, const char *what, float lo, float hi, float *v);
kd_status kd__spec_error(kd__spec_parser *p, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
/* Parses a sequence of items until '}' or end; appends layers to *list. */
kd_status kd__spec_parse_items(kd__spec_parser *p, const kd_shape *in, kd_layer ***list,
                               size_t *n, size_t *cap, int until_brace);

/* One entry per layer kind: the spec keyword and its constructor. */
typedef struct kd_layer_kind {
    const char *keyword;
    kd_status (*parse)(kd__spec_parser *p, const kd_shape *in, kd_layer **out);
} kd_layer_kind;

/* NULL-terminated table of every kind. Defined above all layers, in
 * lib/kd_layer_kinds.c, so nn never names a higher layer's kind. */
extern const kd_layer_kind *const kd__layer_kinds[];

/* Built-in kinds. */
extern const kd_layer_kind kd__kind_linear, kd__kind_conv, kd__kind_maxpool, kd__kind_avgpool,
    kd__kind_flatten, kd__kind_identity, kd__kind_relu, kd__kind_gelu, kd__kind_silu,
    kd__kind_tanh, kd__kind_sigmoid, kd__kind_layernorm, kd__kind_batchnorm,
    kd__kind_dropout, kd__kind_embedding, kd__kind_embeddingbag, kd__kind_residual;

/* Convolution runs one GEMM per chunk of samples whose column buffer stays
 * within this many floats (2^24; the whole batch in the benchmarks). A
 * variable only so that tests can force several chunks with small layers;
 * change it only before a model first runs, never concurrently. */
extern size_t kd__conv_chunk_floats;

/* Creates an 'identity' layer of shape s (used when folding). */
kd_status kd__identity_create(kd_context *ctx, const kd_shape *s, kd_layer **out);

/* Appends l to a growable layer list. */
kd_status kd__layer_list_push(kd_context *ctx, kd_layer ***list, size_t *n, size_t *cap,
                              kd_layer *l);

/* Prints a list of items separated by "; ". */
void kd__spec_print_items(kd_layer *const *list, size_t n, kd__sb *sb);

/* Runs a sequence of layers (model body, residual body). acts/saved layout
 * inside `region` for training; ping-pong for inference. */
size_t kd__seq_region(kd_layer *const *list, size_t n, size_t batch, int train,
                      size_t *scratch);

/* The context a model was created from. */
kd_context *kd__model_context(const kd_model *m);
/* Top-level layer i of a model, NULL when out of range (lets a higher layer
 * reach its own kind inside a model, e.g. MoE statistics). */
kd_layer *kd__model_layer(const kd_model *m, size_t i);

#endif /* KD_LAYER_H */
