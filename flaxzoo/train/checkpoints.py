"""Training checkpoints with orbax's CheckpointManager: every N steps (asynchronously) and at each epoch's
end, the last K kept, resumable exactly and onto another device count.

Each checkpoint holds the :class:`~flaxzoo.train.state.TrainState` (every variable collection of the model
included: ``collections`` holds those besides params and batch_stats) and a JSON record of where the run
is (epoch, step within it, the metrics so far). Orbax writes a step under a temporary name and renames
it when complete, so a process killed mid-save leaves the previous checkpoints intact; leftover
temporary directories are removed when the manager opens.

A save that fails (disk full, permissions, a storage error) raises :class:`~flaxzoo.errors.CheckpointError`
naming its step and the latest complete checkpoint, which stays intact: orbax deletes the checkpoints
beyond ``keep`` only after a newer one is complete, and a partial one keeps its temporary name, which
``latest_step`` ignores. An asynchronous save's failure surfaces at the next ``save``, ``wait`` or ``close``.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding
from orbax.checkpoint.checkpoint_manager import StepAlreadyExistsError

from flaxzoo.errors import CheckpointError
from flaxzoo.train.state import TrainState


class TrainCheckpoints:
    def __init__(self, directory: str | os.PathLike, *, save_every_steps: int = 1000, keep: int = 3, use_async: bool = True):
        self.directory = os.path.abspath(directory)
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                save_interval_steps=max(1, save_every_steps),
                max_to_keep=keep,
                enable_async_checkpointing=use_async,
                cleanup_tmp_directories=True,
            ),
        )
        self._in_flight: int | None = None  # the step of an asynchronous save not yet known complete

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def should_save(self, step: int) -> bool:
        """Whether ``save(step, ...)`` would save (the interval, or a multi-host preemption sync point)."""
        return self.manager.should_save(step)

    def save(self, step: int, state: Any, record: dict, *, force: bool = False) -> bool:
        """Save at ``step`` if the interval says so (or ``force``); returns whether a save started."""
        if not force and not self.manager.should_save(step):
            return False
        self.wait()  # so that the previous save's failure is reported under its own step
        try:
            self.manager.save(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardSave(state), record=ocp.args.JsonSave(record)),
                force=True,
            )
        except StepAlreadyExistsError:
            raise
        except Exception as e:
            raise self._failed(step, e) from e
        self._in_flight = step
        return True

    def _failed(self, step: int, error: BaseException) -> CheckpointError:
        # the manager's list of steps is stale after a failure (it drops the steps due for deletion)
        self.manager.reload()
        latest = self.manager.latest_step()
        intact = f"the latest complete checkpoint is step {latest}" if latest is not None else "no complete checkpoint"
        return CheckpointError(f"{self.directory}: writing the checkpoint of step {step} failed "
                               f"({type(error).__name__}: {error}); {intact}")  # fmt: skip

    def restore(self, template: Any, sharding: NamedSharding, step: int | None = None) -> tuple[Any, dict]:
        """The state at ``step`` (default: the latest), laid out with ``sharding`` (any device count), and its record."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise ValueError(f"{self.directory}: no checkpoint to restore")
        try:
            state, record = self._restore(step, template, sharding)
        except ValueError as error:
            # A run checkpointed before TrainState had ``collections``: the same state for a model with no
            # collection besides params and batch_stats, which resumes as it is.
            if not (isinstance(template, TrainState) and template.collections == {}):
                raise
            fields = dataclasses.fields(template)
            older = {f.name: getattr(template, f.name) for f in fields if f.name != "collections"}
            try:
                state, record = self._restore(step, older, sharding)
            except ValueError:
                raise error from None
            state = TrainState(**state)
        return state, record

    def _restore(self, step: int, template: Any, sharding: NamedSharding) -> tuple[Any, dict]:
        target = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), template)
        restored = self.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target), record=ocp.args.JsonRestore())
        )
        return restored["state"], dict(restored["record"])

    def wait(self) -> None:
        """Until the save in flight is complete; raises CheckpointError if it failed."""
        step, self._in_flight = self._in_flight, None
        try:
            self.manager.wait_until_finished()
        except Exception as e:
            raise self._failed(step, e) from e

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self.manager.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
