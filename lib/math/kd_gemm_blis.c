/*
 * kd_gemm_blis.c - GEMM through BLIS, and the choice of BLIS sub-configuration.
 *
 * BLIS picks its kernels ("sub-configuration") once per process, when it
 * first initialises, from the environment variable BLIS_ARCH_TYPE (an arch_t
 * number) or else from its own CPUID detection. Debian's BLIS 0.9 exports no
 * function to choose it, and its detection picks 'haswell' kernels on CPUs
 * whose 'skx' (AVX-512) kernels run much faster. So libkd, before its first
 * BLIS call in the process, sets BLIS_ARCH_TYPE to the fastest
 * sub-configuration the CPU supports (unless the caller or the environment
 * chose one), then asks BLIS which one it took. Limits:
 *  - If the host application initialised BLIS before libkd, its choice
 *    stands: libkd reports it and logs a warning.
 *  - BLIS aborts the process on an arch id it was not built with; libkd only
 *    ever sets ids it checked against the build (BLIS_CONFIG_*) and the CPU,
 *    and refuses an unusable BLIS_ARCH_TYPE found in the environment rather
 *    than letting BLIS abort.
 *  - setenv is not thread-safe: create the first BLIS-backed context before
 *    starting threads that read the environment.
 */
#include <blis.h>
#include <pthread.h>
#include <stdlib.h>

#include "kd_internal.h"

typedef struct {
    const char *name;
    arch_t id;
    int (*cpu_ok)(void);
} kd_blis_arch_entry;

#if defined(__x86_64__) || defined(__i386__)
static int cpu_avx512(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
           __builtin_cpu_supports("avx512cd") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl");
}
static int cpu_avx2(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
static int cpu_avx(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx");
}
static int cpu_ssse3(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("ssse3");
}
#endif
static int cpu_any(void) { return 1; }

/* Preference order: first usable entry is "the fastest the CPU supports".
 * bench/bench_gemm measures every usable entry to keep this order honest. */
static const kd_blis_arch_entry kd_blis_archs[] = {
#if defined(__x86_64__) || defined(__i386__)
#if defined(BLIS_CONFIG_SKX)
    {"skx", BLIS_ARCH_SKX, cpu_avx512},
#endif
#if defined(BLIS_CONFIG_ZEN3)
    {"zen3", BLIS_ARCH_ZEN3, cpu_avx2},
#endif
#if defined(BLIS_CONFIG_HASWELL)
    {"haswell", BLIS_ARCH_HASWELL, cpu_avx2},
#endif
#if defined(BLIS_CONFIG_ZEN2)
    {"zen2", BLIS_ARCH_ZEN2, cpu_avx2},
#endif
#if defined(BLIS_CONFIG_ZEN)
    {"zen", BLIS_ARCH_ZEN, cpu_avx2},
#endif
#if defined(BLIS_CONFIG_SANDYBRIDGE)
    {"sandybridge", BLIS_ARCH_SANDYBRIDGE, cpu_avx},
#endif
#if defined(BLIS_CONFIG_PENRYN)
    {"penryn", BLIS_ARCH_PENRYN, cpu_ssse3},
#endif
#endif
#if defined(BLIS_CONFIG_GENERIC)
    {"generic", BLIS_ARCH_GENERIC, cpu_any},
#endif
};
#define KD_N_ARCHS (sizeof kd_blis_archs / sizeof kd_blis_archs[0])

static const kd_blis_arch_entry *find_by_name(const char *name)
{
    for (size_t i = 0; i < KD_N_ARCHS; i++)
        if (strcmp(kd_blis_archs[i].name, name) == 0) return &kd_blis_archs[i];
    return NULL;
}

static const kd_blis_arch_entry *find_by_id(long id)
{
    for (size_t i = 0; i < KD_N_ARCHS; i++)
        if ((long)kd_blis_archs[i].id == id) return &kd_blis_archs[i];
    return NULL;
}

static const kd_blis_arch_entry *best_supported(void)
{
    for (size_t i = 0; i < KD_N_ARCHS; i++)
        if (kd_blis_archs[i].cpu_ok()) return &kd_blis_archs[i];
    return NULL;
}

static pthread_mutex_t kd_blis_lock = PTHREAD_MUTEX_INITIALIZER;
static int kd_blis_initialised;

kd_status kd__blis_select(kd_context *ctx, const char *requested, const char **in_force)
{
    const kd_blis_arch_entry *want = NULL;
    int keep_blis_choice = requested && strcmp(requested, "blis") == 0;
    if (requested && !keep_blis_choice) {
        want = find_by_name(requested);
        if (!want)
            return kd__fail(ctx, KD_E_UNSUPPORTED,
                            "BLIS sub-configuration '%s' is not in this BLIS build", requested);
        if (!want->cpu_ok())
            return kd__fail(ctx, KD_E_UNSUPPORTED,
                            "BLIS sub-configuration '%s' needs instructions this CPU lacks",
                            requested);
    }

    pthread_mutex_lock(&kd_blis_lock);
    if (!kd_blis_initialised) {
        const char *env = getenv("BLIS_ARCH_TYPE");
        if (env && *env) {
            /* Someone chose already: keep it if it is safe, refuse otherwise
             * (BLIS would abort the process on a bad id). */
            char *end = NULL;
            long id = strtol(env, &end, 10);
            const kd_blis_arch_entry *e = (end && *end == '\0') ? find_by_id(id) : NULL;
            if (!e || !e->cpu_ok()) {
                pthread_mutex_unlock(&kd_blis_lock);
                return kd__fail(ctx, KD_E_UNSUPPORTED,
                                "BLIS_ARCH_TYPE='%s' names no sub-configuration this build and "
                                "CPU can run", env);
            }
            if (want && want != e) {
                pthread_mutex_unlock(&kd_blis_lock);
                return kd__fail(ctx, KD_E_UNSUPPORTED,
                                "BLIS_ARCH_TYPE=%s (%s) in the environment conflicts with the "
                                "requested '%s'", env, e->name, want->name);
            }
        } else if (!keep_blis_choice) {
            if (!want) want = best_supported();
            if (want) {
                char buf[16];
                kd__fmt(buf, sizeof buf, "%d", (int)want->id);
                setenv("BLIS_ARCH_TYPE", buf, 1);
            }
        }
        kd_blis_initialised = 1;
    }
    /* bli_init registers the sub-configurations and reads BLIS_ARCH_TYPE;
     * querying the id before it makes BLIS abort. */
    bli_init();
    arch_t id = bli_arch_query_id();
    pthread_mutex_unlock(&kd_blis_lock);

    const char *name = bli_arch_string(id);
    *in_force = name ? name : "unknown";
    if (want && id != want->id) {
        if (requested)
            return kd__fail(ctx, KD_E_UNSUPPORTED,
                            "BLIS already runs '%s' in this process; cannot switch to '%s'",
                            *in_force, want->name);
        kd__log(ctx, KD_LOG_WARN,
                "BLIS was initialised before libkd and runs '%s'; '%s' would be faster",
                *in_force, want->name);
    }
    kd__log(ctx, KD_LOG_INFO, "BLIS sub-configuration: %s", *in_force);
    return KD_OK;
}

static void blis_sgemm(int threads, int transa, int transb, size_t m, size_t n, size_t k,
                       float alpha, const float *a, size_t lda, const float *b, size_t ldb,
                       float beta, float *c, size_t ldc)
{
    rntm_t rntm = BLIS_RNTM_INITIALIZER;
    bli_rntm_set_num_threads((dim_t)threads, &rntm);
    /* BLIS takes non-const pointers but does not write A, B, alpha or beta. */
    bli_sgemm_ex(transa ? BLIS_TRANSPOSE : BLIS_NO_TRANSPOSE,
                 transb ? BLIS_TRANSPOSE : BLIS_NO_TRANSPOSE, (dim_t)m, (dim_t)n, (dim_t)k,
                 &alpha, (float *)a, (inc_t)lda, 1, (float *)b, (inc_t)ldb, 1, &beta, c,
                 (inc_t)ldc, 1, NULL, &rntm);
}

/*
 * BLIS 0.9.0's small-problem ("sup") kernels of the haswell family (the
 * haswell, zen, zen2 and zen3 sub-configurations) read a row of C with a
 * 128-bit load where only 2 or 3 of its columns remain, and store back only
 * those: up to 8 bytes past the end of the row are read, never written
 * (flame/blis#635, bli_sgemmsup_rv_haswell_asm_6x2m; fixed upstream after
 * 0.9.0). Inside C that lands in the next row; past the last row it leaves
 * C: valgrind reports it, and it faults when C ends at an unmapped page
 * (measured with a guard page behind C: SIGSEGV for n % 4 in {2, 3}, m >= 5,
 * with beta != 0 or k > KC, haswell and zen3 sub-configurations; never with
 * skx). So for such n BLIS gets every row but the last, whose over-read then
 * stays inside C's last row, and the last row goes to libkd's small-M
 * kernel, which reads exactly (bench/bench_gemm_edge measures the cost).
 */
void kd__gemm_blis(int threads, int transa, int transb, size_t m, size_t n, size_t k,
                   float alpha, const float *a, size_t lda, const float *b, size_t ldb,
                   float beta, float *c, size_t ldc)
{
    if (n % 4 < 2) {
        blis_sgemm(threads, transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
        return;
    }
    if (m > 1)
        blis_sgemm(threads, transa, transb, m - 1, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    float *c_last = c + (m - 1) * ldc;
    if (!transa || k == 0) {
        const float *a_last = transa ? a + (m - 1) : a + (m - 1) * lda;
        if (!kd__gemm_small(transa, transb, 1, n, k, alpha, a_last, lda, b, ldb, beta, c_last, ldc))
            kd__gemm_reference(transa, transb, 1, n, k, alpha, a_last, lda, b, ldb, beta, c_last, ldc);
        return;
    }
    /* A transposed: the last row of op(A) is A's last column (stride lda);
     * gather it in pieces so the small kernel reads it contiguously. */
    float col[256];
    for (size_t p0 = 0; p0 < k; p0 += 256) {
        size_t kc = k - p0 < 256 ? k - p0 : 256;
        for (size_t p = 0; p < kc; p++) col[p] = a[(p0 + p) * lda + (m - 1)];
        const float *bp = transb ? b + p0 : b + p0 * ldb;
        kd__gemm_small(0, transb, 1, n, kc, alpha, col, kc, bp, ldb, p0 ? 1.0f : beta, c_last, ldc);
    }
}
