"""Show that a model over 2 GB goes through onnxopt: load (external data), optimize, save, validate, run.

    python tools/check_large_model.py --workdir /tmp/large [--gib 2.2]

Builds two MatMul + Add layers whose weights add up to more than protobuf's 2 GB
limit, saved with external data; runs `python -m onnxopt optimize` on it (which must
fuse each MatMul+Add into Gemm, write external data automatically, and validate the result with the
checker and an onnxruntime session), then compares outputs. Prints timings and
peak memory. Not a unit test: it needs ~10 GB of RAM and ~5 GB of disk.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import onnxruntime as ort


def build(workdir: Path, gib: float) -> Path:
    """Two MatMul+Add layers whose weights (each under protobuf's 2 GB per-message limit) add up to ``gib``."""
    n = 4096
    k = int(gib / 2 * 2**30 / 4 / n)
    rng = np.random.default_rng(0)
    path = workdir / "large.onnx"
    inits, offset = [], 0
    # written straight to the data file: no protobuf message may hold more than 2 GB
    with open(workdir / "large.onnx.data", "wb") as fh:
        for name, shape in (("W1", (k, n)), ("W2", (n, k)), ("b1", (n,)), ("b2", (k,))):
            arr = (rng.standard_normal(shape, dtype=np.float32) / np.sqrt(shape[0])).astype(np.float32)
            fh.write(arr.tobytes())
            t = onnx.TensorProto(name=name, data_type=onnx.TensorProto.FLOAT, dims=list(shape))
            t.data_location = onnx.TensorProto.EXTERNAL
            for key, value in (("location", "large.onnx.data"), ("offset", str(offset)), ("length", str(arr.nbytes))):
                entry = t.external_data.add()
                entry.key, entry.value = key, value
            offset += arr.nbytes
            inits.append(t)
            del arr
    graph = oh.make_graph(
        [oh.make_node("MatMul", ["x", "W1"], ["m1"]), oh.make_node("Add", ["m1", "b1"], ["h"]),
         oh.make_node("MatMul", ["h", "W2"], ["m2"]), oh.make_node("Add", ["m2", "b2"], ["y"])], "large",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", k])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["N", k])], inits)
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    onnx.save_model(model, str(path))
    return path


def run(path: Path, x: np.ndarray) -> np.ndarray:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--gib", type=float, default=2.2, help="size of the weight in GiB (default 2.2)")
    args = ap.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    src = build(args.workdir, args.gib)
    print(f"built {src} + data ({(args.workdir / 'large.onnx.data').stat().st_size / 2**30:.2f} GiB) "
          f"in {time.perf_counter() - t0:.1f}s")
    out = args.workdir / "large.opt.onnx"
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "onnxopt", "optimize", str(src), "-o", str(out), "--quiet"],
                          capture_output=True, text=True)
    took = time.perf_counter() - t0
    child_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    print(f"onnxopt optimize: exit {proc.returncode} in {took:.1f}s, peak RSS {child_rss:.1f} GiB")
    if proc.returncode != 0:
        print(proc.stderr)
        return 1
    data = out.with_name(out.name + ".data")
    print(f"wrote {out} ({out.stat().st_size} bytes) + {data.name} ({data.stat().st_size / 2**30:.2f} GiB)")
    opt = onnx.load_model(str(out), load_external_data=False)
    print("ops after:", [n.op_type for n in opt.graph.node])
    k = next(d.dim_value for d in opt.graph.input[0].type.tensor_type.shape.dim if d.HasField("dim_value"))
    x = np.random.default_rng(1).standard_normal((2, k)).astype(np.float32)
    a, b = run(src, x), run(out, x)
    diff = float(np.abs(a - b).max())
    print(f"max abs output difference: {diff:.3g} (scale {float(np.abs(a).max()):.3g})")
    return 0 if diff <= 1e-3 * max(1.0, float(np.abs(a).max())) and [n.op_type for n in opt.graph.node] == ["Gemm", "Gemm"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
