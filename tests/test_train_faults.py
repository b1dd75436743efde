"""Training faults in ``flaxzoo finetune``: a non-finite loss or parameters, a checkpoint that cannot be
written, SIGTERM. The loop is what is under test, so the model is a tiny stand-in (a convolution, a batch
norm, a dense layer: compiled in a fraction of a second) patched in for the registered model's."""

import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

import flaxzoo
from flaxzoo import cli, sharding, train
from flaxzoo.train import finetune as finetune_lib
from flaxzoo.train.faults import StopSignals

from test_train import subprocess_env, write_folder

TESTS = Path(__file__).resolve().parent
STEPS_PER_EPOCH = 3  # 12 images (write_folder(per_class=4)), batches of 4


class Tiny(nn.Module):
    classes: int = 3

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(4, (3, 3), strides=(2, 2))(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
        return nn.Dense(self.classes)(x.mean(axis=(1, 2)))


def tiny_build_model(spec, classes, image_size, weights, seed=0, model_args=None):
    model = Tiny(classes)
    variables = jax.jit(model.init)(jax.random.key(seed), jnp.zeros((1, image_size, image_size, 3)))
    return model, jax.device_get(dict(variables)), None


def use_tiny_model(setattr=setattr):
    setattr(finetune_lib, "build_model", tiny_build_model)


def tiny_template(optimizer="sgd", size=16):
    """A TrainState shaped like the tiny run's, to restore its checkpoints into."""
    model, variables, _ = tiny_build_model(None, 3, size, None)
    tx = train.make_optimizer(optimizer, 0.1, mask=flaxzoo.trainable_mask(model, variables))  # as finetune's
    return train.create_train_state(variables, tx)


def args(data, ckpt, *extra):
    return [
        "finetune", "--model", "mobilenet", "--weights", "none", "--data", str(data), "--image-size", "16",
        "--batch-size", "4", "--optimizer", "sgd", "--checkpoint-dir", str(ckpt), "--quiet", "--workers", "1",
        *[str(a) for a in extra],
    ]  # fmt: skip


def restore_latest(ckpt: Path):
    ckpts = train.TrainCheckpoints(ckpt)
    try:
        step = ckpts.latest_step()
        state, record = ckpts.restore(tiny_template(), sharding.replicated(sharding.data_mesh()))
    finally:
        ckpts.close()
    return step, state, record


def assert_finite(state):
    for leaf in jax.tree_util.tree_leaves(state.params) + jax.tree_util.tree_leaves(state.batch_stats):
        assert np.isfinite(np.asarray(leaf)).all()


@pytest.fixture
def data(tmp_path):
    return write_folder(tmp_path / "train", per_class=4, size=16)


def test_nan_loss_stops_at_its_step_and_keeps_the_last_good_checkpoint(data, tmp_path, monkeypatch, capsys):
    """NaN pixels in the batch of step 5 (epoch 2, step 2): the run stops there with the step in the
    message, exit status 2, and step 4 stays the latest checkpoint, with finite parameters."""
    use_tiny_model(monkeypatch.setattr)
    batches = finetune_lib.data_lib.train_batches

    def poisoned(*a, epoch, start_step=0, **kw):
        for k, batch in enumerate(batches(*a, epoch=epoch, start_step=start_step, **kw), start=start_step):
            if epoch * STEPS_PER_EPOCH + k + 1 == 5:
                batch = dict(batch, image=np.full_like(batch["image"], np.nan))
            yield batch

    monkeypatch.setattr(finetune_lib.data_lib, "train_batches", poisoned)
    assert cli.main(args(data, tmp_path / "ckpt", "--epochs", 3, "--lr", 0.1, "--save-every", 1)) == 2
    err = capsys.readouterr().err
    assert "flaxzoo: error: training diverged: loss nan at step 5 (epoch 2, step 2 of 3)" in err
    assert "the latest checkpoint is step 4" in err
    step, state, record = restore_latest(tmp_path / "ckpt")
    assert step == 4 and (record["epoch"], record["step_in_epoch"]) == (1, 1)
    assert_finite(state)
    assert not (tmp_path / "ckpt" / "export").exists()


def test_parameters_made_non_finite_by_an_update_are_never_checkpointed(data, tmp_path, monkeypatch, capsys):
    """An infinite learning rate: the loss of step 1 is finite, the parameters after it are not."""
    use_tiny_model(monkeypatch.setattr)
    assert cli.main(args(data, tmp_path / "ckpt", "--epochs", 1, "--lr", "inf", "--save-every", 1)) == 2
    err = capsys.readouterr().err
    assert "the update of step 1 (epoch 1, step 1 of 3) made the parameters non-finite" in err
    assert "not checkpointed, and no earlier checkpoint" in err
    ckpts = train.TrainCheckpoints(tmp_path / "ckpt")
    assert ckpts.latest_step() is None
    ckpts.close()


def test_a_failed_checkpoint_write_stops_the_run_and_the_previous_one_resumes(data, tmp_path, monkeypatch, capsys):
    """The write of step 4 fails after its arrays are written (disk full, while writing the JSON record);
    with --keep 1 the save of step 4 would have deleted step 3 on success. The run stops with an error
    naming step 4 and step 3, which stays the latest; a rerun resumes from it and completes."""
    from orbax.checkpoint._src.handlers import json_checkpoint_handler

    use_tiny_model(monkeypatch.setattr)
    write_record = json_checkpoint_handler.JsonCheckpointHandler._save_fn

    async def disk_full_at_step_4(self, x, directory):
        if Path(str(directory)).parent.name.startswith("4."):  # <step>.orbax-checkpoint-tmp/record...
            assert any(p.name.startswith("state") for p in Path(str(directory)).parent.iterdir())  # a partial step
            raise OSError(errno.ENOSPC, "No space left on device (simulated)", str(directory))
        return await write_record(self, x, directory)

    monkeypatch.setattr(json_checkpoint_handler.JsonCheckpointHandler, "_save_fn", disk_full_at_step_4)
    command = args(data, tmp_path / "ckpt", "--epochs", 2, "--lr", 0.1, "--save-every", 1, "--keep", 1)
    assert cli.main(command) == 2
    err = capsys.readouterr().err
    assert re.search(r"writing the checkpoint of step 4 failed \(OSError: .*No space left on device", err), err
    assert "the latest complete checkpoint is step 3" in err
    step, state, record = restore_latest(tmp_path / "ckpt")
    assert step == 3 and (record["epoch"], record["step_in_epoch"]) == (1, 0)
    assert_finite(state)

    monkeypatch.setattr(json_checkpoint_handler.JsonCheckpointHandler, "_save_fn", write_record)
    assert cli.main(command) == 0
    out = capsys.readouterr().out
    assert f"resumed from {tmp_path / 'ckpt'} at step 3 (epoch 2, step 0)" in out
    assert restore_latest(tmp_path / "ckpt")[0] == 6


SIGTERMED = f"""
import sys
sys.path.insert(0, {str(TESTS)!r})
import test_train_faults
test_train_faults.use_tiny_model()
from flaxzoo import cli
sys.exit(cli.main(sys.argv[1:]))
"""


def test_sigterm_checkpoints_the_current_step_exits_143_and_the_rerun_resumes_there(data, tmp_path, monkeypatch, capsys):
    """SIGTERM once the run has checkpointed its first epoch: it finishes the step (or the epoch's end),
    checkpoints it and exits 143 naming it; the same command resumes from it."""
    ckpt = tmp_path / "ckpt"
    command = args(data, ckpt, "--lr", 0.1, "--save-every", 1000)
    proc = subprocess.Popen([sys.executable, "-c", SIGTERMED, *command, "--epochs", "10000"], env=subprocess_env(1),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not (ckpt / str(STEPS_PER_EPOCH)).exists():  # the end of epoch 1: training is under way
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, err[-3000:]
    found = re.search(r"flaxzoo: SIGTERM: stopped after (step|epoch) .*; checkpoint of step (\d+) saved in", err)
    assert found, err[-3000:]
    stopped = int(found.group(2))
    step, state, record = restore_latest(ckpt)
    assert step == stopped > STEPS_PER_EPOCH
    assert record["epoch"] * STEPS_PER_EPOCH + record["step_in_epoch"] == stopped
    assert_finite(state)

    use_tiny_model(monkeypatch.setattr)  # the same command, here, up to the end of the interrupted epoch
    capsys.readouterr()
    assert cli.main([*command, "--epochs", str(stopped // STEPS_PER_EPOCH + 1)]) == 0
    assert f"resumed from {ckpt} at step {stopped} " in capsys.readouterr().out


def test_sigint_mid_epoch_checkpoints_that_step_exits_130_and_resumes_exactly(data, tmp_path, monkeypatch, capsys):
    """Ctrl-C while step 5 (epoch 2, step 2) runs: that step is checkpointed with the epoch's running
    sums, and the resumed run ends exactly as an uninterrupted one."""
    use_tiny_model(monkeypatch.setattr)
    batches = finetune_lib.data_lib.train_batches
    interrupt = {"at": 5}

    def interrupted(*a, epoch, start_step=0, **kw):
        for k, batch in enumerate(batches(*a, epoch=epoch, start_step=start_step, **kw), start=start_step):
            if epoch * STEPS_PER_EPOCH + k + 1 == interrupt["at"]:
                os.kill(os.getpid(), signal.SIGINT)
            yield batch

    monkeypatch.setattr(finetune_lib.data_lib, "train_batches", interrupted)
    ckpt = tmp_path / "ckpt"
    command = args(data, ckpt, "--lr", 0.1, "--save-every", 1000, "--epochs", 2)
    with pytest.raises(train.Interrupted) as stopped:  # a SystemExit
        cli.main([*command, "--metrics-out", str(tmp_path / "resumed.json")])
    assert stopped.value.code == 130
    err = capsys.readouterr().err
    assert f"flaxzoo: SIGINT: stopped after step 5 (epoch 2, step 2 of 3); checkpoint of step 5 saved in {ckpt}" in err
    step, _, record = restore_latest(ckpt)
    assert step == 5 and (record["epoch"], record["step_in_epoch"]) == (1, 2) and record["partial"]["count"] == 8

    interrupt["at"] = None
    assert cli.main([*command, "--metrics-out", str(tmp_path / "resumed.json")]) == 0
    assert f"resumed from {ckpt} at step 5 (epoch 2, step 2)" in capsys.readouterr().out
    straight = args(data, tmp_path / "straight", "--lr", 0.1, "--save-every", 1000, "--epochs", 2)
    assert cli.main([*straight, "--metrics-out", str(tmp_path / "straight.json")]) == 0
    a = json.loads((tmp_path / "straight.json").read_text())["epochs"]
    b = json.loads((tmp_path / "resumed.json").read_text())["epochs"]
    assert [e["epoch"] for e in b] == [1, 2]
    # the same compiled steps from an exactly restored state (1e-6 admits the loss regrouped across the restart)
    for x, y in zip(a, b):
        assert x["train_loss"] == pytest.approx(y["train_loss"], abs=1e-6)
    for x, y in zip(jax.tree_util.tree_leaves(restore_latest(tmp_path / "straight")[1].params),
                    jax.tree_util.tree_leaves(restore_latest(ckpt)[1].params)):  # fmt: skip
        np.testing.assert_allclose(x, y, atol=1e-6)


def test_stop_signals_take_one_signal_then_restore_the_previous_handlers():
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    with StopSignals() as stop:
        assert not stop.requested(1)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)  # the handler runs between bytecodes of the main thread
        assert stop.requested(2) and stop.received == signal.SIGTERM
        assert signal.getsignal(signal.SIGTERM) == previous[signal.SIGTERM]  # a second one acts at once
    assert {s: signal.getsignal(s) for s in previous} == previous
