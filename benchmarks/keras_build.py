"""Build a Keras application without Keras' initialisers (importable without JAX: the TensorFlow worker)."""

import numpy as np


def keras_model(keras_name: str, **kwargs):
    """``keras.applications.<keras_name>(weights=None)``, its variables filled with zeros from numpy instead
    of Keras' initialisers (which compile a random kernel per shape: minutes for NASNetLarge). Speed does
    not depend on the values."""
    import keras
    from keras.src.backend.common.variables import Variable

    original = Variable._initialize_with_initializer

    def zeros(self, initializer):
        self._initialize(self._convert_to_tensor(np.zeros(self._shape, dtype=self._dtype)))

    Variable._initialize_with_initializer = zeros
    try:
        keras.backend.clear_session()
        return getattr(keras.applications, keras_name)(weights=None, **kwargs)
    finally:
        Variable._initialize_with_initializer = original
