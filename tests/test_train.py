"""Fine-tuning: sharded and pmap steps against one device, two processes against one, the input pipeline
on bad images, checkpoints (exact resume, SIGKILL during a save), and ``flaxzoo finetune`` end to end."""

import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import flaxzoo
from flaxzoo import cli, sharding, train
from flaxzoo.train.finetune import build_model
from flaxzoo.weights import checkpoint

import tolerances
from random_weights import calibrate_batch_norm, random_variables

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
COLORS = {"red": (220, 40, 40), "green": (40, 190, 40), "blue": (40, 40, 220)}


def write_folder(root: Path, per_class: int, size: int = 40, seed: int = 0) -> Path:
    """Visually distinct classes: a saturated colour each, with pixel noise."""
    rng = np.random.default_rng(seed)
    for name, colour in COLORS.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.clip(np.array(colour) + rng.normal(0, 30, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i:03d}.jpg", quality=95)
    return root


def subprocess_env(devices: int, **extra) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", KERAS_BACKEND="jax", **extra)
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}".strip()
    return env


@pytest.fixture(scope="session")  # not module: xdist interleaves modules in a worker, which would rerun it
def multidevice_report(tmp_path_factory, worker_id) -> dict:
    """The report of ``multidevice_steps.py``, computed once per test run: under xdist, by the first worker
    to ask (~80 s), the others read its file (the session temp root is shared by the workers)."""
    root = tmp_path_factory.getbasetemp() if worker_id == "master" else tmp_path_factory.getbasetemp().parent
    path = root / "multidevice_report.json"
    with open(root / "multidevice_report.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.exists():
            proc = subprocess.run(
                [sys.executable, str(TESTS / "multidevice_steps.py")], env=subprocess_env(8),
                capture_output=True, text=True, timeout=900,
            )  # fmt: skip
            assert proc.returncode == 0, proc.stderr[-3000:]
            path.write_text(proc.stdout)
    report = json.loads(path.read_text())
    # 28 layers, 16·32·32 terms: 2.7e-2 of the update. float32 steps measured 2.8e-3 from float64, and a
    # broken step (per-device statistics, summed gradients) misses the update by 2.0-7.0.
    report["bound"] = tolerances.training_rtol(report["weighted_layers"], report["longest_sum"])
    return report


def far_from_float64(run: dict, bound: float) -> dict:
    """The measures (params, batch_stats, loss) in which a float32 step is further from float64 than rounding allows."""
    return {k: v for k, v in run.items() if not v <= bound}


@pytest.mark.parametrize("run", ["one_device", "jit_8_devices", "pmap_8_devices"])
def test_train_step_on_one_and_eight_devices_matches_the_float64_step(multidevice_report, run):
    """8 simulated devices: jit over a data mesh and pmap make the single-device update (batch norm over the
    global batch, gradients averaged), within float32 rounding of the step computed in float64."""
    assert far_from_float64(multidevice_report["runs"][run], multidevice_report["bound"]) == {}


@pytest.mark.parametrize("fault", ["bn_statistics_per_device", "gradients_summed", "bn_variance_not_averaged"])
def test_broken_multidevice_semantics_fail_the_float64_comparison(multidevice_report, fault):
    """The comparison above catches what goes wrong in data parallelism: each fault, injected into the pmap
    step, moves the parameters further from the float64 update than float32 rounding can."""
    assert "params" in far_from_float64(multidevice_report["runs"][fault], multidevice_report["bound"])


def test_checkpoint_of_an_eight_device_state_restores_onto_one_device(multidevice_report):
    checkpoint = multidevice_report["checkpoint"]
    assert checkpoint == {"restored_devices": 1, "restored_equal": True, "record": {"epoch": 0}}


def small_model(size=32, **kwargs):
    return flaxzoo.MobileNet(input_shape=(size, size, 3), alpha=0.25, weights=None, classes=3, classifier_activation=None, **kwargs)


def one_step(model, variables, tx, batch, config=train.StepConfig()):
    mesh = sharding.data_mesh()
    steps = train.make_steps(model, tx, mesh, config)
    state = sharding.replicate(train.create_train_state(variables, tx), mesh)
    return steps.train(state, sharding.global_batch(batch, mesh))


def random_batch(n=8, size=32, seed=0):
    rng = np.random.default_rng(seed)
    return {"image": rng.normal(size=(n, size, size, 3)).astype(np.float32), "label": rng.integers(0, 3, n).astype(np.int32)}


def test_gradient_accumulation_equals_the_full_batch_with_frozen_batch_norms():
    """With every batch norm frozen (moving statistics), micro-batches sum to the full batch's gradient."""
    model, variables = small_model(dropout=0.0)
    model = flaxzoo.freeze(model, lambda name: name != "conv_preds")
    tx = train.make_optimizer("sgd", 0.5, mask=flaxzoo.trainable_mask(model, variables))
    batch = random_batch()
    full, _ = one_step(model, variables, tx, batch)
    accumulated, _ = one_step(model, variables, tx, batch, train.StepConfig(accum_steps=4))
    # the same step, its sums over the batch grouped otherwise: 28 layers, 8 images of 16x16 pixels
    full_params, accumulated_params = jax.device_get((full.params, accumulated.params))
    distance = tolerances.relative_distance(accumulated_params, full_params, variables["params"])
    assert distance <= tolerances.training_rtol(28, 8 * 16 * 16)
    changed = {layer for layer, values in variables["params"].items()
               if any(not np.array_equal(full.params[layer][k], v) for k, v in values.items())}  # fmt: skip
    assert changed == {"conv_preds"}
    np.testing.assert_array_equal(full.batch_stats["conv1_bn"]["mean"], variables["batch_stats"]["conv1_bn"]["mean"])


def test_bf16_compute_keeps_float32_parameters_and_a_close_loss():
    model, variables = small_model(64, dropout=0.0)  # 32 px leaves 1x1 maps: a chaotic train-mode forward pass
    tx = train.make_optimizer("adam", 1e-3)
    batch = random_batch(size=64)
    f32, m32 = one_step(model, variables, tx, batch)
    bf16, m16 = one_step(model, variables, tx, batch, train.StepConfig(compute_dtype=jnp.bfloat16))
    assert {x.dtype for x in jax.tree_util.tree_leaves(bf16.params)} == {jnp.dtype("float32")}
    # cross-entropy moves by at most twice the largest change of a logit (its gradient p - y sums to <= 2 in
    # magnitude), and bfloat16 moves the logits by at most bfloat16_rtol of their norm
    logits, _ = model.apply(variables, batch["image"], train=True, mutable=["batch_stats"])
    bound = 2 * tolerances.bfloat16_rtol(28) * float(jnp.linalg.norm(logits, axis=-1).max())
    assert abs(float(m16["loss"]) - float(m32["loss"])) <= bound


def test_label_smoothing_changes_the_loss_not_the_accuracy():
    model, variables = small_model(dropout=0.0)
    tx = train.make_optimizer("sgd", 0.0)
    batch = random_batch()
    _, plain = one_step(model, variables, tx, batch)
    _, smoothed = one_step(model, variables, tx, batch, train.StepConfig(label_smoothing=0.1))
    assert float(smoothed["loss"]) != float(plain["loss"])
    assert float(smoothed["accuracy"]) == float(plain["accuracy"])


# ------------------------------------------------------------------------------------------------
# Input pipeline
# ------------------------------------------------------------------------------------------------


def write_bad_images(folder: Path) -> None:
    """A corrupt JPEG, a grayscale PNG, an RGBA PNG and a CMYK JPEG among good ones."""
    rng = np.random.default_rng(1)
    good = Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))
    buf = folder / "corrupt.jpg"
    good.save(buf)
    buf.write_bytes(buf.read_bytes()[:200])  # truncated
    good.convert("L").save(folder / "gray.png")
    good.convert("RGBA").save(folder / "alpha.png")
    good.convert("CMYK").save(folder / "cmyk.jpg")
    (folder / "notes.txt").write_text("not an image")


def test_image_folder_converts_or_skips_bad_images_and_counts_them(tmp_path):
    root = write_folder(tmp_path / "train", per_class=2)
    write_bad_images(root / "red")
    folder = train.scan_image_folder(root)
    assert folder.class_names == ("blue", "green", "red")
    assert folder.report.total == 10 and folder.report.usable == 9
    assert folder.report.converted == {"L": 1, "RGBA": 1, "CMYK": 1}
    assert [Path(p).name for p, _ in folder.report.skipped] == ["corrupt.jpg"]
    batches = list(train.train_batches(folder, global_batch_size=3, image_size=24, preprocess_mode="tf", epoch=0))
    assert len(batches) == 3
    assert batches[0]["image"].shape == (3, 24, 24, 3) and batches[0]["image"].dtype == np.float32
    assert -1.0 <= batches[0]["image"].min() and batches[0]["image"].max() <= 1.0


def test_epoch_order_is_a_function_of_seed_and_epoch_split_over_processes(tmp_path):
    images = np.random.default_rng(0).integers(0, 255, (24, 8, 8, 3), dtype=np.uint8)
    source = train.ArraySource(images, np.arange(24) % 3)

    def labels(**kwargs):
        kwargs = dict(global_batch_size=6, image_size=8, preprocess_mode="tf", augment=None, **kwargs)
        return [b["label"].tolist() for b in train.train_batches(source, **kwargs)]

    whole = labels(epoch=0)
    assert labels(epoch=0) == whole and labels(epoch=1) != whole
    assert labels(epoch=0, start_step=2) == whole[2:]
    halves = [labels(epoch=0, process_index=p, process_count=2) for p in (0, 1)]
    assert [a + b for a, b in zip(*halves)] == whole
    padded = list(train.eval_batches(source, global_batch_size=10, image_size=8, preprocess_mode="tf"))
    assert len(padded) == 3 and sum(float(b["weight"].sum()) for b in padded) == 24


# ------------------------------------------------------------------------------------------------
# flaxzoo finetune
# ------------------------------------------------------------------------------------------------


def finetune(argv):
    assert cli.main([str(a) for a in argv]) == 0


def pretrained_shaped_backbone(tmp_path, images) -> str:
    """A no-top DenseNet121 checkpoint with random He-scaled weights and batch-norm statistics calibrated on
    ``images`` (no download, no Keras). DenseNet's concatenations carry the early (colour) features to
    the end, so its random features tell the classes apart (nearest class mean: 100% on this data), as a
    pretrained network's would; a random MobileNet's or ResNet's do not (55-60%)."""
    model, _ = flaxzoo.create_model("densenet121", abstract=True, include_top=False, weights=None, input_shape=(32, 32, 3))
    variables = random_variables("densenet121", include_top=False, input_shape=(32, 32, 3), seed=3)
    variables = calibrate_batch_norm(model, variables, images)
    return str(flaxzoo.save_checkpoint(tmp_path / "backbone", "densenet121", variables, variant="notop"))


def test_finetune_frozen_body_reaches_90_percent_validation_accuracy(tmp_path, capsys):
    train_dir = write_folder(tmp_path / "train", per_class=12)
    val_dir = write_folder(tmp_path / "val", per_class=6, seed=1)
    calibration = next(train.eval_batches(train.scan_image_folder(train_dir), global_batch_size=36, image_size=32,
                                          preprocess_mode="torch"))["image"]  # fmt: skip
    backbone = pretrained_shaped_backbone(tmp_path, calibration)
    write_bad_images(train_dir / "green")
    metrics = tmp_path / "metrics.json"
    finetune([
        "finetune", "--model", "densenet121", "--weights", backbone, "--data", train_dir,
        "--val-data", val_dir, "--image-size", 32, "--freeze-until", "relu", "--epochs", 4,
        "--batch-size", 12, "--lr", 0.01, "--optimizer", "adam", "--metrics-out", metrics,
        "--export", tmp_path / "export", "--quiet",
    ])  # fmt: skip
    out = capsys.readouterr().out
    assert "converted to RGB: 1 CMYK, 1 L, 1 RGBA; skipped: 1" in out
    assert "skipped" in out and "corrupt.jpg" in out
    record = json.loads(metrics.read_text())
    assert [e["epoch"] for e in record["epochs"]] == [1, 2, 3, 4]
    assert record["epochs"][-1]["eval_accuracy"] >= 0.9, record["epochs"]
    assert metrics.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The export loads through the constructor, and classifies the validation images as the run did.
    model, variables = flaxzoo.DenseNet121(input_shape=(32, 32, 3), weights=str(tmp_path / "export"), classes=3)
    meta = checkpoint.read_metadata(tmp_path / "export")
    assert meta["classes"] == 3 and meta["class_names"] == ["blue", "green", "red"]
    folder = train.scan_image_folder(val_dir, class_names=meta["class_names"])
    batch = next(train.eval_batches(folder, global_batch_size=len(folder), image_size=32, preprocess_mode="torch"))
    accuracy = np.mean(np.argmax(jax.jit(model.apply)(variables, batch["image"]), -1) == batch["label"])
    assert accuracy == pytest.approx(record["epochs"][-1]["eval_accuracy"])


def test_finetune_resumes_exactly_and_records_every_epoch(tmp_path):
    """Stopped after epoch 1, restarted with --epochs 3: epochs 2-3 continue from the checkpoint, and the
    result equals the uninterrupted 3-epoch run (same batches, same updates)."""
    data = write_folder(tmp_path / "train", per_class=4)

    def run(name, epochs):
        finetune([
            "finetune", "--model", "mobilenet", "--weights", "none", "--data", data, "--image-size", 32,
            "--epochs", epochs, "--batch-size", 4, "--optimizer", "momentum", "--lr", 0.01,
            "--checkpoint-dir", tmp_path / name, "--save-every", 2, "--metrics-out", tmp_path / f"{name}.json",
            "--quiet",
        ])  # fmt: skip
        return json.loads((tmp_path / f"{name}.json").read_text())["epochs"]

    straight = run("straight", 3)
    first = run("resumed", 1)
    assert [e["epoch"] for e in first] == [1]
    resumed = run("resumed", 3)
    assert [e["epoch"] for e in resumed] == [1, 2, 3]
    # The same compiled steps from an exactly restored state: the same values. 1e-6 admits only ulps
    # (an epoch's loss is the same float32 step losses, summed in another grouping across the restart).
    for a, b in zip(straight, resumed):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-6)
    a, _ = checkpoint.restore(tmp_path / "straight" / "export")
    b, _ = checkpoint.restore(tmp_path / "resumed" / "export")
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(x, y, atol=1e-6)


def test_finetune_layer_decay_scales_each_stage_learning_rate(tmp_path, capsys):
    """One plain SGD step with --layer-decay 0.5 against one without, from the same weights on the same batch:
    each parameter moved by its stage's factor (the stem 0.5**5 as far, the new head as far)."""
    data = write_folder(tmp_path / "train", per_class=4)

    def run(name, *extra):
        finetune([
            "finetune", "--model", "mobilenet", "--weights", "none", "--data", data, "--image-size", 32,
            "--epochs", 1, "--batch-size", 12, "--optimizer", "sgd", "--lr", 0.1, "--no-augment", "--quiet",
            "--export", tmp_path / name, *extra,
        ])  # fmt: skip
        return checkpoint.restore(tmp_path / name)[0]["params"]

    plain, decayed = run("plain"), run("decayed", "--layer-decay", 0.5)
    assert "layer decay 0.5" in capsys.readouterr().out
    model, initial, _ = build_model(flaxzoo.get_spec("mobilenet"), 3, 32, None)
    labels = flaxzoo.param_groups(model, initial)
    factor = {"head": 1.0, "stage4": 0.5, "stage3": 0.25, "stage2": 0.125, "stage1": 0.0625, "stem": 0.03125}
    leaves = zip(*(jax.tree_util.tree_leaves(t) for t in (initial["params"], plain, decayed, labels)))
    for start, a, b, label in leaves:
        expected = factor[label] * (a - start)
        # b - start and a - start each carry the rounding of a float32 sum with start (u|start|, u = 2^-24);
        # 1e-4 relative admits gradients rounded otherwise in the two compilations
        bound = 1e-4 * np.abs(expected) + 4 * 2.0**-24 * np.abs(start)
        assert np.all(np.abs((b - start) - expected) <= bound), label


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_like_one_process_with_four_devices(tmp_path):
    """The launch scripts' entry point (`flaxzoo finetune --distributed`) on two processes of two CPU
    devices each, coordinated over 127.0.0.1, against one process with four devices.

    The body is frozen: a random batch-norm network trained on 4 images per batch is chaotic (float32
    rounding differences of 1e-7 between device layouts grow to 1e-1 in the loss within three steps),
    which would hide what this compares, the data split and the cross-process reductions. Equality of
    the train-mode batch-norm statistics over devices is test_sharded_and_pmap_steps_equal_a_single_device_step's.
    """
    data = write_folder(tmp_path / "train", per_class=4)
    common = [
        sys.executable, "-m", "flaxzoo.cli", "finetune", "--model", "mobilenet", "--weights", "none",
        "--data", str(data), "--image-size", "32", "--epochs", "2", "--batch-size", "4", "--optimizer", "momentum",
        "--lr", "0.5", "--freeze-until", "conv_pw_13_relu", "--no-augment", "--quiet", "--workers", "2",
    ]  # fmt: skip
    single = subprocess.run(
        [*common, "--export", str(tmp_path / "single"), "--metrics-out", str(tmp_path / "single.json")],
        env=subprocess_env(4), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert single.returncode == 0, single.stderr[-3000:]

    # tpu/launch_processes.sh starts both local processes (ids 0 and 1), as on a host of a GPU cluster
    env = subprocess_env(2, FLAXZOO_COORDINATOR=f"127.0.0.1:{free_port()}", FLAXZOO_NUM_PROCESSES="2",
                         FLAXZOO_PROCESS_ID="0", LOCAL_PROCESSES="2")  # fmt: skip
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # the venv's flaxzoo script
    multi = subprocess.run(
        ["bash", str(REPO / "tpu" / "launch_processes.sh"), *common[4:], "--export", str(tmp_path / "multi"),
         "--metrics-out", str(tmp_path / "multi.json")],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert multi.returncode == 0, multi.stderr[-3000:]
    assert "4 devices on 2 processes" in multi.stdout

    a = json.loads((tmp_path / "single.json").read_text())["epochs"]
    b = json.loads((tmp_path / "multi.json").read_text())["epochs"]
    assert a[0]["train_loss"] != a[1]["train_loss"]
    # The runs differ in the order their gradients are summed over the 4 devices (one process, or two
    # over gloo). Every step's relative error is within the rounding of a train step (28 layers, 4 images
    # of 16x16 pixels), and updates summed over steps keep it: compared relative to the whole update.
    bound = tolerances.training_rtol(28, 4 * 16 * 16)
    for x, y in zip(a, b):
        assert abs(x["train_loss"] - y["train_loss"]) <= bound * x["train_loss"]
    single_vars, _ = checkpoint.restore(tmp_path / "single")
    multi_vars, _ = checkpoint.restore(tmp_path / "multi")
    _, initial, _ = build_model(flaxzoo.get_spec("mobilenet"), 3, 32, None)
    assert tolerances.relative_distance(multi_vars["params"], single_vars["params"], initial["params"]) <= bound


KILL_DURING_SAVE = """
import sys, time
import numpy as np
from flaxzoo import train
ckpts = train.TrainCheckpoints(sys.argv[1], save_every_steps=1, keep=5)
state = {"w": np.full((64, 1024, 1024), 1.0, np.float32)}  # 256 MB: a save takes a while
ckpts.save(1, state, {"step": 1}, force=True)
ckpts.wait()
print("saved 1", flush=True)
ckpts.save(2, {"w": state["w"] * 2}, {"step": 2}, force=True)
print("saving 2", flush=True)
time.sleep(600)
"""


def test_sigkill_during_a_save_leaves_the_previous_checkpoint_restorable(tmp_path):
    directory = tmp_path / "ckpt"
    proc = subprocess.Popen([sys.executable, "-c", KILL_DURING_SAVE, str(directory)], env=subprocess_env(1),
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert proc.stdout.readline().strip() == "saved 1"
        assert proc.stdout.readline().strip() == "saving 2"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        proc.kill()
    ckpts = train.TrainCheckpoints(directory)
    assert ckpts.latest_step() in (1, 2)
    step = ckpts.latest_step()
    template = {"w": np.zeros((64, 1024, 1024), np.float32)}
    state, record = ckpts.restore(template, sharding.replicated(sharding.data_mesh()), step=1)
    assert record == {"step": 1} and float(state["w"][0, 0, 0]) == 1.0
    if step == 2:  # the save had finished before the kill: then it must be whole
        state, _ = ckpts.restore(template, sharding.replicated(sharding.data_mesh()))
        assert float(np.asarray(state["w"]).min()) == 2.0
    ckpts.close()


def fake_command(bin_dir: Path, name: str) -> Path:
    """An executable ``name`` that records its arguments, one per line, in ``name.args``."""
    bin_dir.mkdir(exist_ok=True)
    script = bin_dir / name
    script.write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$@" > "{bin_dir / name}.args"\n')
    script.chmod(0o755)
    return bin_dir / f"{name}.args"


def test_pod_and_slurm_launchers_run_flaxzoo_finetune_distributed(tmp_path):
    """The TPU pod launcher runs the same command on every worker; the SLURM script runs it under srun."""
    env = dict(os.environ, PATH=f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}", TPU_NAME="pod", ZONE="z",
               FLAXZOO_HOME="/cache/flaxzoo")  # fmt: skip
    recorded = fake_command(tmp_path / "bin", "gcloud")
    args = ["--model", "resnet50", "--data", "/data/my train", "--epochs", "3"]
    subprocess.run(["bash", str(REPO / "tpu" / "pod_finetune.sh"), *args], env=env, check=True, timeout=60)
    gcloud = recorded.read_text().splitlines()
    assert gcloud[:5] == ["compute", "tpus", "tpu-vm", "ssh", "pod"] and "--worker=all" in gcloud
    command = gcloud[gcloud.index("--command") + 1]
    assert "export FLAXZOO_HOME=/cache/flaxzoo;" in command
    assert command.endswith("flaxzoo finetune --distributed --model resnet50 --data /data/my\\ train --epochs 3")

    recorded = fake_command(tmp_path / "bin", "srun")
    subprocess.run(["bash", str(REPO / "tpu" / "slurm_finetune.sbatch"), *args], env=env, check=True, timeout=60)
    srun = recorded.read_text().splitlines()
    assert srun[srun.index("flaxzoo"):] == ["flaxzoo", "finetune", "--distributed", "--workers", "8", *args]
