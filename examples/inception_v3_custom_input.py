"""Build InceptionV3 over a custom input tensor — the fifth example of the Keras applications documentation.

Keras::

    input_tensor = Input(shape=(224, 224, 3))
    model = InceptionV3(input_tensor=input_tensor, weights="imagenet", include_top=True)

``input_shape=(224, 224, 3)`` would be refused here ("should be (299, 299, 3)": the classifier was
trained at 299), but an input tensor's shape bypasses that check, in Keras and in flaxzoo. In JAX the
tensor is an array or a ``jax.ShapeDtypeStruct``; ``model.input_shape`` records it.

    python examples/inception_v3_custom_input.py elephant.jpg --weights imagenet
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

import flaxzoo
from flaxzoo.image import img_to_array, load_img
from flaxzoo.inception_v3 import InceptionV3, decode_predictions, preprocess_input


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("image", help="an image file")
    parser.add_argument("--weights", default="imagenet", help="'imagenet', a Keras .h5 file or a flaxzoo checkpoint")
    parser.add_argument("--class-index", help="a local imagenet_class_index.json (default: Keras' file, downloaded once)")
    args = parser.parse_args(argv)

    input_tensor = jax.ShapeDtypeStruct((None, 224, 224, 3), jnp.float32)
    model, variables = InceptionV3(input_tensor=input_tensor, weights=args.weights, include_top=True)
    print("input shape:", model.input_shape)

    img = load_img(args.image, target_size=(224, 224))
    x = preprocess_input(np.expand_dims(img_to_array(img), axis=0))
    preds = jax.jit(model.apply, compiler_options=flaxzoo.compiler_options())(variables, x)
    decoded = decode_predictions(preds, top=3, class_index=args.class_index)[0]
    print("Predicted:", [(wnid, label, float(score)) for wnid, label, score in decoded])
    return preds


if __name__ == "__main__":
    main()
