#!/usr/bin/python3
"""safetensors interop between libkd and PyTorch, at the format level.

Debian has no safetensors package, so this script reads and writes the format
itself with struct and json (8-byte little-endian header length, JSON header,
data buffer), laying files out the way the reference Python library does:
tensors sorted by (dtype alignment descending, name), header padded with
spaces to a multiple of 8.

Usage (run with Debian's /usr/bin/python3, which has torch):
  st_torch.py write-mixed PATH    torch tensors F32/F16/BF16/I64 + metadata
  st_torch.py write-mlp PATH      a seeded torch MLP's state_dict + input + logits
  st_torch.py verify PATH         checks a file written by tests/io/st_interop
  st_torch.py roundtrip EXE DIR   EXE writes, we verify; we write, EXE checks
Exit status 77 (meson's "skipped") when torch is not importable.

The expected values here and in tests/st_expect.h describe the same files;
change both together.
"""
import json
import math
import os
import struct
import subprocess
import sys

try:
    import numpy as np
    import torch
except ImportError as e:  # pragma: no cover
    print("skipping: %s" % e)
    sys.exit(77)

ALIGN = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4,
         "F16": 2, "BF16": 2, "I16": 2, "U16": 2, "U8": 1, "I8": 1, "BOOL": 1}
TORCH_DTYPE = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
               torch.int64: "I64", torch.float64: "F64", torch.int32: "I32"}


def tensor_bytes(t):
    """Little-endian bytes of a contiguous tensor (bf16 has no numpy dtype)."""
    t = t.contiguous()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    a = t.numpy()
    return a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()


def save(path, tensors, metadata=None):
    """Writes a dict name -> torch tensor like safetensors.torch.save_file."""
    items = sorted(tensors.items(), key=lambda kv: (-ALIGN[TORCH_DTYPE[kv[1].dtype]], kv[0]))
    header, blobs, offset = {}, [], 0
    if metadata:
        header["__metadata__"] = metadata
    for name, t in items:
        b = tensor_bytes(t)
        header[name] = {"dtype": TORCH_DTYPE[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    h = json.dumps(header, separators=(",", ":")).encode("utf-8")
    h += b" " * ((8 - len(h) % 8) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


def load(path):
    """Returns (header dict, data bytes) after checking the layout strictly."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    assert 8 + n <= len(raw), "header length beyond the file"
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    data = raw[8 + n:]
    return header, data, n


def to_torch(info, data):
    dt = {"F32": torch.float32, "F16": torch.float16, "I64": torch.int64}[info["dtype"]]
    b, e = info["data_offsets"]
    buf = bytearray(data[b:e])
    if len(buf) == 0:
        return torch.zeros(info["shape"], dtype=dt)
    return torch.frombuffer(buf, dtype=dt).reshape(info["shape"]).clone()


# ---- files written by torch (read by tests/test_safetensors.c) ------------

F32_SPECIAL = [0x80000000, 0x7F800000, 0xFF800000, 0x7FC00000, 0x00000001, 0x7F7FFFFF]
F16_SPECIAL = [0x0001, 0x03FF, 0x0400, 0x7BFF, 0xFBFF, 0x7C00, 0xFC00, 0x7E00, 0x8000, 0x8001]
BF16_SPECIAL = [0x0001, 0x7F7F, 0x7F80, 0xFF80, 0x7FC0, 0x8000]
MIXED_META = {"format": "pt", "arch": "{\"layers\":[784,32,10]}",
              "note": "\u00fcn\u00efc\u00f8d\u00e9 \u2713 \U0001D11E \"q\"\t\\"}


def bits_tensor(bits, n, regular, dtype):
    """First the given bit patterns, then regular(i) for i in range(len(bits), n)."""
    width = {torch.float32: (np.uint32, torch.int32), torch.float16: (np.uint16, torch.int16),
             torch.bfloat16: (np.uint16, torch.int16)}[dtype]
    vals = [regular(i) for i in range(len(bits), n)]
    if dtype == torch.bfloat16:
        reg = torch.tensor(vals, dtype=torch.float32).to(torch.bfloat16).view(torch.int16)
    else:
        reg = torch.tensor(vals, dtype=dtype).view(width[1])
    signed = {np.uint32: np.int32, np.uint16: np.int16}[width[0]]
    sb = torch.from_numpy(np.array(bits, dtype=width[0]).view(signed))
    out = torch.cat([sb, reg]).view(dtype)
    assert out.numel() == n
    return out


def mixed_tensors():
    return {
        "w.f32": bits_tensor(F32_SPECIAL, 12, lambda i: (i - 5) * 0.375, torch.float32).reshape(3, 4),
        "h.f16": bits_tensor(F16_SPECIAL, 20, lambda i: (i - 12) * 0.125, torch.float16).reshape(2, 5, 2),
        "b.bf16": bits_tensor(BF16_SPECIAL, 8, lambda i: (i - 3) * 0.5, torch.bfloat16).reshape(2, 4),
        "scalar": torch.tensor(2.5, dtype=torch.float32),
        "empty": torch.zeros(0, 3, dtype=torch.float32),
        "steps": torch.tensor(7, dtype=torch.int64),
    }


def write_mixed(path):
    save(path, mixed_tensors(), MIXED_META)


def write_mlp(path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    x = torch.randn(5, 4)
    with torch.no_grad():
        y = model(x)
    tensors = {k: v.detach().clone() for k, v in model.state_dict().items()}
    tensors["input"] = x
    tensors["logits"] = y
    save(path, tensors, {"arch": "linear(4,3) relu linear(3,2)", "format": "pt"})


# ---- files written by libkd (tests/io/st_interop.c, "write") --------------

KD_SPECIAL = [0x80000000, 0x7F800000, 0xFF800000, 0x7FC00000, 0x00000001, 0x7F7FFFFF]
KD_META = {"arch": "{\"kind\":\"mlp\",\"sizes\":[4,3,2]}",
           "unicode": "\u00fc\u2713\U0001D11E",
           "ctrl": "tab\there\nnewline \"q\" \\"}


def kd_expected():
    a = torch.arange(6, dtype=torch.float32).reshape(2, 3) * 0.25 - 0.5
    big = (torch.arange(64 * 33) % 97).to(torch.float32).reshape(64, 33) * 0.0625 - 3
    spec = torch.from_numpy(np.array(KD_SPECIAL, dtype=np.uint32).view(np.int32)).view(torch.float32)
    return {"a": a, "big": big, "empty": torch.zeros(0), "specials": spec,
            "z.scalar": torch.tensor(42.0)}


def verify(path):
    header, data, n = load(path)
    assert n % 8 == 0, "header length %d not a multiple of 8" % n
    with open(path, "rb") as f:
        raw = f.read()
    text = raw[8:8 + n].decode("utf-8")
    assert text.rstrip(" ").endswith("}") and len(text) - len(text.rstrip(" ")) < 8, "padding"
    meta = header.pop("__metadata__")
    assert meta == KD_META, "metadata %r" % meta
    exp = kd_expected()
    assert sorted(header) == sorted(exp), "tensor names %r" % sorted(header)
    # libkd lays tensors out in name order, contiguously, starting at 0
    pos = 0
    for name in sorted(header):
        info = header[name]
        assert info["dtype"] == "F32", name
        assert info["data_offsets"][0] == pos, name
        pos = info["data_offsets"][1]
    assert pos == len(data), "data buffer %d bytes, tensors cover %d" % (len(data), pos)
    for name, want in exp.items():
        got = to_torch(header[name], data)
        assert list(got.shape) == list(want.shape), (name, got.shape, want.shape)
        assert torch.equal(got.view(torch.int32), want.view(torch.int32)), name
    # NaN survives as the same quiet NaN, -0.0 keeps its sign
    s = to_torch(header["specials"], data)
    assert math.isnan(s[3].item()) and math.copysign(1.0, s[0].item()) < 0
    print("verify: %s ok (%d tensors, %d metadata entries)" % (path, len(exp), len(meta)))


def roundtrip(exe, folder):
    os.makedirs(folder, exist_ok=True)
    kd_file = os.path.join(folder, "from_kd.safetensors")
    subprocess.run([exe, "write", kd_file], check=True)
    verify(kd_file)
    for kind, fn in (("mixed", write_mixed), ("mlp", write_mlp)):
        p = os.path.join(folder, "from_torch_%s.safetensors" % kind)
        fn(p)
        subprocess.run([exe, "check-" + kind, p], check=True)
    print("roundtrip: ok")


def main(argv):
    if len(argv) == 3 and argv[1] == "write-mixed":
        write_mixed(argv[2])
    elif len(argv) == 3 and argv[1] == "write-mlp":
        write_mlp(argv[2])
    elif len(argv) == 3 and argv[1] == "verify":
        verify(argv[2])
    elif len(argv) == 4 and argv[1] == "roundtrip":
        roundtrip(argv[2], argv[3])
    else:
        print(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
