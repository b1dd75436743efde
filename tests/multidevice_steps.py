"""Run by test_train in a subprocess with 8 simulated CPU devices (XLA_FLAGS set by the caller).

One train step of a small MobileNet on the same global batch of 16, computed
- in float64 on one device: the reference, the step's exact semantics up to float64 rounding;
- in float32 on one device, on an 8-device mesh (jit + NamedSharding) and under pmap;
- under pmap with each of three broken semantics injected (batch-norm statistics per device, gradients
  summed over devices, the variance of the batch-norm statistics not averaged over devices);
then a checkpoint written from the 8-device mesh is restored onto one device. Prints a JSON report of each
float32 update's distance from the reference, relative to the size of the update; test_train decides.

The comparison is against float64, so which XLA:CPU kernels a CPU gets (their blocking and reduction
order) changes a float32 run's distance from the reference only within float32 rounding: the default
convolution forms, Keras' forms, LLVM -O0 or not and XLA's AVX2 kernels all gave 2.82-2.86e-3 of the
update on an AMD EPYC (the bound is 2.7e-2, the faults 2.0-7.0). Weights: flaxzoo.testing.random_variables
(He-scaled, as trained weights are: a Glorot-initialised MobileNet's gradient is ill-conditioned at this
depth)."""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np

from flaxzoo import layers, sharding, train
from flaxzoo.models import common
from flaxzoo.testing import random_variables
from flaxzoo.train import steps as steps_lib
from tolerances import relative_distance

SIZE, BATCH, CLASSES = 64, 16, 5


def leaves(tree) -> list[np.ndarray]:
    return [np.asarray(x, np.float64) for x in jax.tree_util.tree_leaves(jax.device_get(tree))]


def float64_step(model, tx, variables, batch):
    """The single-device step in float64. Model inputs are cast to float32 as in Keras: kept in float64 here."""
    keras_cast = common.check_input

    def keep_float64(module, x):
        return x if x.dtype == jnp.float64 else keras_cast(module, x)

    enable_x64 = jax.enable_x64 if hasattr(jax, "enable_x64") else jax.experimental.enable_x64
    common.check_input = keep_float64
    try:
        with enable_x64(True):
            wide = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), variables)
            state = train.create_train_state(wide, tx)
            step = jax.jit(lambda s, b: steps_lib._train_step(model, tx, train.StepConfig(), s, b))
            new, metrics = step(state, {"image": batch["image"].astype(np.float64), "label": batch["label"]})
            return jax.device_get(new), float(metrics["loss"])
    finally:
        common.check_input = keras_cast


# Broken semantics, each patched into the pmap step while it is traced.
def local_variance(x, axes):  # the mean is the global batch's, the variance each device's own
    mean = jax.lax.pmean(jnp.mean(x, axes), steps_lib.PMAP_AXIS)
    return mean, jnp.mean(jnp.square(x - mean), axes)


FAULTS = {
    "bn_statistics_per_device": lambda: mock.patch.object(
        steps_lib, "cross_replica_batch_norm", lambda axis: contextlib.nullcontext()
    ),
    "gradients_summed": lambda: mock.patch.object(
        steps_lib, "average_over_devices", lambda t: jax.lax.psum(t, steps_lib.PMAP_AXIS)
    ),
    "bn_variance_not_averaged": lambda: mock.patch.object(layers, "batch_moments", local_variance),
}


def main():
    assert jax.device_count() == 8, jax.devices()
    model, variables = random_variables(
        "mobilenet",
        0,
        input_shape=(SIZE, SIZE, 3),
        alpha=0.25,
        dropout=0.0,
        classes=CLASSES,
        classifier_activation=None,
    )
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.normal(size=(BATCH, SIZE, SIZE, 3)).astype(np.float32),
        "label": rng.integers(0, CLASSES, BATCH).astype(np.int32),
    }
    tx = train.make_optimizer("momentum", 1e-3)
    state = train.create_train_state(variables, tx)
    reference, reference_loss = float64_step(model, tx, variables, batch)

    def jit_step(devices):
        mesh = sharding.data_mesh(devices)
        steps = train.make_steps(model, tx, mesh)
        return steps.train(sharding.replicate(state, mesh), sharding.global_batch(batch, mesh))

    def pmap_step():
        steps = train.make_pmap_steps(model, tx)
        new, metrics = steps.train(sharding.pmap_replicate(state), sharding.pmap_split(batch))
        return sharding.pmap_unreplicate(new), sharding.pmap_unreplicate(metrics)

    runs = {
        "one_device": jit_step(jax.devices()[:1]),
        "jit_8_devices": jit_step(jax.devices()),
        "pmap_8_devices": pmap_step(),
    }
    for fault, inject in FAULTS.items():
        with inject():
            runs[fault] = pmap_step()

    report = {
        # what the rounding bound is made of (tolerances.training_rtol)
        "weighted_layers": sum(
            1 for layer in variables["params"].values() if "kernel" in layer or "depthwise_kernel" in layer
        ),
        # the longest float32 sum of the step: the first convolution's kernel gradient and its batch norm's
        # statistics run over every output pixel of the batch; every other reduction is shorter
        "longest_sum": BATCH * (SIZE // 2) ** 2,
    }
    report["runs"] = {
        name: {
            "params": relative_distance(jax.device_get(new.params), reference.params, state.params),
            "batch_stats": relative_distance(jax.device_get(new.batch_stats), reference.batch_stats, state.batch_stats),
            "loss": abs(float(metrics["loss"]) - reference_loss) / reference_loss,
        }
        for name, (new, metrics) in runs.items()
    }

    # A checkpoint saved from the 8-device mesh, restored onto one device.
    eight = jax.device_get(runs["jit_8_devices"][0])
    mesh8 = sharding.data_mesh()
    with tempfile.TemporaryDirectory() as d:
        with train.TrainCheckpoints(d) as ckpts:
            ckpts.save(1, sharding.replicate(eight, mesh8), {"epoch": 0}, force=True)
        with train.TrainCheckpoints(d) as ckpts:
            restored, record = ckpts.restore(state, sharding.replicated(sharding.data_mesh(jax.devices()[:1])))
        report["checkpoint"] = {
            "restored_devices": len(jax.tree_util.tree_leaves(restored)[0].devices()),
            "restored_equal": all(np.array_equal(a, b) for a, b in zip(leaves(restored), leaves(eight))),
            "record": record,
        }
    json.dump(report, sys.stdout)


if __name__ == "__main__":
    main()
