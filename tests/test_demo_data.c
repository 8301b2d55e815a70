/*
 * test_demo_data.c - smoke test of examples/distill_fashion_mnist's data path.
 *
 * Writes a tiny synthetic Fashion-MNIST look-alike (gzip-compressed IDX files,
 * 28x28 images whose class is a bright bar at a class-dependent row) into a
 * temporary folder, then runs the example on it for one epoch, twice (the
 * second run must load the cached teacher), and checks its table, its
 * checkpoint and its curves. Then checks the errors for a missing folder,
 * a corrupt gzip file and an IDX file whose header lies.
 *
 * Usage: test_demo_data PATH-TO-distill_fashion_mnist
 * Plain C (no Check): prints "ok N - ..." lines and exits 0 when all pass.
 */
#define _POSIX_C_SOURCE 200809L

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <zlib.h>

static int failures, count;

static void ok(int cond, const char *what)
{
    count++;
    printf("%s %d - %s\n", cond ? "ok" : "not ok", count, what);
    if (!cond) failures++;
}

static void be32(unsigned char *p, unsigned v)
{
    p[0] = (unsigned char)(v >> 24); p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8); p[3] = (unsigned char)v;
}

static int write_gz(const char *path, const unsigned char *data, size_t n)
{
    gzFile f = gzopen(path, "wb");
    if (!f) return -1;
    int w = gzwrite(f, data, (unsigned)n);
    return gzclose(f) == Z_OK && w == (int)n ? 0 : -1;
}

/* Writes <dir>/<split>-{images-idx3,labels-idx1}-ubyte.gz with n items. */
static int write_split(const char *dir, const char *split, unsigned n, unsigned seed)
{
    size_t isz = 16 + (size_t)n * 784, lsz = 8 + n;
    unsigned char *img = calloc(isz, 1), *lab = calloc(lsz, 1);
    if (!img || !lab) return -1;
    be32(img, 0x00000803); be32(img + 4, n); be32(img + 8, 28); be32(img + 12, 28);
    be32(lab, 0x00000801); be32(lab + 4, n);
    unsigned s = seed;
    for (unsigned i = 0; i < n; i++) {
        unsigned c = i % 10;
        lab[8 + i] = (unsigned char)c;
        unsigned char *p = img + 16 + (size_t)i * 784;
        for (int k = 0; k < 784; k++) {
            s = s * 1103515245u + 12345u;
            p[k] = (unsigned char)((s >> 16) % 40);
        }
        for (int r = 2 + 2 * (int)c; r < 4 + 2 * (int)c; r++)
            for (int col = 4; col < 24; col++) p[r * 28 + col] = 230;
    }
    char ip[1024], lp[1024];
    snprintf(ip, sizeof ip, "%s/%s-images-idx3-ubyte.gz", dir, split);
    snprintf(lp, sizeof lp, "%s/%s-labels-idx1-ubyte.gz", dir, split);
    int rc = write_gz(ip, img, isz) | write_gz(lp, lab, lsz);
    free(img);
    free(lab);
    return rc;
}

/* Runs cmd, captures stdout+stderr into out (truncated), returns the exit status. */
static int run(const char *cmd, char *out, size_t size)
{
    char full[8192];
    snprintf(full, sizeof full, "%s 2>&1", cmd);
    FILE *p = popen(full, "r");
    if (!p) return -1;
    size_t n = fread(out, 1, size - 1, p);
    out[n] = 0;
    int st = pclose(p);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

int main(int argc, char **argv)
{
    if (argc < 2) { fprintf(stderr, "usage: test_demo_data PATH-TO-EXAMPLE\n"); return 2; }
    const char *exe = argv[1];
    char dir[] = "/tmp/kd_demo_test_XXXXXX";
    if (!mkdtemp(dir)) { perror("mkdtemp"); return 1; }
    ok(write_split(dir, "train", 200, 1) == 0 && write_split(dir, "t10k", 100, 2) == 0, "synthetic IDX .gz written");

    static char out[65536];
    char cmd[4096], path[1200];
    snprintf(cmd, sizeof cmd,
             "'%s' --data-dir %s --cache-dir %s/cache --out-dir %s/out --teacher 'input 784; linear 32; relu; linear 10' "
             "--teacher-epochs 2 --epochs 1 --batch 32 --labels 50 --seed 1,2,3 --threads 1 --no-plot --quiet",
             exe, dir, dir, dir);
    int rc = run(cmd, out, sizeof out);
    ok(rc == 0, "first run exits 0");
    if (rc != 0) fputs(out, stderr);
    ok(strstr(out, "student with KD") != NULL && strstr(out, "student from labels alone") != NULL, "prints the table");
    ok(strstr(out, "transfer set (50 labels + teacher on all 200 images)") != NULL, "names the scenario");
    ok(strstr(out, "teacher trained") != NULL, "first run trains the teacher");
    snprintf(path, sizeof path, "%s/out/student-kd.safetensors", dir);
    ok(access(path, R_OK) == 0, "writes the student checkpoint");
    snprintf(path, sizeof path, "%s/out/curves.csv", dir);
    FILE *f = fopen(path, "r");
    int lines = 0;
    if (f) { int ch; while ((ch = fgetc(f)) != EOF) lines += ch == '\n'; fclose(f); }
    ok(lines == 1 + 3 + 3, "curves.csv: header + one epoch per arm and seed");

    rc = run(cmd, out, sizeof out);
    ok(rc == 0 && strstr(out, "loaded from cache") != NULL, "second run loads the cached teacher");

    snprintf(cmd, sizeof cmd, "'%s' --data-dir %s/nowhere --quiet --no-plot", exe, dir);
    rc = run(cmd, out, sizeof out);
    ok(rc != 0 && strstr(out, "nowhere/train-images-idx3-ubyte.gz") && strstr(out, "dataset-fashion-mnist"),
       "missing files: names the file and the package");

    /* corrupt gzip: garbage bytes */
    snprintf(path, sizeof path, "%s/t10k-labels-idx1-ubyte.gz", dir);
    f = fopen(path, "wb");
    if (f) { fputs("\x1f\x8b\x08\x00garbage that is not deflate", f); fclose(f); }
    snprintf(cmd, sizeof cmd, "'%s' --data-dir %s --cache-dir %s/cache --out-dir %s/out --quiet --no-plot", exe, dir, dir, dir);
    rc = run(cmd, out, sizeof out);
    ok(rc != 0 && strstr(out, "t10k-labels-idx1-ubyte.gz") && strstr(out, "corrupt"), "corrupt gzip: named");

    /* valid gzip, IDX header claims more items than present */
    unsigned char bad[8 + 5];
    be32(bad, 0x00000801); be32(bad + 4, 100);
    memset(bad + 8, 1, 5);
    write_gz(path, bad, sizeof bad);
    rc = run(cmd, out, sizeof out);
    ok(rc != 0 && strstr(out, "t10k-labels-idx1-ubyte.gz") && strstr(out, "corrupt"), "truncated IDX: named");

    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
    printf("%d of %d passed\n", count - failures, count);
    return failures ? 1 : 0;
}
