"""Which XLA:CPU compiler options run each model fastest: flaxzoo's forward pass compiled once per candidate
option set, calls alternating between the candidates in one process per model (same inputs, same load).

    python benchmarks/xla_options.py [--models vgg16,mobilenet] [--batch 8] [--repeats 7]

"default" is XLA's own choice (what Keras-JAX gets); "shipped" names the candidate equal to
``flaxzoo.compiler_options()``, what flaxzoo's jitted functions use. Writes results/xla_options.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from flaxzoo.xla_options import YNN_FUSION_TYPE as YNN  # noqa: E402

CANDIDATES = {
    "default": {},
    "no_ynn": {YNN: ""},  # no operation handed to YNNPACK
    "ynn_dot": {YNN: "LIBRARY_FUSION_TYPE_DOT"},  # only matrix products
    "ynn_reduce": {YNN: "LIBRARY_FUSION_TYPE_REDUCE"},  # only reduction-rooted fusions
}


def worker(name: str, batch: int, repeats: int) -> dict:
    import jax
    import numpy as np
    from common import block, median, timed

    from flaxzoo.zoo import get_spec
    from flaxzoo.testing import random_variables

    spec = get_spec(name)
    x = np.random.default_rng(0).uniform(-1, 1, (batch, spec.default_size, spec.default_size, 3)).astype(np.float32)
    model, variables = random_variables(name)
    variables = jax.device_put(variables)
    fns = {key: jax.jit(model.apply, compiler_options=opts) for key, opts in CANDIDATES.items()}
    outs = {key: np.asarray(block(f(variables, x))) for key, f in fns.items()}
    ref = outs["default"]
    result = {"model": name, "batch": batch}
    for key, out in outs.items():
        result[f"{key}_max_rel_diff"] = float(np.abs(out - ref).max() / max(np.abs(ref).max(), 1e-30))
    times = {key: [] for key in fns}
    for _ in range(repeats):
        for key, f in fns.items():
            times[key].append(timed(f, variables, x))
    for key, ts in times.items():
        result[f"{key}_ms"] = 1e3 * median(ts)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=None)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.batch, args.repeats)))
        return 0

    from common import machine

    from flaxzoo.zoo import list_models
    from flaxzoo.xla_options import compiler_options

    names = args.models.split(",") if args.models else list_models()
    shipped = next((k for k, v in CANDIDATES.items() if v == compiler_options("cpu")), "other")
    rows = []
    for name in names:
        proc = subprocess.run([sys.executable, __file__, "--worker", name, "--batch", str(args.batch),
                               "--repeats", str(args.repeats)], capture_output=True, text=True,
                              env={**os.environ, "KERAS_BACKEND": "jax"})  # fmt: skip
        if proc.returncode:
            print(proc.stderr[-3000:], file=sys.stderr)
            return proc.returncode
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        row["shipped"] = shipped
        rows.append(row)
        print(" ".join([name] + [f"{k}={row[f'{k}_ms']:.0f}ms" for k in CANDIDATES] + [f"shipped={row['shipped']}"]),
              flush=True)  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "xla_options.json").write_text(json.dumps({"machine": machine(), "rows": rows}, indent=1))
    keys = list(CANDIDATES)
    lines = ["| model | " + " | ".join(f"{k} ms" for k in keys) + " | best | shipped |",
             "|---" * (len(keys) + 3) + "|"]  # fmt: skip
    for row in rows:
        best = min(keys, key=lambda k: row[f"{k}_ms"])
        lines.append(f"| {row['model']} | " + " | ".join(f"{row[f'{k}_ms']:.0f}" for k in keys)
                     + f" | {best} | {row['shipped']} |")  # fmt: skip
    (args.out / "xla_options.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
