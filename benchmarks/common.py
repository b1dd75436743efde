"""Shared by the benchmark scripts: timing, memory, the machine. (Random weights: flaxzoo.testing.)"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time

import jax


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
    # Settings that change the numbers (the allocator's, XLA's) are part of the machine's description.
    info["env"] = {k: os.environ[k] for k in ("GLIBC_TUNABLES", "XLA_FLAGS", "MALLOC_ARENA_MAX") if k in os.environ}
    try:
        info["thp"] = open("/sys/kernel/mm/transparent_hugepage/enabled").read().strip()
    except OSError:
        pass
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
