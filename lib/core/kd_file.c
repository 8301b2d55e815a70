/*
 * kd_file.c - crash-safe file writes and whole-file reads (hosted builds).
 *
 * A writer goes to "<path>.tmp-<pid>-<n>" in the same folder, then fsync,
 * rename over the final name, and fsync of the folder: a crash at any point
 * leaves either the old file or the new one under the final name, never a
 * mix. Every failure removes the temporary file.
 */
#include <errno.h>
#include <stdio.h> /* rename; this file is hosted-only */
#include <fcntl.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kd_internal.h"

/* Fault injection for tests: when set, called before each OS call with its
 * name ("write", "fsync", "rename"); a nonzero return makes that call fail
 * with the returned errno value. */
int (*kd__io_fault_hook)(const char *op) = NULL;

static int io_fault(const char *op)
{
    if (!kd__io_fault_hook) return 0;
    int e = kd__io_fault_hook(op);
    if (e) errno = e;
    return e;
}

kd_status kd__atomic_open(kd_context *ctx, kd_atomic_file *f, const char *path)
{
    memset(f, 0, sizeof *f);
    f->fd = -1;
    if (!path || !*path) return kd__fail(ctx, KD_E_INVALID, "file path is NULL or empty");
    size_t n = strlen(path);
    f->final_path = kd__strdup(ctx, path);
    f->tmp_path = (char *)kd__alloc(ctx, n + 40);
    if (!f->final_path || !f->tmp_path) {
        kd__free(ctx, f->tmp_path);
        kd__free(ctx, f->final_path);
        f->tmp_path = f->final_path = NULL;
        return KD_E_NOMEM;
    }
    /* open(O_EXCL) with mode 0666 rather than mkstemp, whose 0600 would make
     * checkpoints unreadable to other users; the umask applies as for any
     * file the process creates. The name is unique per process and call. */
    static unsigned long counter;
    for (int attempt = 0; attempt < 100; attempt++) {
        unsigned long c = __atomic_fetch_add(&counter, 1, __ATOMIC_RELAXED);
        kd__fmt(f->tmp_path, n + 40, "%s.tmp-%ld-%lu", path, (long)getpid(), c);
        f->fd = open(f->tmp_path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
        if (f->fd >= 0 || errno != EEXIST) break;
    }
    if (f->fd < 0) {
        kd_status st = kd__fail(ctx, KD_E_IO, "cannot create a temporary file beside '%s': %s",
                                path, strerror(errno));
        kd__free(ctx, f->tmp_path);
        kd__free(ctx, f->final_path);
        f->tmp_path = f->final_path = NULL;
        return st;
    }
    f->ctx = ctx;
    return KD_OK;
}

kd_status kd__atomic_write(kd_atomic_file *f, const void *data, size_t size)
{
    if (f->fd < 0) return KD_E_STATE;
    const unsigned char *p = (const unsigned char *)data;
    while (size > 0) {
        size_t chunk = size > (1u << 30) ? (1u << 30) : size;
        ssize_t w = io_fault("write") ? -1 : write(f->fd, p, chunk);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0)
            return kd__fail(f->ctx, KD_E_IO, "writing '%s' failed: %s", f->final_path,
                            w < 0 ? strerror(errno) : "no progress");
        p += w;
        size -= (size_t)w;
        f->written += (size_t)w;
    }
    return KD_OK;
}

kd_status kd__atomic_commit(kd_atomic_file *f)
{
    if (f->fd < 0) return KD_E_STATE;
    kd_context *ctx = f->ctx;
    kd_status st = KD_OK;
    if (io_fault("fsync") || fsync(f->fd) != 0)
        st = kd__fail(ctx, KD_E_IO, "fsync of '%s' failed: %s", f->tmp_path, strerror(errno));
    if (close(f->fd) != 0 && st == KD_OK)
        st = kd__fail(ctx, KD_E_IO, "close of '%s' failed: %s", f->tmp_path, strerror(errno));
    f->fd = -1;
    if (st == KD_OK && (io_fault("rename") || rename(f->tmp_path, f->final_path) != 0))
        st = kd__fail(ctx, KD_E_IO, "rename to '%s' failed: %s", f->final_path, strerror(errno));
    if (st != KD_OK) {
        unlink(f->tmp_path);
    } else {
        /* Make the rename itself durable. A folder that cannot be opened or
         * synced (some file systems) does not undo a completed rename. */
        char *slash = strrchr(f->final_path, '/');
        int dfd;
        if (slash) {
            char keep = slash[1];
            slash[1] = '\0';
            dfd = open(f->final_path, O_RDONLY | O_DIRECTORY);
            slash[1] = keep;
        } else {
            dfd = open(".", O_RDONLY | O_DIRECTORY);
        }
        if (dfd >= 0) {
            (void)fsync(dfd);
            close(dfd);
        }
    }
    kd__free(ctx, f->tmp_path);
    kd__free(ctx, f->final_path);
    f->tmp_path = f->final_path = NULL;
    return st;
}

void kd__atomic_abort(kd_atomic_file *f)
{
    if (!f || !f->ctx) return;
    if (f->fd >= 0) {
        close(f->fd);
        f->fd = -1;
    }
    if (f->tmp_path) unlink(f->tmp_path);
    kd__free(f->ctx, f->tmp_path);
    kd__free(f->ctx, f->final_path);
    f->tmp_path = f->final_path = NULL;
}

kd_status kd__map_file(kd_context *ctx, const char *path, kd_mapped_file *m)
{
    memset(m, 0, sizeof *m);
    if (!path || !*path) return kd__fail(ctx, KD_E_INVALID, "file path is NULL or empty");
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return kd__fail(ctx, errno == ENOENT ? KD_E_NOT_FOUND : KD_E_IO, "cannot open '%s': %s",
                        path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        kd_status st = kd__fail(ctx, KD_E_IO, "cannot stat '%s': %s", path, strerror(errno));
        close(fd);
        return st;
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        return kd__fail(ctx, KD_E_IO, "'%s' is not a regular file", path);
    }
    if ((uint64_t)sb.st_size > (uint64_t)SIZE_MAX) {
        close(fd);
        return kd__fail(ctx, KD_E_OVERFLOW, "'%s' is too large to map", path);
    }
    m->size = (size_t)sb.st_size;
    if (m->size > 0) {
        void *p = mmap(NULL, m->size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) {
            kd_status st = kd__fail(ctx, KD_E_IO, "cannot map '%s': %s", path, strerror(errno));
            close(fd);
            m->size = 0;
            return st;
        }
        m->data = (const unsigned char *)p;
    }
    close(fd);
    return KD_OK;
}

void kd__unmap_file(kd_mapped_file *m)
{
    if (m && m->data) munmap((void *)m->data, m->size);
    if (m) {
        m->data = NULL;
        m->size = 0;
    }
}
