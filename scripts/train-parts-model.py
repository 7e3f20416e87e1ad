#!/usr/bin/python3
"""Trains the demo model shipped in src/tasks/demo/: a small CNN that tells a good part from a scratched or a
chipped one, on synthetic 64x64 grayscale images, and exports it to ONNX with sample images and inputs.

Run with Debian's python3-torch (1.13): /usr/bin/python3 scripts/train-parts-model.py
Then scripts/parts-model-fixtures.py (Python's onnxruntime) writes the expected outputs. Not run in CI: the
outputs are committed.
"""
import json
import math
import os
import struct
import sys
import zlib

import numpy as np
import torch
from torch import nn

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src", "tasks", "demo")
LABELS = ["good", "scratch", "chip"]
SIZE = 64


def part(rng, label):
    """One image, values 0..255: a textured disc on a dark bench, with a scratch or a chip."""
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    cx, cy = 32 + rng.uniform(-4, 4), 32 + rng.uniform(-4, 4)
    r = rng.uniform(20, 25)
    bench = rng.uniform(20, 50)
    body = rng.uniform(150, 210)
    img = np.full((SIZE, SIZE), bench, np.float32)
    d = np.hypot(x - cx, y - cy)
    inside = d <= r
    img[inside] = body + 12 * np.sin((x[inside] + y[inside]) / rng.uniform(3, 6))  # machining marks
    img[(d > r - 1.5) & inside] -= 35  # the rim
    if label == "scratch":
        a = rng.uniform(0, math.pi)
        length = rng.uniform(14, 30)
        ox, oy = cx + rng.uniform(-6, 6), cy + rng.uniform(-6, 6)
        t = (x - ox) * math.cos(a) + (y - oy) * math.sin(a)
        n = -(x - ox) * math.sin(a) + (y - oy) * math.cos(a)
        width = rng.uniform(0.6, 1.4)
        line = (np.abs(n) < width) & (np.abs(t) < length / 2) & inside
        img[line] = rng.uniform(40, 80)
    elif label == "chip":
        a = rng.uniform(0, 2 * math.pi)
        br = rng.uniform(5, 9)
        bx, by = cx + r * math.cos(a), cy + r * math.sin(a)
        img[np.hypot(x - bx, y - by) < br] = bench
    img += rng.normal(0, 6, img.shape)
    return np.clip(img, 0, 255).round().astype(np.uint8)


def png(path, img):
    """A grayscale 8-bit PNG, written without an imaging library."""
    raw = b"".join(b"\x00" + bytes(row) for row in img)

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(chunk(b"IHDR", struct.pack(">IIBBBBB", img.shape[1], img.shape[0], 8, 0, 0, 0, 0)))
        f.write(chunk(b"IDAT", zlib.compress(raw, 9)))
        f.write(chunk(b"IEND", b""))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 24, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(24, 32, 3, padding=1), nn.ReLU(),
            nn.AdaptiveMaxPool2d(1),
        )
        self.head = nn.Linear(32, len(LABELS))

    def forward(self, image):
        return torch.softmax(self.head(torch.flatten(self.features(image), 1)), dim=1)


def dataset(rng, n):
    labels = rng.integers(0, len(LABELS), n)
    images = np.stack([part(rng, LABELS[k]) for k in labels]).astype(np.float32)[:, None] / 255.0
    return torch.from_numpy(images), torch.from_numpy(labels)


def main():
    torch.manual_seed(7)
    rng = np.random.default_rng(7)
    os.makedirs(OUT, exist_ok=True)
    xs, ys = dataset(rng, 6000)
    vx, vy = dataset(rng, 600)
    net = Net()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    loss_fn = nn.NLLLoss()
    for epoch in range(30):
        net.train()
        perm = torch.randperm(len(xs))
        for i in range(0, len(xs), 64):
            idx = perm[i : i + 64]
            opt.zero_grad()
            loss = loss_fn(torch.log(net(xs[idx]) + 1e-9), ys[idx])
            loss.backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            acc = (net(vx).argmax(1) == vy).float().mean().item()
        print(f"epoch {epoch + 1}: loss {loss.item():.4f}, validation accuracy {acc:.3f}", file=sys.stderr)
        if acc >= 0.995 and epoch >= 8:
            break
    net.eval()
    model = os.path.join(OUT, "parts.onnx")
    torch.onnx.export(
        net, xs[:1], model, input_names=["image"], output_names=["scores"],
        dynamic_axes={"image": {0: "batch"}, "scores": {0: "batch"}}, opset_version=13,
    )
    # Sample images (two of each class, seeded) and the inputs the fixtures are computed on.
    samples = os.path.join(OUT, "samples")
    os.makedirs(samples, exist_ok=True)
    srng = np.random.default_rng(2024)
    inputs = []
    for label in LABELS:
        for k in range(2):
            img = part(srng, label)
            name = f"{label}-{k + 1}.png"
            png(os.path.join(samples, name), img)
            inputs.append({"sample": name, "label": label})
    with open(os.path.join(OUT, "training.json"), "w") as f:
        json.dump({"labels": LABELS, "validationAccuracy": round(acc, 4), "epochs": epoch + 1,
                   "torch": torch.__version__, "inputs": inputs}, f, indent=2)
    print(f"wrote {model} ({os.path.getsize(model)} bytes), accuracy {acc:.3f}", file=sys.stderr)


if __name__ == "__main__":
    main()
