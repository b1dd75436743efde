"""Backbones for detection and segmentation: the feature maps of every stage, as timm's ``features_only``.

    model, variables = flaxzoo.create_model("resnet50", features_only=True, weights="imagenet")
    c2, c3, c4, c5 = model.apply(variables, x)          # strides 4, 8, 16, 32
    model.feature_info                                   # (FeatureInfo(index=1, layer='conv2_block3_out', ...), ...)

:func:`feature_info` lists a model's stages without building weights or running anything: for each output
stride (2 to 32) the Keras layer that ends it, with its channels. ``index`` is ``log2(stride) - 1`` in every
model, so ``out_indices=(1, 2, 3, 4)`` (the default) means strides 4 to 32 everywhere. A backbone is the
model itself with ``feature_info`` set: ``apply`` returns the maps as a list and stops after the last stage
asked for (under ``jit`` nothing after it is traced), ``train=True`` updates the batch-norm statistics of
what runs, and freezing, ``trainable_mask``, ``fold_batchnorm`` and ``predict_fn`` work on it as on any
model. Its variables are those of the layers it runs.

:func:`param_groups` labels each parameter by stage (``stem``, ``stage1`` … ``stage4``, ``head``) for
per-group learning rates, and :func:`layer_decay_optimizer` decays them layer-wise from the head down.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import optax

from flaxzoo.graph import FeatureInfo
from flaxzoo.models import common as models_common
from flaxzoo.models.common import Application, backbone, backbone_variables, nominal_stride, stage_features
from flaxzoo.surgery import _plain, model_graph
from flaxzoo.zoo import create_model

__all__ = [
    "FeatureInfo",
    "feature_info",
    "features_only",
    "layer_decay_optimizer",
    "layer_decay_scales",
    "layer_groups",
    "param_groups",
]


def feature_info(model: Application | str, **kwargs) -> tuple[FeatureInfo, ...]:
    """Every stage of ``model`` (a flaxzoo model, or a registered name with Keras constructor ``kwargs``,
    e.g. ``feature_info("mobilenet_v2", alpha=0.35)``), by stride; a backbone's own are ``model.feature_info``.
    From an abstract trace at the model's input size (default size where it is free): nothing is computed."""
    if isinstance(model, str):
        model, _ = create_model(model, abstract=True, weights=None, include_top=False, **kwargs)
    elif kwargs:
        raise TypeError("feature_info(model) takes constructor arguments only with a registered model's name")
    return stage_features(model)


def features_only(model: Application, variables=None, out_indices: Sequence[int] = (1, 2, 3, 4)):
    """A model you already have (any head, e.g. fine-tuned) as a backbone of the stages ``out_indices``:
    the module, or ``(module, variables)`` with the variables of what it runs when ``variables`` are given."""
    if not isinstance(model, Application):
        raise TypeError(f"features_only takes a flaxzoo model; got {type(model).__name__}")
    module = backbone(model, out_indices)
    if variables is None:
        return module
    return module, backbone_variables(module, variables)


# ------------------------------------------------------------------------------------------------
# Parameter groups by stage, and layer-wise learning-rate decay
# ------------------------------------------------------------------------------------------------

GROUPS = ("stem", "stage1", "stage2", "stage3", "stage4", "head")  # GROUPS[i]: the stage of FeatureInfo index i


def layer_groups(model: Application, graph=None) -> dict[str, str]:
    """Every Keras layer of ``model`` by stage: ``{layer name: group}`` with the groups of :data:`GROUPS`. A
    stage is the layers after the previous stage's end up to its own (:func:`feature_info`); the stem ends
    at stride 2 (ConvNeXt's, which has no stride-2 stage, is its stride-4 stem layer); the head is what
    follows the last stage and what the top adds (pooling, classifier)."""
    graph = graph or model_graph(model)
    body_graph = models_common.body_graph(model)
    ends = list(stage_features(model, body_graph))
    body = set(body_graph.names)  # the layers the top adds are not in it (ConvNeXt's head replaces its last norm)
    size = graph.layers[0].output_shape[1]
    stem_until = None
    if ends[0].index > 0:  # the stem is the first layer to reach the first stage's stride
        stem_until = next(
            layer.name for layer in graph.layers
            if len(layer.output_shape) == 4 and nominal_stride(size, layer.output_shape[1]) >= ends[0].reduction
        )  # fmt: skip
    groups, position = {}, 0
    for layer in graph.layers:
        if position < len(ends) and ends[position].tap == "input" and layer.name == ends[position].layer:
            position += 1
        if layer.name not in body:
            groups[layer.name] = "head"
        elif stem_until is not None:
            groups[layer.name] = "stem"
            stem_until = None if layer.name == stem_until else stem_until
        else:
            groups[layer.name] = GROUPS[ends[position].index] if position < len(ends) else "head"
        if position < len(ends) and ends[position].tap == "output" and layer.name == ends[position].layer:
            position += 1
    return groups


def param_groups(model: Application, variables, *, by: str = "stage") -> dict:
    """A pytree of group labels shaped like ``variables["params"]`` (``"stem"``, ``"stage1"`` … ``"stage4"``,
    ``"head"``; see :func:`layer_groups`), for ``optax.multi_transform`` (a learning rate per group) or
    :func:`layer_decay_optimizer`. Every parameter gets exactly one label."""
    if by != "stage":
        raise ValueError(f"param_groups(by={by!r}): only 'stage' is supported")
    graph = model_graph(model)
    groups = layer_groups(model, graph)
    by_path = {layer.path: groups[layer.name] for layer in graph.layers}
    params = variables["params"] if "params" in variables else variables

    def label(path, _):
        keys = tuple(str(getattr(k, "key", k)) for k in path)
        for end in range(len(keys) - 1, 0, -1):
            if keys[:end] in by_path:
                return by_path[keys[:end]]
        raise ValueError(f"parameter {'/'.join(keys)} belongs to no layer of {type(model).__name__}")

    return jax.tree_util.tree_map_with_path(label, _plain(params))


def layer_decay_scales(model: Application, variables, decay: float = 0.75) -> dict:
    """Per parameter, the learning-rate multiplier of layer-wise decay (BEiT, ConvNeXt fine-tuning): 1 for
    the head, ``decay`` for stage 4, ``decay**2`` for stage 3, ... ``decay**5`` for the stem."""
    if not 0 < decay <= 1:
        raise ValueError(f"layer decay must be in (0, 1]; got {decay}")
    depth = {group: len(GROUPS) - 1 - i for i, group in enumerate(GROUPS)}
    return jax.tree_util.tree_map(lambda group: decay ** depth[group], param_groups(model, variables))


def scale_updates(scales) -> optax.GradientTransformation:
    """Multiply each parameter's update by its entry of ``scales`` (a pytree like the parameters)."""

    def update(updates, state, params=None):
        return jax.tree_util.tree_map(lambda u, s: u * jnp.asarray(s, u.dtype), updates, scales), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def layer_decay_optimizer(tx: optax.GradientTransformation, model: Application, variables, decay: float = 0.75):
    """``tx`` with layer-wise learning-rate decay: each update scaled by :func:`layer_decay_scales` (for
    SGD, Adam and AdamW alike the same as scaling the learning rate per group, weight decay included)."""
    return optax.chain(tx, scale_updates(layer_decay_scales(model, variables, decay)))


# ------------------------------------------------------------------------------------------------
# The README's table of stages
# ------------------------------------------------------------------------------------------------

STAGE_TABLE_HEAD = (
    "| Model | stride 2 | stride 4 | stride 8 | stride 16 | stride 32 |\n|---|---|---|---|---|---|"
)


def stage_row(keras_name: str, info: Sequence[FeatureInfo]) -> str:
    """One model's row of the README's stage table: each stage's layer and channels (``in:`` marks a tap at
    the layer's input)."""
    cells = {f.reduction: f"{'in: ' if f.tap == 'input' else ''}`{f.layer}` ({f.channels})" for f in info}
    return f"| {keras_name} | " + " | ".join(cells.get(s, "–") for s in (2, 4, 8, 16, 32)) + " |"


def stage_table() -> str:
    """The README's table of every registered model's stages (``flaxzoo list --stages``): traces each model."""
    from flaxzoo.zoo import specs

    return "\n".join([STAGE_TABLE_HEAD, *(stage_row(s.keras_name, feature_info(s.name)) for s in specs())])
