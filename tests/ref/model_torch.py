#!/usr/bin/python3
"""Model checkpoints between libkd and PyTorch, both ways (run by meson test).

  model_torch.py roundtrip EXE DIR
    1. torch builds seeded models from libkd spec strings, writes each as a
       safetensors checkpoint (tensors named as nn.Sequential's state_dict,
       the spec in __metadata__["kd.spec"]) plus an input batch and torch's
       logits; EXE (tests/io/model_interop) loads it and compares.
    2. EXE builds the same specs in libkd, trains a few AdamW steps and saves;
       torch rebuilds the model from the checkpoint's spec, loads the state
       dict strictly and compares logits.
Both directions must agree within 1e-5 (max abs diff). Exit 77 without torch.
spec_to_torch() is the reference mapping from libkd's spec grammar to torch
modules; it covers the dense-input layers.
"""
import json
import os
import struct
import subprocess
import sys

try:
    import numpy as np
    import torch
    import torch.nn as nn
except ImportError as e:
    print("skipping: %s" % e)
    sys.exit(77)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from st_torch import save  # noqa: E402  (the format writer shared with st_torch)

SPECS = {
    "mlp": "input 784; linear 32; relu; linear 10",
    "deep": "input 20; linear 16; gelu; layernorm; linear 12; tanh; dropout 0.3; linear 4; sigmoid",
    "cnn": "input 1x12x12; conv 4 3 pad 1; batchnorm; relu; maxpool 2; conv 6 3 stride 2 pad 1; "
           "silu; avgpool 3; flatten; linear 5",
}


def spec_to_torch(spec):
    """Returns (nn.Sequential, input shape) for a libkd spec."""
    items = [i.split() for i in spec.split(";") if i.strip()]
    head = items[0]
    assert head[0] == "input", head
    shape = [int(d) for d in head[1].split("x")]
    layers = []
    for it in items[1:]:
        k, args = it[0], it[1:]
        opt = {args[i]: args[i + 1] for i in range(len(args) - 1) if not args[i][0].isdigit()}
        if k == "linear":
            layers.append(nn.Linear(shape[-1], int(args[0]), bias="nobias" not in args))
            shape[-1] = int(args[0])
        elif k == "conv":
            oc, ks = int(args[0]), int(args[1])
            s, p = int(opt.get("stride", 1)), int(opt.get("pad", 0))
            layers.append(nn.Conv2d(shape[0], oc, ks, stride=s, padding=p, bias="nobias" not in args))
            shape = [oc, (shape[1] + 2 * p - ks) // s + 1, (shape[2] + 2 * p - ks) // s + 1]
        elif k in ("maxpool", "avgpool"):
            ks = int(args[0])
            s = int(opt.get("stride", ks))
            layers.append((nn.MaxPool2d if k == "maxpool" else nn.AvgPool2d)(ks, stride=s))
            shape = [shape[0], (shape[1] - ks) // s + 1, (shape[2] - ks) // s + 1]
        elif k == "flatten":
            layers.append(nn.Flatten())
            shape = [int(np.prod(shape))]
        elif k == "identity":
            layers.append(nn.Identity())
        elif k in ("relu", "silu", "tanh", "sigmoid"):
            layers.append({"relu": nn.ReLU, "silu": nn.SiLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}[k]())
        elif k == "gelu":
            layers.append(nn.GELU(approximate="tanh" if "tanh" in args else "none"))
        elif k == "layernorm":
            layers.append(nn.LayerNorm(shape[-1], eps=float(opt.get("eps", 1e-5))))
        elif k == "batchnorm":
            bn = nn.BatchNorm2d if len(shape) == 3 else nn.BatchNorm1d
            layers.append(bn(shape[0], eps=float(opt.get("eps", 1e-5)),
                             momentum=float(opt.get("momentum", 0.1))))
        elif k == "dropout":
            layers.append(nn.Dropout(float(args[0])))
        else:
            raise ValueError("spec item %r has no torch mapping here" % k)
    return nn.Sequential(*layers), head[1]


def in_shape(spec):
    return [int(d) for d in spec.split(";")[0].split()[1].split("x")]


def torch_to_kd(exe, d):
    torch.manual_seed(1)
    for name, spec in SPECS.items():
        model, _ = spec_to_torch(spec)
        x = torch.randn(4, *in_shape(spec))
        model.train()
        for _ in range(3):  # batch-norm running statistics move off their initial values
            model(torch.randn(8, *in_shape(spec)))
        model.eval()
        with torch.no_grad():
            y = model(x)
        sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
        prefix = os.path.join(d, "torch_" + name)
        save(prefix + ".safetensors", sd, {"kd.spec": spec, "format": "pt"})
        with open(prefix + ".in", "wb") as f:
            f.write(struct.pack("<I", 4) + x.numpy().astype("<f4").tobytes())
        with open(prefix + ".out", "wb") as f:
            f.write(y.numpy().astype("<f4").tobytes())
        r = subprocess.run([exe, "check", prefix], capture_output=True, text=True)
        print(r.stdout.strip(), r.stderr.strip())
        if r.returncode != 0:
            print("FAIL: libkd could not reproduce torch's logits for", name)
            return False
    return True


def read_safetensors(path):
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__", {})
    base = 8 + n
    out = {}
    for name, info in header.items():
        assert info["dtype"] == "F32", info
        b, e = info["data_offsets"]
        a = np.frombuffer(raw[base + b:base + e], dtype="<f4").reshape(info["shape"])
        out[name] = torch.from_numpy(a.copy())
    return out, meta


def kd_to_torch(exe, d):
    for name, spec in SPECS.items():
        prefix = os.path.join(d, "kd_" + name)
        r = subprocess.run([exe, "train", prefix, spec], capture_output=True, text=True)
        if r.returncode != 0:
            print("FAIL: model_interop train", name, r.stderr)
            return False
        tensors, meta = read_safetensors(prefix + ".safetensors")
        model, _ = spec_to_torch(meta["kd.spec"])
        model.load_state_dict(tensors, strict=True)  # names, shapes and the tensor set must match
        model.eval()
        raw = open(prefix + ".in", "rb").read()
        (batch,) = struct.unpack("<I", raw[:4])
        x = torch.from_numpy(np.frombuffer(raw[4:], dtype="<f4").copy()).reshape(batch, *in_shape(spec))
        want = torch.from_numpy(np.fromfile(prefix + ".out", dtype="<f4").copy())
        with torch.no_grad():
            got = model(x).reshape(-1)
        diff = (got - want).abs().max().item()
        print("%s: libkd checkpoint in torch: max abs diff %.3g over %d values" % (name, diff, want.numel()))
        if not diff <= 1e-5:
            print("FAIL: torch could not reproduce libkd's logits for", name)
            return False
    return True


def main():
    if len(sys.argv) != 4 or sys.argv[1] != "roundtrip":
        print(__doc__)
        return 2
    exe, d = sys.argv[2], sys.argv[3]
    os.makedirs(d, exist_ok=True)
    torch.set_num_threads(1)
    ok = torch_to_kd(exe, d) and kd_to_torch(exe, d)
    print("model interop:", "ok" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
