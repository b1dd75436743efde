"""Wall time of one classification from a cold process: ``flaxzoo predict IMAGE --model M --weights CHECKPOINT``,
the first time (an empty compilation cache) and the second (the cache written by the first), beside the same job
as a Keras script on the JAX backend and, with a TensorFlow Python, on the TensorFlow backend.

    python benchmarks/cold_start.py --model resnet50 --repeats 3 --tf-python ~/tf/bin/python

Every run is a fresh process; the weights are random (a Keras-written legacy .h5, converted to a flaxzoo
checkpoint once, before timing). Each repeat clears the cache before its "first" run. The table reports medians
and the ratio first / second; the Keras jobs have no second-run cache (Keras enables none).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("FLAXZOO_SHARED_DIR", HERE.parents[1] / "shared"))

KERAS_JOB = """
import sys
import keras
import numpy as np
app = getattr(keras.applications, sys.argv[1])
module = sys.modules[app.__module__]
model = app(weights=sys.argv[2])
size = model.input_shape[1:3]
x = keras.utils.img_to_array(keras.utils.load_img(sys.argv[3], target_size=size))[None]
preds = model.predict(module.preprocess_input(x), verbose=0)
print(keras.applications.imagenet_utils.decode_predictions(preds, top=5)[0][0])
"""

MAKE_WEIGHTS = """
import sys
import h5py
import keras
from keras.src.legacy.saving import legacy_h5_format
model = getattr(keras.applications, sys.argv[1])(weights=None)
with h5py.File(sys.argv[2], "w") as f:
    legacy_h5_format.save_weights_to_hdf5_group(f, model)
"""


def run(argv, env) -> float:
    start = time.perf_counter()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"{' '.join(map(str, argv))} failed:\n{proc.stderr[-3000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--image", default=str(SHARED / "data" / "elephant.jpg"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tf-python", help="a Python with TensorFlow (and its Keras 3) for the TensorFlow column")
    args = parser.parse_args()

    from flaxzoo.zoo import get_spec

    spec = get_spec(args.model)
    work = Path(tempfile.mkdtemp(prefix="cold-start-"))
    keras_home = work / "keras"
    (keras_home / "models").mkdir(parents=True)
    shutil.copy(SHARED / "data" / "imagenet_class_index.json", keras_home / "models")
    base = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_COMPILATION_CACHE", "FLAXZOO_"))}
    base.update(KERAS_HOME=str(keras_home), FLAXZOO_BASE_URL="http://127.0.0.1:9")
    h5 = work / f"{spec.name}.h5"
    run([sys.executable, "-c", MAKE_WEIGHTS, spec.keras_name, h5], dict(base, KERAS_BACKEND="jax"))
    ckpt = work / "checkpoint"
    run([shutil.which("flaxzoo", path=str(Path(sys.executable).parent)), "convert", "--model", spec.name, "--h5", h5,
         "--out", ckpt], base)  # fmt: skip
    flaxzoo = [shutil.which("flaxzoo", path=str(Path(sys.executable).parent)), "predict", args.image, "--model",
               spec.name, "--weights", ckpt]  # fmt: skip
    home = work / "home"
    jobs = {"flaxzoo, first": [], "flaxzoo, second": [], "Keras-JAX": [], "Keras-TF": []}
    for _ in range(args.repeats):
        shutil.rmtree(home, ignore_errors=True)
        env = dict(base, FLAXZOO_HOME=str(home))
        jobs["flaxzoo, first"].append(run(flaxzoo, env))
        jobs["flaxzoo, second"].append(run(flaxzoo, env))
        jobs["Keras-JAX"].append(run([sys.executable, "-c", KERAS_JOB, spec.keras_name, h5, args.image],
                                     dict(base, KERAS_BACKEND="jax")))  # fmt: skip
        if args.tf_python:
            jobs["Keras-TF"].append(run([args.tf_python, "-c", KERAS_JOB, spec.keras_name, h5, args.image],
                                        dict(base, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2")))  # fmt: skip
    medians = {name: statistics.median(times) for name, times in jobs.items() if times}
    print(f"{spec.keras_name}, one image, cold process, median of {args.repeats} (s): all runs {jobs}")
    print("| job | wall s | vs flaxzoo second |")
    print("|---|---:|---:|")
    for name, t in medians.items():
        print(f"| {name} | {t:.2f} | {t / medians['flaxzoo, second']:.2f}x |")
    print(f"first / second: {medians['flaxzoo, first'] / medians['flaxzoo, second']:.2f}x")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
