#!/usr/bin/python3
"""PyTorch anchor for bench/bench_mlp.c (same cases, one thread, AdamW).

usage: /usr/bin/python3 bench/torch_mlp.py [--min-seconds S] [--reps R] [--cpu] [case ...]
Prints `bench=<case> torch_ms=<median ms per step>` per case (all when none
named). --cpu times with the thread's CPU clock, like bench_mlp --cpu.
"""
import argparse
import statistics
import time

import torch
import torch.nn as nn

torch.set_num_threads(1)
torch.set_num_interop_threads(1)

ap = argparse.ArgumentParser()
ap.add_argument("--min-seconds", type=float, default=0.3)
ap.add_argument("--reps", type=int, default=5)
ap.add_argument("--cpu", action="store_true")
ap.add_argument("cases", nargs="*")
args = ap.parse_args()
clock = time.thread_time if args.cpu else time.perf_counter


def timeit(fn, min_seconds, reps):
    meds = []
    for _ in range(reps):
        fn()
        n, t0 = 0, clock()
        while True:
            fn()
            n += 1
            dt = clock() - t0
            if dt >= min_seconds:
                break
        meds.append(dt / n)
    return statistics.median(meds)


def case(name, model, in_shape, batch, train):
    if args.cases and name not in args.cases:
        return
    x = torch.rand((batch,) + in_shape)
    if train:
        opt = torch.optim.AdamW(model.parameters())
        y = model(x)
        dy = torch.rand_like(y) * 0.1 - 0.05

        def step():
            opt.zero_grad()
            model(x).backward(dy)
            opt.step()
    else:
        model.eval()

        def step():
            with torch.no_grad():
                model(x)
    print("bench=%s torch_ms=%.5f" % (name, timeit(step, args.min_seconds, args.reps) * 1e3), flush=True)


case("mlp_784_1200_1200_10_train_b128",
     nn.Sequential(nn.Linear(784, 1200), nn.ReLU(), nn.Linear(1200, 1200), nn.ReLU(), nn.Linear(1200, 10)), (784,), 128, True)
case("mlp_784_128_10_train_b128", nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10)), (784,), 128, True)
case("mlp_784_32_10_infer_b1", nn.Sequential(nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10)), (784,), 1, False)
case("cnn_train_b128",
     nn.Sequential(nn.Conv2d(1, 32, 3, 1, 1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 3, 1, 1), nn.ReLU(),
                   nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64 * 7 * 7, 10)), (1, 28, 28), 128, True)
