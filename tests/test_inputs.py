"""Bad inputs: a model called on the wrong rank, channels, size, an empty batch or a non-numeric dtype
raises an InputError (a ValueError) naming the expected shape, at trace time; integer images are cast to
float32 as Keras does. ``load_img`` on corrupt, truncated, alpha, grayscale, 16-bit and oversized images.

The model checks run under ``jax.eval_shape`` on abstract models: they fail before any layer is traced,
so nothing is compiled. Keras' behaviour is checked on tiny Functional models (its input checks are the
Functional model's, not the application's).
"""

import io
import os
import re

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax
import jax.numpy as jnp
import keras
import numpy as np
import PIL
import pytest
from PIL import Image

import flaxzoo
from flaxzoo import image as fz_image
from flaxzoo.errors import FlaxzooError, ImageFileError, InputError
from flaxzoo.models.common import check_input
from flaxzoo.zoo import create_model, get_spec

from random_weights import random_variables

MOBILENET = dict(alpha=0.25, input_shape=(32, 32, 3))  # the smallest model


def abstract(name="mobilenet", **kwargs):
    return create_model(name, abstract=True, weights=None, **(kwargs or MOBILENET))


def trace(model, variables, shape, dtype=jnp.float32, **kwargs):
    return jax.eval_shape(lambda v, x: model.apply(v, x, **kwargs), variables, jax.ShapeDtypeStruct(shape, dtype))


def keras_message(input_shape, x):
    """Keras' error for a Functional model with ``input_shape`` called on ``x``."""
    inputs = keras.Input(input_shape)
    model = keras.Model(inputs, keras.layers.Conv2D(2, 1)(inputs), name="ref")
    with pytest.raises(ValueError) as err:
        model(x)
    return str(err.value)


# ------------------------------------------------------------------------------------------------
# Model inputs
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape, hint",
    [
        ((32, 32, 3), r"x\[None\] is a batch of one"),  # one image without its batch axis
        ((1, 2, 32, 32, 3), ""),
        ((2, 32, 32, 4), ""),
        ((2, 64, 64, 3), "takes 32x32 images"),
    ],
)
def test_wrong_rank_channels_or_fixed_size_raise_keras_message(shape, hint):
    model, variables = abstract()
    fragment = f"expected shape=(None, 32, 32, 3), found shape={shape}"
    assert fragment in keras_message((32, 32, 3), np.zeros(shape, np.float32))
    with pytest.raises(InputError, match=re.escape(fragment) + ".*" + hint) as err:
        trace(model, variables, shape)
    assert "layer 'mobilenet_0.25_32'" in str(err.value)
    assert isinstance(err.value, ValueError) and isinstance(err.value, FlaxzooError)


def test_nchw_input_gets_a_channels_last_hint():
    model, variables = abstract()
    with pytest.raises(InputError, match=r"found shape=\(2, 3, 32, 32\)\. Inputs are channels-last"):
        trace(model, variables, (2, 3, 32, 32))


def test_channels_are_checked_also_when_height_and_width_are_free():
    model, variables = abstract(alpha=0.25, include_top=False)
    with pytest.raises(InputError, match=re.escape("expected shape=(None, None, None, 3), found shape=(1, 40, 40, 1)")):
        trace(model, variables, (1, 40, 40, 1))


@pytest.mark.parametrize("name, size", [("mobilenet", 31), ("mobilenet", 8), ("xception", 70)])
def test_free_size_below_the_model_minimum_names_the_minimum(name, size):
    """Keras refuses input_shape under min_size but lets a (None, None, 3) model run into an empty feature
    map (MobileNet at 16 px: shape (1, 0, 0, 256)); flaxzoo refuses such inputs at call time."""
    model, variables = abstract(name, include_top=False, pooling="avg")
    minimum = get_spec(name).min_size
    assert model.min_size == minimum
    message = f"(None, None, None, 3) with height and width at least {minimum}, found shape=(1, {size}, "
    with pytest.raises(InputError, match=re.escape(message)):
        trace(model, variables, (1, size, minimum, 3))


def test_free_size_at_the_minimum_and_non_square_sizes_are_accepted():
    model, variables = abstract(alpha=0.25, include_top=False)
    assert trace(model, variables, (1, 32, 64, 3)).shape == (1, 1, 2, 256)


def test_no_top_model_takes_any_size_from_the_minimum_also_with_a_fixed_input_shape():
    """Keras refuses sizes other than a fixed input_shape; without the top nothing depends on the size, and
    flaxzoo's no-top NASNet with weights (built at 224, as Keras') runs at other sizes."""
    model, variables = abstract(alpha=0.25, include_top=False, input_shape=(64, 64, 3))
    assert trace(model, variables, (1, 96, 32, 3)).shape == (1, 3, 1, 256)
    message = "expected shape=(None, None, None, 3) with height and width at least 32, found shape=(1, 96, 16, 3)"
    with pytest.raises(InputError, match=re.escape(message)):
        trace(model, variables, (1, 96, 16, 3))


@pytest.mark.parametrize("train", [False, True])
def test_empty_batch_raises_naming_the_expected_shape(train):
    """Keras' model(x) returns an empty batch, its predict() fails (UnboundLocalError) and a training pass
    would set every moving statistic to NaN; an empty batch is refused."""
    model, variables = abstract()
    message = "expected shape=(None, 32, 32, 3) with at least one image, found shape=(0, 32, 32, 3)"
    with pytest.raises(InputError, match=re.escape(message)):
        trace(model, variables, (0, 32, 32, 3), train=train, mutable=["batch_stats"] if train else False)


@pytest.mark.parametrize("dtype", ["bool", "complex64", "<U1", "object"])
def test_bool_complex_and_non_numeric_inputs_raise(dtype):
    model, variables = abstract()
    x = np.zeros((2, 32, 32, 3), dtype)
    message = f"float or integer array .* of shape=\\(None, 32, 32, 3\\); found dtype={re.escape(str(x.dtype))}"
    with pytest.raises(InputError, match=message):
        model.apply(variables, x)


def test_integer_images_are_cast_to_float32_without_scaling_like_keras():
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    inputs = keras.Input((32, 32, 3))
    ref_model = keras.Model(inputs, keras.layers.Conv2D(2, 3)(inputs))
    ref = ref_model(pixels)
    assert ref.dtype == "float32"
    np.testing.assert_array_equal(ref, ref_model(pixels.astype(np.float32)))

    model, _ = abstract()
    variables = random_variables("mobilenet", **MOBILENET)
    outs = jax.jit(lambda v, *xs: [model.apply(v, x) for x in xs])(
        variables, pixels, pixels.astype(np.int32), pixels.astype(np.float32)
    )
    assert outs[0].dtype == jnp.float32
    np.testing.assert_array_equal(outs[0], outs[2])
    np.testing.assert_array_equal(outs[1], outs[2])


def test_float32_inputs_pass_unchanged_and_other_floats_as_documented():
    model, _ = abstract()
    x = np.ones((1, 32, 32, 3), np.float32)
    assert check_input(model, x) is x
    assert check_input(model, x.astype(np.float64)).dtype == np.float32  # Keras casts to float32
    for dtype in (jnp.bfloat16, jnp.float16):  # kept: predict_fn(dtype=jnp.bfloat16) computes in them
        assert check_input(model, jnp.asarray(x, dtype)).dtype == dtype
    assert check_input(model, x.tolist()).dtype == np.float32  # lists are converted, as in Keras


def test_checks_apply_under_jit_truncate_keyword_and_symbolic_batch():
    model, variables = abstract()
    with pytest.raises(InputError, match=r"found shape=\(2, 16, 16, 3\)"):
        jax.jit(model.apply).lower(variables, np.zeros((2, 16, 16, 3), np.float32))
    # named as Keras names the model, also inside truncate (where Flax renames the module "model")
    with pytest.raises(InputError, match=rf"layer '{model.model_name}' .*found shape=\(32, 32, 3\)"):
        trace(flaxzoo.truncate(model, "conv1_relu"), variables, (32, 32, 3))
    with pytest.raises(InputError, match=r"found shape=\(32, 32, 3\)"):
        jax.eval_shape(lambda v: model.apply(v, x=jnp.zeros((32, 32, 3))), variables)
    frozen = flaxzoo.freeze(model, 5)  # clones keep the minimum
    assert frozen.min_size == model.min_size == 32
    batch = jax.export.symbolic_shape("b, 32, 32, 3")  # jax.export shape polymorphism: the batch is not checked
    assert str(trace(model, variables, batch).shape) == "(b, 1000)"


# ------------------------------------------------------------------------------------------------
# load_img
# ------------------------------------------------------------------------------------------------


def pixels(shape, seed=0, dtype=np.uint8, high=256):
    return np.random.default_rng(seed).integers(0, high, shape, dtype=dtype)


def assert_image_file_error(err, path):
    assert isinstance(err.value, ValueError) and isinstance(err.value, OSError)  # code catching PIL's OSError too
    assert str(path) in str(err.value)


def test_file_that_is_not_an_image_raises_naming_the_file(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_bytes(b"not an image at all")
    with pytest.raises(PIL.UnidentifiedImageError):  # Keras: PIL's error, which names a BytesIO
        keras.utils.load_img(str(path))
    with pytest.raises(ImageFileError, match="cannot identify image file") as err:
        fz_image.load_img(path)
    assert_image_file_error(err, path)


def test_truncated_jpeg_raises_at_load_naming_the_file(tmp_path):
    path = tmp_path / "cut.jpg"
    buf = io.BytesIO()
    Image.fromarray(pixels((64, 64, 3))).save(buf, "JPEG")
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    lazy = keras.utils.load_img(str(path))  # Keras returns a lazy image: the error comes later
    with pytest.raises(OSError, match="truncated"):
        keras.utils.img_to_array(lazy)
    with pytest.raises(ImageFileError, match="corrupt or truncated.*image file is truncated") as err:
        fz_image.load_img(path)
    assert_image_file_error(err, path)
    with pytest.raises(ImageFileError, match="BytesIO"):  # a stream is named by its repr
        fz_image.load_img(io.BytesIO(path.read_bytes()))


@pytest.mark.filterwarnings("ignore:Palette images with Transparency")  # PIL, on either side
@pytest.mark.parametrize("mode", ["RGBA", "LA", "L", "P"])
@pytest.mark.parametrize("color_mode", ["rgb", "rgba", "grayscale"])
def test_alpha_grayscale_and_palette_images_convert_like_keras(tmp_path, mode, color_mode):
    rgba = pixels((6, 5, 4))
    rgba[0, 0, 3] = 0  # a transparent pixel: its colour is kept, alpha dropped (no compositing)
    path = tmp_path / f"{mode}.png"
    Image.fromarray(rgba).convert(mode).save(path)
    ours = fz_image.load_img(path, color_mode=color_mode)
    ref = keras.utils.load_img(str(path), color_mode=color_mode)
    assert ours.mode == ref.mode == {"rgb": "RGB", "rgba": "RGBA", "grayscale": "L"}[color_mode]
    np.testing.assert_array_equal(fz_image.img_to_array(ours), keras.utils.img_to_array(ref))
    if (mode, color_mode) == ("RGBA", "rgb"):
        np.testing.assert_array_equal(fz_image.img_to_array(ours), rgba[..., :3])


@pytest.mark.parametrize("save_as", ["png", "ppm"])  # PIL modes "I;16" and "I"
def test_16_bit_grayscale_keeps_its_high_byte_as_rgb(tmp_path, save_as):
    values = pixels((6, 5), dtype=np.uint16, high=65536)
    path = tmp_path / f"deep.{save_as}"
    Image.fromarray(values).save(path)
    high = (values >> 8).astype(np.float32)
    rgb = fz_image.img_to_array(fz_image.load_img(path))
    np.testing.assert_array_equal(rgb, np.stack([high] * 3, -1))
    rgba = fz_image.img_to_array(fz_image.load_img(path, color_mode="rgba"))
    np.testing.assert_array_equal(rgba[..., :3], rgb)
    assert (rgba[..., 3] == 255).all()
    gray = fz_image.load_img(path, color_mode="grayscale")  # as Keras: all 16 bits
    np.testing.assert_array_equal(fz_image.img_to_array(gray)[..., 0], values)
    keras_gray = keras.utils.load_img(str(path), color_mode="grayscale")
    np.testing.assert_array_equal(keras.utils.img_to_array(keras_gray), fz_image.img_to_array(gray))
    assert (keras.utils.img_to_array(keras.utils.load_img(str(path))) == 255).all()  # Keras: clipped, white


def test_32_bit_image_beyond_16_bits_raises_as_rgb(tmp_path):
    path = tmp_path / "wide.tif"
    Image.fromarray(np.array([[0, 70000]], np.int32)).save(path)
    with pytest.raises(ImageFileError, match=r"values in \[0, 70000\]") as err:
        fz_image.load_img(path)
    assert_image_file_error(err, path)
    assert fz_image.load_img(path, color_mode="grayscale").mode == "I"


def test_image_over_the_pixel_limit_raises_naming_file_and_limit(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.fromarray(pixels((12, 10, 3))).save(path)
    with pytest.raises(ImageFileError, match=r"10x12 = 120 pixels exceeds the limit of 100 pixels") as err:
        fz_image.load_img(path, max_pixels=100)
    assert_image_file_error(err, path)
    assert fz_image.load_img(path, max_pixels=120).size == (10, 12)
    # The default is PIL's limit, where PIL itself only warns (up to twice it).
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.warns(Image.DecompressionBombWarning), pytest.raises(ImageFileError, match="limit of 100 pixels"):
        fz_image.load_img(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 50)  # over twice PIL's: PIL's error, reworded
    with pytest.raises(ImageFileError, match=r"exceeds limit of 100 pixels.*MAX_IMAGE_PIXELS") as err:
        fz_image.load_img(path, max_pixels=1000)
    assert_image_file_error(err, path)
