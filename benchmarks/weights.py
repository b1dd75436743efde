"""Weight loading: restoring ResNet50 from the flaxzoo (orbax) cache and from a .safetensors file against
converting its Keras .h5,
and the peak memory of converting a VGG16-sized file (the converter streams layer by layer), and with
``--large convnext_xlarge`` a 1.4 GB one (its no-top file).

    python benchmarks/weights.py [--large convnext_xlarge]

Uses random-weight .h5 files written by Keras (the published files are not needed). Each measurement
runs in a fresh process, so peak RSS is that of the step alone. Writes results/weights.json and .md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("KERAS_BACKEND", "jax")

STEP = r"""
import json, sys, time
sys.path.insert(0, {here!r})
import numpy as np
import jax
from common import peak_rss_mb, rss_mb
from flaxzoo.zoo import get_spec
spec = get_spec({model!r})
base = rss_mb()
start = time.perf_counter()
model, variables = spec.constructor(include_top={top!r}, weights={weights!r})
jax.block_until_ready(variables)
seconds = time.perf_counter() - start
print(json.dumps({{"seconds": seconds, "peak_rss_mb": peak_rss_mb(),
                   "rss_before_mb": base}}))
"""


def measure(model: str, weights: str, top: bool) -> dict:
    """One constructor call in a fresh process."""
    code = STEP.format(here=str(HERE), model=model, weights=weights, top=top)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def write_h5(name: str, top: bool, path: Path) -> Path:
    import h5py
    import numpy as np
    from common import keras_model
    from keras.src.legacy.saving import legacy_h5_format

    from flaxzoo.zoo import get_spec

    model = keras_model(get_spec(name), include_top=top)
    # Random values (not the builder's placeholder zeros): orbax compresses, so zeros would flatter the cache.
    rng = np.random.default_rng(0)
    for w in model.weights:
        w.assign(np.abs(rng.standard_normal(w.shape, dtype=np.float32)) * 0.05)
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)
    return path


def main(repeats: int = 5, large: str | None = None):
    from flaxzoo.zoo import convert_to_checkpoint, get_spec

    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        h5 = write_h5("resnet50", True, tmp / "resnet50.h5")
        ckpt = convert_to_checkpoint(get_spec("resnet50"), h5, tmp / "resnet50_ckpt")["path"]
        st = convert_to_checkpoint(get_spec("resnet50"), h5, tmp / "resnet50.safetensors", format="safetensors")["path"]
        vgg = write_h5("vgg16", True, tmp / "vgg16.h5")
        # The builders' memory released before the children start (and peak RSS read as VmHWM: ru_maxrss
        # would carry a forking parent's high-water mark into the child).
        import keras

        keras.backend.clear_session()
        os.sync()
        h5_runs, ckpt_runs, st_runs = [], [], []
        for _ in range(repeats):  # alternating, so that all see the same machine
            h5_runs.append(measure("resnet50", str(h5), True))
            ckpt_runs.append(measure("resnet50", ckpt, True))
            st_runs.append(measure("resnet50", st, True))
        median = lambda runs: dict(sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2], repeats=len(runs))  # noqa: E731
        rows["resnet50_from_h5"], rows["resnet50_from_orbax"] = median(h5_runs), median(ckpt_runs)
        rows["resnet50_from_safetensors"] = median(st_runs)
        rows["resnet50_speedup"] = rows["resnet50_from_h5"]["seconds"] / rows["resnet50_from_orbax"]["seconds"]
        rows["vgg16_from_h5"] = dict(measure("vgg16", str(vgg), True), file_mb=vgg.stat().st_size / 2**20)
        if large:
            big = write_h5(large, False, tmp / f"{large}_notop.h5")
            keras.backend.clear_session()
            rows["large_from_h5"] = dict(measure(large, str(big), False), file_mb=big.stat().st_size / 2**20, model=large)
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "weights.json").write_text(json.dumps(rows, indent=1))
    r, o, v = rows["resnet50_from_h5"], rows["resnet50_from_orbax"], rows["vgg16_from_h5"]
    s = rows["resnet50_from_safetensors"]
    table = "\n".join([
        "| step | seconds | peak RSS MB |", "|---|---:|---:|",
        f"| ResNet50 from .h5 (convert; median of {r['repeats']}) | {r['seconds']:.3f} | {r['peak_rss_mb']:.0f} |",
        f"| ResNet50 from the orbax cache (median of {o['repeats']}) | {o['seconds']:.3f} | {o['peak_rss_mb']:.0f} |",
        f"| ResNet50 from a .safetensors file (median of {s['repeats']}) | {s['seconds']:.3f} | {s['peak_rss_mb']:.0f} |",
        f"| VGG16 top from .h5 ({v['file_mb']:.0f} MB file) | {v['seconds']:.2f} | {v['peak_rss_mb']:.0f} (before: {v['rss_before_mb']:.0f}) |",
        "", f"Restoring ResNet50 from the cache is {rows['resnet50_speedup']:.1f}x faster than converting the .h5.",
    ])  # fmt: skip
    if large:
        g = rows["large_from_h5"]
        table += (
            f"\n\n{g['model']} without the top from .h5 ({g['file_mb']:.0f} MB file): {g['seconds']:.1f} s, peak RSS "
            f"{g['peak_rss_mb']:.0f} MB, {(g['peak_rss_mb'] - g['rss_before_mb']) / g['file_mb']:.2f}x the file above "
            f"the {g['rss_before_mb']:.0f} MB before."
        )
    (out / "weights.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="fresh processes per ResNet50 step (median)")
    parser.add_argument("--large", help="also convert this model's no-top file (e.g. convnext_xlarge, 1.4 GB)")
    args = parser.parse_args()
    main(args.repeats, args.large)
