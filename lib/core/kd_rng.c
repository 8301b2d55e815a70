/* kd_rng.c - PCG32 (XSH-RR 64/32), the documented reproducible generator. */
#include <math.h>

#include "kd_internal.h"

#define KD_PCG_MULT 6364136223846793005ull

uint32_t kd_rng_u32(kd_rng *rng)
{
    uint64_t old = rng->state;
    rng->state = old * KD_PCG_MULT + rng->inc;
    uint32_t xorshifted = (uint32_t)(((old >> 18u) ^ old) >> 27u);
    uint32_t rot = (uint32_t)(old >> 59u);
    return (xorshifted >> rot) | (xorshifted << ((32u - rot) & 31u));
}

void kd_rng_seed(kd_rng *rng, uint64_t seed, uint64_t stream)
{
    if (!rng) return;
    rng->state = 0u;
    rng->inc = (stream << 1u) | 1u;
    (void)kd_rng_u32(rng);
    rng->state += seed;
    (void)kd_rng_u32(rng);
}

uint32_t kd_rng_below(kd_rng *rng, uint32_t bound)
{
    if (bound == 0) return 0;
    /* Lemire-free classic rejection: threshold = 2^32 mod bound. */
    uint32_t threshold = (uint32_t)(-bound) % bound;
    for (;;) {
        uint32_t r = kd_rng_u32(rng);
        if (r >= threshold) return r % bound;
    }
}

float kd_rng_uniform(kd_rng *rng)
{
    return (float)(kd_rng_u32(rng) >> 8) * (1.0f / 16777216.0f);
}

float kd_rng_normal(kd_rng *rng)
{
    /* u1 in (0, 1] so the log is finite. */
    float u1 = ((float)(kd_rng_u32(rng) >> 8) + 1.0f) * (1.0f / 16777216.0f);
    float u2 = kd_rng_uniform(rng);
    return sqrtf(-2.0f * logf(u1)) * cosf(6.28318530717958647692f * u2);
}
