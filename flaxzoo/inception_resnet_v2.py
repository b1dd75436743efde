"""Mirror of `keras.applications.inception_resnet_v2`: `InceptionResNetV2`, `preprocess_input`,
`decode_predictions`."""

from flaxzoo import imagenet_utils
from flaxzoo.imagenet_utils import decode_predictions
from flaxzoo.models.inception_resnet_v2 import InceptionResNetV2


def preprocess_input(x, data_format=None):
    """``imagenet_utils.preprocess_input`` in InceptionResNetV2's mode (tf: scaled to [-1, 1])."""
    return imagenet_utils.preprocess_input(
        x, data_format=data_format, mode=InceptionResNetV2.spec.preprocess_mode
    )


__all__ = ["InceptionResNetV2", "decode_predictions", "preprocess_input"]
