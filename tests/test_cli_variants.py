"""Published variants through the command line (arguments given, or inferred from weight files), ``flaxzoo
evaluate`` against Keras' predict + decode, the persistent compilation cache, and progress bars.

The model is a random-weight Keras MobileNet, alpha 0.25 at 128 px, with its classifier calibrated on the test
images, written as a legacy .h5 under its published name ``mobilenet_2_5_128_tf.h5``; and the real published
no-top file ``mobilenet_2_5_224_tf_no_top.h5`` from the shared data folder.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import keras
import numpy as np
import pytest
from PIL import Image

from flaxzoo import evaluate as evaluation
from flaxzoo.arguments import resolve
from flaxzoo.progress import ProgressBar
from flaxzoo.weights import checkpoint
from flaxzoo.zoo import create_model, get_spec

import keras_reference as kr
import tolerances
from test_cli import CLASS_INDEX, ELEPHANT, console_script, install_class_index, parse_tables, run_main

PUBLISHED_NOTOP = kr.SHARED_DATA / "mobilenet_2_5_224_tf_no_top.h5"
ALPHA, SIZE = 0.25, 128
SPEC = get_spec("mobilenet")
SYNSETS = [wnid for _, (wnid, _) in sorted(json.loads(CLASS_INDEX.read_text()).items(), key=lambda kv: int(kv[0]))]


@pytest.fixture(autouse=True)
def _class_index(_isolated_homes):
    install_class_index(Path(os.environ["KERAS_HOME"]))


def sample_images(folder: Path, n: int = 8, seed: int = 3) -> list[Path]:
    """Smooth random images of several sizes and aspect ratios (PNG: lossless, so both sides decode alike)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        h, w = int(rng.integers(90, 200)), int(rng.integers(90, 200))
        small = rng.integers(0, 256, (max(2, h // 16), max(2, w // 16), 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((w, h), Image.BILINEAR)
        paths.append(folder / f"img{i:02d}.png")
        img.save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The Keras model as ``mobilenet_2_5_128_tf.h5``, and images with their standard-preprocessed inputs."""
    root = tmp_path_factory.mktemp("variants")
    images = sample_images(root / "images")
    pre = evaluation.Preprocessing(crop=SIZE, mode="tf")
    x = np.stack([pre(str(p)) for p in images])
    elephant = keras.utils.img_to_array(keras.utils.load_img(ELEPHANT, target_size=(SIZE, SIZE)))[None]
    elephant = kr.keras_preprocess(elephant, "tf")
    model = kr.build(SPEC, include_top=True, placeholder_weights=True, alpha=ALPHA, input_shape=(SIZE, SIZE, 3))
    model = kr.normalize_batch_stats(kr.randomize(model, seed=1), x)
    model = kr.calibrate_classifier(model, np.concatenate([x, elephant]))
    h5 = kr.save_legacy_h5(model, root / "mobilenet_2_5_128_tf.h5")
    return type("Reference", (), dict(model=model, h5=h5, images=images, x=x, elephant=kr.predict(model, elephant)[0]))


# ------------------------------------------------------------------------------------------------
# Arguments from the command line and from weight files
# ------------------------------------------------------------------------------------------------


def test_predict_infers_alpha_and_size_from_a_published_file(reference):
    rc, out, err = run_main(["predict", ELEPHANT, "--model", "mobilenet", "--weights", reference.h5])
    assert rc == 0, err
    assert "MobileNet: alpha=0.25, input size 128 (from the name and weight shapes of mobilenet_2_5_128_tf.h5)" in err
    assert "images resized to 128x128" in err
    (rows,) = parse_tables(out).values()
    atol = probability_atol() + 0.5e-6  # and half the sixth decimal printed
    by_wnid = {wnid: i for i, wnid in enumerate(SYNSETS)}
    np.testing.assert_allclose([r[3] for r in rows], np.sort(reference.elephant)[::-1][:5], rtol=0, atol=atol)
    for _, wnid, _, prob in rows:
        assert abs(prob - reference.elephant[by_wnid[wnid]]) <= atol


def test_widths_are_read_off_the_weight_shapes_of_any_file_name(reference, tmp_path):
    renamed = tmp_path / "my_weights.h5"
    shutil.copy(reference.h5, renamed)
    resolved = resolve(SPEC, renamed, {})
    assert resolved.kwargs == {"alpha": ALPHA, "depth_multiplier": 1, "include_top": True, "classes": 1000}
    assert resolved.note(SPEC) == "MobileNet: alpha=0.25 (from the weight shapes of my_weights.h5)"
    # the published no-top file: alpha and size from its name, agreeing with its shapes
    resolved = resolve(SPEC, PUBLISHED_NOTOP, {})
    assert resolved.kwargs == {"alpha": ALPHA, "depth_multiplier": 1, "include_top": False, "input_shape": (224, 224, 3)}


def test_published_file_through_summary_and_convert(tmp_path):
    rc, layers, err = run_main(["summary", "mobilenet", "--weights", PUBLISHED_NOTOP])
    assert rc == 0, err
    assert "alpha=0.25, include_top=False, input size 224" in err
    assert "Total params: 218,544" in layers and "conv_pw_13_relu" in layers and "(None, 7, 7, 256)" in layers

    ckpt = tmp_path / "ckpt"
    rc, out, err = run_main(["convert", "--model", "mobilenet", "--h5", PUBLISHED_NOTOP, "--out", ckpt])
    assert rc == 0, err
    assert out.startswith("converted mobilenet (notop): 218,544 params from mobilenet_2_5_224_tf_no_top.h5")
    meta = checkpoint.read_metadata(ckpt)
    assert meta["args"] == {"alpha": ALPHA, "depth_multiplier": 1, "input_shape": [224, 224, 3]}
    rc, out_ckpt, err = run_main(["summary", "mobilenet", "--weights", ckpt])  # from the checkpoint's metadata
    assert rc == 0, err
    assert "alpha=0.25, include_top=False, input size 224" in err and "converted from mobilenet_2_5_224" in err
    assert out_ckpt == layers


def _disagreements(tmp: Path) -> dict:
    """{case: (argv, the error)}; ``tmp`` holds the published file as ``mobilenet_5_0_224_tf_no_top.h5`` (alpha 0.5's
    name) and as ``weights.h5``."""
    misnamed, unnamed, out = tmp / "mobilenet_5_0_224_tf_no_top.h5", tmp / "weights.h5", tmp / "x"
    return {
        "name against shapes": (["convert", "--model", "mobilenet", "--h5", misnamed, "--out", out],
                                "the file name mobilenet_5_0_224_tf_no_top.h5 says MobileNet with alpha=0.5, but its "
                                "weight shapes are those of alpha=0.25"),  # fmt: skip
        "given against name": (["convert", "--model", "mobilenet", "--h5", PUBLISHED_NOTOP, "--out", out, "--alpha", "0.5"],
                               "--alpha 0.5 disagrees with the weight file: mobilenet_2_5_224_tf_no_top.h5 is MobileNet "
                               "with alpha=0.25"),  # fmt: skip
        "given against shapes": (["summary", "mobilenet", "--weights", unnamed, "--alpha", "0.5"],
                                 "--alpha 0.5 disagrees with the weight file: its weight shapes are those of MobileNet "
                                 "with alpha=0.25"),  # fmt: skip
        "another model's file": (["summary", "mobilenet_v2", "--weights", misnamed],
                                 "is a published MobileNet weight file, not MobileNetV2's (use --model mobilenet)"),
        "alpha of a model without": (["summary", "resnet50", "--alpha", "0.5"], "--alpha: ResNet50 takes no argument 'alpha'"),
        "unknown --arg": (["summary", "mobilenet", "--arg", "depth=3"], "--arg depth: MobileNet takes no argument 'depth'"),
        "malformed --arg": (["summary", "mobilenet", "--arg", "alpha"], "expected key=value"),
        "predict a no-top file": (["predict", ELEPHANT, "--model", "mobilenet", "--weights", PUBLISHED_NOTOP],
                                  "mobilenet_2_5_224_tf_no_top.h5 holds MobileNet without the classifier "
                                  "(include_top=False); this command needs include_top=True"),  # fmt: skip
    }


@pytest.mark.parametrize("case", list(_disagreements(Path("tmp"))))
def test_disagreements_are_one_line_errors_naming_both(case, tmp_path):
    for name in ("mobilenet_5_0_224_tf_no_top.h5", "weights.h5"):
        shutil.copy(PUBLISHED_NOTOP, tmp_path / name)
    argv, expected = _disagreements(tmp_path)[case]
    rc, out, err = run_main(argv)
    assert rc == 2 and out == ""
    lines = [line for line in err.strip().splitlines() if line.startswith("flaxzoo: error: ")]
    assert len(lines) == 1 and expected in lines[0], err
    assert not (tmp_path / "x").exists()


def test_finetune_builds_the_model_with_its_arguments():
    from flaxzoo.train.finetune import build_model

    model, variables, _ = build_model(SPEC, 3, 64, None, model_args={"alpha": ALPHA})
    assert variables["params"]["conv1"]["kernel"].shape == (3, 3, 3, 8)
    assert variables["params"]["conv_preds"]["kernel"].shape == (1, 1, 256, 3)


# ------------------------------------------------------------------------------------------------
# flaxzoo evaluate
# ------------------------------------------------------------------------------------------------


def probability_atol() -> float:
    """Float32 rounding of this network's probabilities (tolerances.probability_atol)."""
    abstract = create_model("mobilenet", abstract=True, weights=None, alpha=ALPHA, input_shape=(SIZE, SIZE, 3))[1]
    return tolerances.probability_atol(abstract)


def clear(p: np.ndarray, label: int) -> bool:
    """Whether ``label``'s probability is farther from the other classes' first and fifth than float32 rounding on
    both sides."""
    others = np.sort(np.delete(p, label))[::-1]
    atol = 2 * probability_atol()
    return abs(p[label] - others[0]) > atol and abs(p[label] - others[4]) > atol


def keras_hits(probs: np.ndarray, labels: list[int]) -> tuple[int, int]:
    """Top-1 and top-5 hits by Keras' decode_predictions; each label's probability is checked to be farther from
    the rank-1 and rank-5 boundaries than float32 rounding (else a hit could flip on another CPU)."""
    from keras.src.applications import imagenet_utils as keras_imagenet_utils

    if keras_imagenet_utils.CLASS_INDEX is None:  # Keras' own loader would download it (its KERAS_HOME is read once)
        keras_imagenet_utils.CLASS_INDEX = json.loads(CLASS_INDEX.read_text())
    decoded = keras_imagenet_utils.decode_predictions(probs, top=5)
    assert all(clear(p, label) for p, label in zip(probs, labels)), "too close to call"
    top1 = sum(d[0][0] == SYNSETS[label] for d, label in zip(decoded, labels))
    top5 = sum(SYNSETS[label] in [w for w, _, _ in d] for d, label in zip(decoded, labels))
    return int(top1), int(top5)


def labels_for(probs: np.ndarray) -> list[int]:
    """Two classes and an assignment of the images to them with top-1 hits, top-5-only hits and misses: image 0's
    Keras top-1 class ``a``; a class ``b`` of image 1's top five that some other image's top five lacks; the other
    images ``b`` where it is not in their top five (misses), else ``a``."""
    top5 = np.argsort(probs, axis=1)[:, ::-1][:, :5]
    a = int(top5[0, 0])
    b = next(int(c) for c in top5[1, 1:] if c != a and any(c not in row for row in top5[2:]))
    return [a, b] + [b if b not in row else a for row in top5[2:]]


def labels_by_rank(probs: np.ndarray) -> list[int]:
    """Any classes: per image, in turn, the class at rank 1, 3 or 50 (a top-1 hit, a top-5 hit, a miss), or the
    next rank whose probability is clear of the boundaries."""
    labels = []
    for i, p in enumerate(probs):
        order = np.argsort(p)[::-1]
        labels.append(next(int(c) for c in order[(0, 2, 49)[i % 3] :] if clear(p, int(c))))
    return labels


def evaluate_json(argv, tmp_path) -> dict:
    out_json = tmp_path / "result.json"
    rc, out, err = run_main(["evaluate", "--model", "mobilenet", *argv, "--json", out_json, "--quiet"])
    assert rc == 0, err
    result = json.loads(out_json.read_text())
    assert f"{100 * result['top1']:.2f}%" in out and "published 70.40%" in out
    return result


def synset_folder(reference, root: Path) -> tuple[Path, int, int, int]:
    """The images in two synset folders (and one broken file); Keras' top-1 and top-5 hits on them, and the count."""
    probs = kr.predict(reference.model, reference.x)
    labels = labels_for(probs)
    top1, top5 = keras_hits(probs, labels)
    assert 0 < top1 < top5 < len(labels), "the assignment must have hits and misses"
    val = root / "val"
    for path, label in zip(reference.images, labels):
        (val / SYNSETS[label]).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, val / SYNSETS[label] / path.name)
    (val / SYNSETS[labels[0]] / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    return val, top1, top5, len(labels)


def test_evaluate_synset_folders_equals_keras_predict_and_decode(reference, tmp_path):
    val, top1, top5, n = synset_folder(reference, tmp_path)
    r = evaluate_json(["--weights", reference.h5, "--data", val, "--batch-size", "3"], tmp_path)
    assert (r["correct_top1"], r["correct_top5"], r["images"], r["skipped"]) == (top1, top5, n, 1)
    assert r["top1"] == top1 / n and r["top5"] == top5 / n
    assert r["top1_ci95"] == list(evaluation.wilson_interval(top1, n))
    assert r["skipped_files"][0]["path"].endswith("broken.jpg")
    assert r["layout"] == "synsets" and r["model_args"]["alpha"] == ALPHA
    assert r["preprocessing"] == {"resize": "shorter side to 146", "crop": SIZE, "input_size": SIZE,
                                  "interpolation": "bilinear", "mode": "tf"}  # fmt: skip
    assert r["published"]["top1"] == SPEC.top1 and r["published"]["top5"] == SPEC.top5
    assert r["images_per_second"] > 0 and r["dtype"] == "float32" and r["devices"] >= 1


def test_evaluate_on_8_devices_counts_the_same(reference, tmp_path):
    """The global batch (3, rounded up to 8) split over 8 simulated CPU devices, padding and the broken file
    weighted out."""
    val, top1, top5, n = synset_folder(reference, tmp_path)
    env = dict(os.environ, XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8")
    out_json = tmp_path / "r.json"
    argv = [console_script(), "evaluate", "--model", "mobilenet", "--weights", str(reference.h5), "--data", str(val),
            "--batch-size", "3", "--json", str(out_json), "--quiet"]  # fmt: skip
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(out_json.read_text())
    assert (r["devices"], r["global_batch_size"]) == (8, 8)
    assert (r["correct_top1"], r["correct_top5"], r["images"], r["skipped"]) == (top1, top5, n, 1)


def test_evaluate_flat_folder_with_labels_and_keras_resize_equals_keras(reference, tmp_path):
    """Keras' own pipeline: load_img(target_size=(128, 128)), preprocess_input, predict, decode_predictions."""
    x = np.stack([keras.utils.img_to_array(keras.utils.load_img(p, target_size=(SIZE, SIZE))) for p in reference.images])
    probs = kr.predict(reference.model, kr.keras_preprocess(x, "tf"))
    labels = labels_by_rank(probs)
    top1, top5 = keras_hits(probs, labels)
    assert 0 < top1 < top5 < len(labels)
    val = tmp_path / "flat"
    val.mkdir()
    for path in reference.images:
        shutil.copy(path, val / path.name)
    lines = [str(label) if i % 2 else SYNSETS[label] for i, label in enumerate(labels)]  # indices and synset ids
    (tmp_path / "labels.txt").write_text("\n".join(lines) + "\n")

    r = evaluate_json(["--weights", reference.h5, "--data", val, "--labels", tmp_path / "labels.txt", "--keras-resize"],
                      tmp_path)  # fmt: skip
    assert (r["correct_top1"], r["correct_top5"], r["images"], r["skipped"]) == (top1, top5, len(labels), 0)
    assert r["layout"] == "flat" and r["preprocessing"]["interpolation"] == "nearest"
    assert r["preprocessing"]["resize"] == "keras load_img(target_size)"

    limited = evaluate_json(["--weights", reference.h5, "--data", val, "--labels", tmp_path / "labels.txt",
                             "--keras-resize", "--limit", "3"], tmp_path)  # fmt: skip
    assert limited["images"] == 3 and limited["correct_top5"] == keras_hits(probs[:3], labels[:3])[1]


def test_wilson_interval():
    lo, hi = evaluation.wilson_interval(5, 10)
    assert abs(lo - 0.2366) < 1e-4 and abs(hi - 0.7634) < 1e-4
    assert evaluation.wilson_interval(0, 10)[0] == 0.0 and abs(evaluation.wilson_interval(0, 10)[1] - 0.2775) < 1e-4


def test_labels_file_errors(tmp_path):
    files = [tmp_path / f"ILSVRC2012_val_{i:08d}.JPEG" for i in (1, 2)]
    by_wnid = {wnid: i for i, wnid in enumerate(SYNSETS)}
    cases = {
        "ILSVRC2012_validation_ground_truth.txt": ("490\n361\n", "devkit's own order"),
        "short.txt": ("1\n", "1 labels for 2 images"),
        "range.txt": ("1\n1000\n", "class index 1000 is not in 0..999"),
        "unknown.txt": ("n01440764\nn99999999\n", "'n99999999' is neither"),
        "named.txt": ("ILSVRC2012_val_00000001.JPEG 3\n", "no label for 1 image(s), e.g. ILSVRC2012_val_00000002.JPEG"),
    }
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ValueError, match=re.escape(message)):
            evaluation.read_labels(tmp_path / name, files, by_wnid)
    (tmp_path / "good.txt").write_text("ILSVRC2012_val_00000002.JPEG n01440764\nILSVRC2012_val_00000001.JPEG 7\n")
    assert evaluation.read_labels(tmp_path / "good.txt", files, by_wnid) == [7, 0]


def test_evaluate_refuses_folders_that_are_not_synsets(tmp_path):
    (tmp_path / "cats").mkdir()
    with pytest.raises(ValueError, match="sub-folder\\(s\\) cats are not synsets"):
        evaluation.scan_eval_folder(tmp_path)
    with pytest.raises(ValueError, match="no synset sub-folders; a flat folder needs --labels"):
        evaluation.scan_eval_folder(tmp_path / "cats")
    (tmp_path / "labels.txt").write_text("0\n")
    with pytest.raises(ValueError, match="--labels is for a flat folder of images; this one has sub-folders"):
        evaluation.scan_eval_folder(tmp_path, tmp_path / "labels.txt")


# ------------------------------------------------------------------------------------------------
# A fast second run; progress bars
# ------------------------------------------------------------------------------------------------


def test_the_compilation_cache_is_written_once_and_reused(reference, tmp_path):
    """Two cold processes share $FLAXZOO_HOME/xla-cache; FLAXZOO_COMPILATION_CACHE=0 writes none."""
    env = dict(os.environ, FLAXZOO_COMPILATION_CACHE="1", FLAXZOO_HOME=str(tmp_path / "home"))
    argv = [console_script(), "predict", ELEPHANT, "--model", "mobilenet", "--weights", str(reference.h5)]
    first = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env)
    assert first.returncode == 0, first.stderr
    cache = tmp_path / "home" / "xla-cache"
    entries = sorted(p.name for p in cache.iterdir())
    assert any(name.startswith("jit_apply") for name in entries), entries
    second = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env)
    assert second.returncode == 0 and second.stdout == first.stdout
    assert sorted(p.name for p in cache.iterdir()) == entries  # read, not written again

    off = dict(env, FLAXZOO_COMPILATION_CACHE="0", FLAXZOO_HOME=str(tmp_path / "off"))
    third = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=off)
    assert third.returncode == 0 and third.stdout == first.stdout
    assert not (tmp_path / "off" / "xla-cache").exists()


def test_compilation_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    from flaxzoo import xla_options

    monkeypatch.setenv("FLAXZOO_HOME", str(tmp_path))
    monkeypatch.setenv("FLAXZOO_COMPILATION_CACHE", "1")
    assert xla_options.compilation_cache_dir() == str(tmp_path / "xla-cache")
    monkeypatch.setenv("FLAXZOO_COMPILATION_CACHE", "0")
    assert xla_options.compilation_cache_dir() is None


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_redraws_on_a_terminal_and_writes_one_line_elsewhere():
    log = io.StringIO()
    bar = ProgressBar("evaluating", 10, stream=log)
    for _ in range(10):
        bar.update(1)
    bar.close()
    assert log.getvalue().count("\n") == 1 and "\r" not in log.getvalue()
    assert log.getvalue().startswith("evaluating: [========================] 100% 10/10 ")

    tty = Terminal()
    bar = ProgressBar("Downloading f.h5", 4_000_000, unit="B", amount=lambda n: f"{n / 1e6:.1f} MB", stream=tty, interval=0)
    bar.update(1_000_000)
    assert " 25% 1.0 MB/4.0 MB " in tty.getvalue() and "MB/s" in tty.getvalue()
    bar.close()
    assert tty.getvalue().count("\r") == 2 and tty.getvalue().endswith("\n")


def test_downloads_show_bytes_and_rate(tmp_path, capfd):
    import http.server
    import threading

    from flaxzoo.weights import files

    body = bytes(range(256)) * 4000
    (tmp_path / "f.bin").write_bytes(body)
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path), **k)  # noqa: E731
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        files.download(f"http://127.0.0.1:{server.server_port}/f.bin", tmp_path / "out" / "f.bin", allow_insecure=True)
    finally:
        server.shutdown()
    err = capfd.readouterr().err
    assert "Downloading f.bin: [========================] 100% 1.0 MB/1.0 MB" in err and "MB/s" in err
    assert (tmp_path / "out" / "f.bin").read_bytes() == body


def test_console_script_evaluate_help_names_the_options():
    proc = subprocess.run([console_script(), "evaluate", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    for option in ("--resize", "--keras-resize", "--crop", "--labels", "--limit", "--json", "--bf16", "--alpha"):
        assert option in proc.stdout
