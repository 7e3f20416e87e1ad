#!/usr/bin/python3
"""Exports a heavier third-party model for `npm run bench -- --only tasks`: torchvision's MobileNetV2 (its
architecture; weights random but seeded, since no model hub is reachable), 1x3x224x224 in, 1000 scores out,
to .cache/models/mobilenet_v2.onnx. Needs Debian's python3-torch and python3-torchvision; not run in CI.
"""
import os

import torch
import torchvision

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".cache", "models")


def main():
    torch.manual_seed(3)
    net = torchvision.models.mobilenet_v2(weights=None).eval()
    os.makedirs(OUT, exist_ok=True)
    path = os.path.join(OUT, "mobilenet_v2.onnx")
    torch.onnx.export(net, torch.rand(1, 3, 224, 224), path, input_names=["image"], output_names=["scores"],
                      dynamic_axes={"image": {0: "batch"}, "scores": {0: "batch"}}, opset_version=13)
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


if __name__ == "__main__":
    main()
