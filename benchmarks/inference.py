"""Inference speed, flaxzoo against Keras 3 on the JAX backend in the same process on the same inputs, and
TensorFlow Keras in a subprocess right after (when a Python with TensorFlow is given or installed).

    python benchmarks/inference.py                       # all twelve models, batch 8, default sizes
    python benchmarks/inference.py --models mobilenet,resnet50 --batch 8 --repeats 7 --tf-python ~/tf/bin/python

Each model runs in its own process (clean memory figures). Calls alternate flaxzoo / Keras so both see
the same machine load; img/s is batch / median call time; "first call" includes compilation; RSS is
the process' resident memory after each side's first call (MB). A float32 matmul gives the machine's
roofline, and each model's achieved FLOP/s (FLOPs from the registry) is reported as a fraction of it.
Writes results/inference.json and results/inference.md. Speed is never asserted in the tests.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("KERAS_BACKEND", "jax")


def worker_flaxzoo_and_keras(name: str, batch: int, repeats: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from common import block, keras_model, median, peak_rss_mb, rss_mb, timed

    import flaxzoo
    from flaxzoo.imagenet_utils import preprocess_input
    from flaxzoo.testing import calibrate_batch_norm, random_variables
    from flaxzoo.zoo import get_spec

    spec = get_spec(name)
    size = spec.default_size

    def pixels(seed):  # what the model itself receives: pixels after the model's preprocess_input
        x = np.random.default_rng(seed).uniform(0, 255, (batch, size, size, 3)).astype(np.float32)
        return preprocess_input(x, mode=spec.preprocess_mode) if spec.preprocess_mode else x

    x = pixels(0)
    model, variables = random_variables(name)
    # Batch-norm statistics as training leaves them (on other pixels): without them, residual networks'
    # random logits grow with depth, the softmax saturates and the bf16 top-1 agreement says nothing.
    variables = calibrate_batch_norm(model, variables, pixels(1))
    variants = {
        "flaxzoo": flaxzoo.predict_fn(model, variables),
        "flaxzoo_folded": flaxzoo.predict_fn(model, variables, fold_bn=True),
        "flaxzoo_bf16": flaxzoo.predict_fn(model, variables, dtype=jnp.bfloat16, fold_bn=True),
    }
    result = {"model": name, "batch": batch, "size": size, "flops_per_image": spec.flops}
    base = rss_mb()
    for key, (f, v) in variants.items():
        v = jax.device_put(v)
        variants[key] = (f, v)
        start = time.perf_counter()
        out = block(f(v, x))
        result[f"{key}_first_s"] = time.perf_counter() - start
        if key == "flaxzoo":
            result["flaxzoo_rss_mb"] = rss_mb() - base
            reference = np.asarray(out)
        elif key == "flaxzoo_bf16":
            result["bf16_top1_agreement"] = float(np.mean(np.argmax(out, -1) == np.argmax(reference, -1)))
            result["bf16_logit_error"] = logit_error(np.asarray(out, np.float32), reference)

    base = rss_mb()
    kmodel = keras_model(spec)
    start = time.perf_counter()
    kmodel.predict_on_batch(x)
    result["keras_first_s"] = time.perf_counter() - start
    result["keras_rss_mb"] = rss_mb() - base

    times = {key: [] for key in [*variants, "keras"]}
    for _ in range(repeats):
        for key, (f, v) in variants.items():
            times[key].append(timed(f, v, x))
        start = time.perf_counter()
        kmodel.predict_on_batch(x)
        times["keras"].append(time.perf_counter() - start)
    for key, ts in times.items():
        result[f"{key}_img_s"] = batch / median(ts)
    result["peak_rss_mb"] = peak_rss_mb()
    return result


def logit_error(probs, reference) -> float:
    """The largest bfloat16 error of the logits, relative to their spread: ``max |dz| / std(z)``, the logits
    z recovered from softmax probabilities up to a constant per image (log p, centred). Random weights have
    no clear winner class (top-2 gaps of ~0.3 std among 1000), so top-1 agreement mostly measures those
    gaps; this is the error itself."""
    import numpy as np

    def centred_logits(p):
        z = np.log(np.maximum(p.astype(np.float64), np.finfo(np.float32).tiny))
        return z - z.mean(-1, keepdims=True)

    z, zb = centred_logits(reference), centred_logits(probs)
    return float(np.max(np.abs(zb - z)) / z.std())


def worker_keras_only(name: str, batch: int, repeats: int, keras_name: str, size: int) -> dict:
    """Run under another Python (TensorFlow's, KERAS_BACKEND=tensorflow): imports neither JAX nor flaxzoo."""
    import resource
    import statistics

    import numpy as np
    from keras_build import keras_model

    # Keras' own random weights and the earlier input range: the values do not change the work done
    x = np.random.default_rng(0).uniform(-1, 1, (batch, size, size, 3)).astype(np.float32)
    model = keras_model(keras_name)
    start = time.perf_counter()
    model.predict_on_batch(x)
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.predict_on_batch(x)
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"model": name, "tf_first_s": first, "tf_img_s": batch / statistics.median(times), "tf_peak_rss_mb": peak}


def run_worker(python: str, mode: str, name: str, args, env=None) -> dict | None:
    cmd = [python, str(Path(__file__).resolve()), "--worker", mode, "--models", name, "--batch", str(args.batch),
           "--repeats", str(args.repeats)]  # fmt: skip
    if mode == "tf":
        from flaxzoo.zoo import get_spec

        spec = get_spec(name)
        cmd += ["--keras-name", spec.keras_name, "--size", str(spec.default_size)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        print(f"{name} ({mode}) failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def tensorflow_python(arg: str | None) -> str | None:
    if arg:
        if not (os.path.isfile(arg) and os.access(arg, os.X_OK)):
            sys.exit(f"--tf-python {arg}: not an executable Python")
        return arg
    import importlib.util

    return sys.executable if importlib.util.find_spec("tensorflow") else None


def markdown(rows: list[dict], roofline: float, machine: dict) -> str:
    tf = any("tf_img_s" in r for r in rows)
    head = ["model", "flaxzoo img/s", "Keras-JAX img/s", "ratio", "folded BN", "bf16 (top-1 agr., logit err.)"]
    head += ["TF img/s", "vs TF"] if tf else []
    head += ["first call s (fz / Keras)", "RSS MB (fz / Keras)", "% roofline"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        best = max(r["flaxzoo_img_s"], r["flaxzoo_folded_img_s"])
        cells = [
            r["model"], f"{r['flaxzoo_img_s']:.1f}", f"{r['keras_img_s']:.1f}", f"{r['flaxzoo_img_s'] / r['keras_img_s']:.2f}x",
            f"{r['flaxzoo_folded_img_s']:.1f}", f"{r['flaxzoo_bf16_img_s']:.1f} ({r['bf16_top1_agreement']:.0%}, {r['bf16_logit_error']:.1%})",
        ]  # fmt: skip
        if tf:
            cells += [f"{r['tf_img_s']:.1f}", f"{best / r['tf_img_s']:.2f}x"] if "tf_img_s" in r else ["-", "-"]
        cells += [
            f"{r['flaxzoo_first_s']:.1f} / {r['keras_first_s']:.1f}",
            f"{r['flaxzoo_rss_mb']:.0f} / {r['keras_rss_mb']:.0f}",
            f"{100 * r['flops_per_image'] * r['flaxzoo_img_s'] / roofline:.0f}%",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    desc = f"{machine.get('cpu', '?')} ({machine.get('cpus')} CPUs, {', '.join(machine.get('cpu_flags', []))}); jax {machine['jax']}"
    env = " ".join(f"{k}={v}" for k, v in machine.get("env", {}).items())
    desc += f"; environment: {env or 'default'} (transparent huge pages: {machine.get('thp', '?')})"
    return f"Machine: {desc}; float32 matmul roofline {roofline / 1e9:.1f} GFLOP/s.\n\n" + "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="all", help="comma-separated registry names (default: all)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tf-python", help="a Python with TensorFlow for the TensorFlow column (default: this one, if it has it)")
    parser.add_argument("--out", default=str(HERE / "results"))
    parser.add_argument("--worker", choices=("jax", "tf"), help=argparse.SUPPRESS)
    parser.add_argument("--keras-name", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker == "jax":
        print(json.dumps(worker_flaxzoo_and_keras(args.models, args.batch, args.repeats)))
        return
    if args.worker == "tf":
        print(json.dumps(worker_keras_only(args.models, args.batch, args.repeats, args.keras_name, args.size)))
        return

    from common import machine, matmul_roofline

    from flaxzoo.zoo import list_models

    names = list_models() if args.models == "all" else args.models.split(",")
    info = machine()
    roofline = matmul_roofline(2048, "float32")
    tf_python = tensorflow_python(args.tf_python)
    rows = []
    for name in names:
        row = run_worker(sys.executable, "jax", name, args)
        if row is None:
            continue
        if tf_python:
            tf_row = run_worker(tf_python, "tf", name, args, env={"KERAS_BACKEND": "tensorflow"})
            row.update({k: v for k, v in (tf_row or {}).items() if k != "model"})
        rows.append(row)
        print(f"{name}: flaxzoo {row['flaxzoo_img_s']:.1f} img/s, Keras-JAX {row['keras_img_s']:.1f} img/s"
              + (f", TF {row['tf_img_s']:.1f} img/s" if "tf_img_s" in row else ""), flush=True)  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record = {"machine": info, "matmul_roofline_flops": roofline, "batch": args.batch, "repeats": args.repeats, "rows": rows}
    (out / "inference.json").write_text(json.dumps(record, indent=1))
    table = markdown(rows, roofline, info)
    (out / "inference.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
