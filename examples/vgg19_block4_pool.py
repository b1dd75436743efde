"""Features of an intermediate layer with VGG19 — the third example of the Keras applications documentation.

Keras::

    base_model = VGG19(weights="imagenet")
    model = Model(inputs=base_model.input, outputs=base_model.get_layer("block4_pool").output)
    block4_pool_features = model.predict(preprocess_input(x))

flaxzoo: ``flaxzoo.truncate(model, "block4_pool")`` is that model; it takes the full model's variables
and, under ``jax.jit``, computes nothing after ``block4_pool`` (the 124M-parameter classifier stays idle).
``flaxzoo.extract`` returns several layers at once.

    python examples/vgg19_block4_pool.py elephant.jpg --weights vgg19_weights_tf_dim_ordering_tf_kernels.h5
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

import flaxzoo
from flaxzoo.image import img_to_array, load_img
from flaxzoo.vgg19 import VGG19, preprocess_input


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("image", help="an image file")
    parser.add_argument("--weights", default="imagenet", help="'imagenet', a Keras .h5 file or a flaxzoo checkpoint")
    parser.add_argument("--image-size", type=int, default=224,
                        help="square input size; with the classifier, the size the weights were made for")  # fmt: skip
    parser.add_argument("--layer", default="block4_pool", help="any name of flaxzoo.layer_names(model)")
    args = parser.parse_args(argv)

    size = args.image_size
    base_model, variables = VGG19(weights=args.weights, input_shape=None if size == 224 else (size, size, 3))
    model = flaxzoo.truncate(base_model, args.layer)

    img = load_img(args.image, target_size=(size, size))
    x = preprocess_input(np.expand_dims(img_to_array(img), axis=0))

    features = jax.jit(model.apply, compiler_options=flaxzoo.compiler_options())(variables, x)
    print(f"{args.layer} features:", features.shape)
    return features


if __name__ == "__main__":
    main()
