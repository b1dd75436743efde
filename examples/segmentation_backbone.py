"""Semantic segmentation on a pretrained backbone: a small FPN head in Flax on ``features_only`` MobileNetV2.

The backbone gives the feature maps at strides 4, 8, 16 and 32 (``out_indices=(1, 2, 3, 4)``; their channels
are in ``backbone.feature_info`` before anything runs). The head is a feature pyramid (Lin et al., 2017):
1x1 lateral convolutions to a common width, a top-down pathway that upsamples and adds, then a 3x3
convolution and per-pixel logits at stride 4, resized to the image. The data are generated: noise images with
a disc and a square of random colours, sizes and places; the classes are background, disc and square.

The backbone trains with its batch statistics (``train=True``) at a tenth of the head's learning rate:
``flaxzoo.param_groups`` labels its parameters by stage ("stem", "stage1", ...), the new head's are "head", and
``optax.multi_transform`` takes a learning rate per label (any schedule per stage fits there).

    python examples/segmentation_backbone.py --weights imagenet --steps 200
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn

import flaxzoo
from flaxzoo.mobilenet_v2 import MobileNetV2, preprocess_input

CLASSES = ("background", "disc", "square")


class FPNSegmenter(nn.Module):
    """backbone → feature pyramid (``width`` channels) → per-pixel logits of ``classes``, at the input size."""

    backbone: nn.Module
    classes: int
    width: int = 64

    @nn.compact
    def __call__(self, x, train: bool = False):
        features = self.backbone(x, train=train)  # strides 4, 8, 16, 32
        laterals = [nn.Conv(self.width, (1, 1), name=f"lateral{i}")(f) for i, f in enumerate(features)]
        top = laterals[-1]
        for lateral in reversed(laterals[:-1]):  # top-down: upsample the coarser level and add
            top = lateral + jax.image.resize(top, (*lateral.shape[:3], top.shape[-1]), "nearest")
        top = nn.relu(nn.Conv(self.width, (3, 3), name="smooth")(top))
        logits = nn.Conv(self.classes, (1, 1), name="logits")(top)
        return jax.image.resize(logits, (*x.shape[:3], self.classes), "bilinear")


def shapes_dataset(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` images in [0, 255] (noise, one disc, one square) and their masks (0 background, 1 disc, 2 square)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images = rng.uniform(0, 255, (n, size, size, 3)).astype(np.float32) * 0.3
    masks = np.zeros((n, size, size), np.int32)
    for i in range(n):
        r = rng.uniform(0.1, 0.2) * size
        cy, cx = rng.uniform(r, size - r, 2)
        half = rng.uniform(0.1, 0.2) * size
        sy, sx = rng.uniform(0, size - 2 * half, 2).astype(int)
        square = (yy >= sy) & (yy < sy + 2 * half) & (xx >= sx) & (xx < sx + 2 * half)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
        for region, label in ((square, 2), (disc, 1)):  # the disc over the square where they meet
            images[i][region] = rng.uniform(100, 255, 3)
            masks[i][region] = label
    return images, masks


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", default="imagenet", help="'imagenet', a Keras no-top .h5 file or a flaxzoo checkpoint")
    parser.add_argument("--alpha", type=float, default=1.0, help="MobileNetV2's width multiplier")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--images", type=int, default=64, help="generated training images")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="the head's; the backbone's is a tenth")
    args = parser.parse_args(argv)

    size = args.image_size
    backbone, pretrained = MobileNetV2(
        alpha=args.alpha, weights=args.weights, input_shape=(size, size, 3), features_only=True, out_indices=(1, 2, 3, 4)
    )
    print("backbone stages:", ", ".join(f"stride {f.reduction}: {f.channels} ({f.layer})" for f in backbone.feature_info))
    model = FPNSegmenter(backbone.clone(name="backbone"), classes=len(CLASSES))
    variables = model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)))
    variables, report = flaxzoo.load_pretrained(variables, pretrained, at="backbone")
    print(report)

    # labels: the backbone's parameters by stage ("stem", "stage1", ...), the new head's "head"
    stages = flaxzoo.param_groups(backbone, pretrained)
    labels = {k: stages if k == "backbone" else jax.tree_util.tree_map(lambda _: "head", v) for k, v in variables["params"].items()}
    groups = set(jax.tree_util.tree_leaves(labels))
    rates = {group: args.learning_rate if group == "head" else args.learning_rate / 10 for group in groups}
    tx = optax.multi_transform({group: optax.adam(rate) for group, rate in rates.items()}, labels)
    opt_state = tx.init(variables["params"])

    @jax.jit
    def step(variables, opt_state, x, y):
        def loss_fn(params):
            logits, updates = model.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), updates

        (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
        deltas, opt_state = tx.update(grads, opt_state, variables["params"])
        return {**variables, **updates, "params": optax.apply_updates(variables["params"], deltas)}, opt_state, loss

    images, masks = shapes_dataset(args.images, size)
    x = preprocess_input(images)
    rng = np.random.default_rng(1)
    losses = []
    for i in range(args.steps):
        batch = rng.choice(len(x), size=min(args.batch_size, len(x)), replace=False)
        variables, opt_state, loss = step(variables, opt_state, x[batch], masks[batch])
        losses.append(float(loss))
        if i % 10 == 0 or i == args.steps - 1:
            print(f"step {i}: loss {losses[-1]:.4f}")

    predicted = np.asarray(jnp.argmax(model.apply(variables, x[:8]), -1))
    accuracy = float((predicted == masks[:8]).mean())
    print(f"pixel accuracy on 8 training images: {accuracy:.3f}")
    return losses, accuracy


if __name__ == "__main__":
    main()
