/*
 * kd_mpi_cache.c - the teacher-logit cache written by all ranks: each rank writes the
 * blocks of its run of rows to a part file with libkd's writer, then rank 0 joins the
 * parts into one file of the layout lib/distill/kd_cache_format.h documents (format 1):
 *   header 64 B (positions at 32, CRC-32C of bytes 0..59 at 60),
 *   blocks "KDLB" (count at 4, first position at 8, payload bytes at 16, CRC-32C of
 *   bytes 0..19 then the payload at 20, payload from 24),
 *   index (u64 block offsets), footer 32 B (index offset, positions, blocks,
 *   CRC-32C of the index then footer bytes 0..23, "KDLE").
 * Only the block's first position and CRC change when a part's blocks move into the
 * joined file; kd_logit_cache_open validates the result before anyone deletes a part.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kd_mpi_internal.h"

#define HDR 64u
#define BLK 24u
#define FOOT 32u
#define CHUNK ((size_t)1 << 30)

static void wr32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static void wr64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static uint32_t rd32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t rd64(const unsigned char *p) { return (uint64_t)rd32(p) | (uint64_t)rd32(p + 4) << 32; }

/* Reads a whole file. */
static kd_status read_file(kd_mpi_comm *c, const char *path, unsigned char **out, size_t *size)
{
    *out = NULL;
    *size = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return kd__mpi_fail(c, KD_E_IO, "cannot open %s: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fileno(f), &sb) != 0 || sb.st_size < (off_t)(HDR + FOOT)) {
        fclose(f);
        return kd__mpi_fail(c, KD_E_FORMAT, "%s: not a finished cache part", path);
    }
    unsigned char *buf = (unsigned char *)kd__mpi_alloc(c, (size_t)sb.st_size, 1);
    if (!buf) {
        fclose(f);
        return KD_E_NOMEM;
    }
    size_t got = fread(buf, 1, (size_t)sb.st_size, f);
    fclose(f);
    if (got != (size_t)sb.st_size) {
        kd__mpi_free(c, buf);
        return kd__mpi_fail(c, KD_E_IO, "short read of %s", path);
    }
    *out = buf;
    *size = got;
    return KD_OK;
}

/* Moves the blocks of a finished part (validated by kd_logit_cache_open) to start at
 * position `base`: rewrites each block's first position and CRC in place. Returns the
 * byte range of the blocks in *blocks / *nbytes and their count in *nblocks. */
static kd_status renumber(kd_mpi_comm *c, unsigned char *file, size_t size, uint64_t base,
                          unsigned char **blocks, size_t *nbytes, uint64_t *nblocks)
{
    const unsigned char *foot = file + size - FOOT;
    uint64_t index_off = rd64(foot), nb = rd64(foot + 16);
    if (index_off < HDR || index_off > size - FOOT || memcmp(foot + 28, "KDLE", 4) != 0)
        return kd__mpi_fail(c, KD_E_FORMAT, "cache part: bad footer");
    size_t off = HDR;
    for (uint64_t b = 0; b < nb; b++) {
        if (off + BLK > index_off || memcmp(file + off, "KDLB", 4) != 0)
            return kd__mpi_fail(c, KD_E_FORMAT, "cache part: block %llu misplaced", (unsigned long long)b);
        unsigned char *blk = file + off;
        size_t payload = rd32(blk + 16);
        if (payload > index_off - off - BLK) return kd__mpi_fail(c, KD_E_FORMAT, "cache part: block overruns");
        wr64(blk + 8, rd64(blk + 8) + base);
        uint32_t crc = kd_crc32c(0, blk, 20);
        wr32(blk + 20, kd_crc32c(crc, blk + BLK, payload));
        off += BLK + payload;
    }
    if (off != index_off) return kd__mpi_fail(c, KD_E_FORMAT, "cache part: bytes between blocks and index");
    *blocks = file + HDR;
    *nbytes = off - HDR;
    *nblocks = nb;
    return KD_OK;
}

static kd_status write_all(kd_mpi_comm *c, int fd, const void *p, size_t n, const char *path)
{
    const unsigned char *b = (const unsigned char *)p;
    while (n > 0) {
        ssize_t w = write(fd, b, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return kd__mpi_fail(c, KD_E_IO, "write %s: %s", path, strerror(errno));
        b += w;
        n -= (size_t)w;
    }
    return KD_OK;
}

static kd_status send_bytes(kd_mpi_comm *c, const unsigned char *p, size_t n, int to)
{
    for (size_t off = 0; off < n; off += CHUNK) {
        size_t part = n - off < CHUNK ? n - off : CHUNK;
        c->stats.gather_bytes += part;
        int rc = MPI_Send(p + off, (int)part, MPI_BYTE, to, 77, c->comm);
        if (rc != MPI_SUCCESS) return kd__mpi_check(c, rc, "MPI_Send of a cache part");
    }
    return KD_OK;
}

static kd_status recv_bytes(kd_mpi_comm *c, unsigned char *p, size_t n, int from)
{
    for (size_t off = 0; off < n; off += CHUNK) {
        size_t part = n - off < CHUNK ? n - off : CHUNK;
        int rc = MPI_Recv(p + off, (int)part, MPI_BYTE, from, 77, c->comm, MPI_STATUS_IGNORE);
        if (rc != MPI_SUCCESS) return kd__mpi_check(c, rc, "MPI_Recv of a cache part");
    }
    return KD_OK;
}

kd_status kd_mpi_cache_write_teacher(kd_mpi_comm *comm, kd_teacher *teacher, const kd_dataset *ds,
                                     const char *path, const kd_cache_config *cfg_in, int resume)
{
    if (!comm) return KD_E_INVALID;
    kd_mpi_comm *c = comm;
    c->reason[0] = '\0';
    kd_cache_config cfg;
    kd_cache_config_default(&cfg);
    kd_status st = KD_OK;
    if (!teacher || !ds || !path || !*path)
        st = kd__mpi_fail(c, KD_E_INVALID, "kd_mpi_cache_write_teacher: NULL teacher, dataset or path");
    else if (ds->struct_size < sizeof *ds)
        st = kd__mpi_fail(c, KD_E_VERSION, "kd_mpi_cache_write_teacher: set dataset struct_size");
    else if (ds->n == 0 || !ds->x || ds->dim != kd_teacher_input_dim(teacher))
        st = kd__mpi_fail(c, KD_E_SHAPE, "kd_mpi_cache_write_teacher: dataset of %zu rows x %zu, teacher takes %zu",
                          ds->n, ds->dim, kd_teacher_input_dim(teacher));
    else if (cfg_in && (cfg_in->struct_size < sizeof(uint32_t) || cfg_in->struct_size > sizeof cfg))
        st = kd__mpi_fail(c, KD_E_VERSION, "kd_mpi_cache_write_teacher: config struct_size %u not supported",
                          (unsigned)cfg_in->struct_size);
    else if (cfg_in)
        memcpy(&cfg, cfg_in, cfg_in->struct_size);
    if (st == KD_OK && (cfg.block_positions == 0 || cfg.block_positions > 65536))
        st = kd__mpi_fail(c, KD_E_INVALID, "kd_mpi_cache_write_teacher: block_positions must be in 1..65536");
    if (st == KD_OK && strlen(path) > 4000)
        st = kd__mpi_fail(c, KD_E_INVALID, "kd_mpi_cache_write_teacher: path too long");
    if ((st = kd__mpi_agree(c, st)) != KD_OK) return st;

    uint32_t dcrc = kd_crc32c(0, ds->x, ds->n * ds->dim * sizeof(float));
    uint64_t sig[9] = {ds->n, ds->dim, kd_teacher_classes(teacher), cfg.k, (uint64_t)cfg.encoding,
                       cfg.value_scale, cfg.block_positions, kd_crc32c(0, path, strlen(path)), dcrc};
    static const char *const names[9] = {"dataset rows", "dataset row width", "teacher classes", "k", "encoding",
                                         "value_scale", "block_positions", "the CRC-32C of the path",
                                         "the CRC-32C of the dataset"};
    if ((st = kd__mpi_same(c, sig, names, 9, KD_E_INVALID, "kd_mpi_cache_write_teacher")) != KD_OK) return st;

    /* Rank r's run: blocks [nb r / N, nb (r+1) / N), so parts join at block boundaries. */
    const size_t N = (size_t)c->size, R = (size_t)c->rank, bp = cfg.block_positions;
    const size_t nb = (ds->n + bp - 1) / bp;
    size_t b0 = nb * R / N, b1 = nb * (R + 1) / N;
    size_t lo = b0 * bp < ds->n ? b0 * bp : ds->n, hi = b1 * bp < ds->n ? b1 * bp : ds->n;
    char part[4200];
    snprintf(part, sizeof part, "%s.part%dof%d", path, c->rank, c->size);
    if (hi > lo) {
        kd_dataset sub = {(uint32_t)sizeof sub, ds->x + lo * ds->dim, hi - lo, ds->dim,
                          ds->labels ? ds->labels + lo : NULL};
        st = kd_cache_write_teacher(c->ctx, teacher, &sub, part, &cfg, resume);
        if (st != KD_OK) kd__mpi_fail_ctx(c, st, "kd_mpi_cache_write_teacher: this rank's part");
    }
    if ((st = kd__mpi_agree(c, st)) != KD_OK) return st;

    /* Each rank loads its part and renumbers its blocks to start at position lo. */
    unsigned char *file = NULL, *blocks = NULL;
    size_t fsize = 0, nbytes = 0;
    uint64_t nblocks = 0;
    if (hi > lo) {
        st = read_file(c, part, &file, &fsize);
        if (st == KD_OK) st = renumber(c, file, fsize, lo, &blocks, &nbytes, &nblocks);
    }
    if ((st = kd__mpi_agree(c, st)) != KD_OK) {
        kd__mpi_free(c, file);
        return st;
    }
    /* Rank 0 learns every part's size and block count. */
    uint64_t mine[2] = {nbytes, nblocks}, *sizes = NULL;
    if (c->rank == 0) sizes = (uint64_t *)kd__mpi_alloc(c, 2 * N, sizeof *sizes);
    if ((st = kd__mpi_agree(c, c->rank != 0 || sizes ? KD_OK : KD_E_NOMEM)) != KD_OK) {
        kd__mpi_free(c, file);
        return st;
    }
    c->stats.control_calls++;
    int rc = MPI_Gather(mine, 2, MPI_UINT64_T, sizes, 2, MPI_UINT64_T, 0, c->comm);
    if ((st = kd__mpi_agree(c, kd__mpi_check(c, rc, "MPI_Gather of part sizes"))) != KD_OK) {
        kd__mpi_free(c, sizes);
        kd__mpi_free(c, file);
        return st;
    }
    /* Rank 0 sizes its buffers before any part moves, so a refused allocation cannot
     * leave a sender blocked. */
    unsigned char *rbuf = NULL, *ibytes = NULL;
    uint64_t total_blocks = 0, maxpart = 0;
    if (c->rank == 0) {
        for (size_t r = 1; r < N; r++) maxpart = sizes[2 * r] > maxpart ? sizes[2 * r] : maxpart;
        for (size_t r = 0; r < N; r++) total_blocks += sizes[2 * r + 1];
        rbuf = (unsigned char *)kd__mpi_alloc(c, (size_t)maxpart, 1);
        ibytes = (unsigned char *)kd__mpi_alloc(c, (size_t)total_blocks, 8);
        st = rbuf && ibytes ? KD_OK : KD_E_NOMEM;
    }
    if ((st = kd__mpi_agree(c, st)) != KD_OK) {
        kd__mpi_free(c, ibytes);
        kd__mpi_free(c, rbuf);
        kd__mpi_free(c, sizes);
        kd__mpi_free(c, file);
        return st;
    }
    /* The header comes from the first rank with rows: the one whose run starts at block 0. */
    if (c->rank != 0) {
        if (b0 == 0 && hi > lo) {
            c->stats.gather_bytes += HDR;
            rc = MPI_Send(file, HDR, MPI_BYTE, 0, 78, c->comm);
            st = kd__mpi_check(c, rc, "MPI_Send of the part header");
        }
        if (st == KD_OK && nbytes > 0) st = send_bytes(c, blocks, nbytes, 0);
    } else {
        char tmp[4300];
        snprintf(tmp, sizeof tmp, "%s.tmp-join", path);
        unsigned char hdr[HDR];
        int first = -1;
        for (size_t r = 0; r < N && first < 0; r++)
            if (sizes[2 * r] > 0) first = (int)r;
        if (first == 0) {
            memcpy(hdr, file, HDR);
        } else {
            rc = MPI_Recv(hdr, HDR, MPI_BYTE, first, 78, c->comm, MPI_STATUS_IGNORE);
            st = kd__mpi_check(c, rc, "MPI_Recv of a part header");
        }
        int fd = -1;
        if (st == KD_OK) {
            fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
            if (fd < 0) st = kd__mpi_fail(c, KD_E_IO, "cannot create %s: %s", tmp, strerror(errno));
        }
        if (st == KD_OK) {
            wr64(hdr + 32, ds->n);
            wr32(hdr + 60, kd_crc32c(0, hdr, 60));
            st = write_all(c, fd, hdr, HDR, tmp);
        }
        uint64_t off = HDR, nb_done = 0;
        /* Every sender is received from even after a local failure: none stays blocked. */
        for (size_t r = 0; r < N; r++) {
            size_t n = (size_t)sizes[2 * r];
            if (n == 0) continue;
            unsigned char *buf = r == 0 ? blocks : rbuf;
            if (r != 0) {
                kd_status rs = recv_bytes(c, buf, n, (int)r);
                if (st == KD_OK) st = rs;
            }
            if (st != KD_OK) continue;
            for (size_t o = 0; o + BLK <= n && nb_done < total_blocks;) { /* block offsets for the index */
                wr64(ibytes + 8 * nb_done++, off + o);
                o += BLK + rd32(buf + o + 16);
            }
            st = write_all(c, fd, buf, n, tmp);
            off += n;
        }
        if (st == KD_OK) {
            unsigned char foot[FOOT];
            memset(foot, 0, sizeof foot);
            wr64(foot, off);
            wr64(foot + 8, ds->n);
            wr64(foot + 16, nb_done);
            uint32_t crc = kd_crc32c(0, ibytes, nb_done * 8);
            wr32(foot + 24, kd_crc32c(crc, foot, 24));
            memcpy(foot + 28, "KDLE", 4);
            st = write_all(c, fd, ibytes, nb_done * 8, tmp);
            if (st == KD_OK) st = write_all(c, fd, foot, FOOT, tmp);
        }
        if (fd >= 0) {
            if (st == KD_OK && fsync(fd) != 0) st = kd__mpi_fail(c, KD_E_IO, "fsync %s: %s", tmp, strerror(errno));
            if (close(fd) != 0 && st == KD_OK) st = kd__mpi_fail(c, KD_E_IO, "close %s: %s", tmp, strerror(errno));
        }
        if (st == KD_OK && rename(tmp, path) != 0)
            st = kd__mpi_fail(c, KD_E_IO, "rename %s to %s: %s", tmp, path, strerror(errno));
        if (st != KD_OK) remove(tmp);
        if (st == KD_OK) { /* the folder entry too */
            char dir[4200];
            snprintf(dir, sizeof dir, "%s", path);
            char *slash = strrchr(dir, '/');
            if (slash) *slash = '\0';
            int dfd = open(slash ? (*dir ? dir : "/") : ".", O_RDONLY);
            if (dfd >= 0) {
                fsync(dfd);
                close(dfd);
            }
        }
        if (st == KD_OK) { /* validate everything before the parts go */
            kd_logit_cache *lc = NULL;
            kd_status vs = kd_logit_cache_open(c->ctx, path, &lc);
            if (vs != KD_OK)
                st = kd__mpi_fail_ctx(c, vs, "kd_mpi_cache_write_teacher: joined file invalid");
            else if (kd_logit_cache_positions(lc) != ds->n)
                st = kd__mpi_fail(c, KD_E_INTERNAL, "kd_mpi_cache_write_teacher: joined file has the wrong row count");
            kd_logit_cache_close(lc);
        }
    }
    kd__mpi_free(c, ibytes);
    kd__mpi_free(c, rbuf);
    kd__mpi_free(c, sizes);
    kd__mpi_free(c, file);
    st = kd__mpi_agree(c, st);
    if (st == KD_OK && hi > lo) remove(part);
    return st;
}
