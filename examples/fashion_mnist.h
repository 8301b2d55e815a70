/*
 * fashion_mnist.h - Debian's dataset-fashion-mnist for the examples
 * (header-only, static functions): the gzip'd IDX files of one split read,
 * checked (unsigned-byte N x 28 x 28 images, one label 0..9 per image) and
 * standardised with the training set's pixel mean and std.
 */
#ifndef KD_EXAMPLES_FASHION_MNIST_H
#define KD_EXAMPLES_FASHION_MNIST_H

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <zlib.h>

#include <kd/kd.h>
#include <kd/kd_data.h>

#define FM_CLASSES 10
#define FM_TRAIN_MEAN 0.2860f /* Fashion-MNIST training-set pixel mean and std */
#define FM_TRAIN_STD 0.3530f
#define FM_DEFAULT_DIR "/usr/share/datasets/fashion-mnist"
#define FM_INSTALL_HINT "install Debian's dataset-fashion-mnist (sudo apt-get install dataset-fashion-mnist, or scripts/deps demo) or pass --data-dir"

typedef struct fm_dataset {
    float *x;   /* n x 784, standardised */
    int32_t *y; /* n */
    size_t n;
} fm_dataset;

/* Prints "error: WHAT: <context's last error>" and returns 1, main's exit
 * status; FM_CHECK returns it from the calling function (which has a `ctx`)
 * when CALL does not return KD_OK. */
static inline int fm_fail(kd_context *ctx, const char *what)
{
    fprintf(stderr, "error: %s: %s\n", what, kd_context_last_error(ctx));
    return 1;
}
#define FM_CHECK(call, what)                                                                   \
    do {                                                                                       \
        if ((call) != KD_OK) return fm_fail(ctx, what);                                        \
    } while (0)

static int fm_check(kd_context *ctx, kd_status st, const char *what)
{
    if (st == KD_OK) return 0;
    fprintf(stderr, "error: %s: %s: %s\n", what, kd_status_string(st), kd_context_last_error(ctx));
    return -1;
}

/* The whole of a gzip'd file, malloc'd; NULL after a message on stderr. */
static unsigned char *fm_read_gz(const char *path, size_t *size)
{
    if (access(path, R_OK) != 0) {
        fprintf(stderr, "error: cannot read %s: %s\n  %s\n", path, strerror(errno), FM_INSTALL_HINT);
        return NULL;
    }
    gzFile f = gzopen(path, "rb");
    if (!f) {
        fprintf(stderr, "error: cannot open %s\n  %s\n", path, FM_INSTALL_HINT);
        return NULL;
    }
    size_t cap = 1 << 20, n = 0;
    unsigned char *buf = malloc(cap);
    for (;;) {
        if (!buf) break;
        if (n == cap) {
            unsigned char *nb = cap > SIZE_MAX / 2 ? NULL : realloc(buf, cap * 2);
            if (!nb) { free(buf); buf = NULL; break; }
            buf = nb;
            cap *= 2;
        }
        size_t want = cap - n > (1u << 30) ? (1u << 30) : cap - n;
        int got = gzread(f, buf + n, (unsigned)want);
        if (got < 0) {
            int zerr;
            const char *msg = gzerror(f, &zerr);
            fprintf(stderr, "error: %s is corrupt (gzip: %s)\n  reinstall dataset-fashion-mnist or check --data-dir\n",
                    path, msg);
            free(buf);
            gzclose(f);
            return NULL;
        }
        if (got == 0) break;
        n += (size_t)got;
    }
    gzclose(f);
    if (!buf) {
        fprintf(stderr, "error: out of memory reading %s\n", path);
        return NULL;
    }
    *size = n;
    return buf;
}

/* Images and labels of one split ("train" or "t10k"), limit 0 = all, into
 * out (malloc'd x and y, the caller frees); 0, or -1 after a message. */
static int fm_load(kd_context *ctx, const char *dir, const char *split, size_t limit, fm_dataset *out)
{
    char ipath[4096], lpath[4096];
    snprintf(ipath, sizeof ipath, "%s/%s-images-idx3-ubyte.gz", dir, split);
    snprintf(lpath, sizeof lpath, "%s/%s-labels-idx1-ubyte.gz", dir, split);
    size_t isz = 0, lsz = 0;
    unsigned char *ib = fm_read_gz(ipath, &isz);
    if (!ib) return -1;
    unsigned char *lb = fm_read_gz(lpath, &lsz);
    if (!lb) { free(ib); return -1; }
    int rc = -1;
    kd_idx_view iv = {.struct_size = sizeof iv}, lv = {.struct_size = sizeof lv};
    kd_status st = kd_idx_parse(ctx, ib, isz, &iv);
    if (st != KD_OK) {
        fprintf(stderr, "error: %s is corrupt: %s\n  reinstall dataset-fashion-mnist\n", ipath, kd_context_last_error(ctx));
        goto done;
    }
    if ((st = kd_idx_parse(ctx, lb, lsz, &lv)) != KD_OK) {
        fprintf(stderr, "error: %s is corrupt: %s\n  reinstall dataset-fashion-mnist\n", lpath, kd_context_last_error(ctx));
        goto done;
    }
    if (iv.type != KD_IDX_U8 || iv.rank != 3 || iv.dims[1] != 28 || iv.dims[2] != 28 || iv.dims[0] == 0) {
        fprintf(stderr, "error: %s: expected unsigned-byte images N x 28 x 28\n", ipath);
        goto done;
    }
    if (lv.rank != 1 || lv.dims[0] != iv.dims[0]) {
        fprintf(stderr, "error: %s: expected %u labels to match %s\n", lpath, iv.dims[0], ipath);
        goto done;
    }
    size_t n = iv.dims[0];
    if (limit && limit < n) n = limit;
    out->n = n;
    out->x = malloc(n * 784 * sizeof *out->x);
    out->y = malloc(n * sizeof *out->y);
    if (!out->x || !out->y) { fprintf(stderr, "error: out of memory\n"); goto done; }
    if (fm_check(ctx, kd_idx_to_float(ctx, &iv, 0, n, 1.0f / (255.0f * FM_TRAIN_STD), -FM_TRAIN_MEAN / FM_TRAIN_STD, out->x), ipath) ||
        fm_check(ctx, kd_idx_to_labels(ctx, &lv, 0, n, out->y), lpath))
        goto done;
    for (size_t i = 0; i < n; i++)
        if (out->y[i] < 0 || out->y[i] >= FM_CLASSES) {
            fprintf(stderr, "error: %s: label %d at item %zu is not a class 0..9\n", lpath, (int)out->y[i], i);
            goto done;
        }
    rc = 0;
done:
    free(ib);
    free(lb);
    if (rc) { free(out->x); free(out->y); memset(out, 0, sizeof *out); }
    return rc;
}

#endif
