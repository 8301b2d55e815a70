/*
 * kd_context.c - contexts: allocator hooks, the fixed-buffer arena, errors,
 * logging.
 */
#include "kd_internal.h"

#if !defined(KD_EMBEDDED)
#include <stdlib.h>
static void *kd_malloc_hook(void *opaque, size_t size)
{
    (void)opaque;
    return malloc(size);
}
static void kd_free_hook(void *opaque, void *ptr)
{
    (void)opaque;
    free(ptr);
}
#endif

#define KD_DEFAULT_SEED 0x6b64u
#define KD_MAX_THREADS 1024

void kd_context_config_default_sized(kd_context_config *out, size_t size)
{
    kd_context_config d, *cfg = &d;
    memset(cfg, 0, sizeof *cfg);
    cfg->struct_size = (uint32_t)sizeof *cfg;
    cfg->threads = 1;
    cfg->seed = KD_DEFAULT_SEED;
    cfg->log_level = KD_LOG_WARN;
    cfg->gemm = KD_GEMM_AUTO;
    kd__default_out(out, size, cfg, sizeof *cfg);
}

/* Reports a create-time failure through the caller's log callback: there is
 * no context yet to hold the reason. */
static kd_status create_fail(const kd_context_config *cfg, kd_status st, const char *msg)
{
    if (cfg && cfg->log) cfg->log(cfg->log_user, KD_LOG_ERROR, msg);
    return st;
}

static size_t align_up(size_t v, size_t a) { return (v + (a - 1)) & ~(a - 1); }

size_t kd_context_estimate_size(void)
{
    return align_up(sizeof(struct kd_context), KD_ALIGN) + KD_ALIGN;
}

kd_status kd_context_create(const kd_context_config *cfg_in, kd_context **out)
{
    kd_context_config cfg;
    kd_context_config_default(&cfg);
    if (!out) return create_fail(cfg_in, KD_E_INVALID, "kd_context_create: out is NULL");
    *out = NULL;
    if (cfg_in && kd__config_copy(&cfg, sizeof cfg, cfg_in, cfg_in->struct_size, sizeof cfg) != KD_OK)
        return create_fail(cfg_in, KD_E_VERSION,
                           "kd_context_create: struct_size not supported by this library");
    if (cfg.threads < 1 || cfg.threads > KD_MAX_THREADS)
        return create_fail(cfg_in, KD_E_INVALID, "kd_context_create: threads must be in [1, 1024]");
    if ((unsigned)cfg.log_level > KD_LOG_DEBUG)
        return create_fail(cfg_in, KD_E_INVALID, "kd_context_create: bad log_level");
    if ((cfg.allocator.alloc == NULL) != (cfg.allocator.free == NULL))
        return create_fail(cfg_in, KD_E_INVALID,
                           "kd_context_create: allocator needs both alloc and free");
    if (cfg.arena && cfg.allocator.alloc)
        return create_fail(cfg_in, KD_E_INVALID,
                           "kd_context_create: give an arena or an allocator, not both");

    kd_context *ctx = NULL;
    if (cfg.arena) {
        uintptr_t base = (uintptr_t)cfg.arena;
        uintptr_t aligned = (base + (KD_ALIGN - 1)) & ~(uintptr_t)(KD_ALIGN - 1);
        size_t skip = (size_t)(aligned - base);
        size_t need = align_up(sizeof *ctx, KD_ALIGN);
        if (cfg.arena_size < skip || cfg.arena_size - skip < need)
            return create_fail(cfg_in, KD_E_NOMEM,
                               "kd_context_create: arena smaller than kd_context_estimate_size()");
        ctx = (kd_context *)aligned;
        memset(ctx, 0, sizeof *ctx);
        ctx->arena = (unsigned char *)aligned;
        ctx->arena_size = cfg.arena_size - skip;
        ctx->arena_used = need;
        ctx->arena_peak = need;
        ctx->arena_last = need;
        ctx->self_in_arena = 1;
    } else {
        kd_allocator a = cfg.allocator;
        if (!a.alloc) {
#if defined(KD_EMBEDDED)
            return create_fail(cfg_in, KD_E_UNSUPPORTED,
                               "kd_context_create: embedded build needs an arena or an allocator");
#else
            a.alloc = kd_malloc_hook;
            a.free = kd_free_hook;
            a.opaque = NULL;
#endif
        }
        ctx = (kd_context *)a.alloc(a.opaque, sizeof *ctx);
        if (!ctx) return create_fail(cfg_in, KD_E_NOMEM, "kd_context_create: allocation failed");
        memset(ctx, 0, sizeof *ctx);
        ctx->allocator = a;
    }
    ctx->threads = cfg.threads;
    ctx->seed = cfg.seed;
    kd_rng_seed(&ctx->rng, cfg.seed, 0x6b64u);
    ctx->log = cfg.log;
    ctx->log_user = cfg.log_user;
    ctx->log_level = cfg.log_level;
    ctx->blis_arch = "";

    kd_gemm_backend be = cfg.gemm;
    if ((unsigned)be > KD_GEMM_REFERENCE) {
        kd_context_destroy(ctx);
        return create_fail(cfg_in, KD_E_INVALID, "kd_context_create: bad gemm backend");
    }
#if defined(KD_HAVE_BLIS)
    if (be == KD_GEMM_AUTO) be = KD_GEMM_BLIS;
    if (be == KD_GEMM_BLIS) {
        kd_status st = kd__blis_select(ctx, cfg.blis_arch, &ctx->blis_arch);
        if (st != KD_OK) {
            kd_status s2 = create_fail(cfg_in, st, ctx->last_error);
            kd_context_destroy(ctx);
            return s2;
        }
    }
#else
    if (be == KD_GEMM_BLIS) {
        kd_context_destroy(ctx);
        return create_fail(cfg_in, KD_E_UNSUPPORTED, "kd_context_create: built without BLIS");
    }
    be = KD_GEMM_REFERENCE;
#endif
    ctx->gemm = be;
    *out = ctx;
    return KD_OK;
}

void kd_context_destroy(kd_context *ctx)
{
    if (!ctx) return;
    if (ctx->self_in_arena) {
        /* The arena belongs to the caller; nothing to give back. */
        ctx->arena_used = 0;
        return;
    }
    kd_allocator a = ctx->allocator;
    a.free(a.opaque, ctx);
}

const char *kd_context_last_error(const kd_context *ctx)
{
    if (!ctx) return "no context";
    return ctx->last_error;
}

kd_status kd_context_last_status(const kd_context *ctx)
{
    return ctx ? ctx->last_status : KD_E_INVALID;
}

void kd_context_clear_error(kd_context *ctx)
{
    if (!ctx) return;
    ctx->last_status = KD_OK;
    ctx->last_error[0] = '\0';
}

int kd_context_threads(const kd_context *ctx) { return ctx ? ctx->threads : 0; }

kd_status kd_context_set_threads(kd_context *ctx, int threads)
{
    if (!ctx) return KD_E_INVALID;
    if (threads < 1 || threads > KD_MAX_THREADS)
        return kd__fail(ctx, KD_E_INVALID, "kd_context_set_threads: %d not in [1, %d]",
                        threads, KD_MAX_THREADS);
    ctx->threads = threads;
    return KD_OK;
}

uint64_t kd_context_seed(const kd_context *ctx) { return ctx ? ctx->seed : 0; }

kd_rng *kd_context_rng(kd_context *ctx) { return ctx ? &ctx->rng : NULL; }

kd_status kd_context_arena_usage(const kd_context *ctx, size_t *used, size_t *peak)
{
    if (!ctx) return KD_E_INVALID;
    if (used) *used = ctx->arena ? ctx->arena_used : 0;
    if (peak) *peak = ctx->arena ? ctx->arena_peak : 0;
    return KD_OK;
}

/* ---- errors and logging ---------------------------------------------- */

kd_status kd__fail(kd_context *ctx, kd_status status, const char *fmt, ...)
{
    if (!ctx) return status;
    va_list ap;
    va_start(ap, fmt);
    kd__vfmt(ctx->last_error, sizeof ctx->last_error, fmt, ap);
    va_end(ap);
    ctx->last_status = status;
    if (ctx->log && ctx->log_level >= KD_LOG_DEBUG)
        ctx->log(ctx->log_user, KD_LOG_DEBUG, ctx->last_error);
    return status;
}

void kd__log(kd_context *ctx, kd_log_level level, const char *fmt, ...)
{
    if (!ctx || !ctx->log || level > ctx->log_level) return;
    char msg[KD_ERRMSG_SIZE];
    va_list ap;
    va_start(ap, fmt);
    kd__vfmt(msg, sizeof msg, fmt, ap);
    va_end(ap);
    ctx->log(ctx->log_user, level, msg);
}

/* ---- versioned config structs ----------------------------------------- */

kd_status kd__config_copy(void *dst, size_t dst_size, const void *src, size_t src_size,
                          size_t min_size)
{
    if (src_size < min_size) return KD_E_VERSION;
    if (src_size > dst_size) {
        /* A caller built against newer headers: fine while it leaves the
         * fields this library does not know at zero (their defaults). */
        const unsigned char *tail = (const unsigned char *)src + dst_size;
        for (size_t i = 0; i < src_size - dst_size; i++)
            if (tail[i]) return KD_E_VERSION;
        src_size = dst_size;
    }
    memcpy(dst, src, src_size);
    ((uint32_t *)dst)[0] = (uint32_t)dst_size;
    return KD_OK;
}

void kd__default_out(void *out, size_t size, void *full, size_t full_size)
{
    if (!out || size < sizeof(uint32_t)) return;
    uint32_t caller = size > UINT32_MAX ? UINT32_MAX : (uint32_t)size;
    memcpy(full, &caller, sizeof caller);
    if (size > full_size) {
        memset((unsigned char *)out + full_size, 0, size - full_size);
        size = full_size;
    }
    memcpy(out, full, size);
}

/* ---- memory ---------------------------------------------------------- */

void *kd__alloc(kd_context *ctx, size_t size)
{
    if (!ctx) return NULL;
    if (size == 0) size = 1;
    if (size > (size_t)PTRDIFF_MAX) {
        /* No object may be larger (pointer differences inside it would
         * overflow); do not hand the allocator an absurd size. */
        kd__fail(ctx, KD_E_NOMEM, "allocation of %zu bytes exceeds the largest object size", size);
        return NULL;
    }
    if (ctx->arena) {
        size_t start = align_up(ctx->arena_used, KD_ALIGN), end;
        if (start < ctx->arena_used || kd__add_overflow(start, size, &end) ||
            end > ctx->arena_size) {
            kd__fail(ctx, KD_E_NOMEM, "arena exhausted: need %zu more bytes, %zu of %zu used",
                     size, ctx->arena_used, ctx->arena_size);
            return NULL;
        }
        ctx->arena_last = ctx->arena_used;
        ctx->arena_used = end;
        if (end > ctx->arena_peak) ctx->arena_peak = end;
        return ctx->arena + start;
    }
    void *p = ctx->allocator.alloc(ctx->allocator.opaque, size);
    if (!p) kd__fail(ctx, KD_E_NOMEM, "allocation of %zu bytes failed", size);
    return p;
}

void *kd__calloc(kd_context *ctx, size_t n, size_t elem)
{
    size_t bytes;
    if (kd__mul_overflow(n, elem, &bytes)) {
        kd__fail(ctx, KD_E_OVERFLOW, "allocation of %zu x %zu bytes overflows size_t", n, elem);
        return NULL;
    }
    void *p = kd__alloc(ctx, bytes);
    if (p) memset(p, 0, bytes ? bytes : 1);
    return p;
}

void kd__free(kd_context *ctx, void *ptr)
{
    if (!ctx || !ptr) return;
    if (ctx->arena) {
        unsigned char *p = (unsigned char *)ptr;
        if (p == ctx->arena + align_up(ctx->arena_last, KD_ALIGN)) {
            ctx->arena_used = ctx->arena_last;
        }
        return;
    }
    ctx->allocator.free(ctx->allocator.opaque, ptr);
}

char *kd__strdup(kd_context *ctx, const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = (char *)kd__alloc(ctx, n);
    if (d) memcpy(d, s, n);
    return d;
}
