/*
 * kd_cache_write.c - the teacher-logit cache writer (partial file, resume,
 * atomic finalisation) and training a student from a cache (hosted builds).
 *
 * The partial file "<path>.partial" holds the header (positions 0, not
 * finished) and complete blocks only. It is not fsynced block by block:
 * resume trusts nothing it has not CRC-checked, so a torn tail costs only
 * the blocks it damaged. Finishing copies the intact blocks, the last short
 * block, the index and the footer into "<path>" through kd__atomic_*.
 */
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

#include "kd/kd_cache.h"
#include "kd_cache_format.h"
#include "kd_distill_internal.h"

struct kd_cache_writer {
    kd_context *ctx;
    kdc_header h;
    kdc_encoder enc;
    char *path;
    char *partial;
    int fd;
    int state;                /* 0 open, 1 finished, 2 failed */
    uint64_t positions;       /* total, pending included */
    uint64_t *offsets;        /* block offsets (complete blocks + final short one) */
    size_t n_blocks, cap_blocks;
    size_t file_end;          /* bytes of the partial file */
    unsigned char *block;     /* KDC_BLOCK_HEADER + bp * max_record */
    size_t block_len;         /* payload bytes pending */
    uint32_t block_count;     /* positions pending */
};

void kd_cache_config_default_sized(kd_cache_config *out, size_t size)
{
    kd_cache_config d, *cfg = &d;
    memset(cfg, 0, sizeof *cfg);
    cfg->struct_size = (uint32_t)sizeof *cfg;
    cfg->k = 50;
    cfg->encoding = KD_CACHE_ENC_COMPACT;
    cfg->value_scale = 128;
    cfg->block_positions = 128;
    cfg->batch = 64;
    kd__default_out(out, size, cfg, sizeof *cfg);
}

static int fault(const char *op)
{
    if (!kd__io_fault_hook) return 0;
    int e = kd__io_fault_hook(op);
    if (e) errno = e;
    return e;
}

static kd_status write_all(kd_cache_writer *w, const void *data, size_t n)
{
    const unsigned char *p = (const unsigned char *)data;
    while (n > 0) {
        ssize_t r = fault("write") ? -1 : write(w->fd, p, n);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0)
            return kd__fail(w->ctx, KD_E_IO, "writing '%s' failed: %s", w->partial,
                            r < 0 ? strerror(errno) : "no progress");
        p += r;
        n -= (size_t)r;
    }
    return KD_OK;
}

static kd_status push_offset(kd_cache_writer *w, uint64_t off)
{
    if (w->n_blocks == w->cap_blocks) {
        size_t cap = w->cap_blocks ? 2 * w->cap_blocks : 64;
        uint64_t *o = (uint64_t *)kd__calloc(w->ctx, cap, sizeof *o);
        if (!o) return kd_context_last_status(w->ctx);
        if (w->n_blocks) memcpy(o, w->offsets, w->n_blocks * sizeof *o);
        kd__free(w->ctx, w->offsets);
        w->offsets = o;
        w->cap_blocks = cap;
    }
    w->offsets[w->n_blocks++] = off;
    return KD_OK;
}

/* Fills the pending block's header; returns its total size. */
static size_t seal_block(kd_cache_writer *w)
{
    unsigned char *p = w->block;
    memcpy(p, "KDLB", 4);
    kdc_wr32(p + 4, w->block_count);
    kdc_wr64(p + 8, w->positions - w->block_count);
    kdc_wr32(p + 16, (uint32_t)w->block_len);
    kdc_wr32(p + 20, kd_crc32c(kd_crc32c(0, p, 20), p + KDC_BLOCK_HEADER, w->block_len));
    return KDC_BLOCK_HEADER + w->block_len;
}

static char *with_suffix(kd_context *ctx, const char *path, const char *suffix)
{
    size_t a = strlen(path), b = strlen(suffix);
    char *s = (char *)kd__alloc(ctx, a + b + 1);
    if (!s) return NULL;
    memcpy(s, path, a);
    memcpy(s + a, suffix, b + 1);
    return s;
}

kd_status kd_cache_writer_open(kd_context *ctx, const char *path, size_t classes,
                               const kd_cache_config *cfg_in, int resume, kd_cache_writer **out)
{
    if (!ctx) return KD_E_INVALID;
    if (!path || !*path || !out) return kd__fail(ctx, KD_E_INVALID, "kd_cache_writer_open: NULL path or out");
    *out = NULL;
    kd_cache_config cfg;
    kd_cache_config_default(&cfg);
    if (cfg_in && kd__config_copy(&cfg, sizeof cfg, cfg_in, cfg_in->struct_size, sizeof cfg) != KD_OK)
        return kd__fail(ctx, KD_E_VERSION, "kd_cache_writer_open: config struct_size not supported");
    if (classes == 0 || classes > KDC_MAX_CLASSES)
        return kd__fail(ctx, KD_E_INVALID, "kd_cache_writer_open: %zu classes (1..2^31-1)", classes);
    if (cfg.k == 0 || cfg.k > KDC_MAX_K || cfg.k > classes)
        return kd__fail(ctx, KD_E_INVALID, "kd_cache_writer_open: k = %zu must be in 1..min(V, 65535)", cfg.k);
    if (cfg.encoding != KD_CACHE_ENC_LOGPROB16 && cfg.encoding != KD_CACHE_ENC_COMPACT)
        return kd__fail(ctx, KD_E_INVALID, "kd_cache_writer_open: unknown encoding %d", (int)cfg.encoding);
    if (cfg.encoding == KD_CACHE_ENC_COMPACT && (cfg.value_scale < 16 || cfg.value_scale > 4096))
        return kd__fail(ctx, KD_E_INVALID, "kd_cache_writer_open: value_scale %u not in 16..4096",
                        (unsigned)cfg.value_scale);
    if (cfg.block_positions == 0 || cfg.block_positions > KDC_MAX_BLOCK)
        return kd__fail(ctx, KD_E_INVALID, "kd_cache_writer_open: block_positions %zu not in 1..65536",
                        cfg.block_positions);
    kdc_header h = {KD_CACHE_FORMAT_VERSION, (uint32_t)cfg.encoding, classes, (uint32_t)cfg.k,
                    (uint32_t)cfg.block_positions, 0,
                    cfg.encoding == KD_CACHE_ENC_COMPACT ? cfg.value_scale : (uint32_t)KDC_LOG_SCALE, 0};
    size_t blk;
    if (kd__mul_overflow(kdc_max_record(&h), cfg.block_positions, &blk) ||
        kd__add_overflow(blk, KDC_BLOCK_HEADER, &blk))
        return kd__fail(ctx, KD_E_OVERFLOW, "kd_cache_writer_open: block too large");
    kd_cache_writer *w = (kd_cache_writer *)kd__calloc(ctx, 1, sizeof *w);
    if (!w) return kd_context_last_status(ctx);
    w->ctx = ctx;
    w->h = h;
    w->fd = -1;
    kd_status st = kdc_encoder_init(ctx, &w->enc, &h);
    if (st != KD_OK) {
        kd__free(ctx, w);
        return st;
    }
    w->path = with_suffix(ctx, path, "");
    w->partial = with_suffix(ctx, path, ".partial");
    w->block = (unsigned char *)kd__alloc(ctx, blk);
    if (!w->path || !w->partial || !w->block) {
        st = kd_context_last_status(ctx);
        goto fail;
    }
    size_t keep = 0;
    if (resume) {
        kd_mapped_file m;
        st = kd__map_file(ctx, w->partial, &m);
        if (st == KD_E_NOT_FOUND) {
            st = KD_OK;
        } else if (st != KD_OK) {
            goto fail;
        } else {
            kdc_header ph;
            if (kdc_header_read(ctx, m.data, m.size, &ph) == KD_OK && !(ph.flags & KDC_FLAG_FINISHED)) {
                if (ph.encoding != h.encoding || ph.classes != h.classes || ph.k != h.k ||
                    ph.value_scale != h.value_scale || ph.block_positions != h.block_positions) {
                    kd__unmap_file(&m);
                    st = kd__fail(ctx, KD_E_INVALID,
                                  "kd_cache_writer_open: '%s' was written with other V, k, encoding or block size",
                                  w->partial);
                    goto fail;
                }
                uint64_t nb = 0, pos = 0;
                uint64_t *offs = NULL;
                size_t end = KDC_HEADER_SIZE;
                /* at most size / 24 blocks */
                offs = (uint64_t *)kd__calloc(ctx, m.size / KDC_BLOCK_HEADER + 1, sizeof *offs);
                if (!offs) {
                    kd__unmap_file(&m);
                    st = kd_context_last_status(ctx);
                    goto fail;
                }
                kdc_scan_blocks(ctx, &h, m.data, m.size, 0, 0, &nb, &pos, &end, offs);
                for (uint64_t b = 0; b < nb && st == KD_OK; b++) st = push_offset(w, offs[b]);
                kd__free(ctx, offs);
                if (st != KD_OK) {
                    kd__unmap_file(&m);
                    goto fail;
                }
                w->positions = pos;
                keep = end;
            }
            kd__unmap_file(&m);
        }
    }
    if (keep) {
        w->fd = open(w->partial, O_WRONLY | O_CLOEXEC);
        if (w->fd < 0 || ftruncate(w->fd, (off_t)keep) != 0 || lseek(w->fd, (off_t)keep, SEEK_SET) < 0) {
            st = kd__fail(ctx, KD_E_IO, "cannot reopen '%s': %s", w->partial, strerror(errno));
            goto fail;
        }
        w->file_end = keep;
    } else {
        w->fd = open(w->partial, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
        if (w->fd < 0) {
            st = kd__fail(ctx, KD_E_IO, "cannot create '%s': %s", w->partial, strerror(errno));
            goto fail;
        }
        unsigned char hb[KDC_HEADER_SIZE];
        kdc_header_write(hb, &h);
        if ((st = write_all(w, hb, sizeof hb)) != KD_OK) goto fail;
        w->file_end = KDC_HEADER_SIZE;
    }
    *out = w;
    return KD_OK;
fail:
    kd_cache_writer_destroy(w);
    return st;
}

uint64_t kd_cache_writer_positions(const kd_cache_writer *w) { return w ? w->positions : 0; }

kd_status kd_cache_writer_append_logits(kd_cache_writer *w, const float *logits, size_t rows)
{
    if (!w) return KD_E_INVALID;
    kd_context *ctx = w->ctx;
    if (w->state != 0)
        return kd__fail(ctx, KD_E_STATE, "kd_cache_writer_append_logits: writer %s",
                        w->state == 1 ? "already finished" : "failed earlier");
    if (rows && !logits) return kd__fail(ctx, KD_E_INVALID, "kd_cache_writer_append_logits: NULL logits");
    const size_t V = (size_t)w->h.classes;
    size_t cells;
    if (kd__mul_overflow(rows, V, &cells))
        return kd__fail(ctx, KD_E_OVERFLOW, "kd_cache_writer_append_logits: %zu rows too many", rows);
    kd_status st;
    for (size_t r = 0; r < rows; r++)
        if ((st = kdc_check_row(ctx, logits + r * V, w->h.classes, w->positions + r)) != KD_OK) return st;
    for (size_t r = 0; r < rows; r++) {
        size_t len = kdc_encode_row(&w->enc, logits + r * V);
        memcpy(w->block + KDC_BLOCK_HEADER + w->block_len, w->enc.rec, len);
        w->block_len += len;
        w->block_count++;
        w->positions++;
        if (w->block_count == w->h.block_positions) {
            size_t n = seal_block(w);
            if ((st = push_offset(w, w->file_end)) != KD_OK || (st = write_all(w, w->block, n)) != KD_OK) {
                w->state = 2;
                return st;
            }
            w->file_end += n;
            w->block_len = 0;
            w->block_count = 0;
        }
    }
    return KD_OK;
}

kd_status kd_cache_writer_finish(kd_cache_writer *w)
{
    if (!w) return KD_E_INVALID;
    kd_context *ctx = w->ctx;
    if (w->state != 0)
        return kd__fail(ctx, KD_E_STATE, "kd_cache_writer_finish: writer %s",
                        w->state == 1 ? "already finished" : "failed earlier");
    size_t tail_len = 0;
    kd_status st = KD_OK;
    if (w->block_count) {
        tail_len = seal_block(w);
        if ((st = push_offset(w, w->file_end)) != KD_OK) return st;
    }
    w->state = 2;
    kd_mapped_file m;
    memset(&m, 0, sizeof m);
    if (w->file_end > KDC_HEADER_SIZE) {
        if ((st = kd__map_file(ctx, w->partial, &m)) != KD_OK) return st;
        if (m.size < w->file_end) {
            kd__unmap_file(&m);
            return kd__fail(ctx, KD_E_IO, "'%s' shrank while it was being written", w->partial);
        }
    }
    kdc_header h = w->h;
    h.positions = w->positions;
    h.flags = KDC_FLAG_FINISHED;
    unsigned char hb[KDC_HEADER_SIZE], foot[KDC_FOOTER_SIZE];
    kdc_header_write(hb, &h);
    uint64_t io = (uint64_t)w->file_end + tail_len;
    unsigned char *idx = (unsigned char *)kd__calloc(ctx, w->n_blocks ? w->n_blocks : 1, 8);
    if (!idx) {
        kd__unmap_file(&m);
        return kd_context_last_status(ctx);
    }
    for (size_t b = 0; b < w->n_blocks; b++) kdc_wr64(idx + 8 * b, w->offsets[b]);
    kdc_wr64(foot, io);
    kdc_wr64(foot + 8, w->positions);
    kdc_wr64(foot + 16, w->n_blocks);
    kdc_wr32(foot + 24, kd_crc32c(kd_crc32c(0, idx, w->n_blocks * 8), foot, 24));
    memcpy(foot + 28, "KDLE", 4);
    kd_atomic_file af;
    if ((st = kd__atomic_open(ctx, &af, w->path)) == KD_OK) {
        if ((st = kd__atomic_write(&af, hb, sizeof hb)) == KD_OK && m.data)
            st = kd__atomic_write(&af, m.data + KDC_HEADER_SIZE, w->file_end - KDC_HEADER_SIZE);
        if (st == KD_OK && tail_len) st = kd__atomic_write(&af, w->block, tail_len);
        if (st == KD_OK) st = kd__atomic_write(&af, idx, w->n_blocks * 8);
        if (st == KD_OK) st = kd__atomic_write(&af, foot, sizeof foot);
        if (st == KD_OK) st = kd__atomic_commit(&af);
        else kd__atomic_abort(&af);
    }
    kd__free(ctx, idx);
    kd__unmap_file(&m);
    if (st != KD_OK) return st;
    close(w->fd);
    w->fd = -1;
    unlink(w->partial);
    w->state = 1;
    return KD_OK;
}

void kd_cache_writer_destroy(kd_cache_writer *w)
{
    if (!w) return;
    kd_context *ctx = w->ctx;
    if (w->fd >= 0) close(w->fd);
    kdc_encoder_free(&w->enc);
    kd__free(ctx, w->offsets);
    kd__free(ctx, w->block);
    kd__free(ctx, w->partial);
    kd__free(ctx, w->path);
    kd__free(ctx, w);
}

kd_status kd_cache_write_teacher(kd_context *ctx, kd_teacher *teacher, const kd_dataset *ds,
                                 const char *path, const kd_cache_config *cfg_in, int resume)
{
    if (!ctx) return KD_E_INVALID;
    if (!teacher || !ds || !path) return kd__fail(ctx, KD_E_INVALID, "kd_cache_write_teacher: NULL argument");
    kd_cache_config cfg;
    kd_cache_config_default(&cfg);
    if (cfg_in && kd__config_copy(&cfg, sizeof cfg, cfg_in, cfg_in->struct_size, sizeof cfg) != KD_OK)
        return kd__fail(ctx, KD_E_VERSION, "kd_cache_write_teacher: config struct_size not supported");
    if (ds->struct_size < sizeof *ds) return kd__fail(ctx, KD_E_VERSION, "kd_cache_write_teacher: set dataset struct_size");
    if (!ds->x || ds->n == 0) return kd__fail(ctx, KD_E_INVALID, "kd_cache_write_teacher: empty dataset");
    const size_t dim = kd_teacher_input_dim(teacher), V = kd_teacher_classes(teacher);
    if (ds->dim != dim)
        return kd__fail(ctx, KD_E_SHAPE, "kd_cache_write_teacher: rows of %zu floats, the teacher takes %zu",
                        ds->dim, dim);
    if (cfg.batch == 0) return kd__fail(ctx, KD_E_INVALID, "kd_cache_write_teacher: batch must be > 0");
    size_t cells;
    if (kd__mul_overflow(ds->n, dim, &cells) || kd__mul_overflow(cfg.batch, V, &cells))
        return kd__fail(ctx, KD_E_OVERFLOW, "kd_cache_write_teacher: sizes overflow");
    kd_cache_writer *w = NULL;
    kd_status st = kd_cache_writer_open(ctx, path, V, &cfg, resume, &w);
    if (st != KD_OK) return st;
    uint64_t start = kd_cache_writer_positions(w);
    if (start > ds->n) {
        kd_cache_writer_destroy(w);
        return kd__fail(ctx, KD_E_INVALID, "kd_cache_write_teacher: the partial file has %llu positions, the dataset %zu",
                        (unsigned long long)start, ds->n);
    }
    float *buf = (float *)kd__calloc(ctx, cells, sizeof *buf);
    if (!buf) {
        kd_cache_writer_destroy(w);
        return kd_context_last_status(ctx);
    }
    for (size_t i = (size_t)start; i < ds->n && st == KD_OK; i += cfg.batch) {
        size_t b = ds->n - i < cfg.batch ? ds->n - i : cfg.batch;
        st = kd_teacher_logits_mode(teacher, ds->x + i * dim, b, buf, KD_MODE_INFER); /* no training here */
        if (st == KD_OK) st = kd_cache_writer_append_logits(w, buf, b);
    }
    if (st == KD_OK) st = kd_cache_writer_finish(w);
    kd__free(ctx, buf);
    kd_cache_writer_destroy(w);
    return st;
}

/* ---- training from a cache ------------------------------------------------------ */

kd_status kd_fit_cached(kd_student *s, const kd_logit_cache *cache, const kd_dataset *ds,
                        const kd_fit_config *cfg_in)
{
    if (!s) return KD_E_INVALID;
    kd_context *ctx = kd__student_context(s);
    kd_model *m = kd_student_model(s);
    if (!cache || !ds) return kd__fail(ctx, KD_E_INVALID, "kd_fit_cached: NULL cache or dataset");
    kd_fit_config cfg;
    kd_fit_config_default(&cfg);
    if (cfg_in && kd__config_copy(&cfg, sizeof cfg, cfg_in, cfg_in->struct_size, sizeof cfg) != KD_OK)
        return kd__fail(ctx, KD_E_VERSION, "kd_fit_cached: config struct_size not supported");
    if (cfg.augment)
        return kd__fail(ctx, KD_E_INVALID, "kd_fit_cached: augmentation needs a live teacher, not a cache");
    if (cfg.batch == 0) return kd__fail(ctx, KD_E_INVALID, "kd_fit_cached: batch must be > 0");
    const size_t dim = kd__model_input_numel(m);
    kd_status st = kd__check_dataset(ctx, ds, dim, "kd_fit_cached");
    if (st != KD_OK) return st;
    size_t shape[KD_TENSOR_MAX_RANK], classes = 0;
    uint32_t rank = 0;
    if ((st = kd_model_output_shape(m, shape, &rank, &classes)) != KD_OK) return st;
    if (kd_logit_cache_positions(cache) != ds->n || kd_logit_cache_classes(cache) != classes)
        return kd__fail(ctx, KD_E_SHAPE, "kd_fit_cached: cache has %llu positions x %zu classes, dataset %zu rows, student %zu classes",
                        (unsigned long long)kd_logit_cache_positions(cache), kd_logit_cache_classes(cache),
                        ds->n, classes);
    const size_t n = ds->n, bsz = cfg.batch < n ? cfg.batch : n, k = kd_logit_cache_k(cache);
    size_t cells;
    if (kd__mul_overflow(bsz, dim, &cells) || kd__mul_overflow(bsz, k, &cells))
        return kd__fail(ctx, KD_E_OVERFLOW, "kd_fit_cached: batch too large");
    size_t *order = (size_t *)kd__calloc(ctx, n, sizeof *order);
    float *xb = (float *)kd__calloc(ctx, bsz * dim, sizeof *xb);
    int32_t *yb = (int32_t *)kd__calloc(ctx, bsz, sizeof *yb);
    uint64_t *rows = (uint64_t *)kd__calloc(ctx, bsz, sizeof *rows);
    int32_t *ids = (int32_t *)kd__calloc(ctx, bsz * k, sizeof *ids);
    float *vals = (float *)kd__calloc(ctx, bsz * k, sizeof *vals);
    float *tail = (float *)kd__calloc(ctx, bsz, sizeof *tail);
    if (!order || !xb || !yb || !rows || !ids || !vals || !tail) {
        st = kd_context_last_status(ctx);
        goto done;
    }
    for (size_t i = 0; i < n; i++) order[i] = i;
    const size_t steps = cfg.drop_last ? n / bsz : (n + bsz - 1) / bsz;
    for (size_t epoch = 0; epoch < cfg.epochs; epoch++) {
        kd_fit_shuffle(order, n, cfg.seed, epoch); /* the same order as kd_fit */
        double running = 0.0;
        for (size_t step = 0; step < steps; step++) {
            size_t first = step * bsz, b = n - first < bsz ? n - first : bsz;
            kd__fit_gather(ds, dim, order + first, b, xb, yb);
            for (size_t r = 0; r < b; r++) rows[r] = order[first + r];
            kd_sparse_logits sp;
            if ((st = kd_logit_cache_rows(cache, rows, b, ids, vals, tail, &sp)) != KD_OK) goto done;
            kd_step_report rep;
            memset(&rep, 0, sizeof rep);
            rep.struct_size = (uint32_t)sizeof rep;
            if ((st = kd_student_step_sparse(s, xb, b, ds->labels ? yb : NULL, &sp, &rep)) != KD_OK) goto done;
            running += (rep.total - running) / (double)(step + 1);
            if ((st = kd__fit_progress(ctx, &cfg, "kd_fit_cached", epoch, step, steps, running, 0.0)) != KD_OK)
                goto done;
        }
    }
done:
    kd__free(ctx, tail);
    kd__free(ctx, vals);
    kd__free(ctx, ids);
    kd__free(ctx, rows);
    kd__free(ctx, yb);
    kd__free(ctx, xb);
    kd__free(ctx, order);
    return st;
}
