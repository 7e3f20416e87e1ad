#!/usr/bin/env python3
"""Writes src/tasks/demo/fixtures.json: inputs of the demo model and the outputs Python's onnxruntime gives for
them, the reference the agent's runtimes are tested against (within 1e-4).

    pip install onnx onnxruntime   # from the local wheel mirror
    python3 scripts/parts-model-fixtures.py
"""
import base64
import json
import os
import struct
import zlib

import numpy as np
import onnx
import onnxruntime as ort

DEMO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src", "tasks", "demo")


def read_png(path):
    """The 8-bit grayscale PNGs the training script writes (filter 0 on every row)."""
    data = open(path, "rb").read()
    pos, idat, width, height = 8, b"", 0, 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, color = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and color == 0, "8-bit grayscale expected"
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(idat)
    rows = [raw[r * (width + 1) : (r + 1) * (width + 1)] for r in range(height)]
    assert all(row[0] == 0 for row in rows)
    return np.array([list(row[1:]) for row in rows], dtype=np.uint8)


def main():
    model_path = os.path.join(DEMO, "parts.onnx")
    onnx.checker.check_model(onnx.load(model_path))
    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    training = json.load(open(os.path.join(DEMO, "training.json")))
    cases = []
    for item in training["inputs"]:
        pixels = read_png(os.path.join(DEMO, "samples", item["sample"]))
        image = (pixels.astype(np.float32) / np.float32(255.0))[None, None]
        (scores,) = session.run(["scores"], {"image": image})
        cases.append({"sample": item["sample"], "label": item["label"], "scores": [round(float(v), 7) for v in scores[0]]})
    # A batch of three random tensors: exercises the batch axis and inputs that are not images.
    rng = np.random.default_rng(11)
    batch = rng.random((3, 1, 64, 64), dtype=np.float32)
    (scores,) = session.run(["scores"], {"image": batch})
    tensors = [{
        "name": "random batch of 3",
        "inputs": {"image": {"type": "float32", "dims": list(batch.shape),
                             "base64": base64.b64encode(batch.astype("<f4").tobytes()).decode()}},
        "outputs": {"scores": {"dims": list(scores.shape), "data": [round(float(v), 7) for v in scores.ravel()]}},
    }]
    out = {"model": "parts.onnx", "reference": f"onnxruntime {ort.__version__} (Python)", "labels": training["labels"],
           "input": {"scale": 1 / 255}, "samples": cases, "tensors": tensors}
    with open(os.path.join(DEMO, "fixtures.json"), "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    for case in cases:
        print(case["sample"], case["label"], case["scores"])


if __name__ == "__main__":
    main()
