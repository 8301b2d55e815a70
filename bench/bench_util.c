/* bench_util.c - timing and statistics shared by the benchmarks. */
#include "bench_util.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

double bench_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

double bench_median(const double *v, size_t n)
{
    if (n == 0) return 0.0;
    double *t = malloc(n * sizeof *t);
    if (!t) return v[0];
    memcpy(t, v, n * sizeof *t);
    qsort(t, n, sizeof *t, cmp_double);
    double m = (n % 2) ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]);
    free(t);
    return m;
}

double bench_time(void (*fn)(void *), void *arg, double min_seconds)
{
    fn(arg);
    long iters = 1, total = 0;
    double start = bench_now(), elapsed = 0.0;
    while (elapsed < min_seconds) {
        for (long i = 0; i < iters; i++) fn(arg);
        total += iters;
        elapsed = bench_now() - start;
        if (iters < (1L << 20)) iters *= 2;
    }
    return elapsed / (double)total;
}

double bench_time_median(void (*fn)(void *), void *arg, double min_seconds, int reps)
{
    double t[64];
    if (reps > 64) reps = 64;
    if (reps < 1) reps = 1;
    for (int r = 0; r < reps; r++) t[r] = bench_time(fn, arg, min_seconds);
    return bench_median(t, (size_t)reps);
}
