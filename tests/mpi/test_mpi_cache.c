/* test_mpi_cache.c - the teacher-logit cache written by every rank is one file,
 * byte-identical to kd_cache_write_teacher in one process; failures reach every rank. */
#include <math.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mpi_test.h"

#define DIM 4
#define V 40

/* Logits depend on the row alone (double accumulation), never on the batch. */
static int row_teacher(void *user, const float *x, size_t batch, size_t input_dim, float *logits, size_t classes)
{
    int *fail = (int *)user;
    if (fail && *fail && mt_rank == 1) return 1;
    for (size_t b = 0; b < batch; b++)
        for (size_t j = 0; j < classes; j++) {
            double z = 0.0;
            for (size_t i = 0; i < input_dim; i++) z += x[b * input_dim + i] * sin((double)(j * 7 + i + 1));
            logits[b * classes + j] = (float)(3.0 * z);
        }
    return 0;
}

static unsigned char *slurp(const char *path, size_t *size)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = malloc((size_t)n + 1);
    *size = fread(b, 1, (size_t)n, f);
    fclose(f);
    return b;
}

static int exists(const char *path)
{
    struct stat sb;
    return stat(path, &sb) == 0;
}

static void run_case(kd_mpi_comm *comm, kd_context *ctx, kd_teacher *t, const char *dir, size_t n, size_t bp,
                     kd_cache_encoding enc)
{
    float *x = malloc(n * DIM * sizeof *x);
    kd_rng rng;
    kd_rng_seed(&rng, 5, n);
    for (size_t i = 0; i < n * DIM; i++) x[i] = kd_rng_normal(&rng);
    kd_dataset ds = {(uint32_t)sizeof ds, x, n, DIM, NULL};
    kd_cache_config cc;
    kd_cache_config_default(&cc);
    cc.k = 8;
    cc.block_positions = bp;
    cc.batch = 50;
    cc.encoding = enc;
    char path[512], ref[512], part[600];
    snprintf(path, sizeof path, "%s/joined-%zu.kdc", dir, n);
    snprintf(ref, sizeof ref, "%s/single-%zu.kdc", dir, n);
    kd_status st = kd_mpi_cache_write_teacher(comm, t, &ds, path, &cc, 0);
    MT_CHECK(st == KD_OK, "n %zu: %s", n, kd_mpi_comm_last_error(comm));
    snprintf(part, sizeof part, "%s.part%dof%d", path, mt_rank, mt_size);
    MT_CHECK(!exists(part), "part file %s left behind", part);
    if (mt_rank == 0) {
        cc.batch = 7; /* other batches than the parts used: the row teacher does not care */
        MT_CHECK(kd_cache_write_teacher(ctx, t, &ds, ref, &cc, 0) == KD_OK, "%s", kd_context_last_error(ctx));
        size_t na = 0, nb = 0;
        unsigned char *a = slurp(path, &na), *b = slurp(ref, &nb);
        MT_CHECK(a && b && na == nb && memcmp(a, b, na) == 0, "n %zu: joined file (%zu bytes) differs from the "
                 "single-process file (%zu bytes)", n, na, nb);
        free(a);
        free(b);
    }
    MPI_Barrier(MPI_COMM_WORLD);
    /* Every rank reads the joined file as one cache. */
    kd_logit_cache *lc = NULL;
    MT_CHECK(kd_logit_cache_open(ctx, path, &lc) == KD_OK, "%s", kd_context_last_error(ctx));
    MT_CHECK(kd_logit_cache_positions(lc) == n && kd_logit_cache_classes(lc) == V, "positions/classes");
    uint64_t rows[3] = {0, n / 2, n - 1};
    int32_t ids[3 * 8];
    float vals[3 * 8], tail[3];
    MT_CHECK(kd_logit_cache_rows(lc, rows, 3, ids, vals, tail, NULL) == KD_OK, "rows");
    /* The last row's most probable class is the argmax of its logits. */
    float z[V];
    row_teacher(NULL, x + (n - 1) * DIM, 1, DIM, z, V);
    int32_t best = 0;
    for (int j = 1; j < V; j++)
        if (z[j] > z[best]) best = j;
    int found = 0;
    float top = -INFINITY;
    int32_t topid = -1;
    for (int j = 0; j < 8; j++)
        if (ids[16 + j] >= 0 && vals[16 + j] > top) {
            top = vals[16 + j];
            topid = ids[16 + j];
            found = 1;
        }
    MT_CHECK(found && topid == best, "last row: top id %d, argmax %d", topid, best);
    kd_logit_cache_close(lc);
    MPI_Barrier(MPI_COMM_WORLD);
    if (mt_rank == 0) {
        remove(path);
        remove(ref);
    }
    free(x);
}

int main(int argc, char **argv)
{
    mt_init(&argc, &argv);
    kd_context *ctx = NULL;
    kd_context_create(NULL, &ctx);
    kd_mpi_comm *comm = NULL;
    MPI_Comm world = MPI_COMM_WORLD;
    MT_CHECK(kd_mpi_comm_create(ctx, &world, &comm) == KD_OK, "create");
    char dir[256];
    long id = (long)getpid();
    MPI_Bcast(&id, 1, MPI_LONG, 0, MPI_COMM_WORLD);
    snprintf(dir, sizeof dir, "/tmp/kd_mpi_cache_%ld", id);
    if (mt_rank == 0) mkdir(dir, 0700);
    MPI_Barrier(MPI_COMM_WORLD);

    int fail = 0;
    kd_teacher *t = NULL;
    MT_CHECK(kd_teacher_from_callback(ctx, DIM, V, row_teacher, &fail, &t) == KD_OK, "teacher");
    run_case(comm, ctx, t, dir, 1000, 64, KD_CACHE_ENC_COMPACT);  /* 16 blocks, last one partial */
    run_case(comm, ctx, t, dir, 100, 64, KD_CACHE_ENC_LOGPROB16); /* 2 blocks: some ranks have none */
    run_case(comm, ctx, t, dir, 5, 1, KD_CACHE_ENC_COMPACT);      /* one row per block */

    /* Disagreement and failure reach every rank; no file appears. */
    float x[20 * DIM];
    for (size_t i = 0; i < 20 * DIM; i++) x[i] = (float)i * 0.01f;
    kd_dataset ds = {(uint32_t)sizeof ds, x, 20, DIM, NULL};
    kd_cache_config cc;
    kd_cache_config_default(&cc);
    cc.k = mt_rank == mt_size - 1 ? 9 : 8;
    cc.block_positions = 4;
    char path[512];
    snprintf(path, sizeof path, "%s/bad.kdc", dir);
    kd_status st = kd_mpi_cache_write_teacher(comm, t, &ds, path, &cc, 0);
    MT_CHECK(st == KD_E_INVALID && strstr(kd_mpi_comm_last_error(comm), "k is 9"), "status %d: %s", (int)st,
             kd_mpi_comm_last_error(comm));
    cc.k = 8;
    fail = 1;
    st = kd_mpi_cache_write_teacher(comm, t, &ds, path, &cc, 0);
    MT_CHECK(st == KD_E_CALLBACK && strstr(kd_mpi_comm_last_error(comm), "rank 1: "), "status %d: %s", (int)st,
             kd_mpi_comm_last_error(comm));
    MT_CHECK(!exists(path), "a file appeared after a failed run");
    fail = 0;
    st = kd_mpi_cache_write_teacher(comm, mt_rank == 0 ? NULL : t, &ds, path, &cc, 0);
    MT_CHECK(st == KD_E_INVALID && strstr(kd_mpi_comm_last_error(comm), "rank 0: "), "status %d: %s", (int)st,
             kd_mpi_comm_last_error(comm));
    MT_CHECK(kd_mpi_cache_write_teacher(NULL, t, &ds, path, &cc, 0) == KD_E_INVALID, "NULL comm");
    /* A run after the failures still works (the failed run's partial files are resumed). */
    st = kd_mpi_cache_write_teacher(comm, t, &ds, path, &cc, 1);
    MT_CHECK(st == KD_OK, "%s", kd_mpi_comm_last_error(comm));
    MPI_Barrier(MPI_COMM_WORLD);
    if (mt_rank == 0) {
        remove(path);
        char p[600];
        for (int r = 0; r < mt_size; r++) { /* partial files of the failed run */
            snprintf(p, sizeof p, "%s.part%dof%d.partial", path, r, mt_size);
            remove(p);
        }
        rmdir(dir);
    }
    kd_teacher_destroy(t);
    kd_mpi_comm_destroy(comm);
    kd_context_destroy(ctx);
    return mt_finish("test_mpi_cache");
}
