/*
 * kd_core.h - libkd core: version, status codes, contexts, allocators, RNG.
 *
 * Every libkd handle is created from a kd_context. The context carries the
 * allocator, the thread count, the RNG seed, an optional log callback and the
 * detailed reason for the last failure. There is no hidden global state,
 * except what BLIS itself keeps per process (see kd_math.h).
 *
 * Conventions (all public headers):
 *  - Every fallible call returns kd_status (KD_OK == 0) and writes results
 *    through out-pointers; on failure the out-pointer is left untouched or set
 *    to NULL, and a reason is stored in the context (kd_context_last_error).
 *  - The library never aborts, exits, asserts on caller input or prints.
 *  - Config structs begin with `uint32_t struct_size`; fill them with the
 *    matching *_default() function, then change fields.
 *  - Free/destroy functions accept NULL.
 *  - "borrows" means the pointer must stay valid for the duration stated;
 *    "copies" means the library keeps its own copy.
 *
 * Thread safety: a kd_context and everything created from it may be used by
 * one thread at a time unless a header says otherwise. Distinct contexts are
 * independent.
 */
#ifndef KD_CORE_H
#define KD_CORE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/** @defgroup core Core: version, status, context
 *  @{ */

/** Symbol visibility: every public function carries KD_API. */
#if defined(_WIN32) && defined(KD_BUILDING_SHARED)
#define KD_API __declspec(dllexport)
#elif defined(__GNUC__) && defined(KD_BUILDING)
#define KD_API __attribute__((visibility("default")))
#else
#define KD_API
#endif

/** Version of the headers being compiled against. */
#define KD_VERSION_MAJOR 0
#define KD_VERSION_MINOR 1
#define KD_VERSION_PATCH 0
/** MAJOR * 10000 + MINOR * 100 + PATCH. */
#define KD_VERSION_NUMBER \
    (KD_VERSION_MAJOR * 10000 + KD_VERSION_MINOR * 100 + KD_VERSION_PATCH)
#define KD_VERSION_STRING "0.1.0"

/** Version of the library actually linked (KD_VERSION_NUMBER of its build). */
KD_API unsigned kd_version_number(void);
/** Version string of the linked library, e.g. "0.1.0". Static storage. */
KD_API const char *kd_version_string(void);

/**
 * Nonzero when the linked library can serve code compiled against these
 * headers: same major version, and a library minor version at least the
 * header's (a newer library keeps every older symbol and struct prefix).
 */
#define KD_VERSION_COMPATIBLE()                                             \
    ((kd_version_number() / 10000u) == (unsigned)KD_VERSION_MAJOR &&       \
     (kd_version_number() % 10000u) / 100u >= (unsigned)KD_VERSION_MINOR)

/**
 * Status codes. The numbers are pinned: they never change meaning and are
 * never reused. New codes are appended.
 */
typedef enum kd_status {
    KD_OK = 0,              /**< success */
    KD_E_INVALID = 1,       /**< invalid argument (NULL, out of range, NaN where forbidden) */
    KD_E_NOMEM = 2,         /**< the allocator or the arena refused */
    KD_E_OVERFLOW = 3,      /**< a size or byte count does not fit size_t */
    KD_E_SHAPE = 4,         /**< tensor shapes do not agree */
    KD_E_FORMAT = 5,        /**< malformed file or buffer */
    KD_E_IO = 6,            /**< an operating-system I/O call failed */
    KD_E_UNSUPPORTED = 7,   /**< valid request this build or CPU cannot serve */
    KD_E_NUMERIC = 8,       /**< NaN or Inf met where a finite value is required */
    KD_E_STATE = 9,         /**< call not valid in the handle's current state */
    KD_E_VERSION = 10,      /**< struct_size / abi_version / file version not supported */
    KD_E_NOT_FOUND = 11,    /**< named item (tensor, parameter, file) not found */
    KD_E_CORRUPT = 12,      /**< checksum mismatch: data was damaged */
    KD_E_CALLBACK = 13,     /**< a user callback reported failure */
    KD_E_INTERNAL = 14      /**< a libkd bug: please report it */
} kd_status;

/** Number of pinned status codes (one past the largest). */
#define KD_STATUS_COUNT 15

/** Static, human-readable text for a status code; never NULL. */
KD_API const char *kd_status_string(kd_status status);

/**
 * Allocator hooks. alloc must return memory aligned for any object type
 * (like malloc) or NULL; free must accept NULL. size is never 0.
 */
typedef struct kd_allocator {
    void *(*alloc)(void *opaque, size_t size);
    void (*free)(void *opaque, void *ptr);
    void *opaque;
} kd_allocator;

/** Log levels passed to a kd_log_fn. */
typedef enum kd_log_level {
    KD_LOG_ERROR = 0,
    KD_LOG_WARN = 1,
    KD_LOG_INFO = 2,
    KD_LOG_DEBUG = 3
} kd_log_level;

/** Log callback: message is NUL-terminated and valid only during the call. */
typedef void (*kd_log_fn)(void *user, kd_log_level level, const char *message);

/** Which GEMM implementation a context uses. */
typedef enum kd_gemm_backend {
    KD_GEMM_AUTO = 0,      /**< the build's default (BLIS when built with it) */
    KD_GEMM_BLIS = 1,      /**< BLIS; KD_E_UNSUPPORTED if not built in */
    KD_GEMM_REFERENCE = 2  /**< portable C: firmware, and the test oracle */
} kd_gemm_backend;

/** Context configuration. Fill with kd_context_config_default(). */
typedef struct kd_context_config {
    uint32_t struct_size;      /**< sizeof(kd_context_config) */
    kd_allocator allocator;    /**< alloc == NULL: the C library's malloc/free (hosted only) */
    void *arena;               /**< non-NULL: all memory comes from this buffer (no malloc) */
    size_t arena_size;         /**< bytes in arena */
    int threads;               /**< worker threads for GEMM etc.; 1 = serial (default) */
    uint64_t seed;             /**< RNG seed (default 0x6b64 'kd') */
    kd_log_fn log;             /**< optional; libkd never prints by itself */
    void *log_user;            /**< passed to log */
    kd_log_level log_level;    /**< most verbose level delivered (default KD_LOG_WARN) */
    kd_gemm_backend gemm;      /**< default KD_GEMM_AUTO */
    /**
     * BLIS sub-configuration: NULL (default) selects the fastest one the CPU
     * supports; "blis" keeps BLIS's own detection; a name such as "skx",
     * "haswell", "zen3", "generic" forces it. BLIS reads its choice once per
     * process: see kd_context_blis_arch() and docs/ARCHITECTURE.md.
     * Borrowed only during kd_context_create.
     */
    const char *blis_arch;
} kd_context_config;

/** Fills *cfg with defaults (struct_size set). No-op when cfg is NULL. */
KD_API void kd_context_config_default_sized(kd_context_config *cfg, size_t size);
#define kd_context_config_default(cfg) kd_context_config_default_sized((cfg), sizeof(kd_context_config))

typedef struct kd_context kd_context;

/**
 * Creates a context. cfg may be NULL (all defaults). With cfg->arena set the
 * context itself and every later allocation live inside the arena and nothing
 * is ever passed to malloc. On success *out owns the context; release it
 * with kd_context_destroy.
 */
KD_API kd_status kd_context_create(const kd_context_config *cfg, kd_context **out);

/** Destroys a context. Handles created from it must be destroyed first. NULL is a no-op. */
KD_API void kd_context_destroy(kd_context *ctx);

/**
 * Detailed reason for the last failure recorded in ctx (static text "" when
 * there is none, "no context" when ctx is NULL). Valid until the next libkd
 * call with the same context.
 */
KD_API const char *kd_context_last_error(const kd_context *ctx);

/** Status of the last failure recorded in ctx (KD_OK when none). */
KD_API kd_status kd_context_last_status(const kd_context *ctx);

/** Forgets the last failure. */
KD_API void kd_context_clear_error(kd_context *ctx);

/** Thread count configured for ctx (>= 1); 0 when ctx is NULL. */
KD_API int kd_context_threads(const kd_context *ctx);

/** Changes the thread count (>= 1). */
KD_API kd_status kd_context_set_threads(kd_context *ctx, int threads);

/** The seed the context was created with. */
KD_API uint64_t kd_context_seed(const kd_context *ctx);

/** Arena accounting: bytes in use now and the high-water mark (0 without arena). */
KD_API kd_status kd_context_arena_usage(const kd_context *ctx, size_t *used, size_t *peak);

/**
 * Smallest arena that can hold a kd_context itself; handles need more (each
 * handle family has its own *_estimate_size function).
 */
KD_API size_t kd_context_estimate_size(void);

/**
 * Reproducible random numbers: PCG32 (O'Neill, "PCG: A Family of Simple Fast
 * Space-Efficient Statistically Good Algorithms for Random Number Generation",
 * 2014; the pcg32 XSH-RR 64/32 variant). The same seed and stream give the
 * same sequence on every platform. Plain struct so FFI users can hold one.
 */
typedef struct kd_rng {
    uint64_t state;
    uint64_t inc;
} kd_rng;

/** Seeds rng; stream selects one of 2^63 independent sequences. */
KD_API void kd_rng_seed(kd_rng *rng, uint64_t seed, uint64_t stream);
/** Next 32 uniformly distributed bits. */
KD_API uint32_t kd_rng_u32(kd_rng *rng);
/** Uniform integer in [0, bound) without modulo bias; 0 when bound is 0. */
KD_API uint32_t kd_rng_below(kd_rng *rng, uint32_t bound);
/** Uniform float in [0, 1) with 24 random bits. */
KD_API float kd_rng_uniform(kd_rng *rng);
/** Standard normal float (Box-Muller on two uniforms). */
KD_API float kd_rng_normal(kd_rng *rng);

/** The context's own generator (seeded from cfg->seed), for library-internal draws. */
KD_API kd_rng *kd_context_rng(kd_context *ctx);

/** CRC-32C (Castagnoli, reflected 0x82F63B78) of data, continuing from crc (start with 0). */
KD_API uint32_t kd_crc32c(uint32_t crc, const void *data, size_t size);

/** @} */

#ifdef __cplusplus
}
#endif

#endif /* KD_CORE_H */
