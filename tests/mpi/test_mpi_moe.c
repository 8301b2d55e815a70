/* test_mpi_moe.c - expert-parallel MoE inference equals the single-process layer. */
#include <math.h>
#include <stdlib.h>

#include "mpi_test.h"

static void check_case(kd_mpi_comm *comm, kd_moe_activation act, kd_router_kind router, size_t E, size_t k)
{
    kd_context_config cc;
    kd_context_config_default(&cc);
    cc.seed = 77; /* the same layer on every rank */
    kd_context *ctx = NULL;
    kd_context_create(&cc, &ctx);
    kd_moe_config mc;
    kd_moe_config_default(&mc);
    mc.d_model = 12;
    mc.d_ff = 20;
    mc.n_experts = E;
    mc.top_k = k;
    mc.activation = act;
    mc.router.kind = router;
    kd_moe *moe = NULL;
    MT_CHECK(kd_moe_create(ctx, &mc, &moe) == KD_OK, "%s", kd_context_last_error(ctx));
    kd_mpi_moe *ep = NULL;
    kd_status st = kd_mpi_moe_create(comm, moe, &mc, &ep);
    MT_CHECK(st == KD_OK, "create: %s", kd_mpi_comm_last_error(comm));
    size_t mine = E * (size_t)(mt_rank + 1) / (size_t)mt_size - E * (size_t)mt_rank / (size_t)mt_size;
    MT_CHECK(kd_mpi_moe_local_experts(ep) == mine, "local experts %zu, expected %zu", kd_mpi_moe_local_experts(ep),
             mine);
    /* Rank r has 7 r + 3 tokens (rank-dependent counts, so traffic is uneven). */
    size_t n = 7 * (size_t)mt_rank + 3, d = mc.d_model;
    float *x = malloc(n * d * sizeof *x), *y = malloc(n * d * sizeof *y), *ref = malloc(n * d * sizeof *ref);
    kd_rng rng;
    kd_rng_seed(&rng, 3, (uint64_t)mt_rank);
    for (size_t i = 0; i < n * d; i++) x[i] = kd_rng_normal(&rng);
    MT_CHECK(kd_moe_forward(moe, KD_MODE_INFER, x, n, ref) == KD_OK, "reference: %s", kd_context_last_error(ctx));
    st = kd_mpi_moe_forward(ep, x, n, y);
    MT_CHECK(st == KD_OK, "forward: %s", kd_mpi_comm_last_error(comm));
    float worst = 0.0f, scale = 0.0f;
    for (size_t i = 0; i < n * d; i++) {
        worst = fmaxf(worst, fabsf(y[i] - ref[i]));
        scale = fmaxf(scale, fabsf(ref[i]));
    }
    MT_CHECK(worst <= 1e-5f * fmaxf(1.0f, scale) && scale > 0.01f, "act %d router %d E %zu k %zu: max |diff| %g (scale %g)",
             (int)act, (int)router, E, k, (double)worst, (double)scale);
    /* The layer may go: the expert-parallel copy holds what it needs. Rank 0 sends no tokens. */
    kd_moe_destroy(moe);
    st = kd_mpi_moe_forward(ep, x, mt_rank == 0 ? 0 : n, y);
    MT_CHECK(st == KD_OK, "forward after destroy: %s", kd_mpi_comm_last_error(comm));
    if (mt_rank != 0) {
        worst = 0.0f;
        for (size_t i = 0; i < n * d; i++) worst = fmaxf(worst, fabsf(y[i] - ref[i]));
        MT_CHECK(worst <= 1e-5f * fmaxf(1.0f, scale), "second call: %g", (double)worst);
    }
    kd_mpi_moe_destroy(ep);
    free(x);
    free(y);
    free(ref);
    kd_context_destroy(ctx);
}

int main(int argc, char **argv)
{
    mt_init(&argc, &argv);
    kd_context *ctx = NULL;
    kd_context_create(NULL, &ctx);
    kd_mpi_comm *comm = NULL;
    MPI_Comm world = MPI_COMM_WORLD;
    MT_CHECK(kd_mpi_comm_create(ctx, &world, &comm) == KD_OK, "create");

    check_case(comm, KD_MOE_RELU, KD_ROUTER_TOPK, 8, 2);
    check_case(comm, KD_MOE_GELU, KD_ROUTER_TOPK_RAW, 5, 3); /* E not a multiple of the ranks */
    check_case(comm, KD_MOE_SWIGLU, KD_ROUTER_THRESHOLD, 6, 2);
    check_case(comm, KD_MOE_RELU, KD_ROUTER_TOPK_SELECT, 4, 4); /* every expert: the dense FFN */

    /* Unsupported settings and disagreement fail on every rank. */
    kd_moe_config mc;
    kd_moe_config_default(&mc);
    mc.d_model = 8;
    mc.d_ff = 8;
    mc.n_experts = 4;
    kd_moe *moe = NULL;
    MT_CHECK(kd_moe_create(ctx, &mc, &moe) == KD_OK, "layer");
    kd_mpi_moe *ep = NULL;
    kd_moe_config bad = mc;
    bad.capacity_factor = 1.0f;
    MT_CHECK(kd_mpi_moe_create(comm, moe, &bad, &ep) == KD_E_UNSUPPORTED && !ep, "capacity");
    bad = mc;
    bad.router.kind = KD_ROUTER_EXPERT_CHOICE;
    MT_CHECK(kd_mpi_moe_create(comm, moe, &bad, &ep) == KD_E_UNSUPPORTED, "expert choice");
    bad = mc;
    bad.n_experts = 1;
    MT_CHECK(kd_mpi_moe_create(comm, moe, &bad, &ep) == KD_E_INVALID, "fewer experts than ranks");
    bad = mc;
    if (mt_rank == mt_size - 1) bad.top_k = 1;
    kd_status st = kd_mpi_moe_create(comm, moe, &bad, &ep);
    MT_CHECK(st == KD_E_INVALID && strstr(kd_mpi_comm_last_error(comm), "top_k is 1"), "status %d: %s", (int)st,
             kd_mpi_comm_last_error(comm));
    MT_CHECK(kd_mpi_moe_create(comm, mt_rank == 0 ? NULL : moe, &mc, &ep) == KD_E_INVALID, "NULL layer on rank 0");
    MT_CHECK(kd_mpi_moe_create(NULL, moe, &mc, &ep) == KD_E_INVALID, "NULL comm");
    MT_CHECK(kd_mpi_moe_forward(NULL, NULL, 0, NULL) == KD_E_INVALID, "NULL handle");
    MT_CHECK(kd_mpi_moe_create(comm, moe, &mc, &ep) == KD_OK, "%s", kd_mpi_comm_last_error(comm));
    st = kd_mpi_moe_forward(ep, NULL, mt_rank == 1 ? 3 : 0, NULL);
    MT_CHECK(st == KD_E_INVALID && strstr(kd_mpi_comm_last_error(comm), "rank 1: "), "status %d: %s", (int)st,
             kd_mpi_comm_last_error(comm));
    kd_mpi_moe_destroy(ep);
    kd_mpi_moe_destroy(NULL);
    kd_moe_destroy(moe);
    kd_mpi_comm_destroy(comm);
    kd_context_destroy(ctx);
    return mt_finish("test_mpi_moe");
}
