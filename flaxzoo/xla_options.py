"""The XLA compiler options flaxzoo's jitted functions compile with, and :func:`jit` to use them in your own.

On CPU, jaxlib 0.10's XLA hands some operations to YNNPACK ("ynn fusions"). For these models that is
slower than XLA's own kernels on every one measured, and much slower where a reduction at the end of the
network (the softmax's max) grows a YNNPACK fusion that swallows every convolution before it: VGG16 runs
in 1.37 s instead of 2.52 s per batch of 8 without it, InceptionV3 and DenseNet121 ~1.3x faster, ResNet50
1.1x; MobileNet is unchanged (``benchmarks/xla_options.py`` measures it per model). Training is the
other way round: the backward pass's reductions (batch-norm and kernel gradients) are 3x faster as YNNPACK
fusions (a MobileNet train step: 13 img/s with them, 4.3 without), so train steps keep XLA's defaults.
Other backends keep XLA's defaults. The options are per compilation: code jitted elsewhere in the
process, Keras included, keeps the defaults.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

import jax

YNN_FUSION_TYPE = "xla_cpu_experimental_ynn_fusion_type"
CPU_OPTIONS = {YNN_FUSION_TYPE: ""}  # an empty list: no operation goes to YNNPACK


def compiler_options(backend: str | None = None, *, training: bool = False) -> dict[str, str]:
    """Options for ``jax.jit(..., compiler_options=...)`` of a forward pass on ``backend`` (default: jax's
    default backend); ``training=True`` (a function that differentiates): XLA's defaults. A flag the user
    set in ``XLA_FLAGS`` wins: flaxzoo then leaves it alone."""
    if training or (backend or jax.default_backend()) != "cpu" or YNN_FUSION_TYPE in os.environ.get("XLA_FLAGS", ""):
        return {}
    return dict(CPU_OPTIONS) if _cpu_accepts(tuple(CPU_OPTIONS.items())) else {}


@functools.cache
def _cpu_accepts(options: tuple) -> bool:
    """Whether this jaxlib's XLA:CPU knows the options (jaxlib before YNNPACK rejects an unknown one)."""
    try:
        x = jax.device_put(0.0, jax.devices("cpu")[0])
        jax.jit(lambda x: x + 1, compiler_options=dict(options)).lower(x).compile()
    except jax.errors.JaxRuntimeError:
        return False
    return True


def jit(fun: Callable, *, platform: str | None = None, **kwargs) -> Callable:
    """``jax.jit(fun, **kwargs)`` of a forward pass, compiled with :func:`compiler_options` for ``platform``
    (default: jax's default backend), merged under any given ones."""
    given = kwargs.pop("compiler_options", None) or {}
    return jax.jit(fun, compiler_options={**compiler_options(platform), **given}, **kwargs)


# ------------------------------------------------------------------------------------------------
# The persistent compilation cache: a second process skips XLA's compilation
# ------------------------------------------------------------------------------------------------

ENV_COMPILATION_CACHE = "FLAXZOO_COMPILATION_CACHE"  # "0": off
# Compilations shorter than this are not written (jax's default is 1 s, which a ResNet50 forward pass on CPU
# stays under: 0.6 s); below 0.1 s reading the entry costs about what compiling does.
MIN_COMPILE_SECONDS = 0.1


def compilation_cache_dir() -> str | None:
    """Where the persistent compilation cache is: jax's own setting (``JAX_COMPILATION_CACHE_DIR``) where the
    user made one, else ``$FLAXZOO_HOME/xla-cache``; None with ``FLAXZOO_COMPILATION_CACHE=0``."""
    if os.environ.get(ENV_COMPILATION_CACHE, "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    if jax.config.jax_compilation_cache_dir:
        return jax.config.jax_compilation_cache_dir
    from flaxzoo.weights.files import flaxzoo_home

    return str(flaxzoo_home() / "xla-cache")


def enable_compilation_cache() -> str | None:
    """Turn on JAX's persistent compilation cache (see :func:`compilation_cache_dir`), once per process; what
    the user configured for jax wins. Every CLI command and :func:`flaxzoo.predict_fn` call this. Returns the
    directory, or None where it is off."""
    directory = compilation_cache_dir()
    if directory is None or not jax.config.jax_enable_compilation_cache:
        return None
    if not jax.config.jax_compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", directory)
        if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
            jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    return directory
