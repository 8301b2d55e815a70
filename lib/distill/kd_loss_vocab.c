/*
 * kd_loss_vocab.c - fused, vectorised forward+backward of the temperature KD
 * family (forward KL, reverse KL, JSD, TAID) over rows of V logits, dense or
 * sparse teacher.
 *
 * Dense row, z = s/T, u = t/T:
 *   pass 1  blockwise online log-sum-exp of z and u (the block max is taken
 *           first, the running sums rescaled once per block, then one exp
 *           per element): ls = lse(z), lt = lse(u).
 *   pass 2  per element lq = z - ls, lp = u - lt; the value term and, for
 *           FKL (q - p) and TAID (t (q - p)), the gradient.
 *           TAID with mixed logits (the paper's intermediate teacher) takes
 *           the log-sum-exp of m = ((1 - t) s + t z) / T in pass 1 instead of
 *           u's and forms the target p_t = exp(m - lse(m)) in pass 2.
 *   pass 3  RKL and JSD only: the gradient needs the row total G = sum_j G_j
 *           (grad_j = G_j - q_j G); reads s and the gradient again.
 * Nothing is materialised besides the caller's gradient; a row of
 * V = 32000 stays in L2 between the passes. Arithmetic is float in 16-lane
 * GCC vectors (one AVX-512 register, two AVX2, four SSE), block sums go to
 * double every BLK elements; on x86-64 the kernels are compiled for the
 * x86-64-v4 / -v3 / baseline feature levels and chosen at load time
 * (target_clones on feature levels, so an AMD Zen 4 gets AVX-512 too), and
 * with GCC the dense kernels and the log-sum-exp are also instantiated with
 * AVX-512 intrinsics (exp by vscalefps, block maxima by vpmaxsd), which
 * take over per row where the CPU has them (use_x512).
 *
 * Sparse teacher rows (kd_sparse_logits) are divergences over buckets: the k
 * ids plus one tail bucket holding every other class (TOPK). For a bucketed
 * divergence F(p_b, q_b), q_b = sum_{j in b} q_j, the gradient is
 *   dF/dz_j = q_j (dF/dq_{b(j)} - sum_b q_b dF/dq_b),
 * so one pass over the student row (for its log-sum-exp), k scalar bucket
 * terms, one pass writing q_j times the tail factor, and k fix-ups. With k
 * = V and no tail this is the dense divergence exactly.
 *
 * SAMPLED rows (Anshumann et al., "Sparse Logit Sampling: Accelerating
 * Knowledge Distillation in LLMs", ACL 2025): ids drawn N times from a
 * proposal r with counts c_i give the importance-weighted target
 *   phat_i = (c_i / N) p_i / r_i   (phat_i = c_i / N when r = p),
 * E[phat] = p, and the forward-KL gradient q_j sum_i phat_i - phat_j is
 * linear in phat, hence an unbiased estimate of the full-distribution
 * gradient q - p; the value sum_i phat_i (log p_i - log q_i) is unbiased for
 * KL(P || Q) likewise.
 */
#include <math.h>
#include <string.h>
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(KD_EMBEDDED)
#include <immintrin.h>
#endif

#include "kd_loss_internal.h"
#include "kd_vocab_internal.h"

#include "kd_simd.h"

#define KD_CLONES KD_SIMD_CLONES
#define KD_INLINE KD_SIMD_INLINE
typedef kd_v16 v16;
typedef kd_v16i v16i;
#define ld(p) kd_ld(p)
#define st(p, v) kd_st(p, v)
#define splat(x) kd_splat(x)

#define BLK 1024 /* elements per double flush / rescale block */

/* first r (< 16) lanes from p, the others `fill` */
KD_INLINE v16 ldp(const float *p, size_t r, float fill)
{
    float b[16];
    for (size_t i = 0; i < 16; i++) b[i] = i < r ? p[i] : fill;
    return ld(b);
}
KD_INLINE void stp(float *p, size_t r, v16 v)
{
    float b[16];
    st(b, v);
    for (size_t i = 0; i < r; i++) p[i] = b[i];
}
KD_INLINE v16 sel(v16i m, v16 x) { return (v16)(m & (v16i)x); }
#define vmax(a, b) kd_vmax(a, b) /* integer-key compares: see kd_simd.h */
/* All-ones lanes where p > 0, for p >= +0 (an exp): the sign of -bits(p),
 * no compare (a compare of 64-byte vectors is lowered lane by lane in the
 * AVX2 clone, kd_simd.h). Unsigned negation: no signed overflow. */
KD_INLINE v16i pos(v16 p) { return (v16i)(-(kd_v16w)p) >> 31; }
KD_INLINE v16 vabs(v16 a) { return (v16)((v16i)a & ~(v16i)splat(-0.0f)); }
KD_INLINE double hsum(v16 v) { return (double)kd_hsum(v); }
KD_INLINE float hmax(v16 v)
{
    float t[16];
    st(t, v);
    float m = t[0];
    for (int i = 1; i < 16; i++) m = t[i] > m ? t[i] : m;
    return m;
}

/* exp(x) for x in [-87, 88]: x = n ln2 + r, |r| <= ln2 / 2, e^r by a
 * degree-5 polynomial with minimax relative error 1.5e-7 on that interval
 * (coefficients fitted here by a Remez exchange, c0 = c1 = 1 fixed), times
 * 2^n added to the exponent bits. t = x log2(e) + 1.5 2^23 holds n in its
 * low mantissa bits, so t's bits shifted left by 23 are n << 23 (mod 2^32):
 * no conversion. The reduction is one FMA with ln2 rounded to float: its
 * error, |n| 1.9e-9, grows with |x|. Measured against double exp over 4M
 * points per range: at most 2.5 ulp on [-0.5, 0], 3.2 on [-20, 0], 4.8 on
 * [-70, -20], 5.4 on [-87, -70] (5.4 ulp = 3.2e-7 relative). 10 vector
 * operations. */
KD_INLINE v16 vexp_core(v16 x)
{
    v16 t = x * splat(1.44269504088896341f) + splat(12582912.0f);
    v16 n = t - splat(12582912.0f);
    v16 r = x - n * splat(0.693147182464599609375f);
    v16 p = splat(0.008369150571525097f);
    p = p * r + splat(0.041917528957128525f);
    p = p * r + splat(0.1666652262210846f);
    p = p * r + splat(0.49998995661735535f);
    p = p * r + splat(1.0f);
    p = p * r + splat(1.0f);
    /* unsigned lanes: the shift and the add may wrap (signed lanes: UB) */
    return (v16)((kd_v16w)p + ((kd_v16w)t << 23));
}

/* exp(x), exactly 0 at or below -87 and for -inf (masked classes get zero
 * probability). Callers pass x <= 0 (differences to a maximum or a
 * log-sum-exp), so there is no upper clamp; below -87 the reduction yields
 * garbage that the final select discards. ok: the sign bit of x + 87, no
 * float compare (kd_simd.h). */
KD_INLINE v16 vexp(v16 x)
{
    v16i ok = ~((v16i)(x + splat(87.0f)) >> 31);
    return sel(ok, vexp_core(x));
}

/* The exp a kernel template uses for rows without -inf, passed as a
 * constant function pointer: after inlining it is a direct call, inlined
 * too, so a template instantiated inside an AVX-512 function may use an
 * exp written with AVX-512 intrinsics while the same template in the
 * target_clones kernels never sees them. */
typedef v16 (*vexp_fn)(v16);
/* Calls through those pointers. Unoptimised builds never inline through a
 * pointer (GCC then refuses always_inline, and an out-of-line 64-byte vector
 * function called from a clone of another ISA gets its argument in the
 * wrong place): there the templates call the portable functions directly
 * and the AVX-512 kernels are left out. */
#if defined(__OPTIMIZE__)
#define EF(ef, x) (ef)(x)
#define BMF(bmf, x, m) (bmf)(x, m)
#else
#define EF(ef, x) ((void)(ef), vexp(x))
#define BMF(bmf, x, m) ((void)(bmf), block_max(x, m))
#endif

/* AVX-512 kernels (x86-64 GCC, hosted): the same templates compiled for
 * x86-64-v4 with vexp512 and block_max512, chosen per row when the
 * CPU has the x86-64-v4 features (use_x512). The target_clones kernels keep
 * the portable vexp for every other CPU (and for tests, kd__vocab_generic). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(KD_EMBEDDED) && \
    defined(__OPTIMIZE__)
#define KD_X512 1
#define X512_FN __attribute__((target("arch=x86-64-v4"), optimize("fp-contract=fast")))

/* exp(max(x, -87)): about 1.6e-38 instead of 0 at or below -87 and for -inf
 * (and NaN), for sums that hold an entry of at least 1 (a log-sum-exp's
 * maximum) and rows without -inf. vexp_core's reduction and polynomial;
 * vroundscaleps for n and vscalefps for the 2^n scaling: 10 instructions
 * against 12 for a clamp and vexp_core. */
static inline __attribute__((always_inline, target("arch=x86-64-v4"))) v16 vexp512(v16 x)
{
    __m512 v = _mm512_max_ps((__m512)x, _mm512_set1_ps(-87.0f)); /* NaN -> -87 */
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(v, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693147182464599609375f), v);
    __m512 p = _mm512_set1_ps(0.008369150571525097f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.041917528957128525f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.1666652262210846f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.49998995661735535f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return (v16)_mm512_scalef_ps(p, n);
}
#endif

int kd__vocab_generic = 0;
/* 1 when the AVX-512 kernels may run: checked per row (a few loads). */
static int use_x512(void)
{
#if defined(KD_X512)
    return !kd__vocab_generic && __builtin_cpu_supports("avx512f") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512cd") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
#else
    return 0;
#endif
}

/* log(1 + y) for y in [0, 1]: 2 atanh(y / (2 + y)), series to s^13. */
KD_INLINE v16 vlog1p01(v16 y)
{
    v16 s = y / (splat(2.0f) + y), s2 = s * s;
    v16 p = splat(1.0f / 13);
    p = p * s2 + splat(1.0f / 11);
    p = p * s2 + splat(1.0f / 9);
    p = p * s2 + splat(1.0f / 7);
    p = p * s2 + splat(1.0f / 5);
    p = p * s2 + splat(1.0f / 3);
    p = p * s2 + splat(1.0f);
    return splat(2.0f) * s * p;
}

/* log(exp(a) + exp(b)); -inf when both are -inf. */
KD_INLINE v16 vlogaddexp(v16 a, v16 b)
{
    v16 m = vmax(a, b);
    v16 d = vexp(-vabs(a - b)); /* 0 for an infinite or NaN difference */
    v16i fin = ~kd_is_ninf(m);
    return (v16)((fin & (v16i)(m + vlog1p01(d))) | (~fin & (v16i)m));
}

/* ---- pass 1: log-sum-exp of s * it (and t * it) ---------------------------- */

/* The largest of x[0..m) (-inf when there is none), on the bit patterns
 * as signed integers: they order the floats >= +0 like the floats, and the
 * negative floats (INT32_MIN + magnitude) in reverse, so the largest float
 * is the largest pattern when that is >= 0, else the smallest one. Two
 * signed reductions with independent chains; no float compare (a float
 * maximum through kd_vmax costs two order keys per element). In 8-lane
 * vectors: GCC 12 turns the select into a MIN/MAX_EXPR, which it lowers
 * lane by lane for 16 lanes in the AVX2 clone but emits as one vpmaxsd /
 * vpminsd for 8 (AVX-512 runs two 8-lane operations at the cost of one
 * 16-lane one). NaN excluded. */
typedef int32_t v8i __attribute__((vector_size(32)));
typedef int32_t v8iu __attribute__((vector_size(32), aligned(4), may_alias));
KD_INLINE float block_max(const float *x, size_t m)
{
    v8i smax = (v8i){0} + INT32_MIN, smin = (v8i){0} + INT32_MAX;
    size_t j = 0;
    for (; j + 8 <= m; j += 8) {
        v8i b = *(const v8iu *)(x + j);
        v8i gt = b > smax, lt = b < smin;
        smax = (gt & b) | (~gt & smax);
        smin = (lt & b) | (~lt & smin);
    }
    int32_t hi[8], lo[8];
    memcpy(hi, &smax, sizeof hi);
    memcpy(lo, &smin, sizeof lo);
    int32_t S = INT32_MIN, L = INT32_MAX;
    for (int i = 0; i < 8; i++) {
        S = hi[i] > S ? hi[i] : S;
        L = lo[i] < L ? lo[i] : L;
    }
    for (; j < m; j++) {
        int32_t b;
        memcpy(&b, x + j, sizeof b);
        S = b > S ? b : S;
        L = b < L ? b : L;
    }
    float r;
    if (S >= 0) memcpy(&r, &S, sizeof r);
    else if (L == INT32_MAX) r = -INFINITY; /* m == 0 */
    else memcpy(&r, &L, sizeof r);
    return r;
}

#if defined(KD_X512)
/* block_max with AVX-512: vpmaxsd / vpminsd on 16 lanes, one instruction
 * each (a compare and a blend in the portable 16-lane form). */
static inline __attribute__((always_inline, target("arch=x86-64-v4"))) float
block_max512(const float *x, size_t m)
{
    __m512i smax = _mm512_set1_epi32(INT32_MIN), smin = _mm512_set1_epi32(INT32_MAX);
    size_t j = 0;
    for (; j + 16 <= m; j += 16) {
        __m512i b = _mm512_loadu_si512((const void *)(x + j));
        smax = _mm512_max_epi32(smax, b);
        smin = _mm512_min_epi32(smin, b);
    }
    /* the rest (-inf when empty: as a pattern it only wins when nothing
     * else is there, -inf being the negative float of largest magnitude) */
    float r = block_max(x + j, m - j);
    int32_t R, S = _mm512_reduce_max_epi32(smax), L = _mm512_reduce_min_epi32(smin);
    memcpy(&R, &r, sizeof R);
    if (R >= 0) S = R > S ? R : S;
    else L = R < L ? R : L;
    memcpy(&r, S >= 0 ? &S : &L, sizeof r);
    return r;
}
#endif

typedef float (*bmax_fn)(const float *, size_t);

/* ef: the exp (vexp or vexp512); bmf: the block maximum (block_max or
 * block_max512); both constants after inlining */
KD_INLINE void lse_block(const vexp_fn ef, const bmax_fn bmf, const float *x, size_t m, float it,
                         float *run_max, double *run_sum)
{
    float bm = BMF(bmf, x, m) * it;
    if (bm == -INFINITY) return;
    if (bm > *run_max) {
        *run_sum *= exp((double)*run_max - (double)bm);
        *run_max = bm;
    }
    v16 acc = splat(0), vit = splat(it), mx = splat(*run_max);
    size_t j = 0;
    for (; j + 16 <= m; j += 16) acc += EF(ef, ld(x + j) * vit - mx);
    if (j < m) acc += EF(ef, ldp(x + j, m - j, -INFINITY) * vit - mx);
    *run_sum += hsum(acc);
}

KD_INLINE void lse_pass_k(const vexp_fn ef, const bmax_fn bmf, const float *s, const float *t,
                          size_t n, float it, double *ls, double *lt)
{
    float ms = -INFINITY, mt = -INFINITY;
    double ss = 0, sum_t = 0;
    for (size_t b = 0; b < n; b += BLK) {
        size_t m = n - b < BLK ? n - b : BLK;
        lse_block(ef, bmf, s + b, m, it, &ms, &ss);
        if (t) lse_block(ef, bmf, t + b, m, it, &mt, &sum_t);
    }
    *ls = ms == -INFINITY ? -INFINITY : (double)ms + log(ss);
    if (t) *lt = mt == -INFINITY ? -INFINITY : (double)mt + log(sum_t);
}
KD_CLONES static void lse_pass(const float *s, const float *t, size_t n, float it, double *ls,
                               double *lt)
{
    lse_pass_k(vexp, block_max, s, t, n, it, ls, lt);
}
#if defined(KD_X512)
X512_FN static void lse_pass_x512(const float *s, const float *t, size_t n, float it, double *ls,
                                  double *lt)
{
    lse_pass_k(vexp512, block_max512, s, t, n, it, ls, lt);
}
#endif

/* TAID's mixed logits a s + b t (a = (1 - w) / T, b = w / T), -inf where
 * either side is masked (no 0 * -inf NaN at the endpoints w = 0 or 1). */
KD_INLINE v16 mixv(v16 sv, v16 tv, float a, float b)
{
    v16i masked = kd_is_ninf(sv) | kd_is_ninf(tv);
    return (v16)((~masked & (v16i)(sv * splat(a) + tv * splat(b))) |
                 (masked & (v16i)splat(-INFINITY)));
}

KD_INLINE void lse_block_mix(const float *s, const float *t, size_t m, float a, float b,
                             float *run_max, double *run_sum)
{
    v16 vm = splat(-INFINITY);
    size_t j = 0;
    for (; j + 16 <= m; j += 16) vm = vmax(vm, mixv(ld(s + j), ld(t + j), a, b));
    if (j < m)
        vm = vmax(vm, mixv(ldp(s + j, m - j, -INFINITY), ldp(t + j, m - j, -INFINITY), a, b));
    float bm = hmax(vm);
    if (bm == -INFINITY) return;
    if (bm > *run_max) {
        *run_sum *= exp((double)*run_max - (double)bm);
        *run_max = bm;
    }
    v16 acc = splat(0), mx = splat(*run_max);
    for (j = 0; j + 16 <= m; j += 16) acc += vexp(mixv(ld(s + j), ld(t + j), a, b) - mx);
    if (j < m)
        acc += vexp(mixv(ldp(s + j, m - j, -INFINITY), ldp(t + j, m - j, -INFINITY), a, b) - mx);
    *run_sum += hsum(acc);
}

/* lse(s / T) and lse of the mixed logits, in one sweep. */
KD_CLONES static void lse_pass_mix(const float *s, const float *t, size_t n, float it, float a,
                                   float b, double *ls, double *lm)
{
    float ms = -INFINITY, mm = -INFINITY;
    double ss = 0, sm = 0;
    for (size_t o = 0; o < n; o += BLK) {
        size_t m = n - o < BLK ? n - o : BLK;
        lse_block(vexp, block_max, s + o, m, it, &ms, &ss);
        lse_block_mix(s + o, t + o, m, a, b, &mm, &sm);
    }
    *ls = ms == -INFINITY ? -INFINITY : (double)ms + log(ss);
    *lm = mm == -INFINITY ? -INFINITY : (double)mm + log(sm);
}

/* ---- pass 2 / 3: dense ------------------------------------------------------- */

typedef struct {
    float it, cs, ct, c, coef, w, lw, l1w;
    float ma, mb; /* TAIDL: mixed-logit coefficients (1 - w) / T and w / T; ct = lse(mix) */
} dconst;

/* One vector of pass 2. Returns the value term; *gdelta gets the gradient
 * term (pass-2 part), *gsum_part the G_j of RKL / JSD. nm (a constant
 * after inlining): 0 rows may hold -inf (masked exps, selects keep 0 * -inf
 * out of the value); 1 they do not: no selects, and the exps are ef (which
 * may return 1.6e-38 for 0). */
KD_INLINE v16 p2_vec(const int kind, const int nm, const vexp_fn ef, const dconst *k, v16 sv,
                     v16 tv, v16 *gdelta, v16 *gpart)
{
    v16 z = sv * splat(k->it), u = tv * splat(k->it);
    v16 lq = z - splat(k->cs), lp = u - splat(k->ct);
    v16 q, p, val, lm;
    if (kind == KD__DIV_FKL) { /* one FMA per log-probability */
        lq = sv * splat(k->it) - splat(k->cs), lp = tv * splat(k->it) - splat(k->ct);
    }
    q = nm ? EF(ef, lq) : vexp(lq), p = nm ? EF(ef, lp) : vexp(lp);
    switch (kind) {
    case KD__DIV_FKL:
        val = p * (lp - lq);
        if (!nm) val = sel(pos(p), val);
        *gdelta = q - p;
        break;
    case KD__DIV_RKL:
        val = q * ((z - u) + splat(k->c));
        if (!nm) val = sel(pos(q), val);
        *gpart = val;
        break;
    case KD__DIV_JSD:
        lm = vlogaddexp(lp + splat(k->lw), lq + splat(k->l1w));
        *gpart = sel(pos(q), splat(1.0f - k->w) * q * (lq - lm));
        val = sel(pos(p), splat(k->w) * p * (lp - lm)) + *gpart;
        *gdelta = *gpart;
        break;
    case KD__DIV_TAIDL: {
        v16 lpt = mixv(sv, tv, k->ma, k->mb) - splat(k->ct);
        v16 pt = vexp(lpt);
        val = sel(pos(pt), pt * (lpt - lq));
        *gdelta = q - pt;
        break;
    }
    default: { /* TAID */
        v16 lpt = vlogaddexp(lq + splat(k->l1w), lp + splat(k->lw));
        v16 pt = vexp(lpt);
        val = sel(pos(pt), pt * (lpt - lq));
        *gdelta = splat(k->w) * (q - p);
        break;
    }
    }
    return val;
}

KD_INLINE double pass2(const int kind, const int nm, const vexp_fn ef, const dconst *k,
                       const float *s, const float *t, size_t n, float *grad, double *gsum)
{
    double val = 0, gs = 0;
    const int write = grad && kind != KD__DIV_RKL;
    const v16 vc = splat(k->coef);
    for (size_t b = 0; b < n; b += BLK) {
        size_t m = n - b < BLK ? n - b : BLK, j = 0;
        v16 acc = splat(0), gacc = splat(0), gd = splat(0), gp = splat(0);
        for (; j + 16 <= m; j += 16) {
            acc += p2_vec(kind, nm, ef, k, ld(s + b + j), ld(t + b + j), &gd, &gp);
            gacc += gp;
            if (write) st(grad + b + j, ld(grad + b + j) + vc * gd);
        }
        if (j < m) {
            acc += p2_vec(kind, 0 /* -inf padding */, ef, k, ldp(s + b + j, m - j, -INFINITY),
                          ldp(t + b + j, m - j, -INFINITY), &gd, &gp);
            gacc += gp;
            if (write) stp(grad + b + j, m - j, ldp(grad + b + j, m - j, 0) + vc * gd);
        }
        val += hsum(acc);
        gs += hsum(gacc);
    }
    *gsum = gs;
    return val;
}

/* pass 3: grad += coef * (extra(z,u) - q * g) where extra is RKL's G_j. */
KD_INLINE void pass3(const int kind, const int nm, const vexp_fn ef, const dconst *k,
                     const float *s, const float *t, size_t n, float *grad, float g)
{
    const v16 vc = splat(k->coef), vg = splat(g);
    for (size_t j = 0; j < n; j += 16) {
        size_t r = n - j < 16 ? n - j : 16;
        v16 sv = r == 16 ? ld(s + j) : ldp(s + j, r, -INFINITY);
        v16 z = sv * splat(k->it), q = nm ? EF(ef, z - splat(k->cs)) : vexp(z - splat(k->cs)), d;
        if (kind == KD__DIV_RKL) {
            v16 tv = r == 16 ? ld(t + j) : ldp(t + j, r, -INFINITY);
            v16 u = tv * splat(k->it);
            d = sel(pos(q), q * ((z - u) + splat(k->c) - vg));
        } else {
            d = -(q * vg);
        }
        if (r == 16) st(grad + j, ld(grad + j) + vc * d);
        else stp(grad + j, r, ldp(grad + j, r, 0) + vc * d);
    }
}

/* Each kernel: the template name##_k, instantiated for nm = 0 and 1 in the
 * target_clones function `name` (portable vexp) and, on x86-64, in
 * name##_x512 (vexp512). */
#if defined(KD_X512)
#define DENSE_X512(name)                                                                       \
    X512_FN static void name##_x512(int nm, const dconst *k, const float *s, const float *t,  \
                                    size_t n, float *grad, double *val)                       \
    {                                                                                          \
        if (nm) name##_k(1, vexp512, k, s, t, n, grad, val);                                   \
        else name##_k(0, vexp512, k, s, t, n, grad, val);                                      \
    }
#else
#define DENSE_X512(name)
#endif
#define DENSE_FN(name, body)                                                                   \
    KD_INLINE void name##_k(const int nm, const vexp_fn ef, const dconst *k, const float *s,  \
                            const float *t, size_t n, float *grad, double *val)               \
    {                                                                                          \
        double gs;                                                                             \
        body                                                                                   \
    }                                                                                          \
    KD_CLONES static void name(int nm, const dconst *k, const float *s, const float *t,       \
                               size_t n, float *grad, double *val)                            \
    {                                                                                          \
        if (nm) name##_k(1, vexp, k, s, t, n, grad, val);                                      \
        else name##_k(0, vexp, k, s, t, n, grad, val);                                         \
    }                                                                                          \
    DENSE_X512(name)
DENSE_FN(dense_fkl, *val = pass2(KD__DIV_FKL, nm, ef, k, s, t, n, grad, &gs);)
DENSE_FN(dense_rkl, *val = pass2(KD__DIV_RKL, nm, ef, k, s, t, n, NULL, &gs);
         if (grad) pass3(KD__DIV_RKL, nm, ef, k, s, t, n, grad, (float)*val);)
DENSE_FN(dense_jsd, *val = pass2(KD__DIV_JSD, nm, ef, k, s, t, n, grad, &gs);
         if (grad) pass3(KD__DIV_JSD, nm, ef, k, s, t, n, grad, (float)gs);)
DENSE_FN(dense_taid, *val = pass2(KD__DIV_TAID, nm, ef, k, s, t, n, grad, &gs);)
DENSE_FN(dense_taidl, *val = pass2(KD__DIV_TAIDL, nm, ef, k, s, t, n, grad, &gs);)

typedef void (*dense_fn)(int, const dconst *, const float *, const float *, size_t, float *,
                         double *);
/* indexed by KD__DIV_* */
static const dense_fn dense_generic[5] = {dense_fkl, dense_rkl, dense_jsd, dense_taid, dense_taidl};
#if defined(KD_X512)
static const dense_fn dense_x512[5] = {dense_fkl_x512, dense_rkl_x512, dense_jsd_x512,
                                       dense_taid_x512, dense_taidl_x512};
#endif

static void div_logs(const kd__div *d, double *lw, double *l1w)
{
    *lw = d->w > 0 ? log(d->w) : -INFINITY;
    *l1w = d->w < 1 ? log1p(-d->w) : -INFINITY;
}

void kd__vocab_dense_row(const kd__div *d, const float *s, const float *t, size_t n,
                         double coef, float *grad, double *val)
{
    double ls, lt, lw, l1w;
    const float ma = (float)((1.0 - d->w) * d->inv_t), mb = (float)(d->w * d->inv_t);
    const int x512 = use_x512();
    if (d->kind == KD__DIV_TAIDL) lse_pass_mix(s, t, n, (float)d->inv_t, ma, mb, &ls, &lt);
#if defined(KD_X512)
    else if (x512) lse_pass_x512(s, t, n, (float)d->inv_t, &ls, &lt);
#endif
    else lse_pass(s, t, n, (float)d->inv_t, &ls, &lt);
    div_logs(d, &lw, &l1w);
    dconst k = {(float)d->inv_t, (float)ls, (float)lt, (float)(lt - ls), (float)coef,
                (float)d->w, (float)lw, (float)l1w, ma, mb};
    const dense_fn *fns = dense_generic;
#if defined(KD_X512)
    if (x512) fns = dense_x512;
#else
    (void)x512;
#endif
    fns[d->kind >= 0 && d->kind <= KD__DIV_TAIDL ? d->kind : KD__DIV_TAID](!!d->nomask, &k, s, t, n,
                                                                          grad, val);
    if (*val < 0) *val = 0; /* rounding below the divergence's bound */
}

size_t kd__vocab_mask_bad(const kd__div *d, const float *s, const float *t, size_t n)
{
    if (d->kind == KD__DIV_JSD || (d->kind == KD__DIV_TAID && d->w == 0)) return 0;
    if (d->kind == KD__DIV_TAIDL) { /* the mixture masks what either side masks */
        for (size_t j = 0; j < n; j++)
            if (!isinf(s[j]) && !isinf(t[j])) return 0;
        return 1; /* no class left */
    }
    for (size_t j = 0; j < n; j++) {
        int sm = isinf(s[j]), tm = isinf(t[j]);
        if (d->kind == KD__DIV_RKL ? (!sm && tm) : (sm && !tm)) return j + 1;
    }
    return 0;
}

KD_CLONES int kd__vocab_scan(const float *x, size_t n, size_t *neg_inf)
{
    /* On the bit patterns, in 8-lane integer vectors (see block_max):
     * 0x7f7fffff - |bits| is negative exactly for +-inf and NaN; -inf is
     * counted by an equality (one vpcmpeqd on AVX2 and AVX-512 alike) and
     * excluded. Six operations per 8 floats, and the loop-carried chains
     * (or, subtract) take one cycle: a compare-and-blend maximum here made
     * the scan 3x slower on AVX-512 by its latency. */
    v8i bad = (v8i){0}, cnt = (v8i){0};
    const v8i ninf = (v8i){0} + (int32_t)0xff800000, lim = (v8i){0} + 0x7f7fffff,
              absm = (v8i){0} + 0x7fffffff;
    size_t j = 0;
    for (; j + 8 <= n; j += 8) {
        v8i b = *(const v8iu *)(x + j);
        v8i m = b == ninf;
        bad |= (lim - (b & absm)) & ~m; /* sign bit: +inf or NaN */
        cnt -= m;
    }
    int32_t bb[8], c[8];
    memcpy(bb, &bad, sizeof bb);
    memcpy(c, &cnt, sizeof c);
    int any = 0;
    size_t ni = 0;
    for (int i = 0; i < 8; i++) {
        any |= bb[i] < 0;
        ni += (size_t)(uint32_t)c[i];
    }
    for (; j < n; j++) {
        any |= isnan(x[j]) || (isinf(x[j]) && x[j] > 0);
        ni += isinf(x[j]) && x[j] < 0;
    }
    *neg_inf = ni;
    return any;
}

/* ---- the teacher-logit cache encoder's passes ------------------------------------ */

double kd__vocab_lse(const float *x, size_t n)
{
    double ls, unused;
#if defined(KD_X512)
    if (use_x512()) {
        lse_pass_x512(x, NULL, n, 1.0f, &ls, &unused);
        return ls;
    }
#endif
    lse_pass(x, NULL, n, 1.0f, &ls, &unused);
    return ls;
}

/* Probability mass exp(x - lse) of the entries below `below`, and the number
 * of entries equal to it (two compares, each through its own select). */
KD_CLONES static void tail_pass(const float *x, size_t n, float lse, float below, double *mass,
                                size_t *equal)
{
    double m = 0;
    size_t eq = 0;
    const v16 vb = splat(below), vl = splat(lse);
    for (size_t b = 0; b < n; b += BLK) {
        size_t len = n - b < BLK ? n - b : BLK, j = 0;
        v16 acc = splat(0);
        v16i cnt = (v16i)splat(0);
        for (; j + 16 <= len; j += 16) {
            v16 v = ld(x + b + j);
            acc += sel(kd_lt(v, vb), vexp(v - vl));
            cnt -= kd_eq(v, vb);
        }
        if (j < len) {
            v16 v = ldp(x + b + j, len - j, -INFINITY);
            acc += sel(kd_lt(v, vb), vexp(v - vl));
            cnt -= kd_eq(v, vb);
        }
        m += hsum(acc);
        int32_t c[16];
        memcpy(c, &cnt, sizeof c);
        for (int i = 0; i < 16; i++) eq += (size_t)(uint32_t)c[i];
    }
    *mass = m;
    *equal = eq;
}

/* Index of the first x_j > thr, n if none: 64 entries per step (lane-wise
 * maximum of four vectors, then a shuffle reduction), so the top-k heap only
 * looks at the rare entries that beat its root. */
KD_CLONES size_t kd__vocab_find_above(const float *x, size_t n, float thr)
{
    size_t j = 0;
    for (; j + 64 <= n; j += 64) {
        v16 m = vmax(vmax(ld(x + j), ld(x + j + 16)), vmax(ld(x + j + 32), ld(x + j + 48)));
        m = vmax(m, KD_SHUF(m, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7));
        m = vmax(m, KD_SHUF(m, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3));
        m = vmax(m, KD_SHUF(m, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1));
        m = vmax(m, KD_SHUF(m, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0));
        if (m[0] > thr) break;
    }
    for (; j < n; j++)
        if (x[j] > thr) return j;
    return n;
}

void kd__vocab_tail(const float *x, size_t n, double lse, float below, double *mass,
                    size_t *equal)
{
    tail_pass(x, n, (float)lse, below, mass, equal);
}

/* ---- sparse rows --------------------------------------------------------------- */

/* Bucket term of a divergence: adds the value to *val and returns
 * G_b = q_b dF/dq_b; sets *bad when the value would be infinite. */
static double bucket(const kd__div *d, double lw, double l1w, double lp, double lq, double *val,
                     int *bad)
{
    double p = exp(lp), q = exp(lq), lm;
    switch (d->kind) {
    case KD__DIV_FKL:
        if (lp == -INFINITY) return 0;
        if (lq == -INFINITY) { *bad = 1; return 0; }
        *val += p * (lp - lq);
        return -p;
    case KD__DIV_RKL:
        if (lq == -INFINITY) return 0;
        if (lp == -INFINITY) { *bad = 1; return 0; }
        *val += q * (lq - lp);
        return q * (lq - lp + 1.0);
    case KD__DIV_JSD:
        lm = kd__logaddexp(lw + lp, l1w + lq);
        if (lp > -INFINITY) *val += d->w * p * (lp - lm);
        if (lq == -INFINITY) return 0;
        *val += (1.0 - d->w) * q * (lq - lm);
        return (1.0 - d->w) * q * (lq - lm);
    default: /* TAID */
        lm = kd__logaddexp(l1w + lq, lw + lp);
        if (lm == -INFINITY) return 0;
        if (lq == -INFINITY) { *bad = 1; return 0; }
        *val += exp(lm) * (lm - lq);
        return -exp(lm);
    }
}

/* Teacher log-probability at T = 1 of slot v (value kind vk); lse_k is the
 * log-sum-exp of the row's logits (LOGIT only), l1r = log(1 - tail). */
static double slot_lp(kd_sparse_values vk, float v, double lse_k, double l1r)
{
    if (vk == KD_SPARSE_LOGPROB) return (double)v;
    if (vk == KD_SPARSE_PROB) return v > 0 ? log((double)v) : -INFINITY;
    return (double)v - lse_k + l1r;
}

KD_CLONES static void add_scaled_q(const float *s, size_t n, float it, float ls, float f,
                                   float *grad)
{
    const v16 vf = splat(f), vit = splat(it), vls = splat(ls);
    size_t j = 0;
    for (; j + 16 <= n; j += 16)
        st(grad + j, ld(grad + j) + vf * vexp(ld(s + j) * vit - vls));
    if (j < n)
        stp(grad + j, n - j,
            ldp(grad + j, n - j, 0) + vf * vexp(ldp(s + j, n - j, -INFINITY) * vit - vls));
}

kd_status kd__vocab_sparse_row(const kd__div *d, const float *s, size_t n,
                               const kd_sparse_logits *sp, size_t row, double coef,
                               float *grad, double *val, const char **why)
{
    const size_t k = sp->k;
    const int32_t *ids = sp->ids + row * k;
    const float *vals = sp->values + row * k;
    const float it = (float)d->inv_t;
    double ls, lw, l1w;
    lse_pass(s, NULL, n, it, &ls, NULL);
    div_logs(d, &lw, &l1w);
    size_t used = 0;
    for (size_t i = 0; i < k; i++) {
        if (ids[i] < 0) continue;
        if ((size_t)ids[i] >= n) {
            *why = "a sparse teacher id lies beyond the valid classes";
            return KD_E_INVALID;
        }
        used++;
    }
    if (used == 0) {
        *why = "a sparse teacher row has no ids";
        return KD_E_INVALID;
    }
#define LQ(i) ((double)(s[ids[i]] * it) - ls)

    if (sp->mode == KD_SPARSE_SAMPLED) {
        if (d->kind != KD__DIV_FKL || d->inv_t != 1.0) {
            *why = "sampled sparse teachers need forward KL at temperature 1";
            return KD_E_UNSUPPORTED;
        }
        if (sp->value_kind == KD_SPARSE_LOGIT) {
            *why = "sampled sparse teachers need LOGPROB or PROB values";
            return KD_E_UNSUPPORTED;
        }
        double total = 0, S = 0, v = 0;
        for (size_t i = 0; i < k; i++)
            if (ids[i] >= 0) total += sp->counts ? sp->counts[row * k + i] : 1.0;
        if (!(total > 0)) {
            *why = "a sampled sparse row has no draws (all counts 0)";
            return KD_E_INVALID;
        }
        for (size_t i = 0; i < k; i++) {
            if (ids[i] < 0) continue;
            double lp = slot_lp(sp->value_kind, vals[i], 0, 0), lq = LQ(i);
            double c = (sp->counts ? sp->counts[row * k + i] : 1.0) / total;
            double ph = sp->proposal ? c * exp(lp) / sp->proposal[row * k + i] : c;
            if (ph == 0) continue;
            if (lq == -INFINITY) {
                *why = "the sampled target has mass on a class the student masks";
                return KD_E_NUMERIC;
            }
            S += ph;
            v += ph * (lp - lq);
        }
        *val = v;
        if (grad) {
            add_scaled_q(s, n, it, (float)ls, (float)(coef * S), grad);
            for (size_t i = 0; i < k; i++) {
                if (ids[i] < 0) continue;
                double lp = slot_lp(sp->value_kind, vals[i], 0, 0);
                double c = (sp->counts ? sp->counts[row * k + i] : 1.0) / total;
                double ph = sp->proposal ? c * exp(lp) / sp->proposal[row * k + i] : c;
                grad[ids[i]] -= (float)(coef * ph);
            }
        }
        return KD_OK;
    }

    /* TOPK: teacher buckets at T = 1 -> tempered, renormalised over k + tail. */
    double lse_k = -INFINITY, l1r = 0, ltail = -INFINITY;
    double r = sp->tail_mass ? (double)sp->tail_mass[row] : 0.0;
    if (sp->value_kind == KD_SPARSE_LOGIT) {
        double m = -INFINITY, acc = 0;
        for (size_t i = 0; i < k; i++)
            if (ids[i] >= 0 && vals[i] > m) m = vals[i];
        for (size_t i = 0; i < k; i++)
            if (ids[i] >= 0) acc += exp((double)vals[i] - m);
        lse_k = m + log(acc);
        l1r = log1p(-r);
    }
    if (r > 0) ltail = log(r);
    /* log normaliser of the tempered buckets */
    double mt = ltail * d->inv_t, zt = 0;
    for (size_t i = 0; i < k; i++) {
        if (ids[i] < 0) continue;
        double x = slot_lp(sp->value_kind, vals[i], lse_k, l1r) * d->inv_t;
        if (x > mt) mt = x;
    }
    if (mt == -INFINITY) {
        *why = "the sparse teacher row has no probability mass";
        return KD_E_INVALID;
    }
    for (size_t i = 0; i < k; i++)
        if (ids[i] >= 0) zt += exp(slot_lp(sp->value_kind, vals[i], lse_k, l1r) * d->inv_t - mt);
    zt += exp(ltail * d->inv_t - mt);
    const double lz = mt + log(zt);
    /* student buckets */
    double qk = 0;
    for (size_t i = 0; i < k; i++)
        if (ids[i] >= 0) qk += exp(LQ(i));
    /* Every student logit outside the ids is > -inf unless masked, so a
     * rounded-away tail is floored (a masked tail is caught by the caller's
     * value pass first). */
    double qtail = used >= n ? 0.0 : 1.0 - qk;
    if (used < n && qtail < 1e-30) qtail = 1e-30;
    double lqtail = qtail > 0 ? log(qtail) : -INFINITY;
    double lptail = ltail * d->inv_t - lz;
    double v = 0, gbar = 0;
    int bad = 0;
    double gtail = bucket(d, lw, l1w, lptail, lqtail, &v, &bad);
    if (bad) {
        *why = "the divergence is infinite on the tail bucket (tail mass on one side only)";
        return KD_E_NUMERIC;
    }
    gbar = gtail;
    for (size_t i = 0; i < k; i++) {
        if (ids[i] < 0) continue;
        double lp = slot_lp(sp->value_kind, vals[i], lse_k, l1r) * d->inv_t - lz;
        gbar += bucket(d, lw, l1w, lp, LQ(i), &v, &bad);
        if (bad) {
            *why = "the divergence is infinite (one side masks a class the other gives mass)";
            return KD_E_NUMERIC;
        }
    }
    *val = v < 0 ? 0 : v;
    if (grad) {
        double ratio = qtail > 0 ? gtail / qtail : 0.0;
        add_scaled_q(s, n, it, (float)ls, (float)(coef * (ratio - gbar)), grad);
        for (size_t i = 0; i < k; i++) {
            if (ids[i] < 0) continue;
            double dummy = 0, lq = LQ(i);
            double lp = slot_lp(sp->value_kind, vals[i], lse_k, l1r) * d->inv_t - lz;
            double gi = bucket(d, lw, l1w, lp, lq, &dummy, &bad);
            grad[ids[i]] += (float)(coef * (gi - exp(lq) * ratio));
        }
    }
#undef LQ
    return KD_OK;
}
