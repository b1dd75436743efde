"""Extract features with VGG16 — the second example of the Keras applications documentation.

Keras::

    model = VGG16(weights="imagenet", include_top=False)
    features = model.predict(preprocess_input(x))        # (1, 7, 7, 512) at 224x224

flaxzoo: ``include_top=False`` gives the convolutional base; ``pooling="avg"`` or ``"max"`` a vector.

    python examples/vgg16_features.py elephant.jpg --weights vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

import flaxzoo
from flaxzoo.image import img_to_array, load_img
from flaxzoo.vgg16 import VGG16, preprocess_input


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("image", help="an image file")
    parser.add_argument("--weights", default="imagenet", help="'imagenet', a Keras .h5 file or a flaxzoo checkpoint")
    parser.add_argument("--image-size", type=int, default=224, help="square input size (default 224)")
    parser.add_argument("--pooling", choices=("avg", "max"), help="global pooling (default: the feature map)")
    args = parser.parse_args(argv)

    model, variables = VGG16(weights=args.weights, include_top=False, pooling=args.pooling)

    img = load_img(args.image, target_size=(args.image_size, args.image_size))
    x = preprocess_input(np.expand_dims(img_to_array(img), axis=0))

    features = jax.jit(model.apply, compiler_options=flaxzoo.compiler_options())(variables, x)
    print("features:", features.shape, f"mean {float(features.mean()):.4f}")
    return features


if __name__ == "__main__":
    main()
