"""Fine-tune InceptionV3 on a new set of classes — the fourth example of the Keras applications documentation.

Keras::

    base_model = InceptionV3(weights="imagenet", include_top=False)
    x = GlobalAveragePooling2D()(base_model.output)
    x = Dense(1024, activation="relu")(x)
    predictions = Dense(200, activation="softmax")(x)
    model = Model(inputs=base_model.input, outputs=predictions)
    for layer in base_model.layers:                    # phase 1: train the new head only
        layer.trainable = False
    model.compile(optimizer="rmsprop", loss="categorical_crossentropy")
    model.fit(...)
    for layer in model.layers[:249]:                   # phase 2: also the top two inception blocks
        layer.trainable = False
    for layer in model.layers[249:]:
        layer.trainable = True
    model.compile(optimizer=SGD(learning_rate=0.0001, momentum=0.9), loss="categorical_crossentropy")
    model.fit(...)

flaxzoo: the backbone is a submodule of your own ``nn.Module``; ``flaxzoo.load_pretrained`` places its
pretrained variables in the new tree (and says what it left as initialised: the new head);
``flaxzoo.freeze`` (batch norms of frozen layers stay in inference mode, as Keras') and
``flaxzoo.trainable_mask`` (for ``optax.multi_transform``) take the same layer index 249.

    python examples/finetune_inception_v3.py --data train/ --weights imagenet
    (train/ holds one sub-folder of images per class, as for keras.utils.image_dataset_from_directory)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn

import flaxzoo
from flaxzoo.image import img_to_array, load_img
from flaxzoo.inception_v3 import InceptionV3, preprocess_input

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif"}


class Classifier(nn.Module):
    """backbone → GlobalAveragePooling → Dense(1024, relu) → Dense(classes): Keras' new head (logits)."""

    backbone: nn.Module
    classes: int

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = self.backbone(x, train=train)
        x = jnp.mean(x, axis=(1, 2))
        x = nn.relu(nn.Dense(1024, name="dense")(x))
        return nn.Dense(self.classes, name="predictions")(x)


def load_folder(root: str, size: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """All images of ``root/<class>/*``, resized to ``size`` and preprocessed; integer labels by sorted class."""
    classes = sorted(p.name for p in Path(root).iterdir() if p.is_dir())
    images, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((Path(root) / name).iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                images.append(img_to_array(load_img(path, target_size=(size, size))))
                labels.append(label)
    return preprocess_input(np.stack(images)), np.asarray(labels), classes


def fit(model, variables, optimizer, mask, x, y, *, steps: int, batch_size: int, seed: int) -> tuple[dict, list[float]]:
    """``steps`` SGD steps on random batches; frozen parameters get no update (``optax.set_to_zero``)."""
    labels = jax.tree_util.tree_map(lambda trainable: "train" if trainable else "frozen", mask)
    tx = optax.multi_transform({"train": optimizer, "frozen": optax.set_to_zero()}, labels)
    opt_state = tx.init(variables["params"])

    @jax.jit
    def step(variables, opt_state, xb, yb):
        def loss_fn(params):
            logits, updates = model.apply(
                {**variables, "params": params}, xb, train=True, mutable=["batch_stats"]
            )
            return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean(), updates

        (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
        deltas, opt_state = tx.update(grads, opt_state, variables["params"])
        params = optax.apply_updates(variables["params"], deltas)
        return {**variables, **updates, "params": params}, opt_state, loss

    rng = np.random.default_rng(seed)
    losses = []
    for _ in range(steps):
        idx = rng.choice(len(x), size=min(batch_size, len(x)), replace=False)
        variables, opt_state, loss = step(variables, opt_state, x[idx], y[idx])
        losses.append(float(loss))
    return variables, losses


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="training images, one sub-folder per class")
    parser.add_argument("--weights", default="imagenet", help="'imagenet', a Keras no-top .h5 file or a flaxzoo checkpoint")
    parser.add_argument("--image-size", type=int, default=299, help="square input size, at least 75 (default 299)")
    parser.add_argument("--steps", type=int, nargs=2, default=(100, 100), metavar=("HEAD", "TOP_BLOCKS"),
                        help="steps of phase 1 (new head) and phase 2 (head and top two inception blocks)")  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)

    size = args.image_size
    x, y, class_names = load_folder(args.data, size)
    print(f"{len(x)} images, {len(class_names)} classes: {', '.join(class_names)}")

    base_model, pretrained = InceptionV3(weights=args.weights, include_top=False, input_shape=(size, size, 3))
    model = Classifier(base_model.clone(name="backbone"), classes=len(class_names))
    variables = model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)))
    variables, report = flaxzoo.load_pretrained(variables, pretrained, at="backbone")
    print(report)

    # Phase 1: every layer of the base frozen; only the new head trains (RMSprop, as Keras' "rmsprop").
    frozen = flaxzoo.freeze(base_model, lambda name: True)
    head_only = Classifier(frozen.clone(name="backbone"), classes=len(class_names))
    mask = flaxzoo.trainable_mask(frozen, variables, at="backbone")
    variables, losses_1 = fit(head_only, variables, optax.rmsprop(1e-3), mask, x, y,
                              steps=args.steps[0], batch_size=args.batch_size, seed=1)  # fmt: skip
    print(f"phase 1 (new head): loss {losses_1[0]:.4f} -> {losses_1[-1]:.4f}")

    # Phase 2: Keras' ``model.layers[:249]`` frozen (up to and including mixed8), SGD(1e-4, momentum 0.9).
    frozen = flaxzoo.freeze(base_model, 249)
    top_blocks = Classifier(frozen.clone(name="backbone"), classes=len(class_names))
    mask = flaxzoo.trainable_mask(frozen, variables, at="backbone")
    variables, losses_2 = fit(top_blocks, variables, optax.sgd(1e-4, momentum=0.9), mask, x, y,
                              steps=args.steps[1], batch_size=args.batch_size, seed=2)  # fmt: skip
    print(f"phase 2 (top two inception blocks): loss {losses_2[0]:.4f} -> {losses_2[-1]:.4f}")
    return losses_1, losses_2


if __name__ == "__main__":
    main()
