#!/usr/bin/python3
"""Generates tests/ref/nn_ref.h: PyTorch forward/backward values for every
libkd nn layer, and optimizer / clipping trajectories.

Run with Debian's interpreter (torch 1.13, numpy):
    /usr/bin/python3 tests/ref/gen_nn_ref.py > tests/ref/nn_ref.h
Each case pairs a libkd spec with the equivalent torch module; tensors are
written under their state_dict names, which libkd's names must match.
"""
import math
import sys

import torch
import torch.nn as nn

torch.manual_seed(1234)
torch.set_num_threads(1)
torch.set_default_dtype(torch.float32)

out = []


def cf(v):
    """A C float literal that reads back as the same float32."""
    if not math.isfinite(v):
        return "NAN" if v != v else ("INFINITY" if v > 0 else "-INFINITY")
    t = "%.9g" % v
    if "." not in t and "e" not in t:
        t += ".0"
    return t + "f"


def arr(name, t, ctype="float"):
    vals = t.detach().reshape(-1).tolist() if hasattr(t, "detach") else list(t)
    if ctype == "float":
        body = ", ".join(cf(v) for v in vals)
    else:
        body = ", ".join("%d" % v for v in vals)
    if not vals:
        body = "0"
    out.append("static const %s %s[] = {%s};" % (ctype, name, body))
    return len(vals)


class Residual(nn.Module):
    def __init__(self, *body):
        super().__init__()
        self.body = nn.Sequential(*body)

    def forward(self, x):
        return x + self.body(x)


cases = []


def randomize(model):
    # Non-trivial norm weights and running statistics.
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, (nn.LayerNorm, nn.BatchNorm1d, nn.BatchNorm2d)):
                mod.weight.copy_(torch.rand_like(mod.weight) + 0.5)
                mod.bias.copy_(torch.randn_like(mod.bias) * 0.1)
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn_like(b) * 0.2)
            elif name.endswith("running_var"):
                b.copy_(torch.rand_like(b) + 0.5)


def case(tag, spec, model, batch, in_shape=None, train=True, ids=None, offsets=None,
         xscale=1.0):
    idx = len(cases)
    p = "c%d_" % idx
    randomize(model)
    model.train(train)
    params0 = {k: v.clone() for k, v in model.state_dict().items()}
    if ids is None:
        x = (torch.rand((batch,) + tuple(in_shape)) * 2 - 1) * xscale
        x.requires_grad_(True)
        if train:
            y = model(x)
        else:
            y = model(x)
    else:
        if offsets is None:
            y = model(torch.tensor(ids).reshape(batch, -1))
        else:
            y = model(torch.tensor(ids, dtype=torch.long), torch.tensor(offsets[:-1], dtype=torch.long))
    dy = torch.rand_like(y) * 2 - 1
    y.backward(dy)
    names = list(params0.keys())
    for i, k in enumerate(names):
        arr(p + "t%d" % i, params0[k])
    after = model.state_dict()
    grads = dict(model.named_parameters())
    for i, k in enumerate(names):
        if k in grads:
            arr(p + "g%d" % i, grads[k].grad)
        else:
            arr(p + "a%d" % i, after[k])  # buffer after forward
    if ids is None:
        nx = arr(p + "x", x)
        arr(p + "dx", x.grad)
    else:
        nx = arr(p + "ids", ids, "int32_t")
        if offsets is not None:
            arr(p + "off", offsets, "int32_t")
    ny = arr(p + "y", y)
    arr(p + "dy", dy)
    tens = []
    for i, k in enumerate(names):
        is_param = k in grads
        tens.append('{"%s", %s, %s, %d, %d}' % (
            k, p + "t%d" % i, p + ("g%d" % i if is_param else "a%d" % i),
            params0[k].numel(), 1 if is_param else 0))
    out.append("static const ref_tensor %stens[] = {%s};" % (p, ", ".join(tens) if tens else '{"", 0, 0, 0, 0}'))
    cases.append('{"%s", "%s", %d, %d, %s, %s, %s, %s, %d, %s, %s, %d, %s, %d}' % (
        tag, spec, batch, 1 if train else 0,
        p + "x" if ids is None else "NULL",
        p + "dx" if ids is None else "NULL",
        p + "ids" if ids is not None else "NULL",
        p + "off" if offsets is not None else "NULL",
        nx, p + "y", p + "dy", ny, p + "tens", len(names)))


def gelu_tanh():
    return nn.GELU(approximate="tanh")


case("linear", "input 5; linear 4", nn.Sequential(nn.Linear(5, 4)), 3, (5,))
case("linear_3d_nobias", "input 3x5; linear 4 nobias", nn.Sequential(nn.Linear(5, 4, bias=False)), 2, (3, 5))
case("conv_pad1", "input 2x6x5; conv 3 3 stride 1 pad 1", nn.Sequential(nn.Conv2d(2, 3, 3, 1, 1)), 2, (2, 6, 5))
case("conv_stride2", "input 2x7x7; conv 4 3 stride 2 pad 0 nobias", nn.Sequential(nn.Conv2d(2, 4, 3, 2, 0, bias=False)), 2, (2, 7, 7))
case("maxpool2", "input 2x6x6; maxpool 2", nn.Sequential(nn.MaxPool2d(2)), 2, (2, 6, 6))
case("maxpool3s2", "input 2x7x7; maxpool 3 stride 2", nn.Sequential(nn.MaxPool2d(3, 2)), 2, (2, 7, 7))
case("avgpool2", "input 2x6x6; avgpool 2", nn.Sequential(nn.AvgPool2d(2)), 2, (2, 6, 6))
case("avgpool3s2", "input 2x7x7; avgpool 3 stride 2", nn.Sequential(nn.AvgPool2d(3, 2)), 2, (2, 7, 7))
case("flatten", "input 2x3x3; flatten; linear 4", nn.Sequential(nn.Flatten(), nn.Linear(18, 4)), 3, (2, 3, 3))
case("relu", "input 10; relu", nn.Sequential(nn.ReLU()), 3, (10,), xscale=3)
case("gelu", "input 10; gelu", nn.Sequential(nn.GELU()), 3, (10,), xscale=3)
case("gelu_tanh", "input 10; gelu tanh", nn.Sequential(gelu_tanh()), 3, (10,), xscale=3)
case("silu", "input 10; silu", nn.Sequential(nn.SiLU()), 3, (10,), xscale=3)
case("tanh", "input 10; tanh", nn.Sequential(nn.Tanh()), 3, (10,), xscale=3)
case("sigmoid", "input 10; sigmoid", nn.Sequential(nn.Sigmoid()), 3, (10,), xscale=3)
case("layernorm", "input 3x8; layernorm eps 1e-5", nn.Sequential(nn.LayerNorm(8)), 2, (3, 8))
case("batchnorm1d_train", "input 4; batchnorm eps 1e-5 momentum 0.1", nn.Sequential(nn.BatchNorm1d(4)), 5, (4,))
case("batchnorm2d_train", "input 3x4x4; batchnorm eps 1e-5 momentum 0.1", nn.Sequential(nn.BatchNorm2d(3)), 2, (3, 4, 4))
case("batchnorm2d_infer", "input 3x4x4; batchnorm eps 1e-5 momentum 0.1", nn.Sequential(nn.BatchNorm2d(3)), 2, (3, 4, 4), train=False)
case("linear_bn_relu", "input 6; linear 5; batchnorm eps 1e-5 momentum 0.1; relu; linear 3",
     nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3)), 4, (6,))
case("embedding", "input ids 4; embedding 10 3", nn.Sequential(nn.Embedding(10, 3)), 2,
     ids=[1, 2, 3, 1, 9, 0, 2, 2])
class _BagModel(nn.Module):
    """nn.Sequential cannot pass offsets along: names mimic it ("0.", "1.")."""

    def __init__(self, mode, linear):
        super().__init__()
        self.m0 = nn.EmbeddingBag(10, 3, mode=mode)
        self.m1 = nn.Linear(3, 2) if linear else None

    def forward(self, ids, offsets):
        y = self.m0(ids, offsets)
        return self.m1(y) if self.m1 is not None else y

    def state_dict(self, *a, **k):
        sd = super().state_dict(*a, **k)
        return {k.replace("m0.", "0.").replace("m1.", "1."): v for k, v in sd.items()}

    def named_parameters(self, *a, **k):
        return [(n.replace("m0.", "0.").replace("m1.", "1."), p) for n, p in super().named_parameters(*a, **k)]


case("embeddingbag_sum", "input bags; embeddingbag 10 3 sum", _BagModel("sum", False), 3,
     ids=[1, 2, 3, 1, 9, 0, 2], offsets=[0, 3, 3, 7])
case("embeddingbag_mean", "input bags; embeddingbag 10 3 mean; linear 2", _BagModel("mean", True), 3,
     ids=[1, 2, 3, 1, 9, 0, 2], offsets=[0, 3, 3, 7])
case("residual", "input 6; residual { linear 6; gelu; linear 6 }; relu",
     nn.Sequential(Residual(nn.Linear(6, 6), nn.GELU(), nn.Linear(6, 6)), nn.ReLU()), 3, (6,))
case("small_cnn", "input 1x8x8; conv 4 3 stride 1 pad 1; relu; maxpool 2; conv 6 3 stride 1 pad 1; relu; maxpool 2; flatten; linear 5",
     nn.Sequential(nn.Conv2d(1, 4, 3, 1, 1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 6, 3, 1, 1), nn.ReLU(),
                   nn.MaxPool2d(2), nn.Flatten(), nn.Linear(24, 5)), 2, (1, 8, 8))
case("mlp", "input 7; linear 9; tanh; layernorm eps 1e-5; linear 9; silu; linear 3",
     nn.Sequential(nn.Linear(7, 9), nn.Tanh(), nn.LayerNorm(9), nn.Linear(9, 9), nn.SiLU(), nn.Linear(9, 3)), 4, (7,))

# Batched im2col / vectorised pooling paths (nn performance work): stride and
# padding combinations, batch 1 (no transpose copy) and 3, pooling rows wide
# enough for the 16-lane path plus a tail, odd widths (general path). Their
# own seed, with the generator's state restored after, so that the values
# above and below stay as they were.
_rng = torch.get_rng_state()
torch.manual_seed(4321)
case("conv_s2p1_odd", "input 2x9x8; conv 3 3 stride 2 pad 1", nn.Sequential(nn.Conv2d(2, 3, 3, 2, 1)), 3, (2, 9, 8))
case("conv_k5s3p2", "input 3x11x10; conv 4 5 stride 3 pad 2 nobias",
     nn.Sequential(nn.Conv2d(3, 4, 5, 3, 2, bias=False)), 2, (3, 11, 10))
case("conv_1x1_s2", "input 4x7x6; conv 5 1 stride 2 pad 0", nn.Sequential(nn.Conv2d(4, 5, 1, 2, 0)), 3, (4, 7, 6))
case("conv_b1", "input 2x6x7; conv 3 3 stride 1 pad 2", nn.Sequential(nn.Conv2d(2, 3, 3, 1, 2)), 1, (2, 6, 7))
case("maxpool2_wide", "input 2x4x38; maxpool 2", nn.Sequential(nn.MaxPool2d(2)), 2, (2, 4, 38))
case("maxpool2_oddw", "input 2x7x7; maxpool 2", nn.Sequential(nn.MaxPool2d(2)), 2, (2, 7, 7))
case("cnn_wide", "input 1x6x36; conv 2 3 stride 1 pad 1; relu; maxpool 2; flatten; linear 3",
     nn.Sequential(nn.Conv2d(1, 2, 3, 1, 1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(2 * 3 * 18, 3)),
     3, (1, 6, 36))
torch.set_rng_state(_rng)

out.append("static const ref_case ref_cases[] = {\n  %s\n};" % ",\n  ".join(cases))

# ---- optimizers: given parameters and gradient sequences ----
opt_cases = []
p0 = torch.rand(15) * 2 - 1
gs = [torch.rand(15) * 2 - 1 for _ in range(4)]
arr("opt_p0", p0)
for i, g in enumerate(gs):
    arr("opt_g%d" % i, g)
out.append("static const float *const opt_grads[] = {%s};" % ", ".join("opt_g%d" % i for i in range(len(gs))))


def opt_case(tag, kind, make, lr, wd, mom, damp, nest, b1, b2, eps):
    p = p0.clone().requires_grad_(True)
    opt = make([p])
    traj = []
    for g in gs:
        p.grad = g.clone()
        opt.step()
        traj.append(p.detach().clone())
    name = "opt_%d" % len(opt_cases)
    arr(name, torch.cat(traj))
    opt_cases.append('{"%s", %s, %s, %s, %s, %s, %d, %s, %s, %s, %s}' % (
        tag, kind, cf(lr), cf(wd), cf(mom), cf(damp), nest, cf(b1), cf(b2), cf(eps), name))


opt_case("sgd", "KD_OPTIM_SGD", lambda ps: torch.optim.SGD(ps, lr=0.1), 0.1, 0, 0, 0, 0, 0.9, 0.999, 1e-8)
opt_case("sgd_momentum_wd", "KD_OPTIM_SGD",
         lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.01),
         0.05, 0.01, 0.9, 0.1, 0, 0.9, 0.999, 1e-8)
opt_case("sgd_nesterov", "KD_OPTIM_SGD",
         lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.05),
         0.05, 0.05, 0.9, 0, 1, 0.9, 0.999, 1e-8)
opt_case("adamw", "KD_OPTIM_ADAMW", lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.1),
         0.01, 0.1, 0, 0, 0, 0.9, 0.999, 1e-8)
opt_case("adamw_betas", "KD_OPTIM_ADAMW",
         lambda ps: torch.optim.AdamW(ps, lr=0.003, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.0),
         0.003, 0.0, 0, 0, 0, 0.8, 0.99, 1e-6)
out.append("static const opt_ref opt_cases[] = {\n  %s\n};" % ",\n  ".join(opt_cases))

# ---- gradient clipping ----
g = torch.rand(15) * 4 - 2
p = torch.zeros(15, requires_grad=True)
p.grad = g.clone()
norm = torch.nn.utils.clip_grad_norm_([p], 1.5)
arr("clip_g", g)
arr("clip_out", p.grad)
out.append("static const float clip_norm = %s;" % cf(norm.item()))

print("/* Generated by tests/ref/gen_nn_ref.py with torch %s: do not edit. */" % torch.__version__)
print("/* Reference values for tests/test_nn_torch.c. */")
print("#include <stddef.h>\n#include <stdint.h>\n#include <math.h>")
print("typedef struct { const char *name; const float *data; const float *grad_or_after; size_t n; int trainable; } ref_tensor;")
print("typedef struct { const char *tag; const char *spec; size_t batch; int train; const float *x; const float *dx;"
      " const int32_t *ids; const int32_t *offsets; size_t nx; const float *y; const float *dy; size_t ny;"
      " const ref_tensor *tensors; size_t n_tensors; } ref_case;")
print("typedef struct { const char *tag; int kind; float lr, wd, momentum, dampening; int nesterov;"
      " float beta1, beta2, eps; const float *traj; } opt_ref;")
print("\n".join(out))
