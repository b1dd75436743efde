"""Shared by the benchmark scripts: random weights without initialiser compilation, timing, memory."""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time

import jax
import numpy as np


def random_variables(model_name: str, seed: int = 0, **kwargs) -> tuple:
    """``(module, variables)`` of a registered model with random weights drawn in numpy (He-scaled kernels,
    batch norms at unit statistics): the same speed as trained weights, without compiling an initialiser."""
    from flaxzoo.registry import create_model

    model, abstract = create_model(model_name, abstract=True, weights=None, **kwargs)
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        kind, shape = path[-1].key, leaf.shape
        if kind in ("var", "scale"):
            return np.ones(shape, np.float32)
        if kind in ("mean", "bias"):
            return np.zeros(shape, np.float32)
        fan_in = int(np.prod(shape[:2])) if kind == "depthwise_kernel" else int(np.prod(shape[:-1]))
        return (rng.standard_normal(shape, dtype=np.float32) * np.sqrt(2.0 / fan_in)).astype(np.float32)

    return model, jax.tree_util.tree_map_with_path(draw, abstract)


def block(x):
    return jax.block_until_ready(x)


def timed(fn, *args) -> float:
    start = time.perf_counter()
    block(fn(*args))
    return time.perf_counter() - start


def median(xs):
    return statistics.median(xs)


def rss_mb() -> float:
    """Current resident set size (Linux /proc), MB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """This process' own peak RSS (VmHWM; ru_maxrss keeps a forking parent's high-water mark after exec)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def matmul_roofline(n: int = 2048, dtype="float32", repeats: int = 5) -> float:
    """FLOP/s of a jitted n×n×n matmul: the machine's practical peak for this dtype."""
    a = jax.random.normal(jax.random.key(0), (n, n)).astype(dtype)
    f = jax.jit(lambda a: a @ a)
    block(f(a))
    t = median([timed(f, a) for _ in range(repeats)])
    return 2 * n**3 / t


def machine() -> dict:
    info = {"python": platform.python_version(), "jax": jax.__version__, "devices": [str(d) for d in jax.devices()],
            "cpus": os.cpu_count()}  # fmt: skip
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
        info["cpu"] = model
        info["cpu_flags"] = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    except (OSError, StopIteration):
        pass
    try:
        info["gpu"] = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                                     text=True, timeout=10).stdout.strip() or None  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        pass
    return info



def keras_model(spec, **kwargs):
    from keras_build import keras_model as build

    return build(spec.keras_name, **kwargs)
