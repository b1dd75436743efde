"""Fine-tuning: train state and optimizers, jit (NamedSharding) and pmap steps, the grain input pipeline,
checkpoints, and the ``flaxzoo finetune`` loop.

    from flaxzoo import sharding, train
    model, variables = flaxzoo.ResNet50(weights=None, classes=10, classifier_activation=None)
    tx = train.make_optimizer("adam", 1e-3, mask=flaxzoo.trainable_mask(model, variables))
    mesh = sharding.data_mesh()
    steps = train.make_steps(model, tx, mesh)
    state = sharding.replicate(train.create_train_state(variables, tx), mesh)
    state, metrics = steps.train(state, sharding.global_batch({"image": x, "label": y}, mesh))
"""

from flaxzoo.train.checkpoints import TrainCheckpoints
from flaxzoo.train.faults import Interrupted
from flaxzoo.train.state import OPTIMIZERS, TrainState, create_train_state, make_optimizer
from flaxzoo.train.steps import StepConfig, Steps, make_pmap_steps, make_steps

__all__ = [
    "OPTIMIZERS",
    "ArraySource",
    "Augment",
    "ImageFolder",
    "Interrupted",
    "StepConfig",
    "Steps",
    "TrainCheckpoints",
    "TrainState",
    "create_train_state",
    "eval_batches",
    "make_optimizer",
    "make_pmap_steps",
    "make_steps",
    "scan_image_folder",
    "train_batches",
]

_DATA = {"ArraySource", "Augment", "ImageFolder", "eval_batches", "scan_image_folder", "train_batches"}


def __getattr__(name):
    # the input pipeline (and grain) loads on first use: steps alone run where grain is not installed
    if name in _DATA:
        from flaxzoo.train import data

        return getattr(data, name)
    raise AttributeError(f"module 'flaxzoo.train' has no attribute {name!r}")
