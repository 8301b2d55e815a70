/* bench_util.h - timing and statistics shared by the benchmarks. */
#ifndef KD_BENCH_UTIL_H
#define KD_BENCH_UTIL_H

#include <stddef.h>

/* Monotonic seconds. */
double bench_now(void);
/* Median of n values (sorts a copy). */
double bench_median(const double *v, size_t n);
/* Calls fn(arg) repeatedly: a warm-up call, then batches until min_seconds
 * have passed; returns seconds per call. */
double bench_time(void (*fn)(void *), void *arg, double min_seconds);
/* Median over reps of bench_time. */
double bench_time_median(void (*fn)(void *), void *arg, double min_seconds, int reps);

#endif
