"""Runs exported soma models outside soma, for tests/cli.rs (soma export).

usage: python export_check.py JOBS.json

JOBS.json is a list of jobs, each {"kind", "model", "input", "output"}: `input` is a CSV of
raw feature rows (a header row, and a column named `target` that is dropped, are allowed; an
empty cell is a missing value, given to the model as NaN), and `output` receives one CSV row
of numbers per input row, printed with 9 significant digits (enough to give back the
float32). The kinds:

- onnx: the model run by onnxruntime (the graph's `output`); with a job's "metadata" path,
  the model's metadata_props as onnxruntime reads them are written there as a JSON object;
- checkpoint: a soma checkpoint (64-64-10 relu, softmax) read the way the README's PyTorch
  snippet reads it, in numpy: the layers.{i} weights, the input scaling from the metadata key
  soma.scaler applied first, softmax at the end;
- sequential: a `soma export --format safetensors --fold-scaling` file, loaded by its
  nn.Sequential keys ({2i}.weight, {2i}.bias) and run on the raw features (NaN filled first
  from the metadata key soma.imputer, when the file has it), ReLU between layers, softmax at
  the end.

Needs onnxruntime and numpy only.
"""

import json
import struct
import sys

import numpy as np


def number(cell):
    """A cell's value; an empty cell (a missing value) is NaN."""
    cell = cell.strip()
    return float(cell) if cell else float("nan")


def read_rows(path):
    with open(path) as f:
        lines = [l.rstrip("\r\n") for l in f if l.strip(" \r\n")]
    first = lines[0].split(",")
    try:
        [number(c) for c in first]
        header = None
    except ValueError:
        header = [c.strip() for c in first]
        lines = lines[1:]
    keep = [i for i, name in enumerate(header or first) if header is None or name != "target"]
    rows = [[number(l.split(",")[i]) for i in keep] for l in lines]
    return np.array(rows, dtype=np.float32)


def read_safetensors(path):
    """Tensors by name and the string metadata, from the file format itself."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    meta = header.pop("__metadata__", {})
    body = data[8 + n :]
    tensors = {}
    for name, t in header.items():
        assert t["dtype"] == "F32", (name, t["dtype"])
        start, end = t["data_offsets"]
        tensors[name] = np.frombuffer(body[start:end], dtype="<f4").reshape(t["shape"])
    return tensors, meta


def softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def sequential(state, x):
    """nn.Sequential(Linear, ReLU, ..., Linear) on x, from {2i}.weight / {2i}.bias."""
    layers = sorted({int(k.split(".")[0]) for k in state})
    for j, index in enumerate(layers):
        x = x @ state[f"{index}.weight"].T + state[f"{index}.bias"]
        if j + 1 < len(layers):
            x = np.maximum(x, 0)
    return x


def run(job):
    x = read_rows(job["input"])
    kind = job["kind"]
    if kind == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(job["model"], providers=["CPUExecutionProvider"])
        (y,) = session.run(["output"], {"input": x})
        if "metadata" in job:
            with open(job["metadata"], "w") as f:
                json.dump(dict(session.get_modelmeta().custom_metadata_map), f)
    elif kind == "checkpoint":
        # The README snippet: layers.{i} -> module 2i, the stored scaling applied first.
        ckpt, meta = read_safetensors(job["model"])
        scaler = json.loads(meta["soma.scaler"])
        offset = np.array(scaler["offset"], dtype=np.float32)
        scale = np.array(scaler["scale"], dtype=np.float32)
        state = {
            f"{2 * i}.{part}": ckpt[f"layers.{i}.{part}"]
            for i in range(2)
            for part in ("weight", "bias")
        }
        y = softmax(sequential(state, (x - offset) * scale))
    elif kind == "sequential":
        state, meta = read_safetensors(job["model"])
        assert meta["soma.input"] == "raw", meta
        if "soma.imputer" in meta:
            fill = np.array(json.loads(meta["soma.imputer"])["values"], dtype=np.float32)
            x = np.where(np.isnan(x), fill, x)
        y = softmax(sequential(state, x))
    else:
        raise SystemExit(f"unknown job kind {kind!r}")
    np.savetxt(job["output"], np.asarray(y, dtype=np.float32), fmt="%.9g", delimiter=",")


def main():
    with open(sys.argv[1]) as f:
        jobs = json.load(f)
    for job in jobs:
        run(job)
    import onnxruntime

    print(f"onnxruntime {onnxruntime.__version__}, numpy {np.__version__}")


if __name__ == "__main__":
    main()
