/*
 * kd_internal.h - shared internals of libkd (never installed).
 *
 * Everything here is hidden (-fvisibility=hidden and not in libkd.map); the
 * kd__ prefix marks library-internal functions. Tests link the static
 * library and may call them.
 */
#ifndef KD_INTERNAL_H
#define KD_INTERNAL_H

#include <stdarg.h>
#include <stdint.h>
#include <string.h>

#include "kd/kd_core.h"
#include "kd/kd_math.h"

#define KD_ERRMSG_SIZE 256
#define KD_ALIGN 64

struct kd_context {
    kd_allocator allocator;     /* effective hooks (never NULL in hosted mode) */
    unsigned char *arena;       /* NULL: allocator mode */
    size_t arena_size;
    size_t arena_used;
    size_t arena_peak;
    size_t arena_last;          /* offset of the most recent block, for LIFO free */
    int threads;
    uint64_t seed;
    kd_rng rng;
    kd_log_fn log;
    void *log_user;
    kd_log_level log_level;
    kd_gemm_backend gemm;       /* resolved: BLIS or REFERENCE */
    const char *blis_arch;      /* static string, "" when not BLIS */
    kd_status last_status;
    char last_error[KD_ERRMSG_SIZE];
    int self_in_arena;          /* the context struct itself lives in the arena */
};

/* ---- errors ---------------------------------------------------------- */

/* Records status + formatted reason in ctx (if non-NULL), logs it at DEBUG,
 * and returns status, so call sites read `return kd__fail(ctx, ...)`. */
kd_status kd__fail(kd_context *ctx, kd_status status, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

/* Delivers a message to the log callback when level is enabled. */
void kd__log(kd_context *ctx, kd_log_level level, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

/* snprintf replacement with no stdio dependency (firmware builds have none).
 * Supports %% %c %s %d %i %u %x %p %g %f and the l, ll, z length modifiers.
 * Always NUL-terminates when size > 0; returns the number of chars written. */
size_t kd__vfmt(char *buf, size_t size, const char *fmt, va_list ap);
size_t kd__fmt(char *buf, size_t size, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

/* ---- versioned config structs ------------------------------------------ */

/* Copies a caller's config struct (first field uint32_t struct_size) over a
 * defaulted dst. Accepts src_size in [min_size, dst_size], and larger sizes
 * whose unknown tail is all zero; KD_E_VERSION otherwise. min_size is the
 * size of the struct's first released version. */
kd_status kd__config_copy(void *dst, size_t dst_size, const void *src, size_t src_size,
                          size_t min_size);

/* The body of every kd_X_default_sized(out, size): copies the library's
 * defaults (`full`, full_size bytes, struct_size first) into the caller's
 * struct of `size` bytes - the caller's compile-time sizeof, passed by the
 * kd_X_default() macro. Zeroes a newer caller's tail the library does not
 * know and sets struct_size to the caller's size, so a field the caller sets
 * there is reported (KD_E_VERSION) instead of ignored. No-op for NULL or a
 * size below the struct_size field. */
void kd__default_out(void *out, size_t size, void *full, size_t full_size);

/* ---- memory ---------------------------------------------------------- */

/* Overflow-checked size arithmetic: return 1 on overflow, 0 otherwise. */
static inline int kd__mul_overflow(size_t a, size_t b, size_t *out)
{
#if defined(__GNUC__)
    return __builtin_mul_overflow(a, b, out);
#else
    if (b != 0 && a > SIZE_MAX / b) return 1;
    *out = a * b;
    return 0;
#endif
}
static inline int kd__add_overflow(size_t a, size_t b, size_t *out)
{
#if defined(__GNUC__)
    return __builtin_add_overflow(a, b, out);
#else
    if (a > SIZE_MAX - b) return 1;
    *out = a + b;
    return 0;
#endif
}

/* Allocates size bytes (KD_ALIGN-aligned in arena mode, malloc alignment
 * otherwise). On failure records KD_E_NOMEM (or KD_E_OVERFLOW) in ctx and
 * returns NULL. size 0 allocates 1 byte so the result is a unique pointer. */
void *kd__alloc(kd_context *ctx, size_t size);
/* Zeroed array of n elements of elem bytes, overflow-checked. */
void *kd__calloc(kd_context *ctx, size_t n, size_t elem);
/* Releases memory from kd__alloc/kd__calloc. NULL is a no-op. In arena mode
 * only the most recent block is returned to the arena (LIFO); other frees are
 * no-ops, the arena being reset as a whole when the context goes away. */
void kd__free(kd_context *ctx, void *ptr);
/* Duplicates a NUL-terminated string. */
char *kd__strdup(kd_context *ctx, const char *s);

/* ---- numerics -------------------------------------------------------- */

/* Compile a hot function for the x86-64-v4 (AVX-512), x86-64-v3 (AVX2+FMA)
 * and baseline levels, chosen at load time. Feature levels, not
 * "arch=<cpu>" clones: those dispatch on the CPU model and leave e.g. an AMD
 * Zen 4 on SSE2. Off under ThreadSanitizer, whose runtime is not ready when
 * the loader runs ifunc resolvers, and off outside GCC on x86-64. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && \
    !defined(__SANITIZE_THREAD__) && !defined(KD_EMBEDDED)
#define KD_TARGET_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define KD_TARGET_CLONES
#endif

/* Row-major GEMM without argument checks (callers validated shapes). */
void kd__gemm(kd_context *ctx, int transa, int transb, size_t m, size_t n, size_t k,
              float alpha, const float *a, size_t lda, const float *b, size_t ldb,
              float beta, float *c, size_t ldc);
/* Fast path for C with at most KD_GEMM_SMALL_M rows and A not transposed
 * (batch-1 inference); returns 0, doing nothing, for other shapes. */
#define KD_GEMM_SMALL_M 4
int kd__gemm_small(int transa, int transb, size_t m, size_t n, size_t k, float alpha,
                   const float *a, size_t lda, const float *b, size_t ldb, float beta, float *c,
                   size_t ldc);
void kd__gemm_reference(int transa, int transb, size_t m, size_t n, size_t k,
                        float alpha, const float *a, size_t lda, const float *b,
                        size_t ldb, float beta, float *c, size_t ldc);

#if defined(KD_HAVE_BLIS)
/* Selects the BLIS sub-configuration (once per process) and reports the one in
 * force. requested: NULL (fastest supported), "blis" (BLIS's own choice), or
 * a name. Returns KD_E_UNSUPPORTED for a name this build or CPU cannot run. */
kd_status kd__blis_select(kd_context *ctx, const char *requested, const char **in_force);
void kd__gemm_blis(int threads, int transa, int transb, size_t m, size_t n, size_t k,
                   float alpha, const float *a, size_t lda, const float *b, size_t ldb,
                   float beta, float *c, size_t ldc);
#endif

/* ---- files (hosted builds only) -------------------------------------- */

#if !defined(KD_EMBEDDED)
/* Crash-safe writer: open -> write* -> commit (fsync, rename, fsync folder),
 * or abort. On any failure after open the temporary file is removed and the
 * file under the final name (if any) is untouched. */
typedef struct kd_atomic_file {
    kd_context *ctx;
    int fd;
    char *tmp_path;
    char *final_path;
    size_t written;
} kd_atomic_file;

kd_status kd__atomic_open(kd_context *ctx, kd_atomic_file *f, const char *path);
kd_status kd__atomic_write(kd_atomic_file *f, const void *data, size_t size);
/* Finishes the file; the handle is closed either way. */
kd_status kd__atomic_commit(kd_atomic_file *f);
/* Drops the temporary file; safe after a failed write or commit, and twice. */
void kd__atomic_abort(kd_atomic_file *f);

/* Read-only memory map of a whole file (size 0 gives data == NULL). */
typedef struct kd_mapped_file {
    const unsigned char *data;
    size_t size;
} kd_mapped_file;
kd_status kd__map_file(kd_context *ctx, const char *path, kd_mapped_file *m);
void kd__unmap_file(kd_mapped_file *m);

/* ---- fault injection (tests only; no effect unless set) -------------- */

/* Called before each OS call of the writers with "write", "fsync" or
 * "rename"; returning an errno value (e.g. ENOSPC, EIO) makes that call fail. */
extern int (*kd__io_fault_hook)(const char *op);
#endif

#endif /* KD_INTERNAL_H */
