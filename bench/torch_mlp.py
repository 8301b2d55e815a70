#!/usr/bin/python3
"""PyTorch anchor for bench/bench_mlp.c (same cases, one thread, AdamW)."""
import statistics
import time

import torch
import torch.nn as nn

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


def case(name, model, in_shape, batch, train):
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
    print("bench=%s torch_ms=%.4f" % (name, timeit(step) * 1e3), flush=True)


case("mlp_784_1200_1200_10_train_b128",
     nn.Sequential(nn.Linear(784, 1200), nn.ReLU(), nn.Linear(1200, 1200), nn.ReLU(), nn.Linear(1200, 10)), (784,), 128, True)
case("mlp_784_128_10_train_b128", nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10)), (784,), 128, True)
case("mlp_784_32_10_infer_b1", nn.Sequential(nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10)), (784,), 1, False)
case("cnn_train_b128",
     nn.Sequential(nn.Conv2d(1, 32, 3, 1, 1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 3, 1, 1), nn.ReLU(),
                   nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64 * 7 * 7, 10)), (1, 28, 28), 128, True)
