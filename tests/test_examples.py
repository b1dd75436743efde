"""The examples (examples/: the five of the Keras applications documentation, and a segmentation head on a
backbone) run offline, on weights the test writes (random flaxzoo checkpoints) and tiny data; the training
examples' loss goes down."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import flaxzoo

import keras_reference as kr
import tolerances
from random_weights import random_checkpoint

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
ELEPHANT = str(kr.SHARED_DATA / "elephant.jpg")
CLASS_INDEX = str(kr.SHARED_DATA / "imagenet_class_index.json")


def example(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses (flax modules) look their module up there
    spec.loader.exec_module(module)
    return module


def test_example_classify_resnet50(tmp_path, capsys):
    weights = random_checkpoint(tmp_path, "resnet50")
    decoded = example("classify_resnet50").main([ELEPHANT, "--weights", weights, "--class-index", CLASS_INDEX])
    assert len(decoded) == 3 and all(len(entry) == 3 for entry in decoded)
    assert "Predicted:" in capsys.readouterr().out


def test_example_vgg16_features(tmp_path):
    weights = random_checkpoint(tmp_path, "vgg16", include_top=False)
    features = example("vgg16_features").main([ELEPHANT, "--weights", weights, "--image-size", "64"])
    assert features.shape == (1, 2, 2, 512)
    pooled = example("vgg16_features").main([ELEPHANT, "--weights", weights, "--image-size", "64", "--pooling", "avg"])
    # two programs (with and without the pooling layer): the network's rounding, then a mean of 4 values
    abstract = flaxzoo.create_model("vgg16", abstract=True, weights=None, include_top=False)[1]
    tolerances.assert_features_close(pooled, features.mean(axis=(1, 2)), abstract)


def test_example_vgg19_block4_pool(tmp_path):
    """The classifier's shape follows the input size: weights made for 32x32 keep the checkpoint small."""
    weights = random_checkpoint(tmp_path, "vgg19", input_shape=(32, 32, 3))
    features = example("vgg19_block4_pool").main([ELEPHANT, "--weights", weights, "--image-size", "32"])
    assert features.shape == (1, 2, 2, 512)


def write_image_folder(root: Path, classes=("cat", "dog"), per_class=4, size=80) -> Path:
    """Tiny, learnable classes: each a colour with noise (a JPEG and a PNG per class, the rest JPEG)."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            base = np.array([200, 40, 40]) if c == 0 else np.array([40, 40, 200])
            pixels = np.clip(base + rng.normal(0, 30, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.{'png' if i == 0 else 'jpg'}")
    (root / "notes.txt").write_text("not a class folder")
    return root


@pytest.mark.parametrize("name", ["inception_v3"])  # the inception_v3 test group
def test_example_finetune_inception_v3_loss_goes_down(tmp_path, name, capsys):
    weights = random_checkpoint(tmp_path, name, include_top=False)
    data = write_image_folder(tmp_path / "train")
    argv = ["--data", str(data), "--weights", weights, "--image-size", "75", "--steps", "4", "2", "--batch-size", "8"]
    losses_1, losses_2 = example("finetune_inception_v3").main(argv)
    assert losses_1[-1] < losses_1[0]
    assert losses_2[-1] < losses_1[0]
    out = capsys.readouterr().out
    assert "8 images, 2 classes: cat, dog" in out
    assert "left as initialised (4)" in out  # the new head: dense and predictions, kernel and bias


@pytest.mark.parametrize("name", ["inception_v3"])
def test_example_inception_v3_custom_input_tensor(tmp_path, name):
    weights = random_checkpoint(tmp_path, name)
    preds = example("inception_v3_custom_input").main([ELEPHANT, "--weights", weights, "--class-index", CLASS_INDEX])
    assert preds.shape == (1, 1000)
    # the softmax's normaliser and this sum each add 1000 float32 terms
    np.testing.assert_allclose(np.asarray(preds).sum(), 1.0, rtol=2 * tolerances.gamma(1000))


@pytest.mark.parametrize("name", ["mobilenet_v2"])
def test_example_segmentation_backbone_loss_goes_down(tmp_path, name, capsys):
    weights = random_checkpoint(tmp_path, name, include_top=False, alpha=0.35)
    argv = ["--weights", weights, "--alpha", "0.35", "--image-size", "64", "--images", "16", "--steps", "12"]
    losses, accuracy = example("segmentation_backbone").main(argv)
    assert np.mean(losses[-3:]) < losses[0] and 0 <= accuracy <= 1
    out = capsys.readouterr().out
    assert "stride 4: 48 (block_3_expand_relu)" in out and "stride 32: 1280 (out_relu)" in out
    assert "left as initialised (12)" in out  # the head: four laterals, the smoothing and logits convolutions


def test_every_example_is_tested_and_documented():
    tested = {n.removeprefix("test_example_") for n in globals() if n.startswith("test_example_")}
    for path in EXAMPLES.glob("*.py"):
        assert any(t.startswith(path.stem) for t in tested), f"{path.name} has no test"
        assert example(path.stem).__doc__.strip(), f"{path.name} has no docstring"
