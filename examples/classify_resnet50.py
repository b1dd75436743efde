"""Classify ImageNet classes with ResNet50 — the first example of the Keras applications documentation.

Keras::

    model = ResNet50(weights="imagenet")
    img = keras.utils.load_img(img_path, target_size=(224, 224))
    x = preprocess_input(np.expand_dims(keras.utils.img_to_array(img), axis=0))
    print("Predicted:", decode_predictions(model.predict(x), top=3)[0])

flaxzoo: the same lines, with ``model.apply(variables, x)`` for ``model.predict(x)``.

    python examples/classify_resnet50.py elephant.jpg --weights imagenet
    python examples/classify_resnet50.py elephant.jpg --weights resnet50_weights_tf_dim_ordering_tf_kernels.h5 \
        --class-index imagenet_class_index.json      # offline
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

import flaxzoo
from flaxzoo.image import img_to_array, load_img
from flaxzoo.resnet50 import ResNet50, decode_predictions, preprocess_input


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("image", help="an image file, e.g. elephant.jpg")
    parser.add_argument("--weights", default="imagenet", help="'imagenet', a Keras .h5 file or a flaxzoo checkpoint")
    parser.add_argument("--class-index", help="a local imagenet_class_index.json (default: Keras' file, downloaded once)")
    parser.add_argument("--top", type=int, default=3)
    args = parser.parse_args(argv)

    model, variables = ResNet50(weights=args.weights)

    img = load_img(args.image, target_size=(224, 224))
    x = preprocess_input(np.expand_dims(img_to_array(img), axis=0))

    preds = jax.jit(model.apply, compiler_options=flaxzoo.compiler_options())(variables, x)
    decoded = decode_predictions(preds, top=args.top, class_index=args.class_index)[0]
    print("Predicted:", [(wnid, label, float(score)) for wnid, label, score in decoded])
    return decoded


if __name__ == "__main__":
    main()
