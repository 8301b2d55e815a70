#!/usr/bin/python3
"""PyTorch anchor for bench/bench_moe.c: the per-expert loop of Hugging Face's
MixtralSparseMoeBlock (softmax, top-k, renormalise, one_hot mask, per-expert
index_select + SwiGLU expert + index_add_), one thread, forward + backward
(parameter gradients and dx) or no-grad inference."""
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

torch.set_num_threads(1)
torch.manual_seed(0)


class Expert(nn.Module):
    def __init__(self, d, f):
        super().__init__()
        self.w1 = nn.Linear(d, f, bias=False)
        self.w2 = nn.Linear(f, d, bias=False)
        self.w3 = nn.Linear(d, f, bias=False)

    def forward(self, h):
        return self.w2(F.silu(self.w1(h)) * self.w3(h))


class SparseMoeBlock(nn.Module):
    def __init__(self, d, f, E, k):
        super().__init__()
        self.E, self.k = E, k
        self.gate = nn.Linear(d, E, bias=False)
        self.experts = nn.ModuleList([Expert(d, f) for _ in range(E)])

    def forward(self, h):
        n, d = h.shape
        logits = self.gate(h)
        rw = F.softmax(logits, dim=1, dtype=torch.float)
        rw, sel = torch.topk(rw, self.k, dim=-1)
        rw = rw / rw.sum(dim=-1, keepdim=True)
        final = torch.zeros((n, d), dtype=h.dtype)
        mask = F.one_hot(sel, num_classes=self.E).permute(2, 1, 0)
        for e in range(self.E):
            idx, top_x = torch.where(mask[e])
            if top_x.shape[0] == 0:
                continue
            cur = h[None, top_x].reshape(-1, d)
            out = self.experts[e](cur) * rw[top_x, idx, None]
            final.index_add_(0, top_x, out.to(h.dtype))
        return final


def timeit(fn, min_seconds=0.5, reps=5):
    fn()
    meds = []
    for _ in range(reps):
        n, t0 = 0, time.thread_time()  # CPU time of this thread: the machine is shared
        while True:
            fn()
            n += 1
            dt = time.thread_time() - t0
            if dt >= min_seconds:
                break
        meds.append(dt / n)
    return statistics.median(meds)


def case(name, E, k, f, n, train):
    m = SparseMoeBlock(512, f, E, k)
    x = torch.rand(n, 512) * 2 - 1
    if train:
        x.requires_grad_()
        dy = torch.rand(n, 512) * 0.1 - 0.05

        def step():
            m.zero_grad()
            x.grad = None
            m(x).backward(dy)
    else:
        def step():
            with torch.no_grad():
                m(x)
    print("bench=%s torch_ms=%.4f" % (name, timeit(step) * 1e3), flush=True)


case("moe_e8_k2_swiglu_train_n1024", 8, 2, 1024, 1024, True)
case("moe_e8_k2_swiglu_infer_n1", 8, 2, 1024, 1, False)
case("moe_e64_k8_swiglu_train_n1024", 64, 8, 256, 1024, True)
