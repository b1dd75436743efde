"""Data parallelism over every device of every host: one ``data`` mesh axis, parameters replicated,
batches split along it (big_vision's rule set, reduced to what image classifiers need).

A global batch never exists on one host: each process loads its own slice (``per_process_batch``) and
:func:`global_batch` assembles the global ``jax.Array`` from the process-local pieces. The same code runs
on one CPU, eight simulated devices and a TPU pod. :func:`initialize` starts ``jax.distributed`` for
multi-host runs (auto-detected on TPU pods and SLURM, or given a coordinator address).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"

# Environment knobs of :func:`initialize` (also read by the launch scripts in tpu/).
ENV_COORDINATOR = "FLAXZOO_COORDINATOR"  # host:port of process 0
ENV_NUM_PROCESSES = "FLAXZOO_NUM_PROCESSES"
ENV_PROCESS_ID = "FLAXZOO_PROCESS_ID"


def initialize(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None) -> None:
    """Start JAX's distributed runtime, once, before any computation.

    With no arguments and none of ``FLAXZOO_COORDINATOR`` / ``FLAXZOO_NUM_PROCESSES`` /
    ``FLAXZOO_PROCESS_ID`` set, ``jax.distributed.initialize()`` auto-detects the cluster (TPU pods,
    SLURM, Open MPI). On CPU, cross-process collectives use gloo.
    """
    coordinator = coordinator or os.environ.get(ENV_COORDINATOR)
    if num_processes is None and os.environ.get(ENV_NUM_PROCESSES):
        num_processes = int(os.environ[ENV_NUM_PROCESSES])
    if process_id is None and os.environ.get(ENV_PROCESS_ID):
        process_id = int(os.environ[ENV_PROCESS_ID])
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # only CPU devices use it
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)


def data_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh named ``data`` over ``devices`` (default: every device of every process)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over the ``data`` axis."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def per_process_batch(global_batch_size: int, mesh: Mesh) -> int:
    """This process' share of a global batch; the global batch must split evenly over the devices."""
    n = mesh.devices.size
    if global_batch_size % n:
        raise ValueError(f"the global batch size {global_batch_size} is not a multiple of the {n} devices")
    local = sum(d.process_index == jax.process_index() for d in mesh.devices.flat)
    return global_batch_size // n * local


def global_batch(local: Any, mesh: Mesh) -> Any:
    """Process-local numpy batches (a pytree) → global ``jax.Array``s sharded along the batch axis."""
    sharding = batch_sharded(mesh)
    return jax.tree_util.tree_map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Place a pytree (host values, identical on every process) on every device of ``mesh``."""
    sharding = replicated(mesh)
    return jax.tree_util.tree_map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree)


# ------------------------------------------------------------------------------------------------
# pmap layout: a leading axis of local devices
# ------------------------------------------------------------------------------------------------


def pmap_replicate(tree: Any, devices: Sequence[jax.Device] | None = None) -> Any:
    """A copy of ``tree`` per local device, stacked on a leading axis (``flax.jax_utils.replicate``): pmap
    places slice ``i`` on device ``i``."""
    n = jax.local_device_count() if devices is None else len(devices)
    return jax.tree_util.tree_map(lambda x: np.repeat(np.asarray(x)[None], n, axis=0), tree)


def pmap_unreplicate(tree: Any) -> Any:
    """The first device's copy (every copy is identical after a pmean-synchronised step)."""
    return jax.tree_util.tree_map(lambda x: x[0], tree)


def pmap_split(batch: Any, n_devices: int | None = None) -> Any:
    """Reshape a process-local batch (B, ...) to (devices, B / devices, ...) for ``jax.pmap``."""
    n = n_devices or jax.local_device_count()

    def split(x):
        x = np.asarray(x)
        if x.shape[0] % n:
            raise ValueError(f"batch of {x.shape[0]} does not split over {n} devices")
        return x.reshape(n, x.shape[0] // n, *x.shape[1:])

    return jax.tree_util.tree_map(split, batch)
