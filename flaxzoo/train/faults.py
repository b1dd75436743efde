"""What the fine-tuning loop does on faults: preemption signals and non-finite values.

* SIGTERM (what preemptible TPU VMs, Kubernetes and SLURM send before killing) or SIGINT: the loop
  finishes the current step, saves a checkpoint of it, waits for the write, and exits with
  :class:`Interrupted`, a ``SystemExit`` with the shell's status for the signal (143 for SIGTERM, 130 for
  SIGINT). Rerunning the same command resumes from that step. A second signal gets the previous handler
  (a second Ctrl-C interrupts at once).
* Several processes (``jax.distributed``): JAX installs its own SIGTERM notifier, and the processes,
  which may receive the signal at different steps, agree on one step through its preemption sync
  manager (``multihost_utils.reached_preemption_sync_point``, asked at every step: a local check until a
  notice arrives). No Python handler is installed then (it would displace JAX's); SIGINT keeps its
  default.
* A non-finite loss (checked every step: the loop fetches it anyway) or non-finite parameters
  (checked before each save, one fused reduction) stop the run with a TrainingError naming the step;
  the state is not saved, so the latest checkpoint is the last good one. The loss is the global batch's,
  the same on every process, so all processes stop at the same step.
"""

from __future__ import annotations

import signal
import threading

import jax
import jax.numpy as jnp
import numpy as np


class Interrupted(SystemExit):
    """The run stopped on a signal after checkpointing ``step``; exits with status 128 + the signal number."""

    def __init__(self, signum: int, step: int, message: str):
        super().__init__(128 + signum)
        self.signum, self.step, self.message = signum, step, message

    def __str__(self) -> str:
        return self.message


class StopSignals:
    """A context manager that turns SIGTERM/SIGINT into a stop request, checked between steps with
    ``requested(step)``; the previous handlers are back on exit."""

    def __init__(self, enabled: bool = True, signals=(signal.SIGTERM, signal.SIGINT)):
        self.enabled, self.signals = enabled, tuple(signals)
        self.received: int | None = None
        self._previous: dict = {}
        self._sync_point = False

    def __enter__(self) -> StopSignals:
        if not self.enabled:
            return self
        if jax.process_count() > 1:
            self._sync_point = True
            return self
        if threading.current_thread() is not threading.main_thread():
            return self  # signal handlers can only be set there
        for signum in self.signals:
            previous = signal.getsignal(signum)
            if previous is None:
                continue  # a handler set outside Python: it could not be put back
            signal.signal(signum, self._handle)
            self._previous[signum] = previous
        return self

    def _handle(self, signum, frame) -> None:
        self.received = self.received or signum
        signal.signal(signum, self._previous[signum])

    def requested(self, step: int) -> bool:
        """Whether to stop after ``step`` (every process gets the same answer at the same step)."""
        if self._sync_point and self.received is None:
            from jax.experimental import multihost_utils

            try:
                if multihost_utils.reached_preemption_sync_point(step):
                    self.received = signal.SIGTERM
            except RuntimeError:  # jax_enable_preemption_service is off: no notices to act on
                self._sync_point = False
        return self.received is not None

    def __exit__(self, *exc) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}


@jax.jit
def _finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def all_finite(tree) -> bool:
    """Whether every floating-point array of ``tree`` (replicated global arrays, on any process) is finite."""
    out = _finite(tree)
    return bool(np.asarray(out.addressable_data(0)))
