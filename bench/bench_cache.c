/* bench_cache.c - teacher-logit cache throughput (issue 5): positions per
 * second written (top-k selection + encoding + file) and read (decode of
 * shuffled rows), V = 32000, k = 50, LM-shaped synthetic logits, one thread.
 * The anchor is a plain pass over the same logits (finding the row maximum),
 * the least any writer must do. Writes are timed as whole files (open, R
 * appends, finish with fsync and rename) and as appends to an open writer.
 * Medians of 5 runs.
 *   build-cache/bench/bench_cache */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "bench_util.h"
#include "kd/kd.h"

enum { V = 32000, K = 50, R = 512 };
static float *z;
static kd_context *ctx;
static const char *path = "/tmp/bench_cache.kdlc";
static kd_cache_encoding enc;
static kd_logit_cache *cache;
static uint64_t rows[R];
static int32_t ids[R * K];
static float vals[R * K], tail[R];
static volatile float sink;

static void anchor(void *u)
{
    (void)u;
    float m = -INFINITY;
    for (size_t i = 0; i < (size_t)V * R; i++) m = z[i] > m ? z[i] : m;
    sink = m;
}

static void write_run(void *u)
{
    (void)u;
    kd_cache_config cfg;
    kd_cache_config_default(&cfg);
    cfg.k = K;
    cfg.encoding = enc;
    kd_cache_writer *w;
    if (kd_cache_writer_open(ctx, path, V, &cfg, 0, &w) || kd_cache_writer_append_logits(w, z, R) ||
        kd_cache_writer_finish(w))
        abort();
    kd_cache_writer_destroy(w);
}

/* Appending only, to a writer that stays open: the encoder's steady state
 * without the per-file open, fsync and rename of write_run. */
static kd_cache_writer *open_writer;
static void append_run(void *u)
{
    (void)u;
    if (kd_cache_writer_append_logits(open_writer, z, R)) abort();
}

static void read_run(void *u)
{
    (void)u;
    if (kd_logit_cache_rows(cache, rows, R, ids, vals, tail, NULL)) abort();
}

int main(void)
{
    if (kd_context_create(NULL, &ctx)) return 1;
    z = (float *)malloc(sizeof(float) * V * R);
    kd_rng r;
    kd_rng_seed(&r, 77, 17);
    for (size_t i = 0; i < R; i++) {
        for (size_t j = 0; j < V; j++) z[i * V + j] = -1.5f * logf((float)j + 1.0f) + kd_rng_normal(&r);
        for (int b = 0; b < 8; b++) z[i * V + kd_rng_below(&r, V)] += 12.0f - (float)b;
        rows[i] = (i * 197) % R;
    }
    double ta = bench_time_median(anchor, NULL, 0.2, 5);
    for (int e = 1; e <= 2; e++) {
        enc = (kd_cache_encoding)e;
        double tw = bench_time_median(write_run, NULL, 0.2, 5);
        kd_cache_config cfg;
        kd_cache_config_default(&cfg);
        cfg.k = K;
        cfg.encoding = enc;
        if (kd_cache_writer_open(ctx, path, V, &cfg, 0, &open_writer)) return 1;
        double tapp = bench_time_median(append_run, NULL, 0.2, 5);
        kd_cache_writer_destroy(open_writer); /* abandons the partial file */
        if (kd_logit_cache_open(ctx, path, &cache)) return 1;
        double tr = bench_time_median(read_run, NULL, 0.2, 5);
        printf("bench=cache_write encoding=%s V=%d k=%d positions_per_s=%.0f append_only_positions_per_s=%.0f "
               "anchor_max_pass_positions_per_s=%.0f speedup=%.3f\n",
               e == 1 ? "logprob16" : "compact", V, K, R / tw, R / tapp, R / ta, ta / tw);
        printf("bench=cache_read encoding=%s V=%d k=%d positions_per_s=%.0f bytes_per_position=%.1f\n",
               e == 1 ? "logprob16" : "compact", V, K, R / tr, (double)kd_logit_cache_file_bytes(cache) / R);
        kd_logit_cache_close(cache);
    }
    unlink(path);
    unlink("/tmp/bench_cache.kdlc.partial"); /* left by the abandoned append-only writer */
    free(z);
    kd_context_destroy(ctx);
    return 0;
}
