"""The suite's float tolerances, each derived from float32 rounding; none is a figure measured on one machine.

XLA:CPU picks its kernels per CPU (AVX2, AVX-512, AMX; blocking, vector width, fusion). That changes the order
in which a float32 sum is accumulated, never the formula, so two computations of the same formula differ by
rounding alone, and the bounds below hold on any CPU XLA supports. u = 2^-24 is float32's unit roundoff.

- ``gamma(n)``: a sum of n terms, in any order, is within n·u/(1 - n·u) of exact, relative to the sum of the
  terms' magnitudes (Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., §3.1 and §4.2).
  The worst case; used where the computation is ill-conditioned (a training step: the backward pass through
  batch statistics cancels).
- ``training_rtol``: a train step's update, relative to its size. Its longest sums run over every pixel of the
  batch (a kernel's gradient, a batch norm's statistics); to first order the relative errors of the layers
  add: weighted_layers · gamma(longest_sum). Worst case, because the backward pass through batch statistics
  cancels (float32 steps measured 10x above the probabilistic estimate there).
- ``network_rtol``: inference through a network, which batch norm and 1-Lipschitz activations keep well
  conditioned. Rounding errors then behave as independent zero-mean variables (Higham & Mary, "A new approach
  to probabilistic rounding error analysis", SIAM J. Sci. Comput. 41(5), 2019): a sum of n terms is within
  LAMBDA·sqrt(n)·u, and the errors of a network's layers add in quadrature over their fan-ins. LAMBDA = 6.5
  keeps the chance that any of 10^6 compared outputs exceeds it under 10^-3 (2·10^6·exp(-LAMBDA²/2)).
  Two independent computations (flaxzoo's and Keras') double the variance.
- ``bfloat16_rtol``: a network computed in bfloat16 (u = 2^-8) with float32 accumulation: each layer rounds
  its input, its kernel and its output to bfloat16, errors independent: LAMBDA·2^-8·sqrt(3·layers), as
  the relative L2 distance from float32. An approximation, not parity: it says how close bfloat16 can be.
- ``probability_atol``: softmax moves no probability by more than half the largest logit change
  (its Jacobian diag(p) - p·pᵀ has row sums of magnitude 2·p_i·(1 - p_i) <= 1/2), and the parity fixtures
  calibrate the logits to a standard deviation of 1.5 (keras_reference.calibrate_classifier): LOGIT_SCALE = 6
  is four of them.
"""

from __future__ import annotations

import json
import math
import os

import jax
import numpy as np

U = 2.0**-24
LAMBDA = 6.5
LOGIT_SCALE = 6.0
# A few correctly rounded float32 operations per element (XLA:CPU divides by multiplying with the
# reciprocal: within 2u of numpy's division): 1e-6 is 16u.
ELEMENTWISE_RTOL = 1e-6


def bfloat16_rtol(weighted_layers: int) -> float:
    """How far a bfloat16 forward pass may be from float32's, as ||bf16 - f32|| / ||f32||."""
    return LAMBDA * 2.0**-8 * math.sqrt(3 * weighted_layers)


def gamma(n: int) -> float:
    """The worst-case relative error of a float32 sum of ``n`` terms, in any order."""
    nu = n * U
    assert nu < 1, n
    return nu / (1 - nu)


def fan_ins(variables) -> list[int]:
    """The length of each weighted layer's sums: kernel height·width·input channels (a dense layer's inputs;
    a depthwise kernel's window; a separable convolution's window plus its pointwise inputs)."""
    params = variables["params"] if "params" in variables else variables
    lengths = []

    def visit(path, leaf):
        kind = path[-1].key
        if kind in ("kernel", "pointwise_kernel"):
            lengths.append(int(np.prod(leaf.shape[:-1])))
        elif kind == "depthwise_kernel":
            lengths.append(int(np.prod(leaf.shape[:2])))

    jax.tree_util.tree_map_with_path(visit, params)
    return lengths


def training_rtol(weighted_layers: int, longest_sum: int) -> float:
    """How far a float32 train step's update may be from the exact one (or another order's), relative to its size."""
    return weighted_layers * gamma(longest_sum)


def relative_distance(new, reference, start) -> float:
    """||new - reference|| / ||reference - start|| over every leaf: an error as a fraction of an update."""
    new, reference, start = (
        [np.asarray(x, np.float64) for x in jax.tree_util.tree_leaves(t)] for t in (new, reference, start)
    )
    error = math.sqrt(sum(float(np.sum((a - b) ** 2)) for a, b in zip(new, reference)))
    update = math.sqrt(sum(float(np.sum((b - s) ** 2)) for b, s in zip(reference, start)))
    assert update > 0, "the update is zero: the comparison would mean nothing"
    return error / update


def sum_rtol(n: int) -> float:
    """How far two float32 computations of one sum of ``n`` terms may differ, relative to its terms' scale."""
    return LAMBDA * U * math.sqrt(2 * n)


def network_rtol(variables) -> float:
    """How far two float32 computations of one network's inference may differ, relative to the largest output."""
    return sum_rtol(sum(fan_ins(variables)))


def probability_atol(variables) -> float:
    """The same for the probabilities of the parity fixtures' calibrated classifiers."""
    return 0.5 * LOGIT_SCALE * network_rtol(variables)


def record(kind: str, measured: float, bound: float) -> None:
    """With ``FLAXZOO_RECORD_ERRORS=<dir>``, append what a comparison measured to ``<dir>/<pid>.jsonl`` (the test,
    ``kind``, the measured error and its bound): the figures the issues' closing notes report."""
    folder = os.environ.get("FLAXZOO_RECORD_ERRORS")
    if folder:
        line = dict(test=os.environ.get("PYTEST_CURRENT_TEST", "?").split(" ")[0], kind=kind, measured=measured, bound=bound)
        with open(os.path.join(folder, f"{os.getpid()}.jsonl"), "a") as f:
            f.write(json.dumps(line) + "\n")


def assert_features_close(ours, ref, variables) -> None:
    """``ours`` equals ``ref`` within :func:`network_rtol` of ``variables``' network, relative to ``ref``'s largest value."""
    ours, ref = np.asarray(ours), np.asarray(ref)
    assert ours.shape == ref.shape
    scale = np.abs(ref).max()
    assert scale > 0
    tol = network_rtol(variables)
    record("features, relative to the largest", float(np.abs(ours - ref).max() / scale), tol)
    np.testing.assert_allclose(ours, ref, rtol=tol, atol=tol * scale)


def assert_probabilities_close(ours, ref, variables) -> None:
    ours, ref = np.asarray(ours), np.asarray(ref)
    assert ours.shape == ref.shape
    record("probabilities, absolute", float(np.abs(ours - ref).max()), probability_atol(variables))
    np.testing.assert_allclose(ours, ref, rtol=0, atol=probability_atol(variables))
