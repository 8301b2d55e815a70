#!/usr/bin/python3
"""PyTorch anchor for bench/bench_vocab.c: kl_div(log_softmax(s/T), softmax(t/T))
forward + backward (batchmean, times T^2), one thread, medians of 5 runs."""
import statistics
import time

import torch
import torch.nn.functional as F

torch.set_num_threads(1)


def timeit(fn, min_seconds=0.3, reps=5):
    fn()
    meds = []
    for _ in range(reps):
        n, t0 = 0, time.perf_counter()
        while True:
            fn()
            n += 1
            dt = time.perf_counter() - t0
            if dt >= min_seconds:
                break
        meds.append(dt / n)
    return statistics.median(meds)


for b, v in ((32, 32000), (8, 152064)):
    torch.manual_seed(1)
    s = (torch.rand(b, v) * 8 - 4).requires_grad_()
    t = torch.rand(b, v) * 8 - 4
    T = 2.0

    def step():
        s.grad = None
        loss = F.kl_div(F.log_softmax(s / T, -1), F.softmax(t / T, -1), reduction="batchmean") * T * T
        loss.backward()

    print(f"bench=kd_dense_{b}x{v} torch_ms={timeit(step) * 1e3:.4f}")
