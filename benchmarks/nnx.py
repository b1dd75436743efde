"""The NNX face's overhead against the linen model, under jit, alternating in one process.

    python benchmarks/nnx.py [--models resnet50,mobilenet] [--batch 8] [--repeats 7]

Rows per model: the eval forward pass (``jax.jit(module.apply)`` against ``nnx.jit`` of ``model(x)``) and
one SGD train step (``flaxzoo.train.make_steps`` against an ``nnx.Optimizer`` step under ``nnx.jit``), at
the given batch and at batch 1, where per-call Python overhead shows most; the forward pass also as NNX's
functional form (``nnx.split`` once, ``jax.jit`` of ``nnx.merge(graphdef, state)(x)``). Both sides compile with XLA's
default options (``nnx.jit`` takes no ``compiler_options``; flaxzoo's train steps use the defaults), so the
ratio is the NNX face's own cost. The calls alternate (A B A B ...); medians in ms, ratio NNX / linen.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import flaxzoo
import flaxzoo.nnx as fnnx
from flaxzoo.sharding import data_mesh, global_batch, replicate
from flaxzoo.train import create_train_state
from flaxzoo.train.steps import make_steps

from common import block, machine, median, timed

RESULTS = Path(__file__).parent / "results"


def _alternate(*fns, repeats: int) -> list[float]:
    """Median seconds of each fn(), called in turn (A B C A B C ...) after one warm-up call each."""
    for fn in fns:
        block(fn())
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts in zip(fns, times):
            ts.append(timed(fn))
    return [median(ts) for ts in times]


def _loss(logits, labels):
    return optax.softmax_cross_entropy(logits, jax.nn.one_hot(labels, logits.shape[-1])).mean()


def forward(module, variables, batch: int, repeats: int) -> dict:
    x = jax.random.uniform(jax.random.key(0), (batch, *module.traced_shape[1:]), minval=-1.0, maxval=1.0)
    linen = jax.jit(module.apply)
    model = fnnx.from_linen(module, variables)
    nnx_call = nnx.jit(lambda m, x: m(x))
    # NNX's functional form for a hot loop: split once, jax.jit a merge-and-call (no graph walk per call)
    graphdef, state = nnx.split(model)
    split_call = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))
    t_linen, t_nnx, t_split = _alternate(
        lambda: linen(variables, x), lambda: nnx_call(model, x), lambda: split_call(state, x), repeats=repeats
    )
    return {"linen_ms": 1e3 * t_linen, "nnx_ms": 1e3 * t_nnx, "ratio": t_nnx / t_linen, "nnx_split_ms": 1e3 * t_split}


def train_step(module, variables, batch: int, repeats: int) -> dict:
    images = jax.random.uniform(jax.random.key(1), (batch, *module.traced_shape[1:]), minval=-1.0, maxval=1.0)
    labels = jax.random.randint(jax.random.key(2), (batch,), 0, module.classes)
    tx = optax.sgd(0.01, momentum=0.9)
    mesh = data_mesh(jax.devices()[:1])
    steps = make_steps(module, tx, mesh)
    # laid out as the step returns it (else the second call compiles again); the step donates it
    state = [replicate(create_train_state(jax.tree_util.tree_map(jnp.array, variables), tx), mesh)]
    data = global_batch({"image": images, "label": labels}, mesh)

    def linen():
        state[0], metrics = steps.train(state[0], data)
        return metrics

    model = fnnx.from_linen(module, jax.tree_util.tree_map(jnp.array, variables))
    model.train()
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    @nnx.jit
    def nnx_step(model, optimizer, images, labels):
        loss, grads = nnx.value_and_grad(lambda m: _loss(m(images), labels))(model)
        optimizer.update(model, grads)
        return loss

    t_linen, t_nnx = _alternate(linen, lambda: nnx_step(model, optimizer, images, labels), repeats=repeats)
    return {"linen_ms": 1e3 * t_linen, "nnx_ms": 1e3 * t_nnx, "ratio": t_nnx / t_linen}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet50,mobilenet")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    rows = []
    for name in args.models.split(","):
        module, variables = flaxzoo.create_model(name, weights=None)
        for batch in sorted({1, args.batch}):
            for what, fn in (("forward", forward), ("train step", train_step)):
                row = {"model": name, "what": what, "batch": batch, **fn(module, variables, batch, args.repeats)}
                rows.append(row)
                split = f", nnx split/merge {row['nnx_split_ms']:8.2f} ms" if "nnx_split_ms" in row else ""
                print(f"{name:14s} {what:10s} batch {batch:3d}: linen {row['linen_ms']:8.2f} ms, "
                      f"nnx {row['nnx_ms']:8.2f} ms, nnx/linen {row['ratio']:.3f}{split}", flush=True)  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "nnx.json"
    out.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
