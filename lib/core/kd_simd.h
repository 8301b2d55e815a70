/*
 * kd_simd.h - the 16-lane float vector every hand-vectorised kernel uses
 * (GCC/Clang vector extensions: one AVX-512 register, two AVX2, four SSE or
 * NEON registers), with the GCC 12 code-generation pitfalls found while
 * measuring them written down once:
 *
 *  - A broadcast written as the 16-element initialiser {x, x, ...} of a
 *    run-time x is built through four 16-byte stack stores and a 64-byte
 *    reload: a store-forwarding stall in every loop that splats a row
 *    constant (it made the vocabulary KD kernel 3x slower). kd_splat
 *    shuffles lane 0 instead: one vbroadcastss.
 *  - Under -std=c11 GCC does not contract a * b + c into FMA; KD_SIMD_CLONES
 *    turns contraction on for the kernels (results move by rounding only).
 *  - A combination of two vector compares (mask AND / OR) is lowered to one
 *    scalar compare per lane, even in the AVX-512 clone; single compares
 *    used through a select are fine. Integer arithmetic on the bit patterns
 *    avoids the combination (kd_is_ninf).
 *  - In the AVX2 clone (and the baseline one), GCC 12 lowers every compare
 *    of a 64-byte vector lane by lane (16 scalar compares, setcc / cmov),
 *    float *and* integer (kd_gt, kd_lt, kd_eq, kd_vmax included), and an
 *    and/or select between the compared values becomes a MIN/MAX_EXPR that
 *    is lowered lane by lane too. The AVX-512 clone compiles all of them to
 *    one instruction. Kernels that must be fast on AVX2-only machines
 *    either avoid compares (sign bits by arithmetic shifts: kd_is_ninf,
 *    vexp's range mask, the maxpool keys of lib/nn) or run their compares
 *    and min/max reductions in 32-byte (8-lane) vectors, which GCC emits as
 *    single vpcmpgtd / vpmaxsd on AVX2 and at equal throughput on AVX-512
 *    machines that split 512-bit operations (kd_loss_vocab.c's block_max
 *    and scan). Check each clone's objdump for setcc / cmov / ucomiss /
 *    pinsr after touching a kernel; callgrind runs the AVX2 clone.
 *
 * Internal header: static inline helpers only, no symbols.
 */
#ifndef KD_SIMD_H
#define KD_SIMD_H

#include <math.h>
#include <stdint.h>

#include "kd_internal.h"

/* The helpers are static and always inlined: the psABI note about passing
 * 64-byte vectors does not apply. */
#pragma GCC diagnostic ignored "-Wpsabi"

#if defined(__GNUC__) && !defined(__clang__)
#define KD_SIMD_CLONES KD_TARGET_CLONES __attribute__((optimize("fp-contract=fast")))
#else
#define KD_SIMD_CLONES KD_TARGET_CLONES
#endif
#define KD_SIMD_INLINE static inline __attribute__((always_inline))

typedef float kd_v16 __attribute__((vector_size(64)));
typedef int32_t kd_v16i __attribute__((vector_size(64)));
typedef float kd_v16u __attribute__((vector_size(64), aligned(4), may_alias));
/* unsigned lanes for bit arithmetic that may wrap (signed lanes may not: UB) */
typedef uint32_t kd_v16w __attribute__((vector_size(64)));

#if defined(__clang__)
#define KD_SHUF(v, ...) __builtin_shufflevector(v, v, __VA_ARGS__)
#else
#define KD_SHUF(v, ...) __builtin_shuffle(v, (kd_v16i){__VA_ARGS__})
#endif

KD_SIMD_INLINE kd_v16 kd_ld(const float *p) { return *(const kd_v16u *)p; }
KD_SIMD_INLINE void kd_st(float *p, kd_v16 v) { *(kd_v16u *)p = v; }
KD_SIMD_INLINE kd_v16 kd_splat(float x)
{
    return KD_SHUF(((kd_v16){x}), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
}

/* Pairwise sum of the 16 lanes, always in the same order (lane i + lane
 * i + w for w = 8, 4, 2, 1), in registers: a given machine always produces
 * the same bits. */
KD_SIMD_INLINE float kd_hsum(kd_v16 v)
{
    v += KD_SHUF(v, 8, 9, 10, 11, 12, 13, 14, 15, 8, 9, 10, 11, 12, 13, 14, 15);
    v += KD_SHUF(v, 4, 5, 6, 7, 4, 5, 6, 7, 4, 5, 6, 7, 4, 5, 6, 7);
    v += KD_SHUF(v, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3);
    v += KD_SHUF(v, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1);
    return v[0];
}

/* All-ones lanes where x is -inf: (x ^ -inf) is 0 exactly for -inf, and
 * (y - 1) & ~y has its sign bit set exactly for y = 0. */
KD_SIMD_INLINE kd_v16i kd_is_ninf(kd_v16 x)
{
    /* unsigned lanes: y - 1 wraps for +inf (y = 0x80000000) */
    kd_v16w y = (kd_v16w)x ^ (kd_v16w)kd_splat(-INFINITY);
    return (kd_v16i)((y - 1) & ~y) >> 31;
}

/* A float's order key: sign-magnitude turned two's complement, so integer
 * order is float order (NaN excluded) and -0 and +0 share the key 0. */
KD_SIMD_INLINE kd_v16i kd_key(kd_v16 x)
{
    kd_v16i b = (kd_v16i)x, neg = b >> 31;
    return ((b & 0x7fffffff) ^ neg) - neg;
}
/* All-ones lanes where a > b (a < b, a == b) as floats, NaN excluded. */
KD_SIMD_INLINE kd_v16i kd_gt(kd_v16 a, kd_v16 b) { return kd_key(a) > kd_key(b); }
KD_SIMD_INLINE kd_v16i kd_lt(kd_v16 a, kd_v16 b) { return kd_key(a) < kd_key(b); }
KD_SIMD_INLINE kd_v16i kd_eq(kd_v16 a, kd_v16 b) { return kd_key(a) == kd_key(b); }
KD_SIMD_INLINE kd_v16 kd_select(kd_v16i m, kd_v16 a, kd_v16 b)
{
    return (kd_v16)((m & (kd_v16i)a) | (~m & (kd_v16i)b));
}
KD_SIMD_INLINE kd_v16 kd_vmax(kd_v16 a, kd_v16 b) { return kd_select(kd_gt(a, b), a, b); }
KD_SIMD_INLINE kd_v16 kd_vmin(kd_v16 a, kd_v16 b) { return kd_select(kd_lt(a, b), a, b); }

#endif
