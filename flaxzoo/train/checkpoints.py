"""Training checkpoints with orbax's CheckpointManager: every N steps (asynchronously) and at each epoch's
end, the last K kept, resumable exactly and onto another device count.

Each checkpoint holds the :class:`~flaxzoo.train.state.TrainState` and a JSON record of where the run
is (epoch, step within it, the metrics so far). Orbax writes a step under a temporary name and renames
it when complete, so a process killed mid-save leaves the previous checkpoints intact; leftover
temporary directories are removed when the manager opens.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding


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

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, record: dict, *, force: bool = False) -> bool:
        """Save at ``step`` if the interval says so (or ``force``); returns whether a save started."""
        return self.manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), record=ocp.args.JsonSave(record)),
            force=force,
        )

    def restore(self, template: Any, sharding: NamedSharding, step: int | None = None) -> tuple[Any, dict]:
        """The state at ``step`` (default: the latest), laid out with ``sharding`` (any device count), and its record."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise ValueError(f"{self.directory}: no checkpoint to restore")
        target = jax.tree_util.tree_map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), template
        )
        restored = self.manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target), record=ocp.args.JsonRestore())
        )
        return restored["state"], dict(restored["record"])

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
