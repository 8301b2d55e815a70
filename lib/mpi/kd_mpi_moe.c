/*
 * kd_mpi_moe.c - expert-parallel MoE inference: experts spread over the ranks, tokens
 * dispatched to their experts' owners and returned with MPI_Alltoallv.
 *
 * Each rank keeps the gate (replicated) and an "engine": a kd_moe holding only its own
 * experts, driven by a fixed router that sends received row i to local expert ids[i]
 * with weight 1, so the engine's output row is FFN_e(x_i) computed by lib/moe itself.
 * The source rank routes its tokens with the layer's built-in router and sums
 * w * FFN_e(x_t) over its assignments.
 */
#include <limits.h>
#include <math.h>
#include <string.h>

#include "kd/kd_math.h"
#include "kd/kd_moe.h"
#include "kd_mpi_internal.h"

/* The engine's router: row i goes to ids[i], weight 1. */
typedef struct {
    const uint32_t *ids;
} fixed_route;

static size_t fixed_max(const void *state, size_t n_tokens, size_t n_experts, size_t top_k, size_t capacity)
{
    (void)state;
    (void)n_experts;
    (void)top_k;
    (void)capacity;
    return n_tokens;
}

static kd_status fixed_route_fn(const void *state, const kd_router_batch *b, kd_router_assign *out, size_t *n_out)
{
    const fixed_route *f = (const fixed_route *)state;
    for (size_t i = 0; i < b->n_tokens; i++) out[i] = (kd_router_assign){(uint32_t)i, f->ids[i], 1.0f};
    *n_out = b->n_tokens;
    return KD_OK;
}

static const kd_router_vtable fixed_vt = {KD_ROUTER_ABI_VERSION, "kd_mpi_fixed", fixed_max, NULL, fixed_route_fn,
                                          NULL};

struct kd_mpi_moe {
    kd_mpi_comm *c;
    kd_moe_config cfg;
    size_t e0, e1;            /* this rank's experts [e0, e1) */
    float *gate;              /* E x d */
    kd_moe *engine;
    fixed_route route;
    const kd_router_vtable *router;
    kd_router_config router_state;
};

static size_t owner(size_t e, size_t E, size_t N)
{
    /* expert e lives on the rank r with E r / N <= e < E (r + 1) / N */
    size_t r = e * N / E;
    while (r + 1 < N && E * (r + 1) / N <= e) r++;
    while (r > 0 && E * r / N > e) r--;
    return r;
}

static kd_status check_cfg(kd_mpi_comm *c, const kd_moe_config *cfg, kd_moe *moe)
{
    if (!cfg || !moe) return kd__mpi_fail(c, KD_E_INVALID, "kd_mpi_moe_create: NULL layer or config");
    if (cfg->struct_size != sizeof *cfg) return kd__mpi_fail(c, KD_E_VERSION, "kd_mpi_moe_create: config struct_size");
    if (cfg->n_experts < (size_t)c->size)
        return kd__mpi_fail(c, KD_E_INVALID, "kd_mpi_moe_create: %zu experts for %d ranks (need one per rank)",
                            cfg->n_experts, c->size);
    if (cfg->gate != KD_MOE_GATE_LINEAR || cfg->n_shared || cfg->capacity_factor != 0.0f)
        return kd__mpi_fail(c, KD_E_UNSUPPORTED,
                            "kd_mpi_moe_create: expert parallelism supports the linear gate, no shared experts and "
                            "dropless routing (capacity_factor 0)");
    if (cfg->router.kind == KD_ROUTER_EXPERT_CHOICE || cfg->router.kind == KD_ROUTER_HASH)
        return kd__mpi_fail(c, KD_E_UNSUPPORTED,
                            "kd_mpi_moe_create: expert-choice and hash routing depend on the global token order");
    return KD_OK;
}

kd_status kd_mpi_moe_create(kd_mpi_comm *comm, kd_moe *moe, const kd_moe_config *cfg, kd_mpi_moe **out)
{
    if (!comm) return KD_E_INVALID;
    kd_mpi_comm *c = comm;
    c->reason[0] = '\0';
    if (out) *out = NULL;
    kd_status st = out ? check_cfg(c, cfg, moe) : kd__mpi_fail(c, KD_E_INVALID, "kd_mpi_moe_create: NULL out");
    if ((st = kd__mpi_agree(c, st)) != KD_OK) return st;
    uint64_t sig[7] = {cfg->d_model, cfg->d_ff, cfg->n_experts, cfg->top_k, (uint64_t)cfg->activation,
                       (uint64_t)cfg->router.kind, kd_crc32c(0, &cfg->router, sizeof cfg->router)};
    static const char *const names[7] = {"d_model", "d_ff", "n_experts", "top_k", "activation", "router kind",
                                         "the CRC-32C of the router config"};
    if ((st = kd__mpi_same(c, sig, names, 7, KD_E_INVALID, "kd_mpi_moe_create")) != KD_OK) return st;

    const size_t E = cfg->n_experts, N = (size_t)c->size, d = cfg->d_model;
    kd_mpi_moe *ep = (kd_mpi_moe *)kd__mpi_alloc(c, 1, sizeof *ep);
    float *gate = (float *)kd__mpi_alloc(c, E * d, sizeof *gate);
    st = ep && gate ? KD_OK : KD_E_NOMEM;
    if (st == KD_OK) {
        ep->c = c;
        ep->cfg = *cfg;
        ep->e0 = E * (size_t)c->rank / N;
        ep->e1 = E * ((size_t)c->rank + 1) / N;
        ep->gate = gate;
        ep->router_state = cfg->router;
        ep->router = kd_router_builtin(cfg->router.kind);
        if (!ep->router) st = kd__mpi_fail(c, KD_E_INVALID, "kd_mpi_moe_create: unknown router kind");
    }
    if (st == KD_OK) { /* the engine: this rank's experts only, one fixed assignment per row */
        kd_moe_config ec = *cfg;
        ec.n_experts = ep->e1 - ep->e0;
        ec.top_k = 1;
        kd_router_config_default(&ec.router);
        st = kd_moe_create(c->ctx, &ec, &ep->engine);
        if (st == KD_OK) st = kd_moe_set_router(ep->engine, &fixed_vt, &ep->route);
        if (st != KD_OK) kd__mpi_fail_ctx(c, st, "kd_mpi_moe_create: engine");
    }
    /* Copy the gate and this rank's slices of every expert tensor (names "experts.*",
     * shape (E, ...)); the engine's tensors have the same names with E_local rows. */
    for (size_t i = 0; st == KD_OK && i < kd_moe_tensor_count(moe); i++) {
        const char *name = NULL;
        float *data = NULL;
        size_t shape[KD_TENSOR_MAX_RANK];
        uint32_t rank = 0;
        if ((st = kd_moe_tensor(moe, i, &name, &data, NULL, shape, &rank)) != KD_OK) {
            kd__mpi_fail_ctx(c, st, "kd_mpi_moe_create: kd_moe_tensor");
            break;
        }
        size_t numel = 1;
        for (uint32_t j = 0; j < rank; j++) numel *= shape[j];
        if (strcmp(name, "gate.weight") == 0) {
            if (numel != E * d) st = kd__mpi_fail(c, KD_E_SHAPE, "kd_mpi_moe_create: gate.weight is not E x d");
            else memcpy(gate, data, numel * sizeof *gate);
            continue;
        }
        if (strncmp(name, "experts.", 8) != 0 || rank < 1 || shape[0] != E) continue;
        size_t per = numel / E;
        for (size_t k = 0; st == KD_OK && k < kd_moe_tensor_count(ep->engine); k++) {
            const char *en = NULL;
            float *ed = NULL;
            if (kd_moe_tensor(ep->engine, k, &en, &ed, NULL, NULL, NULL) == KD_OK && strcmp(en, name) == 0)
                memcpy(ed, data + ep->e0 * per, (ep->e1 - ep->e0) * per * sizeof *ed);
        }
    }
    if ((st = kd__mpi_agree(c, st)) != KD_OK) {
        if (ep) kd_moe_destroy(ep->engine);
        kd__mpi_free(c, gate);
        kd__mpi_free(c, ep);
        return st;
    }
    *out = ep;
    return KD_OK;
}

void kd_mpi_moe_destroy(kd_mpi_moe *ep)
{
    if (!ep) return;
    kd_moe_destroy(ep->engine);
    kd__mpi_free(ep->c, ep->gate);
    kd__mpi_free(ep->c, ep);
}

size_t kd_mpi_moe_local_experts(const kd_mpi_moe *ep) { return ep ? ep->e1 - ep->e0 : 0; }

kd_status kd_mpi_moe_forward(kd_mpi_moe *ep, const float *x, size_t n, float *y)
{
    if (!ep) return KD_E_INVALID;
    kd_mpi_comm *c = ep->c;
    c->reason[0] = '\0';
    const size_t E = ep->cfg.n_experts, d = ep->cfg.d_model, N = (size_t)c->size;
    kd_status st = KD_OK;
    if ((n > 0 && (!x || !y)) || (n > 0 && d > SIZE_MAX / n / sizeof(float)))
        st = kd__mpi_fail(c, KD_E_INVALID, "kd_mpi_moe_forward: NULL x or y, or n x d overflows");
    if ((st = kd__mpi_agree(c, st)) != KD_OK) return st;

    /* 1. gate and routing of this rank's tokens */
    size_t maxa = ep->router->max_assignments(&ep->router_state, n, E, ep->cfg.top_k, 0);
    size_t saved = ep->router->saved_size ? ep->router->saved_size(&ep->router_state, n, E) : 0;
    float *z = (float *)kd__mpi_alloc(c, n * E + saved, sizeof *z);
    kd_router_assign *a = (kd_router_assign *)kd__mpi_alloc(c, maxa, sizeof *a);
    int *cnt = (int *)kd__mpi_alloc(c, 4 * N, sizeof *cnt); /* send counts, send displs, recv counts, recv displs */
    size_t na = 0;
    st = z && a && cnt ? KD_OK : KD_E_NOMEM;
    if (st == KD_OK && n > 0) {
        st = kd_gemm(c->ctx, KD_NO_TRANS, KD_TRANS, n, E, d, 1.0f, x, d, ep->gate, d, 0.0f, z, E);
        if (st == KD_OK) {
            kd_rng rng;
            kd_rng_seed(&rng, 0, 0);
            kd_router_batch b = {c->ctx, z, n, E, ep->cfg.top_k, 0, 0, &rng, z + n * E};
            st = ep->router->route(&ep->router_state, &b, a, &na);
        }
        if (st != KD_OK) kd__mpi_fail_ctx(c, st, "kd_mpi_moe_forward: routing");
        for (size_t i = 0; st == KD_OK && i < na; i++)
            if (a[i].token >= n || a[i].expert >= E)
                st = kd__mpi_fail(c, KD_E_INTERNAL, "kd_mpi_moe_forward: router returned an invalid assignment");
    }
    if (st == KD_OK && na * d > (size_t)INT_MAX)
        st = kd__mpi_fail(c, KD_E_OVERFLOW, "kd_mpi_moe_forward: too many rows for MPI's int counts");
    /* 2. group assignments by owner rank (stable), count, exchange counts */
    size_t *order = NULL, *inv = NULL;
    float *sx = NULL, *rx = NULL, *ry = NULL;
    uint32_t *sid = NULL, *rid = NULL;
    if (st == KD_OK) {
        order = (size_t *)kd__mpi_alloc(c, na, sizeof *order);
        sx = (float *)kd__mpi_alloc(c, na * d, sizeof *sx);
        sid = (uint32_t *)kd__mpi_alloc(c, na, sizeof *sid);
        inv = (size_t *)kd__mpi_alloc(c, na, sizeof *inv);
        if (!order || !sx || !sid || !inv) st = KD_E_NOMEM;
    }
    if (st == KD_OK) {
        memset(cnt, 0, 4 * N * sizeof *cnt);
        for (size_t i = 0; i < na; i++) cnt[owner(a[i].expert, E, N)]++;
        for (size_t r = 1; r < N; r++) cnt[N + r] = cnt[N + r - 1] + cnt[r - 1];
        int *fill = cnt + 2 * N; /* temporary cursor, overwritten by the alltoall below */
        for (size_t r = 0; r < N; r++) fill[r] = cnt[N + r];
        for (size_t i = 0; i < na; i++) {
            size_t r = owner(a[i].expert, E, N), slot = (size_t)fill[r]++;
            order[slot] = i;
            memcpy(sx + slot * d, x + (size_t)a[i].token * d, d * sizeof *sx);
            sid[slot] = a[i].expert - (uint32_t)(E * r / N);
        }
    }
    if ((st = kd__mpi_agree(c, st)) != KD_OK) goto done;
    c->stats.control_calls++;
    int rc = MPI_Alltoall(cnt, 1, MPI_INT, cnt + 2 * N, 1, MPI_INT, c->comm);
    if ((st = kd__mpi_agree(c, kd__mpi_check(c, rc, "kd_mpi_moe_forward: MPI_Alltoall"))) != KD_OK) goto done;
    size_t nr = 0;
    for (size_t r = 0; r < N; r++) {
        cnt[3 * N + r] = (int)nr;
        nr += (size_t)cnt[2 * N + r];
    }
    rx = (float *)kd__mpi_alloc(c, nr * d, sizeof *rx);
    ry = (float *)kd__mpi_alloc(c, (nr > na ? nr : na) * d, sizeof *ry);
    rid = (uint32_t *)kd__mpi_alloc(c, nr, sizeof *rid);
    st = rx && ry && rid ? KD_OK : KD_E_NOMEM;
    if (st == KD_OK && nr * d > (size_t)INT_MAX)
        st = kd__mpi_fail(c, KD_E_OVERFLOW, "kd_mpi_moe_forward: too many rows received for MPI's int counts");
    if ((st = kd__mpi_agree(c, st)) != KD_OK) goto done;
    /* 3. dispatch: expert ids, then rows (d floats each; counts scaled by d) */
    int *sc = cnt, *sd = cnt + N, *rcn = cnt + 2 * N, *rd = cnt + 3 * N;
    rc = MPI_Alltoallv(sid, sc, sd, MPI_UINT32_T, rid, rcn, rd, MPI_UINT32_T, c->comm);
    MPI_Datatype row;
    if (rc == MPI_SUCCESS) rc = MPI_Type_contiguous((int)d, MPI_FLOAT, &row);
    if (rc == MPI_SUCCESS) {
        MPI_Type_commit(&row);
        c->stats.gather_bytes += na * d * sizeof(float);
        rc = MPI_Alltoallv(sx, sc, sd, row, rx, rcn, rd, row, c->comm);
        /* 4. the owner runs its experts on every received row */
        kd_status es = KD_OK;
        if (rc == MPI_SUCCESS && nr > 0) {
            ep->route.ids = rid;
            es = kd_moe_forward(ep->engine, KD_MODE_INFER, rx, nr, ry);
            if (es != KD_OK) kd__mpi_fail_ctx(c, es, "kd_mpi_moe_forward: experts");
        }
        if (rc == MPI_SUCCESS) es = kd__mpi_agree(c, es);
        /* 5. return: outputs travel back along the same counts, in the same order */
        if (rc == MPI_SUCCESS && es == KD_OK) {
            c->stats.gather_bytes += nr * d * sizeof(float);
            rc = MPI_Alltoallv(ry, rcn, rd, row, sx, sc, sd, row, c->comm);
        }
        MPI_Type_free(&row);
        if (es != KD_OK) {
            st = es;
            goto done;
        }
    }
    if ((st = kd__mpi_agree(c, kd__mpi_check(c, rc, "kd_mpi_moe_forward: MPI_Alltoallv"))) != KD_OK) goto done;
    /* 6. combine: y_t = sum over t's assignments of w * FFN_e(x_t), in assignment order */
    if (n > 0) memset(y, 0, n * d * sizeof *y);
    for (size_t sl = 0; sl < na; sl++) inv[order[sl]] = sl; /* assignment i sits at slot inv[i] */
    for (size_t i = 0; i < na; i++) {
        float w = a[i].weight, *yt = y + (size_t)a[i].token * d;
        const float *f = sx + inv[i] * d;
        for (size_t j = 0; j < d; j++) yt[j] += w * f[j];
    }
done:
    kd__mpi_free(c, inv);
    kd__mpi_free(c, rid);
    kd__mpi_free(c, ry);
    kd__mpi_free(c, rx);
    kd__mpi_free(c, sid);
    kd__mpi_free(c, sx);
    kd__mpi_free(c, order);
    kd__mpi_free(c, cnt);
    kd__mpi_free(c, a);
    kd__mpi_free(c, z);
    return st;
}
