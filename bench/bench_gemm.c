/*
 * bench_gemm.c - libkd GEMM against BLIS called directly, one thread.
 *
 * BLIS fixes its sub-configuration once per process, so every measurement
 * runs in a child process of its own (this program re-executes itself):
 *   libkd      kd_gemm with a default context (libkd picks the sub-config)
 *   blis-auto  bli_sgemm with BLIS's own CPU detection
 *   blis-X     bli_sgemm with BLIS_ARCH_TYPE forcing sub-configuration X
 * The parent interleaves the children, repeats, and prints medians:
 *   bench=gemm shape=MxKxN libkd=... blis_auto=... best=<X> blis_best=... \
 *       speedup=<libkd/blis_auto> of_best=<libkd/blis_best>      (GFLOP/s)
 * Usage: bench_gemm [rounds]   (default 5)
 */
#include <blis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench_gemm_job.h"
#include "bench_util.h"
#include "kd/kd.h"

typedef struct {
    size_t m, k, n;
    int tb; /* B transposed (stored n x k): a linear layer's forward */
} shape;

static const shape shapes[] = {
    {128, 784, 1200, 0}, {128, 1200, 1200, 0}, {512, 512, 512, 0}, {1024, 512, 1024, 0},
    {128, 784, 1200, 1}, {128, 784, 128, 0},   {128, 128, 10, 0},   {1, 784, 128, 0},
    {1, 784, 32, 0},     {1, 784, 32, 1},      {1, 32, 10, 1},      {4, 784, 128, 1},
};
#define N_SHAPES (sizeof shapes / sizeof shapes[0])

/* Child: time every shape in this process's configuration; print GFLOP/s. */
static int child(const char *mode)
{
    bench_gemm_job j = {0};
    j.use_kd = strcmp(mode, "libkd") == 0;
    if (j.use_kd && kd_context_create(NULL, &j.ctx) != KD_OK) return 1;
    const char *arch = j.use_kd ? kd_context_blis_arch(j.ctx) : (bli_init(), bli_arch_string(bli_arch_query_id()));
    printf("%s", arch);
    for (size_t i = 0; i < N_SHAPES; i++) {
        const shape *s = &shapes[i];
        float *a = malloc(s->m * s->k * sizeof(float)), *b = malloc(s->k * s->n * sizeof(float));
        j.c = malloc(s->m * s->n * sizeof(float));
        if (!a || !b || !j.c) return 1;
        for (size_t t = 0; t < s->m * s->k; t++) a[t] = (float)((t * 7) % 13) * 0.1f - 0.6f;
        for (size_t t = 0; t < s->k * s->n; t++) b[t] = (float)((t * 5) % 11) * 0.1f - 0.5f;
        j.m = s->m, j.k = s->k, j.n = s->n, j.tb = s->tb, j.a = a, j.b = b;
        double sec = bench_time_median(bench_gemm_run, &j, 0.05, 3);
        printf(" %.3f", 2.0 * (double)s->m * (double)s->n * (double)s->k / sec * 1e-9);
        free(a);
        free(b);
        free(j.c);
    }
    printf("\n");
    kd_context_destroy(j.ctx);
    return 0;
}

/* Runs `self --child mode` with BLIS_ARCH_TYPE set to arch_env (or unset) and
 * parses its line into name + GFLOP/s per shape. */
static int run_child(const char *self, const char *mode, const char *arch_env, char *name,
                     double *gflops)
{
    int fd[2];
    if (pipe(fd) != 0) return -1;
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        dup2(fd[1], 1);
        close(fd[0]);
        if (arch_env) setenv("BLIS_ARCH_TYPE", arch_env, 1);
        else unsetenv("BLIS_ARCH_TYPE");
        execl(self, self, "--child", mode, (char *)NULL);
        _exit(127);
    }
    close(fd[1]);
    char buf[1024];
    size_t len = 0;
    ssize_t r;
    while ((r = read(fd[0], buf + len, sizeof buf - 1 - len)) > 0) len += (size_t)r;
    close(fd[0]);
    buf[len] = '\0';
    int status;
    waitpid(pid, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) return -1;
    char *p = buf;
    int off = 0;
    if (sscanf(p, "%63s%n", name, &off) != 1) return -1;
    p += off;
    for (size_t i = 0; i < N_SHAPES; i++) {
        if (sscanf(p, "%lf%n", &gflops[i], &off) != 1) return -1;
        p += off;
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--child") == 0) return child(argv[2]);
    int rounds = argc > 1 ? atoi(argv[1]) : 5;
    if (rounds < 1) rounds = 1;
    if (rounds > 15) rounds = 15;
    /* Candidate sub-configurations: those this CPU can run (the ids whose
     * child exits cleanly; BLIS aborts the child on an unusable one). */
    struct {
        const char *env;
        char name[64];
        double g[15][N_SHAPES];
    } modes[8];
    int nm = 0;
    modes[nm++].env = NULL;  /* libkd */
    modes[nm++].env = NULL;  /* blis-auto */
    static const char *arch_ids[] = {"0", "3", "6", "4"}; /* skx, haswell, zen3, sandybridge */
    for (size_t i = 0; i < sizeof arch_ids / sizeof arch_ids[0]; i++) modes[nm++].env = arch_ids[i];
    int ok[8] = {1, 1, 1, 1, 1, 1, 1, 1};
    for (int r = 0; r < rounds; r++)
        for (int mi = 0; mi < nm; mi++) {
            if (!ok[mi]) continue;
            const char *mode = mi == 0 ? "libkd" : "blis";
            if (run_child(argv[0], mode, modes[mi].env, modes[mi].name, modes[mi].g[r]) != 0) {
                ok[mi] = 0;
                if (mi < 2) {
                    fprintf(stderr, "bench_gemm: %s child failed\n", mode);
                    return 1;
                }
            }
        }
    printf("# bench_gemm: GFLOP/s, one thread, medians of %d rounds; libkd runs on '%s'\n", rounds,
           modes[0].name);
    for (size_t s = 0; s < N_SHAPES; s++) {
        double med[8];
        for (int mi = 0; mi < nm; mi++) {
            double v[15];
            for (int r = 0; r < rounds; r++) v[r] = modes[mi].g[r][s];
            med[mi] = ok[mi] ? bench_median(v, (size_t)rounds) : 0.0;
        }
        int best = 2;
        for (int mi = 2; mi < nm; mi++)
            if (ok[mi] && med[mi] > med[best]) best = mi;
        printf("bench=gemm shape=%zux%zux%zu%s libkd=%.1f blis_auto=%.1f (%s) best=%s blis_best=%.1f "
               "speedup=%.2f of_best=%.2f\n",
               shapes[s].m, shapes[s].k, shapes[s].n, shapes[s].tb ? "(Bt)" : "", med[0], med[1], modes[1].name,
               modes[best].name, med[best], med[0] / med[1], med[0] / med[best]);
    }
    return 0;
}
