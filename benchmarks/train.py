"""Training-step speed: flaxzoo's jit train step against Keras 3's ``train_on_batch`` on the JAX backend,
same model, batch, optimizer (SGD, momentum 0.9) and loss, alternating calls in one process.

    python benchmarks/train.py [--models resnet50,mobilenet] [--batch 8] [--repeats 5]

Writes results/train.json and results/train.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("KERAS_BACKEND", "jax")


def bench(name: str, batch: int, repeats: int) -> dict:
    import jax
    import numpy as np
    from common import keras_model, median

    from flaxzoo import sharding, train
    from flaxzoo.zoo import get_spec
    from flaxzoo.testing import random_variables

    spec = get_spec(name)
    size = spec.default_size
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (batch, size, size, 3)).astype(np.float32)
    y = rng.integers(0, 1000, batch).astype(np.int32)

    model, variables = random_variables(name, classifier_activation=None)
    tx = train.make_optimizer("momentum", 0.01)
    mesh = sharding.data_mesh()
    steps = train.make_steps(model, tx, mesh)
    state = sharding.replicate(train.create_train_state(variables, tx), mesh)

    import keras

    kmodel = keras_model(spec)
    kmodel.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), loss="sparse_categorical_crossentropy")

    def flax_step():
        nonlocal state
        start = time.perf_counter()
        state, metrics = steps.train(state, sharding.global_batch({"image": x, "label": y}, mesh))
        jax.block_until_ready(metrics)
        return time.perf_counter() - start

    def keras_step():
        start = time.perf_counter()
        kmodel.train_on_batch(x, y)
        return time.perf_counter() - start

    result = {"model": name, "batch": batch, "flaxzoo_first_s": flax_step(), "keras_first_s": keras_step()}
    times = {"flaxzoo": [], "keras": []}
    for _ in range(repeats):
        times["flaxzoo"].append(flax_step())
        times["keras"].append(keras_step())
    for key, ts in times.items():
        result[f"{key}_img_s"] = batch / median(ts)
    result["ratio"] = result["flaxzoo_img_s"] / result["keras_img_s"]
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="resnet50,mobilenet")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    rows = [bench(name, args.batch, args.repeats) for name in args.models.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train.json").write_text(json.dumps(rows, indent=1))
    lines = ["| model | batch | flaxzoo img/s | Keras-JAX train_on_batch img/s | ratio | first step s (fz / Keras) |",
             "|---|---:|---:|---:|---:|---|"]  # fmt: skip
    for r in rows:
        lines.append(f"| {r['model']} | {r['batch']} | {r['flaxzoo_img_s']:.1f} | {r['keras_img_s']:.1f} | "
                     f"{r['ratio']:.2f}x | {r['flaxzoo_first_s']:.1f} / {r['keras_first_s']:.1f} |")  # fmt: skip
    (out / "train.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
