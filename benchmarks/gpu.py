"""One prepared GPU run (H100/H200): inference img/s at batch 256 in float32 and bfloat16 for ResNet50,
InceptionV3 and MobileNet, ResNet50 bfloat16 training img/s, and MFU: 2 × MACs × img/s / peak for
inference, 6 × MACs × img/s / peak for training (MACs from the registry). Peak: the dtype's measured
matmul rate in the same run, and the spec sheet's dense rate. Writes JSON (argv[1]) and prints a table."""

from __future__ import annotations

import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from common import block, machine, matmul_roofline, median, timed  # noqa: E402
from flaxzoo.testing import random_variables  # noqa: E402

import flaxzoo  # noqa: E402
from flaxzoo import layers, sharding, train  # noqa: E402
from flaxzoo.zoo import get_spec  # noqa: E402

SPEC_PEAK = {"H100": {"bfloat16": 989e12, "float32": 67e12}, "H200": {"bfloat16": 989e12, "float32": 67e12}}
BATCH = int(os.environ.get("FLAXZOO_BENCH_BATCH", 256))
MODELS = os.environ.get("FLAXZOO_BENCH_MODELS", "resnet50,inception_v3,mobilenet").split(",")


def bench(fn, *args, repeats=10):
    start = time.perf_counter()
    block(fn(*args))
    first = time.perf_counter() - start
    block(fn(*args))
    return first, median([timed(fn, *args) for _ in range(repeats)])


def main(out_path):
    info = machine()
    gpu = next((k for k in SPEC_PEAK if k in (info.get("gpu") or "")), "H100")
    n = int(os.environ.get("FLAXZOO_BENCH_MATMUL", 8192))
    roof = {dt: matmul_roofline(n, dt) for dt in ("bfloat16", "float32")}
    results = {"machine": info, "matmul_roofline": roof, "inference": [], "training": []}
    for name in MODELS:
        spec = get_spec(name)
        size = spec.default_size
        model, variables = random_variables(name)
        x = jax.device_put(np.random.default_rng(0).normal(size=(BATCH, size, size, 3)).astype(np.float32))
        for dtype in ("float32", "bfloat16"):
            for fold in (False, True):
                f, v = flaxzoo.predict_fn(model, variables, dtype=jnp.dtype(dtype), fold_bn=fold)
                v = jax.device_put(v)
                first, t = bench(f, v, x)
                ips = BATCH / t
                flops = spec.flops * ips  # registry flops = 2 x MACs
                row = dict(model=name, dtype=dtype, fold_bn=fold, batch=BATCH, img_s=ips, first_call_s=first,
                           mfu_measured=flops / roof[dtype], mfu_spec=flops / SPEC_PEAK[gpu][dtype])  # fmt: skip
                results["inference"].append(row)
                print(json.dumps(row), flush=True)
        if name == "mobilenet":  # both convolution formulations on this backend
            for impl in ("keras", "cpu"):
                with layers.conv_implementation(impl):
                    f, v = flaxzoo.predict_fn(model, variables, dtype=jnp.bfloat16)
                    first, t = bench(f, jax.device_put(v), x)
                row = dict(model=name, dtype="bfloat16", conv_implementation=impl, img_s=BATCH / t)
                results["inference"].append(row)
                print(json.dumps(row), flush=True)

    for name in ("resnet50",):
        spec = get_spec(name)
        model, variables = random_variables(name, classifier_activation=None)
        tx = train.make_optimizer("momentum", 0.1)
        mesh = sharding.data_mesh()
        steps = train.make_steps(model, tx, mesh, train.StepConfig(compute_dtype=jnp.bfloat16))
        state = sharding.replicate(train.create_train_state(variables, tx), mesh)
        rng = np.random.default_rng(0)
        size = spec.default_size
        batch = sharding.global_batch({"image": rng.normal(size=(BATCH, size, size, 3)).astype(np.float32),
                                       "label": rng.integers(0, 1000, BATCH).astype(np.int32)}, mesh)  # fmt: skip
        start = time.perf_counter()
        state, m = steps.train(state, batch)
        block(m)
        first = time.perf_counter() - start
        times = []
        for _ in range(10):
            start = time.perf_counter()
            state, m = steps.train(state, batch)
            block(m)
            times.append(time.perf_counter() - start)
        ips = BATCH / median(times)
        flops = 3 * spec.flops * ips  # 6 x MACs
        row = dict(model=name, dtype="bfloat16", batch=BATCH, img_s=ips, first_call_s=first,
                   mfu_measured=flops / roof["bfloat16"], mfu_spec=flops / SPEC_PEAK[gpu]["bfloat16"])  # fmt: skip
        results["training"].append(row)
        print(json.dumps(row), flush=True)
    with open(out_path, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "gpu_results.json")
