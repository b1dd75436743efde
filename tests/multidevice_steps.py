"""Run by test_train in a subprocess with 8 simulated CPU devices (XLA_FLAGS set by the caller): one train
step on one device, on an 8-device mesh (jit + NamedSharding) and under pmap, on the same global batch;
then a checkpoint written from the 8-device mesh restored onto 1 device. Prints a JSON report.

64x64 inputs: at 32x32 MobileNet's last blocks are 1x1, their train-mode batch norms normalise over 16
values, and the float32 gradient of the randomly initialised network is ill-conditioned (1-device jit,
8-device jit and eager runs then differ from a float64 reference, and from each other, by ~1e-3 after
one step); at 64x64 the three runs agree to ~1e-7.

Compiled as users' programs are: without the suite's LLVM -O0 (a compile-time saving), under which the
1-device and 8-device programs contract multiply-adds differently and differ by 1.5e-5; and in Keras'
convolution operations (see the end)."""

import json
import os
import sys
import tempfile

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "").replace("--xla_backend_optimization_level=0", "")

import jax  # noqa: E402
import numpy as np  # noqa: E402

import flaxzoo  # noqa: E402
from flaxzoo import sharding, train  # noqa: E402


def main():
    assert jax.device_count() == 8, jax.devices()
    model, variables = flaxzoo.MobileNet(
        input_shape=(64, 64, 3), alpha=0.25, dropout=0.0, weights=None, classes=5, classifier_activation=None
    )
    rng = np.random.default_rng(0)
    batch = {"image": rng.normal(size=(16, 64, 64, 3)).astype(np.float32), "label": rng.integers(0, 5, 16).astype(np.int32)}
    tx = train.make_optimizer("momentum", 1e-3)
    state = train.create_train_state(variables, tx)

    def jit_step(devices):
        mesh = sharding.data_mesh(devices)
        steps = train.make_steps(model, tx, mesh)
        new, metrics = steps.train(sharding.replicate(state, mesh), sharding.global_batch(batch, mesh))
        return jax.device_get(new), jax.device_get(metrics)

    one, m_one = jit_step(jax.devices()[:1])
    eight, m_eight = jit_step(jax.devices())

    steps = train.make_pmap_steps(model, tx)
    new, m_pmap = steps.train(sharding.pmap_replicate(state), sharding.pmap_split(batch))
    pmapped, m_pmap = jax.device_get(sharding.pmap_unreplicate(new)), jax.device_get(sharding.pmap_unreplicate(m_pmap))

    def max_diff(a, b):
        return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in
                   zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))  # fmt: skip

    def moved(a):
        return max_diff(a.params, state.params)

    report = {
        "jit8_vs_1": max_diff((eight.params, eight.batch_stats), (one.params, one.batch_stats)),
        "pmap_vs_1": max_diff((pmapped.params, pmapped.batch_stats), (one.params, one.batch_stats)),
        "moved": moved(one),
        "loss": [float(m_one["loss"]), float(m_eight["loss"]), float(m_pmap["loss"])],
    }

    # A checkpoint saved from the 8-device mesh, restored onto one device.
    mesh8 = sharding.data_mesh()
    replicated = sharding.replicate(eight, mesh8)
    with tempfile.TemporaryDirectory() as d:
        with train.TrainCheckpoints(d) as ckpts:
            ckpts.save(1, replicated, {"epoch": 0}, force=True)
        with train.TrainCheckpoints(d) as ckpts:
            mesh1 = sharding.data_mesh(jax.devices()[:1])
            restored, record = ckpts.restore(state, sharding.replicated(mesh1))
        report["restored_devices"] = len(jax.tree_util.tree_leaves(restored)[0].devices())
        report["restored_vs_saved"] = max_diff(jax.device_get(restored), eight)
        report["record"] = record
    json.dump(report, sys.stdout)


if __name__ == "__main__":
    # Keras' convolution operations: this checks what sharding does to a step (batch norm over the global
    # batch, averaged gradients). The CPU forms' matrix products block differently for 16 images on one
    # device and 2 per device, which alone moved the parameters by 1.6e-5 (against 1.4e-7 this way).
    from flaxzoo import layers

    with layers.conv_implementation("keras"):
        main()
