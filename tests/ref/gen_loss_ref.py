#!/usr/bin/python3
"""Writes tests/ref/loss_ref.h: PyTorch values and gradients for libkd's losses.

Run with Debian's interpreter (torch 1.13, numpy):
    /usr/bin/python3 tests/ref/gen_loss_ref.py > tests/ref/loss_ref.h
Inputs are drawn with a fixed seed, rounded to float32 (what the C tests
pass), and every loss is evaluated in float64 with autograd. The formulas
follow the definitions in include/kd/kd_loss.h; -inf entries are masks and
are kept out of every product so autograd never meets 0 * inf.
"""
import math
import numpy as np
import torch

torch.set_default_dtype(torch.float64)
rs = np.random.RandomState(1234)
NEG = -math.inf

LOSS_IDS = ["CE", "HINTON", "RKL", "JSD", "SKL", "SRKL", "TAID", "DKD", "FMSE", "FCOS",
            "RKD_D", "RKD_A", "MARGIN", "LISTWISE"]


def f32(a):
    return np.asarray(a, dtype=np.float32)


def lsm(x, T):
    return torch.log_softmax(x / T, dim=-1)


def safe(lx, m):
    return torch.where(m, lx, torch.zeros_like(lx))


def kl_row(lp, lq):
    """KL(P || Q) of one row from log-probabilities (P's zeros skipped)."""
    m = torch.isfinite(lp)
    return (safe(lp, m).exp() * (safe(lp, m) - safe(lq, m)) * m).sum()


def ce_row(s, y, eps):
    lq = lsm(s, 1.0)
    m = torch.isfinite(s)
    k = int(m.sum())
    return -(1 - eps) * lq[y] - eps / k * safe(lq, m).sum()


def div_row(kind, s, t, T, c):
    lq, lp = lsm(s, T), lsm(t, T)
    q, p = lq.exp(), lp.exp()
    mq, mp = torch.isfinite(lq) & (q > 0), torch.isfinite(lp) & (p > 0)
    if kind == "RKL":
        return kl_row(lq, lp)
    if kind == "JSD":
        M = c * p + (1 - c) * q
        lm = torch.log(torch.where(M > 0, M, torch.ones_like(M)))
        return (c * (safe(p, mp) * (safe(lp, mp) - lm) * mp).sum()
                + (1 - c) * (safe(q, mq) * (safe(lq, mq) - lm) * mq).sum())
    if kind == "SKL":
        M = c * p + (1 - c) * q
        lm = torch.log(torch.where(M > 0, M, torch.ones_like(M)))
        return (safe(p, mp) * (safe(lp, mp) - lm) * mp).sum()
    if kind == "SRKL":
        M = (1 - c) * p + c * q
        lm = torch.log(torch.where(M > 0, M, torch.ones_like(M)))
        return (safe(q, mq) * (safe(lq, mq) - lm) * mq).sum()
    raise ValueError(kind)


def taid_row(s, z, T, t, mix):
    lq = lsm(s, T)
    if mix == 0:
        pt = (1 - t) * lq.detach().exp() + t * lsm(z, T).exp()
    else:
        fin = torch.isfinite(s) & torch.isfinite(z)
        mixed = torch.where(fin, (1 - t) * safe(s.detach(), fin) + t * safe(z, fin),
                            torch.full_like(s, NEG))
        pt = lsm(mixed, T).exp()
    m = pt > 0
    lpt = torch.log(torch.where(m, pt, torch.ones_like(pt)))
    return (pt * (lpt - safe(lq, m)) * m).sum()


def dkd_row(s, t, g, T, a, b):
    lq, lp = lsm(s, T), lsm(t, T)
    C = s.shape[0]
    tckd = lp[g].exp() * (lp[g] - lq[g])
    if C == 1:
        return a * tckd
    nt = torch.arange(C) != g
    lq1 = torch.logsumexp(s[nt] / T, 0) - torch.logsumexp(s / T, 0)
    lp1 = torch.logsumexp(t[nt] / T, 0) - torch.logsumexp(t / T, 0)
    tckd = tckd + lp1.exp() * (lp1 - lq1)
    nckd = kl_row(lsm(t[nt], T), lsm(s[nt], T))
    return a * tckd + b * nckd


def reduce(terms, rows_on, w):
    num = sum(w[i] * terms[i] for i in range(len(terms)) if rows_on[i])
    den = sum(w[i] for i in range(len(terms)) if rows_on[i])
    return num / den


def huber(x, d):
    a = x.abs()
    return torch.where(a < d, 0.5 * x * x / d, a - 0.5 * d)


def rkd_dist(S, Tf, delta):
    n = S.shape[0]
    def dm(X):
        rows = []
        for i in range(n):
            rows.append(torch.stack([torch.zeros(()) if i == j else (X[i] - X[j]).norm()
                                     for j in range(n)]))
        return torch.stack(rows)
    ds, dt = dm(S), dm(Tf)
    mus, mut = ds.sum() / (n * (n - 1)), dt.sum() / (n * (n - 1))
    return huber(ds / mus - dt / mut, delta).sum() / (n * n)


def rkd_angle(S, Tf, delta):
    n = S.shape[0]
    total = 0
    for a in range(n):
        def E(X):
            return torch.stack([torch.zeros(X.shape[1]) if j == a else
                                (X[j] - X[a]) / (X[j] - X[a]).norm() for j in range(n)])
        es, et = E(S), E(Tf)
        total = total + huber(es @ es.T - et @ et.T, delta).sum()
    return total / n ** 3


cases = []


def add(name, loss, s, t, params=(1.0, 0.0, 0.0), flag=0, labels=None, weights=None,
        proj=None, rows_fn=None):
    s = f32(s)
    t = f32(t)
    cases.append(dict(name=name, loss=loss, s=s, t=t, params=params, flag=flag,
                      labels=labels, weights=None if weights is None else f32(weights),
                      proj=None if proj is None else (f32(proj[0]), f32(proj[1]))))


def evaluate(c):
    S = torch.tensor(c["s"].astype(np.float64), requires_grad=True)
    Tt = torch.tensor(c["t"].astype(np.float64))
    B = S.shape[0]
    labels = c["labels"]
    w = [1.0] * B if c["weights"] is None else [float(x) for x in c["weights"]]
    on = [True] * B if labels is None else [y != -100 for y in labels]
    T, p1, p2 = c["params"]
    loss = c["loss"]
    W = bvec = None
    if loss in ("FMSE", "FCOS") and c["proj"] is not None:
        W = torch.tensor(c["proj"][0].astype(np.float64), requires_grad=True)
        bvec = torch.tensor(c["proj"][1].astype(np.float64), requires_grad=True)
    if loss in ("RKD_D", "RKD_A"):
        idx = [i for i in range(B) if on[i]]
        Ss, Ts = S[idx], Tt[idx]
        val = rkd_dist(Ss, Ts, p1) if loss == "RKD_D" else rkd_angle(Ss, Ts, p1)
    else:
        terms = []
        for i in range(B):
            if not on[i]:
                terms.append(None)
                continue
            s, t = S[i], Tt[i]
            y = None if labels is None else labels[i]
            if loss == "CE":
                l = ce_row(s, y, p1)
            elif loss == "HINTON":
                l = p1 * T * T * kl_row(lsm(t, T), lsm(s, T))
                if p1 < 1:
                    l = l + (1 - p1) * ce_row(s, y, p2)
            elif loss in ("RKL", "JSD", "SKL", "SRKL"):
                l = T * T * div_row(loss, s, t, T, p1)
            elif loss == "TAID":
                l = T * T * taid_row(s, t, T, p1, c["flag"])
            elif loss == "DKD":
                l = T * T * dkd_row(s, t, y, T, p1, p2)
            elif loss in ("FMSE", "FCOS"):
                r = s if W is None else W @ s + bvec
                if loss == "FMSE":
                    l = ((r - t) ** 2).mean()
                else:
                    w12, w1, w2 = (r * t).sum(), (r * r).sum(), (t * t).sum()
                    l = 1 - w12 / torch.sqrt(torch.clamp(w1 * w2, min=1e-16))
            elif loss == "MARGIN":
                pos = 0 if y is None else y
                js = [j for j in range(s.shape[0]) if j != pos and math.isfinite(float(t[j]))]
                l = sum(((s[pos] - s[j]) - (t[pos] - t[j])) ** 2 for j in js) / len(js)
            elif loss == "LISTWISE":
                l = T * T * kl_row(lsm(t, T), lsm(s, T))
            terms.append(l)
        val = reduce(terms, on, w)
    val.backward()
    out = dict(value=float(val), grad=S.grad.numpy().copy())
    if W is not None:
        out["gw"], out["gb"] = W.grad.numpy().copy(), bvec.grad.numpy().copy()
    return out


def logits(B, C, scale=2.0):
    return rs.randn(B, C) * scale


# ---- cases -------------------------------------------------------------------
B, C = 4, 6
LAB = [1, 0, -100, 5]
WTS = [1.0, 0.5, 2.0, 1.5]
ext_s = f32([[1e4, -1e4, 0, 5e3, -5e3, 1], [-1e4, 1e4, 2, 3, -1e4, 0],
             [0.5, -0.5, 1e4, 1e4, -2, 3], [1e4, 9999, -1e4, 0, 1, 2]])
ext_t = f32([[9e3, -1e4, 1, 5e3, -4e3, 0], [-1e4, 1e4, -1e4, 1e4, 0, 1],
             [1, 0, 1e4, -1e4, -1, 2], [1e4, -1e4, 1e4, 0, 2, 1]])
mask_s = logits(B, C)
mask_t = logits(B, C)
for (i, j) in [(0, 2), (1, 0), (1, 4), (3, 3), (2, 5)]:
    mask_s[i, j] = NEG
    mask_t[i, j] = NEG
tonly_t = mask_t.copy()
tonly_t[0, 4] = NEG
tonly_t[3, 0] = NEG
sonly_s = mask_s.copy()
sonly_s[0, 1] = NEG
sonly_s[2, 0] = NEG
one_s, one_t = logits(3, 1), logits(3, 1)
lab_ok = [1, 2, 3, 4]          # labels on unmasked classes for the masked case
lab_ok_tonly = [1, 2, 0, 5]    # ... and not on teacher-only masked classes for DKD/CE

for T in (0.5, 1.0, 4.0, 20.0):
    s, t = logits(B, C), logits(B, C)
    add("hinton_T%g" % T, "HINTON", s, t, (T, 0.7, 0.0), labels=LAB, weights=WTS)
    add("kd_only_T%g" % T, "HINTON", s, t, (T, 1.0, 0.0))
    add("rkl_T%g" % T, "RKL", s, t, (T, 0.0, 0.0), labels=LAB)
    add("jsd_T%g" % T, "JSD", s, t, (T, 0.3, 0.0), weights=WTS)
    add("skl_T%g" % T, "SKL", s, t, (T, 0.1, 0.0))
    add("srkl_T%g" % T, "SRKL", s, t, (T, 0.2, 0.0))
    add("dkd_T%g" % T, "DKD", s, t, (T, 1.0, 8.0), labels=LAB)
    add("taid_probs_T%g" % T, "TAID", s, t, (T, 0.4, 0.0), flag=0)
    add("taid_logits_T%g" % T, "TAID", s, t, (T, 0.7, 0.0), flag=1, weights=WTS)
    add("listwise_T%g" % T, "LISTWISE", s, t, (T, 0, 0))
    add("hinton_ext_T%g" % T, "HINTON", ext_s, ext_t, (T, 0.5, 0.1), labels=[0, 1, 2, 3])
    add("rkl_ext_T%g" % T, "RKL", ext_s, ext_t, (T, 0, 0))
    add("jsd_ext_T%g" % T, "JSD", ext_s, ext_t, (T, 0.5, 0))
    add("skl_ext_T%g" % T, "SKL", ext_s, ext_t, (T, 0.1, 0))
    add("srkl_ext_T%g" % T, "SRKL", ext_s, ext_t, (T, 0.1, 0))
    add("dkd_ext_T%g" % T, "DKD", ext_s, ext_t, (T, 1.0, 8.0), labels=[0, 1, 2, 3])
    add("taid_ext_T%g" % T, "TAID", ext_s, ext_t, (T, 0.5, 0), flag=0)

for T in (1.0, 4.0):
    add("ce_mask", "CE", mask_s, mask_t, (1, 0.1, 0), labels=lab_ok)
    add("hinton_mask_T%g" % T, "HINTON", mask_s, mask_t, (T, 0.6, 0.2), labels=lab_ok, weights=WTS)
    add("hinton_tonly_T%g" % T, "HINTON", mask_s, tonly_t, (T, 1.0, 0))
    add("rkl_mask_T%g" % T, "RKL", mask_s, mask_t, (T, 0, 0))
    add("rkl_sonly_T%g" % T, "RKL", sonly_s, mask_t, (T, 0, 0))
    add("jsd_mask_T%g" % T, "JSD", sonly_s, tonly_t, (T, 0.5, 0))
    add("skl_tonly_T%g" % T, "SKL", mask_s, tonly_t, (T, 0.1, 0))
    add("srkl_sonly_T%g" % T, "SRKL", sonly_s, mask_t, (T, 0.1, 0))
    add("dkd_mask_T%g" % T, "DKD", mask_s, tonly_t, (T, 2.0, 4.0), labels=lab_ok_tonly)
    add("taid_mask_T%g" % T, "TAID", mask_s, tonly_t, (T, 0.6, 0), flag=0)
    add("taid_mask_logits_T%g" % T, "TAID", mask_s, tonly_t, (T, 0.6, 0), flag=1)
    add("listwise_mask_T%g" % T, "LISTWISE", mask_s, tonly_t, (T, 0, 0))

add("ce_plain", "CE", logits(B, C), logits(B, C), (1, 0.0, 0), labels=LAB, weights=WTS)
add("ce_smooth", "CE", logits(B, C), logits(B, C), (1, 0.2, 0), labels=[2, 3, 4, 0])
add("ce_ext", "CE", ext_s, ext_t, (1, 0.1, 0), labels=[1, 0, 2, 3])
for name, loss, prm, lab in [("ce", "CE", (1, 0.1, 0), [0, 0, 0]),
                             ("hinton", "HINTON", (4, 0.5, 0.1), [0, 0, 0]),
                             ("rkl", "RKL", (2, 0, 0), None), ("jsd", "JSD", (2, 0.5, 0), None),
                             ("skl", "SKL", (2, 0.1, 0), None), ("srkl", "SRKL", (2, 0.1, 0), None),
                             ("taid", "TAID", (2, 0.5, 0), None), ("dkd", "DKD", (4, 1, 8), [0, 0, 0]),
                             ("listwise", "LISTWISE", (1, 0, 0), None)]:
    add(name + "_single", loss, one_s, one_t, prm, labels=lab)

# Features: B x Ds student, B x Dt teacher.
Ds, Dt = 5, 3
fs, ft = rs.randn(B + 1, Ds), rs.randn(B + 1, Dt)
W, bb = rs.uniform(-0.5, 0.5, (Dt, Ds)), rs.uniform(-0.2, 0.2, Dt)
add("fmse_proj", "FMSE", fs, ft, flag=1, proj=(W, bb), labels=[0, 1, -100, 0, 1], weights=[1, 2, 1, 0.5, 1])
add("fcos_proj", "FCOS", fs, ft, flag=1, proj=(W, bb))
fs3 = rs.randn(B, Dt)
add("fmse_id", "FMSE", fs3, ft[:B], flag=0)
add("fcos_id", "FCOS", fs3, ft[:B], flag=0, weights=WTS)
R1, R2 = rs.randn(6, 4), rs.randn(6, 7)
add("rkd_dist", "RKD_D", R1, R2, (1, 1.0, 0))
add("rkd_dist_delta", "RKD_D", R1 * 3, R2, (1, 0.25, 0), labels=[0, -100, 1, 1, 0, 2])
add("rkd_angle", "RKD_A", R1, R2, (1, 1.0, 0))
add("rkd_angle_delta", "RKD_A", R1, R2 * 0.1, (1, 0.05, 0), labels=[0, 1, 1, -100, 0, 2])

# Ranking: B queries x N candidates; in-batch layout (G = 2 per query, B = 3).
ms, mt = rs.randn(5, 2) * 3, rs.randn(5, 2) * 3
add("margin_pair", "MARGIN", ms, mt)
ib_s, ib_t = rs.randn(3, 6) * 2, rs.randn(3, 6) * 2
ib_t2 = ib_t.copy()
ib_t2[0, 3] = NEG
ib_t2[2, 1] = NEG
add("margin_inbatch", "MARGIN", ib_s, ib_t2, labels=[0, 2, 4], weights=[1, 2, 0.5])
add("listwise_inbatch_T2", "LISTWISE", ib_s, ib_t2, (2, 0, 0), labels=[0, 2, -100])


def carr(name, a, ctype="float"):
    a = np.asarray(a).reshape(-1)
    if ctype == "float":
        body = ", ".join(("-INFINITY" if np.isneginf(x) else "%.9g" % x) for x in a)
        body = body.replace("-INFINITY", "-INFINITY")
    else:
        body = ", ".join("%d" % x for x in a)
    return "static const %s %s[] = {%s};\n" % (ctype, name, body)


out = []
out.append("/* loss_ref.h - generated by tests/ref/gen_loss_ref.py with PyTorch %s; do not edit. */\n"
           % torch.__version__)
out.append("#include <math.h>\n#include <stddef.h>\n#include <stdint.h>\n\n")
out.append("enum { " + ", ".join("REF_%s = %d" % (n, i) for i, n in enumerate(LOSS_IDS)) + " };\n\n")
out.append("""typedef struct loss_ref_case {
    const char *name;
    int loss;                 /* REF_* */
    size_t rows, cols;        /* student array: rows x cols (classes, Ds or N) */
    size_t tcols;             /* teacher columns (Dt for features, else cols) */
    double temperature, p1, p2;
    int flag;                 /* TAID: mix; features: projection */
    const float *s, *t;
    const int32_t *labels;    /* or NULL (ignore index -100) */
    const float *weights;     /* or NULL */
    const float *proj_w, *proj_b;
    double value;
    const float *grad;        /* d value / d s */
    const float *grad_w, *grad_b;
} loss_ref_case;

""")
rows = []
for k, c in enumerate(cases):
    r = evaluate(c)
    p = "c%d_" % k
    out.append(carr(p + "s", c["s"]) + carr(p + "t", c["t"]) + carr(p + "g", r["grad"]))
    lab = wts = pw = pb = gw = gb = "NULL"
    if c["labels"] is not None:
        out.append(carr(p + "y", c["labels"], "int32_t"))
        lab = p + "y"
    if c["weights"] is not None:
        out.append(carr(p + "w", c["weights"]))
        wts = p + "w"
    if c["proj"] is not None:
        out.append(carr(p + "pw", c["proj"][0]) + carr(p + "pb", c["proj"][1]))
        out.append(carr(p + "gw", r["gw"]) + carr(p + "gb", r["gb"]))
        pw, pb, gw, gb = p + "pw", p + "pb", p + "gw", p + "gb"
    T, p1, p2 = c["params"]
    rows.append('    {"%s", REF_%s, %d, %d, %d, %.17g, %.17g, %.17g, %d, %ss, %st, %s, %s, %s, %s, %.17g, %sg, %s, %s},\n'
                % (c["name"], c["loss"], c["s"].shape[0], c["s"].shape[1], c["t"].shape[1], T, p1, p2,
                   c["flag"], p, p, lab, wts, pw, pb, r["value"], p, gw, gb))
out.append("\nstatic const loss_ref_case loss_ref_cases[] = {\n" + "".join(rows) + "};\n")
out.append("#define LOSS_REF_COUNT (sizeof loss_ref_cases / sizeof loss_ref_cases[0])\n")
print("".join(out), end="")
