/*
 * distill_fashion_mnist.c - libkd's end-to-end distillation demo.
 *
 * Reads Fashion-MNIST (Debian's dataset-fashion-mnist: gzip-compressed IDX
 * files), trains a teacher once and caches it as a safetensors checkpoint,
 * then trains a small student (784-32-10 by default: about 25k parameters,
 * 100 kB of float weights, the size that fits a microcontroller) twice per
 * seed with the same seed, schedule and number of optimizer steps:
 *
 *   scratch  from the labels alone,
 *   KD       with the teacher's soft targets as well,
 *
 * and prints teacher accuracy, both student accuracies (mean and standard
 * deviation over seeds), the share of the teacher-student gap that KD
 * recovers, and the time taken. Learning curves go to a CSV file and a PNG
 * plot (gnuplot), the KD student of the first seed to a checkpoint.
 *
 * Scenarios (--labels; the default runs both, the transfer set first):
 *   transfer set (--labels 1000): only 1,000 training images keep
 *     their labels (100 per class, drawn from the seed); the teacher (trained
 *     on the full labelled set: it stands in for a model that already exists)
 *     labels all 60,000 images. The scratch student trains on the 1,000
 *     labelled images; the KD student sees them with labels and all 60,000
 *     through the teacher (unlabelled rows carry KD_LOSS_IGNORE_INDEX; the
 *     soft-target term is added with KD_TERM_NO_LABELS).
 *   full labels (--labels 60000): the textbook recipe, every image labelled.
 *
 * Every list option (--labels, --loss, --temperature, --alpha) takes a
 * comma-separated list. One table per --labels value; more than one loss,
 * temperature or weight, or --sweep, prints one row per combination instead.
 *
 * Usage: distill_fashion_mnist [options]   (--help lists them)
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <zlib.h>

#include <kd/kd.h>
#include <kd/kd_checkpoint.h>
#include <kd/kd_data.h>

#include "fashion_mnist.h"

#define CLASSES 10
#define MAX_LIST 8
#define MAX_SEEDS 16
#define MAX_TEACHERS 4

/* ---- options -------------------------------------------------------------- */

typedef enum { LOSS_HINTON, LOSS_RKL, LOSS_JSD, LOSS_TAID, LOSS_DKD } loss_kind;
static const char *const loss_names[] = {"hinton", "rkl", "jsd", "taid", "dkd"};

typedef struct options {
    const char *data_dir, *cache_dir, *out_dir;
    const char *teacher_spec, *student_spec;
    size_t teacher_epochs, teachers, epochs, batch, threads;
    float teacher_lr, lr, weight_decay, label_smoothing;
    int cosine, augment, sweep, quiet, no_plot;
    uint64_t seeds[MAX_SEEDS];
    size_t n_seeds;
    size_t labels[MAX_LIST], n_labels;
    loss_kind losses[MAX_LIST];
    size_t n_losses;
    float temps[MAX_LIST], alphas[MAX_LIST];
    size_t n_temps, n_alphas;
    size_t max_train, max_test; /* 0: all (for quick experiments) */
} options;

static void usage(FILE *f)
{
    fprintf(f,
        "usage: distill_fashion_mnist [options]\n"
        "  --data-dir DIR        IDX .gz files (default /usr/share/datasets/fashion-mnist)\n"
        "  --cache-dir DIR       teacher checkpoints (default $XDG_CACHE_HOME/libkd or ~/.cache/libkd)\n"
        "  --out-dir DIR         curves.csv, curves.png, student-kd.safetensors (default distill-out)\n"
        "  --teacher SPEC        teacher architecture (default: 784-1200-1200-10 MLP, dropout)\n"
        "  --teachers K          ensemble of K teachers (seeds 1..K, probabilities averaged; default 1)\n"
        "  --teacher-epochs N    (default 6)   --teacher-lr X (default 1e-3)\n"
        "  --student SPEC        student architecture (default: input 784; linear 32; relu; linear 10)\n"
        "  --labels N[,N..]      labelled training images: 1000 = transfer set, 60000 = all (default 1000,60000)\n"
        "  --loss L[,L..]        hinton (forward KL) | rkl | jsd | taid | dkd (needs all labels); default hinton\n"
        "  --temperature T[,T..] (default 1)\n"
        "  --alpha A[,A..]       weight of the KD term; the label term gets 1 - A (default 0.9)\n"
        "  --epochs N            student epochs over the KD training set (default 10); the scratch\n"
        "                        student takes the same number of optimizer steps\n"
        "  --batch N (128)  --lr X (1e-3)  --weight-decay X (0.01)  --label-smoothing X (0)\n"
        "  --schedule cosine|constant   (default cosine)\n"
        "  --augment             random shifts of up to 2 pixels, the same view for teacher and student\n"
        "  --seeds N | --seed S[,S..]   seeds 1..N (default 3) or the listed seeds\n"
        "  --sweep               default grid: labels 1000,60000 x loss hinton,taid x T 1,4 (one row each)\n"
        "  --threads N           GEMM threads (default 1: on a shared machine BLIS threads spin)\n"
        "  --max-train N --max-test N   use only the first N images (quick checks)\n"
        "  --no-plot  --quiet\n");
}

static int parse_size(const char *s, size_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || *end || s[0] == '-') return -1;
    *out = (size_t)v;
    return 0;
}

static int parse_float(const char *s, float *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v)) return -1;
    *out = (float)v;
    return 0;
}

/* Splits a comma-separated list into at most MAX_LIST items; kind: 's' size, 'f' float, 'l' loss. */
static int parse_list(const char *s, char kind, void *out, size_t *n)
{
    char buf[256];
    if (strlen(s) >= sizeof buf) return -1;
    strcpy(buf, s);
    *n = 0;
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (*n == MAX_LIST) return -1;
        if (kind == 's' && parse_size(tok, (size_t *)out + *n) != 0) return -1;
        if (kind == 'f' && parse_float(tok, (float *)out + *n) != 0) return -1;
        if (kind == 'l') {
            size_t k = 0;
            while (k < sizeof loss_names / sizeof *loss_names && strcmp(tok, loss_names[k]) != 0) k++;
            if (k == sizeof loss_names / sizeof *loss_names) return -1;
            ((loss_kind *)out)[*n] = (loss_kind)k;
        }
        (*n)++;
    }
    return *n ? 0 : -1;
}

static int parse_options(int argc, char **argv, options *o)
{
    memset(o, 0, sizeof *o);
    o->data_dir = FM_DEFAULT_DIR;
    o->out_dir = "distill-out";
    o->teacher_spec = "input 784; linear 1200; relu; dropout 0.3; linear 1200; relu; dropout 0.3; linear 10";
    o->student_spec = "input 784; linear 32; relu; linear 10";
    o->teacher_epochs = 6;
    o->teachers = 1;
    o->epochs = 10;
    o->batch = 128;
    o->threads = 1;
    o->teacher_lr = 1e-3f;
    o->lr = 1e-3f;
    o->weight_decay = 0.01f;
    o->cosine = 1;
    o->labels[0] = 1000; /* the winning scenario first, then the textbook full-label one */
    o->labels[1] = 60000;
    o->n_labels = 2;
    o->losses[0] = LOSS_HINTON;
    o->n_losses = 1;
    o->temps[0] = 1.0f;
    o->n_temps = 1;
    o->alphas[0] = 0.9f;
    o->n_alphas = 1;
    o->n_seeds = 3;
    for (size_t i = 0; i < 3; i++) o->seeds[i] = i + 1;
    int explicit_grid = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
#define NEED_VALUE() do { if (!v) { fprintf(stderr, "%s needs a value\n", a); return -1; } i++; } while (0)
#define BAD() do { fprintf(stderr, "bad value for %s: '%s'\n", a, v); return -1; } while (0)
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) { usage(stdout); exit(0); }
        else if (!strcmp(a, "--data-dir")) { NEED_VALUE(); o->data_dir = v; }
        else if (!strcmp(a, "--cache-dir")) { NEED_VALUE(); o->cache_dir = v; }
        else if (!strcmp(a, "--out-dir")) { NEED_VALUE(); o->out_dir = v; }
        else if (!strcmp(a, "--teacher")) { NEED_VALUE(); o->teacher_spec = v; }
        else if (!strcmp(a, "--student")) { NEED_VALUE(); o->student_spec = v; }
        else if (!strcmp(a, "--teachers")) { NEED_VALUE(); if (parse_size(v, &o->teachers) || !o->teachers || o->teachers > MAX_TEACHERS) BAD(); }
        else if (!strcmp(a, "--teacher-epochs")) { NEED_VALUE(); if (parse_size(v, &o->teacher_epochs) || !o->teacher_epochs) BAD(); }
        else if (!strcmp(a, "--teacher-lr")) { NEED_VALUE(); if (parse_float(v, &o->teacher_lr) || o->teacher_lr <= 0) BAD(); }
        else if (!strcmp(a, "--epochs")) { NEED_VALUE(); if (parse_size(v, &o->epochs) || !o->epochs) BAD(); }
        else if (!strcmp(a, "--batch")) { NEED_VALUE(); if (parse_size(v, &o->batch) || !o->batch) BAD(); }
        else if (!strcmp(a, "--threads")) { NEED_VALUE(); if (parse_size(v, &o->threads) || !o->threads || o->threads > 64) BAD(); }
        else if (!strcmp(a, "--lr")) { NEED_VALUE(); if (parse_float(v, &o->lr) || o->lr <= 0) BAD(); }
        else if (!strcmp(a, "--weight-decay")) { NEED_VALUE(); if (parse_float(v, &o->weight_decay) || o->weight_decay < 0) BAD(); }
        else if (!strcmp(a, "--label-smoothing")) { NEED_VALUE(); if (parse_float(v, &o->label_smoothing) || o->label_smoothing < 0 || o->label_smoothing >= 1) BAD(); }
        else if (!strcmp(a, "--schedule")) { NEED_VALUE(); if (!strcmp(v, "cosine")) o->cosine = 1; else if (!strcmp(v, "constant")) o->cosine = 0; else BAD(); }
        else if (!strcmp(a, "--labels")) { NEED_VALUE(); if (parse_list(v, 's', o->labels, &o->n_labels)) BAD(); explicit_grid = 1; }
        else if (!strcmp(a, "--loss")) { NEED_VALUE(); if (parse_list(v, 'l', o->losses, &o->n_losses)) BAD(); explicit_grid = 1; }
        else if (!strcmp(a, "--temperature")) { NEED_VALUE(); if (parse_list(v, 'f', o->temps, &o->n_temps)) BAD(); explicit_grid = 1;
            for (size_t k = 0; k < o->n_temps; k++) if (o->temps[k] <= 0) BAD(); }
        else if (!strcmp(a, "--alpha")) { NEED_VALUE(); if (parse_list(v, 'f', o->alphas, &o->n_alphas)) BAD(); explicit_grid = 1;
            for (size_t k = 0; k < o->n_alphas; k++) if (o->alphas[k] < 0 || o->alphas[k] > 1) BAD(); }
        else if (!strcmp(a, "--seeds")) { NEED_VALUE(); if (parse_size(v, &o->n_seeds) || !o->n_seeds || o->n_seeds > MAX_SEEDS) BAD();
            for (size_t k = 0; k < o->n_seeds; k++) o->seeds[k] = k + 1; }
        else if (!strcmp(a, "--seed")) { NEED_VALUE(); size_t s[MAX_LIST], n;
            if (parse_list(v, 's', s, &n)) BAD();
            for (size_t k = 0; k < n; k++) o->seeds[k] = s[k];
            o->n_seeds = n; }
        else if (!strcmp(a, "--max-train")) { NEED_VALUE(); if (parse_size(v, &o->max_train)) BAD(); }
        else if (!strcmp(a, "--max-test")) { NEED_VALUE(); if (parse_size(v, &o->max_test)) BAD(); }
        else if (!strcmp(a, "--augment")) o->augment = 1;
        else if (!strcmp(a, "--sweep")) o->sweep = 1;
        else if (!strcmp(a, "--quiet")) o->quiet = 1;
        else if (!strcmp(a, "--no-plot")) o->no_plot = 1;
        else { fprintf(stderr, "unknown option '%s' (see --help)\n", a); return -1; }
#undef NEED_VALUE
#undef BAD
    }
    if (o->sweep && !explicit_grid) {
        o->labels[0] = 1000; o->labels[1] = 60000; o->n_labels = 2;
        o->losses[0] = LOSS_HINTON; o->losses[1] = LOSS_TAID; o->n_losses = 2;
        o->temps[0] = 1; o->temps[1] = 4; o->n_temps = 2;
    }
    if (o->n_losses * o->n_temps * o->n_alphas > 1) o->sweep = 1;
    return 0;
}

/* ---- small helpers ---------------------------------------------------------- */

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int check(kd_context *ctx, kd_status st, const char *what)
{
    if (st == KD_OK) return 0;
    fprintf(stderr, "error: %s: %s: %s\n", what, kd_status_string(st), kd_context_last_error(ctx));
    return -1;
}

static int make_dirs(const char *path)
{
    char buf[4096];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf) return -1;
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(buf, 0755) != 0 && errno != EEXIST) return -1;
        *p = '/';
    }
    return mkdir(buf, 0755) != 0 && errno != EEXIST ? -1 : 0;
}

static void mean_std(const double *v, size_t n, double *mean, double *sd)
{
    double m = 0, s = 0;
    for (size_t i = 0; i < n; i++) m += v[i];
    m /= (double)n;
    for (size_t i = 0; i < n; i++) s += (v[i] - m) * (v[i] - m);
    *mean = m;
    *sd = n > 1 ? sqrt(s / (double)(n - 1)) : 0.0; /* sample standard deviation */
}

/* ---- data --------------------------------------------------------------------- */

typedef fm_dataset dataset;


/* Reads a whole gzip file into a malloc'd buffer. */
/* ---- progress bar ----------------------------------------------------------- */

typedef struct progress_state {
    const char *label;
    int quiet;
    double start;
    double last_draw;
    /* curve recording (may be NULL) */
    kd_context *ctx;
    kd_model *model;
    const dataset *test;
    double *curve;       /* test accuracy per recorded epoch */
    double *curve_loss;  /* running training loss per recorded epoch */
    size_t record_every; /* record at epochs (k+1)*record_every */
    size_t recorded;
    double best;
} progress_state;

static double test_accuracy(kd_context *ctx, kd_model *m, const dataset *test)
{
    kd_dataset ds = {sizeof ds, test->x, test->n, 784, test->y};
    kd_eval_report r = {.struct_size = sizeof r};
    if (check(ctx, kd_evaluate(ctx, m, NULL, &ds, 500, &r), "evaluate")) return -1;
    return r.accuracy;
}

static int on_progress(void *user, const kd_progress *p)
{
    progress_state *ps = user;
    /* Test accuracy at every recorded epoch; the best-epoch figure also looks
     * at about 10 points in between (the scratch arm of the transfer set runs
     * many short epochs and may peak between two recorded ones). */
    size_t probe_every = ps->record_every / 10 ? ps->record_every / 10 : 1;
    if (p->epoch_done && ps->curve &&
        ((p->epoch + 1) % probe_every == 0 || (p->epoch + 1) % ps->record_every == 0)) {
        double acc = test_accuracy(ps->ctx, ps->model, ps->test);
        if (acc < 0) return 1;
        if (acc > ps->best) ps->best = acc;
        if ((p->epoch + 1) % ps->record_every == 0) {
            ps->curve[ps->recorded] = acc;
            ps->curve_loss[ps->recorded] = p->loss;
            ps->recorded++;
        }
    }
    if (ps->quiet) return 0;
    double t = now();
    size_t done = p->epoch * p->steps_per_epoch + p->step, total = p->epochs * p->steps_per_epoch;
    int last = done == total;
    if (!last && t - ps->last_draw < 0.2) return 0;
    ps->last_draw = t;
    double el = t - ps->start, frac = (double)done / (double)total;
    double eta = frac > 0 ? el / frac - el : 0;
    char bar[31];
    size_t fill = (size_t)(frac * 30.0);
    for (size_t i = 0; i < 30; i++) bar[i] = i < fill ? '#' : '.';
    bar[30] = 0;
    fprintf(stderr, "\r  %-22s [%s] %3.0f%% epoch %zu/%zu loss %.4f  %4.0fs  ETA %4.0fs ", ps->label, bar,
            100.0 * frac, p->epoch + 1, p->epochs, p->loss, el, eta);
    if (last) fputc('\n', stderr);
    return 0;
}

/* ---- augmentation: random shifts of up to 2 pixels (zero padding in raw space) ---- */

static int shift_augment(void *user, const float *x, float *out, size_t batch, size_t dim, kd_rng *rng)
{
    (void)user;
    const float bg = -FM_TRAIN_MEAN / FM_TRAIN_STD; /* a black pixel after standardisation */
    for (size_t b = 0; b < batch; b++) {
        int dx = (int)kd_rng_below(rng, 5) - 2, dy = (int)kd_rng_below(rng, 5) - 2;
        const float *src = x + b * dim;
        float *dst = out + b * dim;
        for (int r = 0; r < 28; r++)
            for (int c = 0; c < 28; c++) {
                int sr = r - dy, sc = c - dx;
                dst[r * 28 + c] = sr >= 0 && sr < 28 && sc >= 0 && sc < 28 ? src[sr * 28 + sc] : bg;
            }
    }
    return 0;
}

/* ---- a memoising teacher: the teacher's logits on the training images are
 * computed once and found again by a hash of the row, so every student run
 * (seeds, sweeps) reuses them. Rows not in the table (augmented views) go to
 * the real teacher. A kd_teacher_from_callback teacher. ---- */

typedef struct memo_teacher {
    kd_teacher *inner;
    size_t dim;
    uint64_t *keys;      /* hash table: 0 = empty */
    uint32_t *rows;
    size_t mask;
    float *logits;       /* n x CLASSES */
    float *miss_x, *miss_y;
    size_t *miss_idx;
    size_t miss_cap;
} memo_teacher;

static uint64_t row_hash(const float *x, size_t dim)
{
    uint64_t h = 1469598103934665603ull;
    const unsigned char *p = (const unsigned char *)x;
    for (size_t i = 0; i < dim * sizeof(float); i++) h = (h ^ p[i]) * 1099511628211ull;
    return h ? h : 1;
}

static int memo_lookup(const memo_teacher *mt, uint64_t h, size_t *row)
{
    for (size_t s = h & mt->mask;; s = (s + 1) & mt->mask) {
        if (mt->keys[s] == 0) return 0;
        if (mt->keys[s] == h) { *row = mt->rows[s]; return 1; }
    }
}

static int memo_fn(void *user, const float *x, size_t batch, size_t dim, float *logits, size_t classes)
{
    memo_teacher *mt = user;
    size_t misses = 0;
    for (size_t b = 0; b < batch; b++) {
        size_t row;
        if (memo_lookup(mt, row_hash(x + b * dim, dim), &row))
            memcpy(logits + b * classes, mt->logits + row * classes, classes * sizeof *logits);
        else if (misses < mt->miss_cap) {
            memcpy(mt->miss_x + misses * dim, x + b * dim, dim * sizeof *x);
            mt->miss_idx[misses++] = b;
        } else
            return 1;
    }
    if (misses) {
        if (kd_teacher_logits(mt->inner, mt->miss_x, misses, mt->miss_y) != KD_OK) return 1;
        for (size_t i = 0; i < misses; i++)
            memcpy(logits + mt->miss_idx[i] * classes, mt->miss_y + i * classes, classes * sizeof *logits);
    }
    return 0;
}

static int memo_build(kd_context *ctx, memo_teacher *mt, kd_teacher *inner, const dataset *train, size_t batch)
{
    memset(mt, 0, sizeof *mt);
    mt->inner = inner;
    mt->dim = 784;
    size_t cap = 1;
    while (cap < train->n * 2) cap <<= 1;
    mt->mask = cap - 1;
    mt->keys = calloc(cap, sizeof *mt->keys);
    mt->rows = calloc(cap, sizeof *mt->rows);
    mt->logits = malloc(train->n * CLASSES * sizeof *mt->logits);
    mt->miss_cap = batch > 500 ? batch : 500;
    mt->miss_x = malloc(mt->miss_cap * 784 * sizeof *mt->miss_x);
    mt->miss_y = malloc(mt->miss_cap * CLASSES * sizeof *mt->miss_y);
    mt->miss_idx = malloc(mt->miss_cap * sizeof *mt->miss_idx);
    if (!mt->keys || !mt->rows || !mt->logits || !mt->miss_x || !mt->miss_y || !mt->miss_idx) {
        fprintf(stderr, "error: out of memory\n");
        return -1;
    }
    for (size_t i = 0; i < train->n; i += 500) {
        size_t b = train->n - i < 500 ? train->n - i : 500;
        if (check(ctx, kd_teacher_logits(inner, train->x + i * 784, b, mt->logits + i * CLASSES), "teacher logits"))
            return -1;
    }
    for (size_t i = 0; i < train->n; i++) {
        uint64_t h = row_hash(train->x + i * 784, 784);
        size_t s = h & mt->mask;
        while (mt->keys[s] != 0 && mt->keys[s] != h) s = (s + 1) & mt->mask;
        mt->keys[s] = h; /* identical images share a slot and have identical logits */
        mt->rows[s] = (uint32_t)i;
    }
    return 0;
}

static void memo_free(memo_teacher *mt)
{
    free(mt->keys); free(mt->rows); free(mt->logits);
    free(mt->miss_x); free(mt->miss_y); free(mt->miss_idx);
}

/* ---- teacher: train once, cache ---------------------------------------------- */

static uint64_t str_hash(const char *s, uint64_t h)
{
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

static kd_model *get_teacher(kd_context *ctx, const options *o, const char *cache_dir, size_t k,
                             const dataset *train, const dataset *test, double *seconds, int *trained)
{
    char key[512], path[4200];
    snprintf(key, sizeof key, "%s|e%zu|lr%g|s%zu|n%zu|v1", o->teacher_spec, o->teacher_epochs,
             (double)o->teacher_lr, k + 1, train->n);
    snprintf(path, sizeof path, "%s/teacher-%016llx.safetensors", cache_dir,
             (unsigned long long)str_hash(key, 1469598103934665603ull));
    kd_model *m = NULL;
    double t0 = now();
    *trained = 0;
    if (access(path, R_OK) == 0) {
        if (kd_model_load(ctx, path, &m) == KD_OK) {
            if (!o->quiet) fprintf(stderr, "teacher %zu: loaded from cache %s\n", k + 1, path);
            *seconds = now() - t0;
            return m;
        }
        fprintf(stderr, "warning: cached teacher %s does not load (%s); training it again\n", path,
                kd_context_last_error(ctx));
        m = NULL;
    }
    *trained = 1;
    fprintf(stderr, "teacher %zu: not cached yet: this first run trains it once (%zu epochs, about 40 s each "
            "for the default teacher on one core: expect a few minutes). It is saved to %s and later runs load it.\n", k + 1, o->teacher_epochs, path);
    kd_context_config cc;
    kd_context_config_default(&cc);
    cc.seed = 1000 + k;
    cc.threads = (int)o->threads;
    kd_context *tctx = NULL;
    if (check(ctx, kd_context_create(&cc, &tctx), "context")) return NULL;
    kd_optimizer *opt = NULL;
    kd_loss *ce = NULL;
    kd_student *st = NULL;
    kd_status s = kd_model_create_from_spec(tctx, o->teacher_spec, &m);
    if (check(tctx, s, "teacher spec")) goto fail;
    kd_optimizer_config oc;
    kd_optimizer_config_default(&oc, KD_OPTIM_ADAMW);
    oc.lr = o->teacher_lr;
    kd_schedule_config sc;
    kd_schedule_config_default(&sc);
    sc.kind = KD_SCHEDULE_COSINE;
    sc.base_lr = o->teacher_lr;
    sc.total_steps = o->teacher_epochs * ((train->n + o->batch - 1) / o->batch);
    kd_student_config stc;
    kd_student_config_default(&stc);
    stc.schedule = &sc;
    if (check(tctx, kd_optimizer_create(m, &oc, &opt), "teacher optimizer") ||
        check(tctx, kd_loss_create(tctx, kd_loss_cross_entropy(), NULL, &ce), "teacher loss") ||
        check(tctx, kd_student_create(tctx, m, opt, &stc, &st), "teacher trainer") ||
        check(tctx, kd_student_add_loss(st, ce, 1.0f, 0), "teacher loss"))
        goto fail;
    kd_dataset ds = {sizeof ds, train->x, train->n, 784, train->y};
    char label[32];
    snprintf(label, sizeof label, "teacher %zu", k + 1);
    progress_state ps = {.label = label, .quiet = 0, .start = now()};
    kd_fit_config fc;
    kd_fit_config_default(&fc);
    fc.epochs = o->teacher_epochs;
    fc.batch = o->batch;
    fc.seed = 1000 + k;
    fc.progress = on_progress;
    fc.progress_user = &ps;
    if (check(tctx, kd_fit(st, NULL, &ds, &fc), "teacher training")) goto fail;
    kd_student_destroy(st);
    kd_loss_destroy(ce);
    kd_optimizer_destroy(opt);
    st = NULL; ce = NULL; opt = NULL;
    double acc = test_accuracy(tctx, m, test);
    fprintf(stderr, "teacher %zu: test accuracy %.2f%%, trained in %.0f s\n", k + 1, 100 * acc, now() - t0);
    if (make_dirs(cache_dir) != 0 || kd_model_save(m, path) != KD_OK)
        fprintf(stderr, "warning: could not cache the teacher in %s (%s); the next run trains it again\n",
                path, kd_context_last_error(tctx));
    /* The model belongs to tctx; reload it into ctx through the checkpoint in
     * memory, so the caller owns a model of its own context. */
    size_t need = 0, wrote = 0;
    kd_model *copy = NULL;
    void *buf = NULL;
    if (kd_model_save_size(m, &need) == KD_OK && (buf = malloc(need)) &&
        kd_model_save_memory(m, buf, need, &wrote) == KD_OK &&
        kd_model_load_memory(ctx, buf, wrote, &copy) == KD_OK) {
        free(buf);
        kd_model_destroy(m);
        kd_context_destroy(tctx);
        *seconds = now() - t0;
        return copy;
    }
    free(buf);
    fprintf(stderr, "error: copying the teacher through kd_model_save_memory/kd_model_load_memory failed: %s %s\n",
            kd_context_last_error(tctx), kd_context_last_error(ctx));
    kd_model_destroy(m);
    kd_context_destroy(tctx);
    return NULL;
fail:
    kd_student_destroy(st);
    kd_loss_destroy(ce);
    kd_optimizer_destroy(opt);
    kd_model_destroy(m);
    kd_context_destroy(tctx);
    return NULL;
}

/* ---- one student run ------------------------------------------------------------ */

typedef struct run_config {
    size_t n_labels;   /* labelled rows (>= train n: all) */
    loss_kind loss;
    float temperature, alpha;
} run_config;

typedef struct run_result {
    double acc, best, seconds;
    double *curve, *curve_loss;
    size_t points;
} run_result;

/* Class-balanced labelled subset drawn from seed: marks[i] = 1 for labelled rows. */
static void pick_labelled(const dataset *train, size_t n_lab, uint64_t seed, unsigned char *marks)
{
    if (n_lab >= train->n) { memset(marks, 1, train->n); return; }
    memset(marks, 0, train->n);
    size_t *perm = malloc(train->n * sizeof *perm);
    if (!perm) return;
    kd_rng rng;
    kd_rng_seed(&rng, seed, 0x6c6162656c73ull);
    for (size_t i = 0; i < train->n; i++) perm[i] = i;
    for (size_t i = train->n - 1; i > 0; i--) {
        size_t j = kd_rng_below(&rng, (uint32_t)(i + 1)), t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    size_t per_class[CLASSES] = {0}, quota = n_lab / CLASSES, taken = 0;
    for (size_t i = 0; i < train->n && taken < n_lab; i++) {
        int32_t c = train->y[perm[i]];
        if (per_class[c] < quota) { per_class[c]++; marks[perm[i]] = 1; taken++; }
    }
    for (size_t i = 0; i < train->n && taken < n_lab; i++) /* remainder, or classes short of quota */
        if (!marks[perm[i]]) { marks[perm[i]] = 1; taken++; }
    free(perm);
}

/* Trains one student; teacher NULL = scratch arm. */
static int run_student(kd_context *ctx0, const options *o, const run_config *rc, uint64_t seed,
                       const dataset *train, const dataset *test, const unsigned char *marks,
                       kd_teacher *teacher, const char *label, run_result *res, kd_model **keep)
{
    int rc_ = -1;
    size_t n_lab = 0;
    for (size_t i = 0; i < train->n; i++) n_lab += marks[i];
    const int transfer = n_lab < train->n;
    /* The data each arm sees. Scratch: the labelled rows only. KD: every row,
     * unlabelled ones with the ignore index. */
    size_t n = teacher ? train->n : n_lab;
    float *x = NULL;
    int32_t *y = malloc(n * sizeof *y);
    const float *xv = train->x;
    if (!teacher && transfer) {
        x = malloc(n * 784 * sizeof *x);
        xv = x;
    }
    if (!y || (!teacher && transfer && !x)) { fprintf(stderr, "error: out of memory\n"); free(x); free(y); return -1; }
    for (size_t i = 0, j = 0; i < train->n; i++) {
        if (teacher) { y[i] = marks[i] ? train->y[i] : KD_LOSS_IGNORE_INDEX; continue; }
        if (!marks[i]) continue;
        if (x) memcpy(x + j * 784, train->x + i * 784, 784 * sizeof *x);
        y[j++] = train->y[i];
    }
    /* Same optimizer steps for both arms: the KD arm runs o->epochs epochs
     * over train->n rows; the scratch arm as many epochs over its n rows as
     * give the same number of steps. */
    const size_t steps_kd = o->epochs * ((train->n + o->batch - 1) / o->batch);
    const size_t steps_per_epoch = (n + o->batch - 1) / o->batch;
    size_t epochs = (steps_kd + steps_per_epoch - 1) / steps_per_epoch;
    size_t record_every = epochs / o->epochs ? epochs / o->epochs : 1;
    epochs = record_every * o->epochs;

    kd_context_config cc;
    kd_context_config_default(&cc);
    cc.seed = seed;
    cc.threads = (int)o->threads;
    kd_context *ctx = NULL;
    kd_model *m = NULL;
    kd_optimizer *opt = NULL;
    kd_loss *ce = NULL, *kd = NULL;
    kd_student *st = NULL;
    if (check(ctx0, kd_context_create(&cc, &ctx), "context")) goto done;
    if (check(ctx, kd_model_create_from_spec(ctx, o->student_spec, &m), "student spec")) goto done;
    kd_optimizer_config oc;
    kd_optimizer_config_default(&oc, KD_OPTIM_ADAMW);
    oc.lr = o->lr;
    oc.weight_decay = o->weight_decay;
    kd_schedule_config sc;
    kd_schedule_config_default(&sc);
    sc.kind = o->cosine ? KD_SCHEDULE_COSINE : KD_SCHEDULE_CONSTANT;
    sc.base_lr = o->lr;
    sc.total_steps = epochs * steps_per_epoch;
    kd_student_config stc;
    kd_student_config_default(&stc);
    stc.schedule = &sc;
    kd_loss_ce_config cec;
    kd_loss_ce_config_default(&cec);
    cec.label_smoothing = o->label_smoothing;
    if (check(ctx, kd_optimizer_create(m, &oc, &opt), "optimizer") ||
        check(ctx, kd_student_create(ctx, m, opt, &stc, &st), "student") ||
        check(ctx, kd_loss_create(ctx, kd_loss_cross_entropy(), &cec, &ce), "cross-entropy"))
        goto done;
    float ce_weight = teacher ? 1.0f - rc->alpha : 1.0f;
    if (ce_weight > 0 && check(ctx, kd_student_add_loss(st, ce, ce_weight, 0), "add loss")) goto done;
    if (teacher && rc->alpha > 0) {
        kd_status s;
        uint32_t flags = KD_TERM_NO_LABELS;
        if (rc->loss == LOSS_HINTON) {
            kd_loss_hinton_config hc;
            kd_loss_hinton_config_default(&hc);
            hc.temperature = rc->temperature;
            hc.alpha = 1.0f; /* pure soft-target term; the label term is separate */
            s = kd_loss_create(ctx, kd_loss_hinton(), &hc, &kd);
        } else if (rc->loss == LOSS_RKL || rc->loss == LOSS_JSD) {
            kd_loss_divergence_config dc;
            kd_loss_divergence_config_default(&dc);
            dc.temperature = rc->temperature;
            s = kd_loss_create(ctx, rc->loss == LOSS_RKL ? kd_loss_reverse_kl() : kd_loss_jsd(), &dc, &kd);
        } else if (rc->loss == LOSS_TAID) {
            kd_loss_taid_config tc;
            kd_loss_taid_config_default(&tc);
            tc.temperature = rc->temperature;
            tc.total_steps = epochs * steps_per_epoch;
            s = kd_loss_create(ctx, kd_loss_taid(), &tc, &kd);
        } else {
            if (transfer) {
                fprintf(stderr, "error: dkd needs a label on every row; use it with --labels %zu (all)\n", train->n);
                goto done;
            }
            kd_loss_dkd_config dc;
            kd_loss_dkd_config_default(&dc);
            dc.temperature = rc->temperature;
            s = kd_loss_create(ctx, kd_loss_dkd(), &dc, &kd);
            flags = 0;
        }
        if (check(ctx, s, "KD loss") || check(ctx, kd_student_add_loss(st, kd, rc->alpha, flags), "add loss"))
            goto done;
    }
    res->curve = calloc(o->epochs, sizeof *res->curve);
    res->curve_loss = calloc(o->epochs, sizeof *res->curve_loss);
    if (!res->curve || !res->curve_loss) { fprintf(stderr, "error: out of memory\n"); goto done; }
    progress_state ps = {.label = label, .quiet = o->quiet, .start = now(), .ctx = ctx, .model = m,
                         .test = test, .curve = res->curve, .curve_loss = res->curve_loss,
                         .record_every = record_every};
    kd_dataset ds = {sizeof ds, xv, n, 784, y};
    kd_fit_config fc;
    kd_fit_config_default(&fc);
    fc.epochs = epochs;
    fc.batch = o->batch;
    fc.seed = seed;
    fc.progress = on_progress;
    fc.progress_user = &ps;
    if (o->augment) fc.augment = shift_augment;
    double t0 = now();
    if (check(ctx, kd_fit(st, teacher, &ds, &fc), label)) goto done;
    res->seconds = now() - t0;
    res->points = ps.recorded;
    res->acc = ps.recorded ? res->curve[ps.recorded - 1] : test_accuracy(ctx, m, test);
    res->best = ps.best;
    if (keep) {
        /* hand the model over through a checkpoint in memory (it belongs to ctx) */
        size_t need = 0, wrote = 0;
        void *buf = NULL;
        if (kd_model_save_size(m, &need) == KD_OK && (buf = malloc(need)) &&
            kd_model_save_memory(m, buf, need, &wrote) == KD_OK)
            (void)kd_model_load_memory(ctx0, buf, wrote, keep);
        free(buf);
    }
    rc_ = 0;
done:
    kd_student_destroy(st);
    kd_loss_destroy(kd);
    kd_loss_destroy(ce);
    kd_optimizer_destroy(opt);
    kd_model_destroy(m);
    kd_context_destroy(ctx);
    free(x);
    free(y);
    return rc_;
}

/* ---- main ---------------------------------------------------------------------- */

static const char *scenario_name(size_t n_labels, size_t n_train, char *buf, size_t size)
{
    if (n_labels >= n_train)
        snprintf(buf, size, "full labels (all %zu labelled; textbook KD)", n_train);
    else
        snprintf(buf, size, "transfer set (%zu labels + teacher on all %zu images)", n_labels, n_train);
    return buf;
}

static void plot(const options *o, const char *csv, const char *png, double teacher_acc)
{
    if (o->no_plot) return;
    if (system("command -v gnuplot >/dev/null 2>&1") != 0) {
        fprintf(stderr, "note: gnuplot not found (Debian: gnuplot-nox): skipping %s; the curves are in %s\n", png, csv);
        return;
    }
    char gp[4096];
    snprintf(gp, sizeof gp, "%s/curves.gp", o->out_dir);
    FILE *f = fopen(gp, "w");
    if (!f) return;
    fprintf(f,
        "set terminal png size 900,560\nset output '%s'\nset datafile separator ','\n"
        "set key right center\nset grid\nset xlabel 'epoch over the KD training set (both arms take the same optimizer steps)'\n"
        "set ylabel 'test accuracy (%%)'\n"
        "set title 'Fashion-MNIST student: labels alone vs with KD (mean and sd over seeds)'\n"
        "plot '%s' using ($1 == 0 ? $2 : 1/0):($3*100):($4*100) every ::1 with yerrorlines lc rgb '#c03030' title 'student, labels alone', \\\n"
        "     '%s' using ($1 == 0 ? $2 : 1/0):($5*100):($6*100) every ::1 with yerrorlines lc rgb '#3050c0' title 'student with KD', \\\n"
        "     %.4f with lines dt 2 lc rgb 'black' title 'teacher'\n",
        png, csv, csv, 100 * teacher_acc);
    fclose(f);
    char cmd[8300];
    snprintf(cmd, sizeof cmd, "gnuplot '%s' 2>&1", gp);
    if (system(cmd) != 0) fprintf(stderr, "note: gnuplot failed; the curves are in %s\n", csv);
    else if (!o->quiet) fprintf(stderr, "plot: %s\n", png);
}

int main(int argc, char **argv)
{
    options o;
    if (parse_options(argc, argv, &o) != 0) { usage(stderr); return 2; }
    setvbuf(stdout, NULL, _IOLBF, 0);
    char cache_dir[4096];
    if (o.cache_dir) snprintf(cache_dir, sizeof cache_dir, "%s", o.cache_dir);
    else if (getenv("XDG_CACHE_HOME") && *getenv("XDG_CACHE_HOME"))
        snprintf(cache_dir, sizeof cache_dir, "%s/libkd", getenv("XDG_CACHE_HOME"));
    else snprintf(cache_dir, sizeof cache_dir, "%s/.cache/libkd", getenv("HOME") ? getenv("HOME") : ".");

    const double t_start = now();
    kd_context_config cc;
    kd_context_config_default(&cc);
    cc.threads = (int)o.threads;
    kd_context *ctx = NULL;
    if (kd_context_create(&cc, &ctx) != KD_OK) { fprintf(stderr, "error: cannot create a libkd context\n"); return 1; }
    int rc = 1;
    dataset train = {0}, test = {0};
    kd_model *teachers[MAX_TEACHERS] = {0};
    kd_teacher *tview[MAX_TEACHERS] = {0}, *ens = NULL, *memo_t = NULL, *kd_teacher_used;
    memo_teacher memo = {0};
    unsigned char *marks = NULL;
    FILE *csv = NULL, *mean_csv = NULL;
    char mean_path[4096];
    kd_model *keep = NULL;
    run_result *results = NULL;

    if (fm_load(ctx, o.data_dir, "train", o.max_train, &train) || fm_load(ctx, o.data_dir, "t10k", o.max_test, &test))
        goto out;
    if (make_dirs(o.out_dir) != 0) { fprintf(stderr, "error: cannot create %s: %s\n", o.out_dir, strerror(errno)); goto out; }

    /* teacher(s) */
    double t_teacher = 0, teacher_acc;
    int any_trained = 0;
    for (size_t k = 0; k < o.teachers; k++) {
        double sec = 0;
        int trained = 0;
        teachers[k] = get_teacher(ctx, &o, cache_dir, k, &train, &test, &sec, &trained);
        if (!teachers[k]) goto out;
        t_teacher += sec;
        any_trained |= trained;
        if (check(ctx, kd_teacher_from_model(ctx, teachers[k], &tview[k]), "teacher")) goto out;
    }
    if (o.teachers > 1) {
        if (check(ctx, kd_teacher_ensemble(ctx, tview, o.teachers, NULL, KD_ENSEMBLE_PROBS, &ens), "ensemble")) goto out;
        kd_teacher_used = ens;
    } else {
        kd_teacher_used = tview[0];
    }
    {
        /* teacher accuracy on the test set (ensemble: through its logits) */
        float *lg = malloc(test.n * CLASSES * sizeof *lg);
        if (!lg) goto out;
        kd_status s = KD_OK;
        for (size_t i = 0; i < test.n && s == KD_OK; i += 500) {
            size_t b = test.n - i < 500 ? test.n - i : 500;
            s = kd_teacher_logits(kd_teacher_used, test.x + i * 784, b, lg + i * CLASSES);
        }
        if (s == KD_OK) s = kd_eval_accuracy(ctx, lg, test.n, CLASSES, test.y, &teacher_acc);
        free(lg);
        if (check(ctx, s, "teacher accuracy")) goto out;
    }
    double tm0 = now();
    if (memo_build(ctx, &memo, kd_teacher_used, &train, o.batch)) goto out;
    if (check(ctx, kd_teacher_from_callback(ctx, 784, CLASSES, memo_fn, &memo, &memo_t), "memo teacher")) goto out;
    t_teacher += now() - tm0;

    char tsp[1024];
    {
        kd_model *t0m = teachers[0];
        size_t np = kd_model_param_count(t0m);
        snprintf(tsp, sizeof tsp, "%s%s (%zu parameters%s)", o.teachers > 1 ? "ensemble of " : "",
                 o.teachers > 1 ? "MLPs" : "MLP", np, o.teachers > 1 ? " each" : "");
    }

    marks = malloc(train.n);
    size_t n_cfg = o.n_labels * o.n_losses * o.n_temps * o.n_alphas;
    results = calloc(n_cfg * o.n_seeds * 2 + 2 * o.n_seeds * o.n_labels, sizeof *results);
    char csv_path[4096], png_path[4096], ckpt_path[4096];
    snprintf(csv_path, sizeof csv_path, "%s/curves.csv", o.out_dir);
    snprintf(png_path, sizeof png_path, "%s/curves.png", o.out_dir);
    snprintf(ckpt_path, sizeof ckpt_path, "%s/student-kd.safetensors", o.out_dir);
    csv = fopen(csv_path, "w");
    if (!marks || !results || !csv) { fprintf(stderr, "error: cannot allocate or open %s\n", csv_path); goto out; }
    fprintf(csv, "config,arm,seed,epoch,arm_id,test_accuracy,train_loss\n");
    snprintf(mean_path, sizeof mean_path, "%s/curves-mean.csv", o.out_dir);
    mean_csv = fopen(mean_path, "w");
    if (!mean_csv) { fprintf(stderr, "error: cannot open %s\n", mean_path); goto out; }
    fprintf(mean_csv, "config,epoch,scratch_mean,scratch_sd,kd_mean,kd_sd\n");

    kd_model *probe = NULL;
    size_t student_params = 0;
    if (kd_model_create_from_spec(ctx, o.student_spec, &probe) == KD_OK) student_params = kd_model_param_count(probe);
    kd_model_destroy(probe);

    printf("\nlibkd distillation demo: Fashion-MNIST (%zu training, %zu test images)\n", train.n, test.n);
    printf("teacher: %s, test accuracy %.2f%%\n", tsp, 100 * teacher_acc);
    printf("student: %s (%zu parameters, %.0f kB as float32)\n", o.student_spec, student_params, student_params * 4 / 1000.0);
    printf("schedule: AdamW lr %g, %s, batch %zu, %zu epochs over the KD training set; seeds:", (double)o.lr,
           o.cosine ? "cosine" : "constant", o.batch, o.epochs);
    for (size_t s = 0; s < o.n_seeds; s++) printf(" %llu", (unsigned long long)o.seeds[s]);
    printf("%s\n", o.augment ? "; shifted views (same for teacher and student)" : "");

    /* scratch results depend only on labels and seed: compute once per labels value */
    run_result *scratch = results + n_cfg * o.n_seeds * 2;
    size_t ci = 0;
    double summary[MAX_LIST * MAX_LIST * MAX_LIST * MAX_LIST][7];
    char names[MAX_LIST * MAX_LIST * MAX_LIST * MAX_LIST][160];
    for (size_t li = 0; li < o.n_labels; li++) {
        size_t nl = o.labels[li] && o.labels[li] < train.n ? o.labels[li] : train.n;
        char scen[160];
        scenario_name(nl, train.n, scen, sizeof scen);
        if (!o.quiet) fprintf(stderr, "\n== scenario: %s\n", scen);
        for (size_t s = 0; s < o.n_seeds; s++) {
            pick_labelled(&train, nl, o.seeds[s], marks);
            run_config rc0 = {nl, LOSS_HINTON, 1, 0};
            char label[64];
            snprintf(label, sizeof label, "scratch  seed %llu", (unsigned long long)o.seeds[s]);
            run_result *r = &scratch[li * o.n_seeds + s];
            if (run_student(ctx, &o, &rc0, o.seeds[s], &train, &test, marks, NULL, label, r, NULL)) goto out;
            for (size_t e = 0; e < r->points; e++)
                fprintf(csv, "labels=%zu,scratch,%llu,%zu,1,%.4f,%.5f\n", nl, (unsigned long long)o.seeds[s], e + 1,
                        r->curve[e], r->curve_loss[e]);
        }
        for (size_t lo = 0; lo < o.n_losses; lo++)
            for (size_t ti = 0; ti < o.n_temps; ti++)
                for (size_t ai = 0; ai < o.n_alphas; ai++, ci++) {
                    run_config rcfg = {nl, o.losses[lo], o.temps[ti], o.alphas[ai]};
                    if (rcfg.loss == LOSS_DKD && nl < train.n) {
                        fprintf(stderr, "note: skipping dkd in the transfer-set scenario (it needs every label)\n");
                        summary[ci][0] = NAN;
                        snprintf(names[ci], sizeof names[ci], "%s", scen);
                        continue;
                    }
                    double acc_s[MAX_SEEDS], acc_k[MAX_SEEDS], best_s[MAX_SEEDS], ts = 0, tk = 0;
                    for (size_t s = 0; s < o.n_seeds; s++) {
                        pick_labelled(&train, nl, o.seeds[s], marks);
                        char label[64];
                        snprintf(label, sizeof label, "KD %s T=%g seed %llu", loss_names[rcfg.loss],
                                 (double)rcfg.temperature, (unsigned long long)o.seeds[s]);
                        run_result *r = &results[ci * o.n_seeds * 2 + s * 2 + 1];
                        if (run_student(ctx, &o, &rcfg, o.seeds[s], &train, &test, marks, memo_t, label, r,
                                        keep ? NULL : &keep))
                            goto out;
                        run_result *sr = &scratch[li * o.n_seeds + s];
                        acc_s[s] = sr->acc;
                        best_s[s] = sr->best;
                        acc_k[s] = r->acc;
                        ts += sr->seconds;
                        tk += r->seconds;
                        for (size_t e = 0; e < r->points; e++)
                            fprintf(csv, "labels=%zu loss=%s T=%g alpha=%g,kd,%llu,%zu,2,%.4f,%.5f\n", nl,
                                    loss_names[rcfg.loss], (double)rcfg.temperature, (double)rcfg.alpha,
                                    (unsigned long long)o.seeds[s], e + 1, r->curve[e], r->curve_loss[e]);
                    }
                    if (mean_csv) {
                        for (size_t e = 0; e < o.epochs; e++) {
                            double cs[MAX_SEEDS], ck[MAX_SEEDS], m1, s1, m2, s2;
                            for (size_t s = 0; s < o.n_seeds; s++) {
                                run_result *sr = &scratch[li * o.n_seeds + s], *kr = &results[ci * o.n_seeds * 2 + s * 2 + 1];
                                cs[s] = e < sr->points ? sr->curve[e] : NAN;
                                ck[s] = e < kr->points ? kr->curve[e] : NAN;
                            }
                            mean_std(cs, o.n_seeds, &m1, &s1);
                            mean_std(ck, o.n_seeds, &m2, &s2);
                            fprintf(mean_csv, "%zu,%zu,%.4f,%.4f,%.4f,%.4f\n", ci, e + 1, m1, s1, m2, s2);
                        }
                    }
                    double ms, ss, mk, sk, mb, sb;
                    mean_std(acc_s, o.n_seeds, &ms, &ss);
                    mean_std(acc_k, o.n_seeds, &mk, &sk);
                    mean_std(best_s, o.n_seeds, &mb, &sb);
                    double d[MAX_SEEDS], md, sd;
                    for (size_t s = 0; s < o.n_seeds; s++) d[s] = acc_k[s] - acc_s[s];
                    mean_std(d, o.n_seeds, &md, &sd);
                    double sm[7] = {ms, ss, mk, sk, mb, ts / o.n_seeds, tk / o.n_seeds};
                    memcpy(summary[ci], sm, sizeof sm);
                    snprintf(names[ci], sizeof names[ci], "%s", scen);
                    double gap = teacher_acc - ms;
                    double rec = gap > 0 ? (mk - ms) / gap : NAN;
                    double pooled = sqrt((ss * ss + sk * sk) / 2);
                    const double sdmax = ss > sk ? ss : sk;
                    const char *verdict = !(mk - ms > sdmax && o.n_seeds >= 3) ? (mk > ms ? "KD ahead, within noise" : "KD does not help")
                                          : mk - ms > 2 * sdmax ? "KD HELPS (gain > 2 sd of either arm)"
                                                                : "KD helps, marginally (gain between 1 and 2 sd)";
                    if (!o.sweep) {
                        printf("\nscenario: %s\nKD: %s loss, T = %g, KD weight %g, label weight %g\n", scen,
                               loss_names[rcfg.loss], (double)rcfg.temperature, (double)rcfg.alpha, 1 - (double)rcfg.alpha);
                        char c[9][40];
                        snprintf(c[0], sizeof c[0], "mean +- sd, %zu seeds", o.n_seeds);
                        snprintf(c[1], sizeof c[1], "%6.2f%%", 100 * teacher_acc);
                        snprintf(c[2], sizeof c[2], "%6.2f%% +- %.2f", 100 * ms, 100 * ss);
                        snprintf(c[3], sizeof c[3], "%6.2f%% +- %.2f", 100 * mb, 100 * sb);
                        snprintf(c[4], sizeof c[4], "%6.2f%% +- %.2f", 100 * mk, 100 * sk);
                        snprintf(c[5], sizeof c[5], "%+6.2f  +- %.2f", 100 * md, 100 * sd);
                        snprintf(c[6], sizeof c[6], "%6.1f%%", 100 * rec);
                        snprintf(c[7], sizeof c[7], "%.0f %.0f %.0f", (1 - teacher_acc) * 1e4, (1 - ms) * 1e4, (1 - mk) * 1e4);
                        snprintf(c[8], sizeof c[8], "%.1f s, %.1f s", ts / o.n_seeds, tk / o.n_seeds);
                        static const char *const rows[9] = {
                            "test accuracy", "teacher", "student from labels alone",
                            "  (its best epoch, chosen on test)", "student with KD", "KD - alone (paired by seed)",
                            "teacher-student gap recovered", "errors /10k: teacher, alone, KD",
                            "time per student: alone, KD"};
                        const char *line = "+--------------------------------------+----------------------+";
                        puts(line);
                        for (int r = 0; r < 9; r++) {
                            printf("| %-36s | %-20s |\n", rows[r], c[r]);
                            if (r == 0) puts(line);
                        }
                        puts(line);
                        printf("verdict: %s (pooled sd %.2f points)\n", verdict, 100 * pooled);
                        printf("per seed (alone -> KD):");
                        for (size_t s = 0; s < o.n_seeds; s++) printf("  %.2f -> %.2f", 100 * acc_s[s], 100 * acc_k[s]);
                        printf("\n");
                    }
                }
    }
    if (o.sweep) {
        printf("\n%-58s %-7s %5s %5s | %-15s %-15s %-8s %6s  %s\n", "scenario", "loss", "T", "alpha", "alone",
               "KD", "KD-alone", "gap%", "verdict");
        ci = 0;
        for (size_t li = 0; li < o.n_labels; li++)
            for (size_t lo = 0; lo < o.n_losses; lo++)
                for (size_t ti = 0; ti < o.n_temps; ti++)
                    for (size_t ai = 0; ai < o.n_alphas; ai++, ci++) {
                        if (isnan(summary[ci][0])) continue;
                        double ms = summary[ci][0], ss = summary[ci][1], mk = summary[ci][2], sk = summary[ci][3];
                        double gap = teacher_acc - ms;
                        printf("%-58s %-7s %5g %5g | %6.2f +- %4.2f  %6.2f +- %4.2f  %+6.2f  %6.1f  %s\n", names[ci],
                               loss_names[o.losses[lo]], (double)o.temps[ti], (double)o.alphas[ai], 100 * ms, 100 * ss,
                               100 * mk, 100 * sk, 100 * (mk - ms), gap > 0 ? 100 * (mk - ms) / gap : NAN,
                               !(mk - ms > (ss > sk ? ss : sk) && o.n_seeds >= 3) ? (mk > ms ? "within noise" : "no help")
                               : mk - ms > 2 * (ss > sk ? ss : sk) ? "KD helps" : "marginal (1-2 sd)");
                    }
    }
    fclose(csv);
    csv = NULL;
    fclose(mean_csv);
    mean_csv = NULL;
    plot(&o, mean_path, png_path, teacher_acc);
    if (keep) {
        if (kd_model_save(keep, ckpt_path) == KD_OK) printf("\nstudent checkpoint (KD, seed %llu): %s\n", (unsigned long long)o.seeds[0], ckpt_path);
        else fprintf(stderr, "warning: kd_model_save(%s) failed: %s\n", ckpt_path, kd_context_last_error(ctx));
    }
    printf("curves: %s\n", csv_path);
    printf("time: %.0f s in total (teacher %s: %.0f s)%s\n", now() - t_start, any_trained ? "trained" : "loaded from cache",
           t_teacher, any_trained ? "; later runs load the cached teacher and are faster" : "");
    rc = 0;
out:
    if (csv) fclose(csv);
    if (mean_csv) fclose(mean_csv);
    if (results) {
        size_t total = n_cfg * o.n_seeds * 2 + 2 * o.n_seeds * o.n_labels;
        for (size_t i = 0; i < total; i++) { free(results[i].curve); free(results[i].curve_loss); }
    }
    free(results);
    free(marks);
    kd_model_destroy(keep);
    kd_teacher_destroy(memo_t);
    memo_free(&memo);
    kd_teacher_destroy(ens);
    for (size_t k = 0; k < MAX_TEACHERS; k++) { kd_teacher_destroy(tview[k]); kd_model_destroy(teachers[k]); }
    free(train.x); free(train.y); free(test.x); free(test.y);
    kd_context_destroy(ctx);
    return rc;
}
