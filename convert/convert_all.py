#!/usr/bin/env python
"""Convert every Keras Applications weight file found in a folder into flaxzoo checkpoints.

    python convert/convert_all.py KERAS_DIR OUT_DIR [--verify]

A file is recognised by its name (the ``fname`` of a registered model's weight variant, e.g.
``resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5``), checked against the published md5 where
Keras publishes one (a mismatch is warned about and skipped), and written to ``OUT_DIR/<model>/<variant>``
(an existing checkpoint there is kept). With ``--verify`` (Keras installed; the JAX backend is used), the
Keras model is built with ``weights=<file>`` and compared with the converted checkpoint on a random
batch under ``jax.default_matmul_precision("highest")``: the largest absolute difference is printed.

Exit status: 0, or 1 when nothing was found or a conversion or verification failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

import numpy as np

from flaxzoo.zoo import build_model, convert_to_checkpoint, get_spec, list_models, preprocess
from flaxzoo.registry import ModelSpec, WeightFile
from flaxzoo.weights import checkpoint, md5sum

# Largest difference accepted by --verify: probabilities absolute; features relative to their largest
# magnitude (the tolerances of tests/test_parity.py).
PROB_ATOL = 1e-5
FEATURE_RTOL = 1e-4


@dataclasses.dataclass(frozen=True)
class Found:
    spec: ModelSpec
    variant: str
    weight_file: WeightFile
    path: Path


def find_files(keras_dir: Path) -> list[Found]:
    """Every registered model's weight files present in ``keras_dir``, in registry order."""
    found = []
    for name in list_models():
        spec = get_spec(name)
        for variant, wf in spec.weights.items():
            # Keras' cache name, or the name in the URL (NASNet-mobile.h5 is cached as nasnet_mobile.h5)
            for fname in dict.fromkeys((wf.fname, wf.path.rsplit("/", 1)[-1])):
                if (keras_dir / fname).is_file():
                    found.append(Found(spec, variant, wf, keras_dir / fname))
                    break
    return found


def md5_problem(item: Found) -> str | None:
    """Why the file is not the published one (md5), or None."""
    expected = item.weight_file.md5
    if expected is None:
        return None
    got = md5sum(item.path)
    if got == expected:
        return None
    reason = item.spec.foreign_files.get(got, "not the published file")
    return f"md5 {got}, expected {expected}: {reason}"


def random_batch(spec: ModelSpec, n: int = 2, seed: int = 0) -> np.ndarray:
    """``n`` random RGB images in [0, 255] at the default size, preprocessed for ``spec``."""
    size = spec.default_size
    x = np.random.default_rng(seed).uniform(0, 255, (n, size, size, 3)).astype(np.float32)
    return preprocess(spec, x)


def import_keras():
    os.environ.setdefault("KERAS_BACKEND", "jax")
    try:
        import keras
    except ImportError as e:
        raise SystemExit(f"convert_all: --verify needs keras (pip install keras): {e}") from None
    if keras.backend.backend() != "jax":
        raise SystemExit(f"convert_all: --verify needs KERAS_BACKEND=jax, not {keras.backend.backend()!r}")
    return keras


def verify(item: Found, ckpt_dir: Path, keras) -> tuple[float, float, bool]:
    """(max |flaxzoo - Keras|, max |Keras|, within tolerance) on a random batch."""
    import jax

    include_top = item.variant == "top"
    x = random_batch(item.spec)
    with jax.default_matmul_precision("highest"):
        ref_model = getattr(keras.applications, item.spec.keras_name)(
            include_top=include_top, weights=str(item.path)
        )
        ref = np.asarray(ref_model(x, training=False))
        model, variables = build_model(item.spec, str(ckpt_dir), item.variant)
        ours = np.asarray(jax.jit(model.apply)(variables, x))
    keras.backend.clear_session()
    if ours.shape != ref.shape:
        return float("inf"), float(np.abs(ref).max()), False
    diff, scale = float(np.abs(ours - ref).max()), float(np.abs(ref).max())
    return diff, scale, diff <= (PROB_ATOL if include_top else FEATURE_RTOL * scale)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("keras_dir", type=Path, metavar="KERAS_DIR", help="folder holding Keras .h5 files")
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="checkpoints go to OUT_DIR/<model>/<variant>")
    parser.add_argument("--verify", action="store_true", help="compare each checkpoint with Keras on a random batch")
    args = parser.parse_args(argv)
    if not args.keras_dir.is_dir():
        parser.error(f"{args.keras_dir}: not a directory")
    keras = import_keras() if args.verify else None

    found = find_files(args.keras_dir)
    if not found:
        print(f"no Keras application weight file of a registered model in {args.keras_dir}", file=sys.stderr)
        return 1
    failed = skipped = converted = 0
    for item in found:
        label = f"{item.spec.name}/{item.variant} ({item.path.name})"
        problem = md5_problem(item)
        if problem:
            print(f"warning: {label}: {problem}; skipped", file=sys.stderr)
            skipped += 1
            continue
        target = args.out_dir / item.spec.name / item.variant
        if checkpoint.is_checkpoint(target):
            print(f"{label}: {target} exists, kept")
        else:
            try:
                info = convert_to_checkpoint(item.spec, item.path, target, item.variant)
            except ValueError as e:
                print(f"error: {label}: {e}", file=sys.stderr)
                failed += 1
                continue
            converted += 1
            print(f"{label}: {info['params']:,} params (md5 {info['source']['md5']}) -> {info['path']}")
        if keras is not None:
            try:
                diff, scale, ok = verify(item, target, keras)
            except ValueError as e:
                print(f"error: {label}: verification failed: {e}", file=sys.stderr)
                failed += 1
                continue
            failed += not ok
            print(f"  verify {label}: max |flaxzoo - keras| = {diff:.3g} (max |keras| {scale:.3g}) "
                  f"{'ok' if ok else 'TOO LARGE'}")  # fmt: skip
    print(f"{converted} converted, {skipped} skipped, {failed} failed, of {len(found)} file(s) found")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
