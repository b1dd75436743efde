"""The ``flaxzoo`` command line, offline: predict (against Keras' own prediction), convert, list, errors.

One random-weight Keras ResNet50 (classifier calibrated on the test image, so the probabilities are not
saturated) is written once per module as a legacy .h5; the ImageNet class index comes from the shared
data folder, copied into ``$KERAS_HOME/models`` where ``decode_predictions`` looks before downloading.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import jax
import keras
import numpy as np
import pytest

from flaxzoo import cli
from flaxzoo.zoo import get_spec, list_models
from flaxzoo.weights import checkpoint

import keras_reference as kr
import tolerances

SHARED_DATA = kr.SHARED_DATA  # Path(__file__).resolve().parents[1].parent / "shared" / "data", or its override
ELEPHANT = str(SHARED_DATA / "elephant.jpg")
CLASS_INDEX = SHARED_DATA / "imagenet_class_index.json"
MODEL = "resnet50"


def printed_probability_atol() -> float:
    """The CLI's probabilities against another computation's: float32 rounding of the network
    (tolerances.probability_atol), plus half a unit of the sixth decimal it prints."""
    from flaxzoo.zoo import create_model

    return tolerances.probability_atol(create_model(MODEL, abstract=True, weights=None)[1]) + 0.5e-6


def console_script() -> str:
    path = shutil.which("flaxzoo", path=str(Path(sys.executable).parent))
    if path is None:
        pytest.fail("the `flaxzoo` console script is not installed beside this Python (pip install -e .)")
    return path


def run_main(argv) -> tuple[int, str, str]:
    """``cli.main(argv)`` in-process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()


def install_class_index(keras_home: Path) -> None:
    (keras_home / "models").mkdir(parents=True, exist_ok=True)
    shutil.copy(CLASS_INDEX, keras_home / "models" / CLASS_INDEX.name)


@pytest.fixture(autouse=True)
def _class_index(_isolated_homes):
    """conftest gives every test an empty KERAS_HOME; put Keras' class index file in it."""
    install_class_index(Path(os.environ["KERAS_HOME"]))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Random-weight Keras ResNet50 → legacy .h5, and Keras' own probabilities for the elephant."""
    spec = get_spec(MODEL)
    size = (spec.default_size, spec.default_size)
    x = keras.utils.img_to_array(keras.utils.load_img(ELEPHANT, target_size=size))[None]
    x = np.asarray(keras.applications.resnet50.preprocess_input(x.copy()))
    model = kr.calibrate_classifier(kr.randomize(kr.build(spec, include_top=True, placeholder_weights=True), seed=0), x)
    with jax.default_matmul_precision("highest"):
        probs = kr.run(model, x)[0]
    h5 = kr.save_legacy_h5(model, tmp_path_factory.mktemp("keras") / "resnet50_random.h5")
    return types.SimpleNamespace(h5=h5, probs=probs)


@pytest.fixture(scope="module")
def h5_table(reference, tmp_path_factory):
    """stdout of ``flaxzoo predict elephant.jpg --weights <h5>``, in-process, in its own isolated homes."""
    home = tmp_path_factory.mktemp("home")
    install_class_index(home / "keras")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KERAS_HOME", str(home / "keras"))
        mp.setenv("FLAXZOO_HOME", str(home / "flaxzoo"))
        mp.setenv("FLAXZOO_BASE_URL", "http://127.0.0.1:9")
        rc, out, err = run_main(["predict", ELEPHANT, "--model", MODEL, "--weights", reference.h5])
    assert rc == 0, err
    return out


def parse_tables(out: str) -> dict[str, list[tuple[int, str, str, float]]]:
    """{image path: [(rank, wnid, class name, probability), ...]} from predict's output."""
    tables = {}
    for block in out.strip().split("\n\n"):
        path, header, *rows = block.splitlines()
        assert header.split() == ["rank", "class", "id", "class", "name", "probability"]
        parsed = []
        for row in rows:
            rank, wnid, name, prob = row.split()
            assert len(prob.split(".")[1]) == 6, row
            parsed.append((int(rank), wnid, name, float(prob)))
        tables[path] = parsed
    return tables


def test_predict_matches_keras(reference, h5_table):
    index = json.loads(CLASS_INDEX.read_text())
    by_wnid = {wnid: int(i) for i, (wnid, _) in index.items()}
    ref = reference.probs
    assert ref.max() < 0.9, "calibration failed: a saturated softmax makes a weak check"

    (rows,) = parse_tables(h5_table).values()
    assert [r[0] for r in rows] == [1, 2, 3, 4, 5]
    # The printed probabilities are Keras' five largest, and each is Keras' probability of its class
    # (so the classes are Keras' top five, up to the order of classes closer than the tolerance).
    atol = printed_probability_atol()
    np.testing.assert_allclose([r[3] for r in rows], np.sort(ref)[::-1][:5], rtol=0, atol=atol)
    for _, wnid, name, prob in rows:
        assert name == index[str(by_wnid[wnid])][1]
        assert abs(prob - ref[by_wnid[wnid]]) <= atol
    assert h5_table.splitlines()[0] == ELEPHANT


def test_console_script_prints_the_same_table(reference, h5_table):
    proc = subprocess.run(
        [console_script(), "predict", ELEPHANT, "--model", MODEL, "--weights", str(reference.h5)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == h5_table


def test_convert_then_predict_from_checkpoint(reference, h5_table, tmp_path):
    out_dir = tmp_path / "ckpt"
    rc, out, err = run_main(["convert", "--model", MODEL, "--h5", reference.h5, "--out", out_dir])
    assert rc == 0, err
    meta = checkpoint.read_metadata(out_dir)
    assert (meta["model"], meta["variant"]) == (MODEL, "top")  # inferred from the file
    assert out.count("\n") == 1
    assert f"{get_spec(MODEL).params:,} params" in out
    assert meta["source"]["md5"] in out and str(out_dir) in out

    rc, out, err = run_main(["predict", ELEPHANT, "--model", "ResNet50", "--weights", out_dir])
    assert rc == 0, err
    assert out == h5_table


def test_convert_to_safetensors_then_predict(reference, h5_table, tmp_path):
    out_file = tmp_path / "resnet50.safetensors"
    rc, out, err = run_main(["convert", "--model", MODEL, "--h5", reference.h5, "--out", out_file, "--format", "safetensors"])
    assert rc == 0, err
    from flaxzoo.weights import safetensors_file

    meta = safetensors_file.read_metadata(out_file)
    assert (meta["model"], meta["variant"]) == (MODEL, "top") and meta["source"]["md5"] in out
    rc, out, err = run_main(["predict", ELEPHANT, "--model", "ResNet50", "--weights", out_file])
    assert rc == 0, err
    assert out == h5_table


def test_export_writes_a_stablehlo_file_with_model_arguments(tmp_path):
    from flaxzoo import export

    out_file = tmp_path / "m.stablehlo"
    argv = ["export", "--model", "mobilenet_v3_small", "--weights", "none", "--out", out_file, "--dynamic-batch",
            "--notop", "--pooling", "avg", "--input-shape", "64,64", "--arg", "minimalistic=True", "--arg", "alpha=0.75"]  # fmt: skip
    rc, out, err = run_main(argv)
    assert rc == 0, err
    assert "input (B, 64, 64, 3)" in out
    f = export.load_stablehlo(out_file)
    assert f(np.zeros((2, 64, 64, 3), np.float32)).shape == (2, 432)  # minimalistic alpha 0.75: 432 channels
    rc, _, err = run_main([*argv[:5], "--out", tmp_path / "n.stablehlo", "--arg", "depth=3"])
    assert rc == 2 and "takes no argument 'depth'" in err
    rc, _, err = run_main(argv)  # --out exists
    assert rc == 2 and "already exists" in err


def test_predict_batches_several_images(reference, h5_table, tmp_path):
    """Three images through batches of two (the last one padded): each gets its own table."""
    from PIL import Image

    flipped = tmp_path / "flipped.png"
    Image.open(ELEPHANT).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(flipped)
    argv = ["predict", ELEPHANT, flipped, ELEPHANT, "--weights", reference.h5, "--batch-size", "2", "--top", "3"]
    rc, out, err = run_main(argv)
    assert rc == 0, err
    blocks = out.strip().split("\n\n")
    assert [b.splitlines()[0] for b in blocks] == [ELEPHANT, str(flipped), ELEPHANT]
    assert blocks[0] == blocks[2]
    single = parse_tables(h5_table)[ELEPHANT]
    # A batch of two is another program than a batch of one (other kernel blocking): each class keeps its
    # probability up to rounding, and classes closer than that may trade places.
    atol = printed_probability_atol()
    by_class = {wnid: (name, prob) for _, wnid, name, prob in single}
    ours = parse_tables(blocks[0])[ELEPHANT]
    assert [r[0] for r in ours] == [1, 2, 3]
    for (_, wnid, name, prob), (_, _, _, full) in zip(ours, single):
        assert by_class[wnid][0] == name and abs(prob - by_class[wnid][1]) <= atol
        assert abs(prob - full) <= atol  # the k-th largest probability, whichever class has it
    assert len(parse_tables(blocks[1])[str(flipped)]) == 3


def test_list_prints_every_registered_model():
    rc, out, err = run_main(["list"])
    assert rc == 0, err
    header, *rows = out.strip().splitlines()
    assert header.split()[:2] == ["model", "Keras"]
    assert len(rows) == len(list_models())
    for name, row in zip(list_models(), rows):
        spec = get_spec(name)
        cells = row.split()
        assert cells[:5] == [name, spec.keras_name, str(spec.default_size), str(spec.min_size), spec.preprocess_mode or "in-model"]
        assert cells[5:8] == [f"{spec.params:,}", f"{spec.params_notop:,}", str(spec.depth)]
    assert len({len(line) for line in [header, *rows]}) == 1  # aligned: right-aligned last column


def test_info():
    rc, out, err = run_main(["info", "ResNet50"])
    assert rc == 0, err
    spec = get_spec(MODEL)
    for wf in spec.weights.values():
        assert wf.fname in out and wf.md5 in out and wf.url in out


def _error_cases(h5: Path, existing: Path):
    return {
        "unknown model": (["predict", ELEPHANT, "--model", "resnet5000"], "Unknown model 'resnet5000'"),
        "missing image": (["predict", existing / "nope.jpg", "--weights", h5], "nope.jpg: no such image file"),
        "missing weights": (["predict", ELEPHANT, "--weights", existing / "nope.h5"], "nope.h5: no such weights"),
        "not an image": (["predict", h5, "--weights", h5], "cannot read image"),
        "convert unknown model": (["convert", "--model", "nonet", "--h5", h5, "--out", existing / "x"],
                                  "Unknown model"),  # fmt: skip
        "convert missing h5": (["convert", "--model", MODEL, "--h5", existing / "no.h5", "--out", existing / "x"],
                               "no.h5: no such file"),  # fmt: skip
        "convert existing out": (["convert", "--model", MODEL, "--h5", h5, "--out", existing], "already exists"),
        "convert wrong variant": (["convert", "--model", MODEL, "--h5", h5, "--out", existing / "x",
                                   "--variant", "notop"],
                                  "Layer count mismatch"),  # fmt: skip
        "convert wrong model": (["convert", "--model", "vgg16", "--h5", h5, "--out", existing / "x"],
                                "not a VGG16 weights file"),  # fmt: skip
    }


@pytest.mark.parametrize("case", list(_error_cases(Path("h5"), Path("dir"))))
def test_errors_are_one_line_exit_2(case, reference, tmp_path):
    argv, expected = _error_cases(reference.h5, tmp_path)[case]
    rc, out, err = run_main(argv)
    assert rc == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("flaxzoo: error: "), err
    assert expected in lines[0]
    assert not (tmp_path / "x").exists()


def test_console_script_error(tmp_path):
    proc = subprocess.run(
        [console_script(), "convert", "--model", MODEL, "--h5", tmp_path / "missing.h5", "--out", tmp_path],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    errors = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith(f"flaxzoo: error: {tmp_path}: already exists; not overwriting")
    assert "Traceback" not in proc.stderr


# ------------------------------------------------------------------------------------------------
# convert/convert_all.py (without --verify, which builds Keras models: see convert/README.md)
# ------------------------------------------------------------------------------------------------


def load_convert_all():
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "convert" / "convert_all.py"
    module_spec = importlib.util.spec_from_file_location("convert_all", path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_spec.name] = module  # dataclasses look their module up there
    module_spec.loader.exec_module(module)
    return module


def test_convert_all_checks_md5_and_converts(reference, tmp_path, monkeypatch, capsys):
    import dataclasses

    from flaxzoo import registry
    from flaxzoo.weights import md5sum

    spec = get_spec(MODEL)
    keras_dir, out_dir = tmp_path / "keras", tmp_path / "out"
    keras_dir.mkdir()
    for wf in spec.weights.values():  # the random top file under both published names
        (keras_dir / wf.fname).symlink_to(reference.h5)
    (keras_dir / "unrelated.h5").symlink_to(reference.h5)
    convert_all = load_convert_all()

    # As published, the md5s do not match: both files are skipped with a warning.
    assert convert_all.main([str(keras_dir), str(out_dir)]) == 0
    captured = capsys.readouterr()
    assert captured.err.count("warning: ") == 2 and "expected " + spec.weights["top"].md5 in captured.err
    assert not out_dir.exists()

    # With the registry's top md5 set to this file's: top is converted (to OUT/<model>/<variant>), notop skipped.
    top = dataclasses.replace(spec.weights["top"], md5=md5sum(reference.h5))
    monkeypatch.setitem(registry._REGISTRY, spec.name, dataclasses.replace(spec, weights={**spec.weights, "top": top}))
    assert convert_all.main([str(keras_dir), str(out_dir)]) == 0
    captured = capsys.readouterr()
    assert "1 converted, 1 skipped, 0 failed, of 2 file(s) found" in captured.out
    assert checkpoint.read_metadata(out_dir / MODEL / "top")["source"]["md5"] == top.md5
    assert not (out_dir / MODEL / "notop").exists()

    assert convert_all.main([str(keras_dir), str(out_dir)]) == 0  # run again: the checkpoint is kept
    assert "exists, kept" in capsys.readouterr().out
