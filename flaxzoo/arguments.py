"""Constructor arguments from the command line and from weight files.

A published file's name says what it was trained with (``mobilenet_2_5_128_tf.h5``: MobileNet, alpha 0.25,
128 px, with the classifier); the shapes of any file's weights say the arguments that change them (alpha,
depth multiplier, minimalistic, the number of classes, with or without the top). :func:`resolve` merges what
the file says with the arguments given, checks that they agree, and says what it inferred. The CLI and
``flaxzoo evaluate`` build every model through it.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import itertools
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from flaxzoo import graph as graph_lib
from flaxzoo.registry import ModelSpec
from flaxzoo.weights import checkpoint, safetensors_file
from flaxzoo.weights.convert import _slots
from flaxzoo.weights.h5 import LegacyWeightsFile
from flaxzoo.zoo import create_model, specs

# Arguments that change weight shapes, and so can be read off a file; "classes" and "include_top" too.
SHAPE_ARGUMENTS = ("alpha", "depth_multiplier", "minimalistic")


def accepted_arguments(spec: ModelSpec) -> list[str]:
    return list(inspect.signature(spec.constructor).parameters)


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def command_line_arguments(
    spec: ModelSpec,
    *,
    alpha: float | None = None,
    depth_multiplier: int | None = None,
    input_size: int | None = None,
    pairs: Sequence[str] = (),
) -> dict[str, Any]:
    """``--alpha``, ``--depth-multiplier``, ``--input-size`` and ``--arg key=value`` pairs (values as Python
    literals: ``alpha=0.75``, ``minimalistic=True``; else strings) → constructor keyword arguments, each checked
    against the model's constructor signature."""
    accepted = accepted_arguments(spec)
    kwargs: dict[str, Any] = {}

    def put(key: str, value: Any, flag: str) -> None:
        if key not in accepted:
            raise ValueError(f"{flag}: {spec.keras_name} takes no argument {key!r}; it takes {', '.join(accepted)}")
        if key in kwargs and kwargs[key] != value:
            raise ValueError(f"{flag}: {key} given twice ({kwargs[key]!r} and {value!r})")
        kwargs[key] = value

    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ValueError(f"--arg {pair!r}: expected key=value, such as alpha=0.75")
        if key == "weights":
            raise ValueError("--arg weights=...: use --weights")
        put(key, _literal(text.strip()), f"--arg {key}")
    if alpha is not None:
        put("alpha", alpha, "--alpha")
    if depth_multiplier is not None:
        put("depth_multiplier", depth_multiplier, "--depth-multiplier")
    if input_size is not None:
        if input_size < 1:
            raise ValueError(f"--input-size must be positive; got {input_size}")
        put("input_shape", (input_size, input_size, 3), "--input-size")
    return kwargs


# ------------------------------------------------------------------------------------------------
# What a weight file says
# ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FileFacts:
    """What a weight file says of the model it holds: from its (or its source's) published name, from its
    metadata (a fine-tuned export's classes and size), and the shapes of its weights."""

    path: Path
    kind: str  # "h5", "checkpoint" or "safetensors"
    named: dict[str, Any]  # arguments from the published file name (the source's, for a converted file)
    name_source: str | None  # the published file name they come from
    recorded: dict[str, Any]  # arguments from the metadata: those converted with, a fine-tuned export's classes and size
    layers: list[tuple[str, list[tuple[str, tuple[int, ...]]]]] | None  # an .h5's weighted layers and shapes
    shapes: list[tuple[int, ...]] | None  # a checkpoint's variable shapes (sorted)


def published_file(spec: ModelSpec, file_name: str) -> tuple[str, dict[str, Any]] | None:
    """``(variant, arguments)`` of ``spec``'s published file named ``file_name``; a ValueError where the name is
    another model's published file."""
    for variant, wf in spec.weights.items():
        if wf.fname == file_name:
            return variant, {**wf.args, "include_top": not variant.endswith("notop")}
    for other in specs():
        if other.name != spec.name and any(wf.fname == file_name for wf in other.weights.values()):
            raise ValueError(
                f"{file_name} is a published {other.keras_name} weight file, not {spec.keras_name}'s "
                f"(use --model {other.name})"
            )
    return None


def read_file_facts(spec: ModelSpec, weights: str | os.PathLike) -> FileFacts:
    path = Path(weights)
    record: dict[str, Any] | None = None
    if path.is_dir():
        kind, record = "checkpoint", checkpoint.read_metadata(path)
    elif safetensors_file.is_safetensors(path):
        kind, record = "safetensors", safetensors_file.read_metadata(path)
    else:
        kind = "h5"
    recorded: dict[str, Any] = {}
    if record is None:
        name_source = path.name
        with LegacyWeightsFile(path) as f:
            layers = [(layer, [(w, tuple(s)) for w, s in f.shapes(layer)]) for layer in f.weighted_layers()]
        shapes = None
    else:
        name_source = (record.get("source") or {}).get("file")
        layers = None
        shapes = sorted(tuple(s) for s in (record.get("variables") or {}).values())
        args = record.get("args") if isinstance(record.get("args"), dict) else {}
        recorded.update({k: tuple(v) if isinstance(v, list) else v for k, v in args.items()})
        if isinstance(record.get("classes"), int):
            recorded["classes"] = record["classes"]
        if isinstance(record.get("image_size"), int):
            recorded["input_shape"] = (record["image_size"], record["image_size"], 3)
    published = published_file(spec, name_source) if name_source else None
    named = published[1] if published else {}
    return FileFacts(path, kind, named, name_source if published else None, recorded, layers, shapes)


def _h5_misfit(layers, graph: graph_lib.Graph) -> str | None:
    """How an .h5's weighted layers differ from the graph's (the first difference), or None."""
    model_layers = graph.weighted_layers
    if len(layers) != len(model_layers):
        return f"{len(layers)} weighted layers, the model {len(model_layers)}"
    for (name, weights), layer in zip(layers, model_layers):
        slots = _slots(graph, layer)
        if len(weights) != len(slots):
            return f"layer {name!r} has {len(weights)} weights, the model's {layer.name} {len(slots)}"
        for (weight, shape), (_, _, value) in zip(weights, slots):
            if tuple(shape) != tuple(value.shape):
                return f"{weight} has shape {tuple(shape)} (the model's: {tuple(value.shape)})"
    return None


def _misfit(facts: FileFacts, spec: ModelSpec, kwargs: Mapping[str, Any]) -> str | None:
    """How the file's weights differ from those of ``spec`` built with ``kwargs`` (None: they fit)."""
    try:
        module, variables = create_model(spec.name, abstract=True, weights=None, **kwargs)
    except ValueError as e:  # Keras' own argument checks
        return str(e)
    if facts.layers is not None:
        return _h5_misfit(facts.layers, graph_lib.trace(module, module.traced_shape))
    shapes = sorted(tuple(s) for s in checkpoint._shapes(dict(variables)).values())
    return None if shapes == facts.shapes else "other variable shapes"


def _file_classes(facts: FileFacts) -> int | None:
    """The classes of a file with a top: its last weighted layer's last weight is the classifier's bias."""
    if facts.layers:
        weights = facts.layers[-1][1]
        if weights and len(weights[-1][1]) == 1:
            return int(weights[-1][1][0])
    return facts.recorded.get("classes")


def _flag(key: str) -> str:
    """The command-line flag of a constructor argument."""
    return f"--{key.replace('_', '-')}" if key in ("alpha", "depth_multiplier") else f"--arg {key}"


def _describe(kwargs: Mapping[str, Any]) -> str:
    parts = []
    for key, value in kwargs.items():
        if key == "input_shape":
            parts.append(f"input size {value[0]}" if value[0] == value[1] else f"input_shape={value}")
        else:
            parts.append(f"{key}={value}")
    return ", ".join(parts)


def _check_given_widths(spec: ModelSpec, facts: FileFacts, given: Mapping[str, Any], size) -> None:
    """Where no candidate fits with the given width arguments: a ValueError naming the given value and the
    file's, if the file fits another published value."""
    mine = {k: v for k, v in given.items() if k in SHAPE_ARGUMENTS}
    if not mine:
        return
    others = resolve(spec, facts.path, {k: v for k, v in given.items() if k not in SHAPE_ARGUMENTS})
    theirs = {k: others.kwargs[k] for k in mine if k in others.kwargs and others.kwargs[k] != mine[k]}
    if theirs and others.inferred:
        raise ValueError(
            f"{facts.path}: {', '.join(f'{_flag(k)} {v!r}' for k, v in mine.items())} disagrees "
            f"with the weight file: its weight shapes are those of {spec.keras_name} with {_describe(theirs)}"
        )


@dataclasses.dataclass(frozen=True)
class Resolved:
    """The constructor arguments for a weight file (without ``weights``), and what was inferred and how."""

    kwargs: dict[str, Any]
    inferred: dict[str, Any]
    source: str  # e.g. "the name and weight shapes of mobilenet_2_5_128_tf.h5"

    def note(self, spec: ModelSpec) -> str | None:
        if not self.inferred:
            return None
        return f"{spec.keras_name}: {_describe(self.inferred)} (from {self.source})"


def resolve(
    spec: ModelSpec, weights: str | os.PathLike | None, given: Mapping[str, Any], *, include_top: bool | None = None
) -> Resolved:
    """The arguments to build ``spec`` for ``weights`` with: ``given`` (the command line's), completed from the
    file (a path: .h5, checkpoint or .safetensors; "imagenet" and None say nothing). ``include_top``: what the
    command needs (None: what the file holds).

    Width arguments (alpha, depth multiplier, minimalistic), ``include_top`` and ``classes`` are read off the
    weight shapes, the input size off a published file name (or a fine-tuned export's metadata). A file whose
    name and shapes disagree, or that disagrees with a given argument, is a ValueError naming both.
    """
    given = dict(given)
    if include_top is not None:
        given.setdefault("include_top", include_top)
    if weights is None or (isinstance(weights, str) and weights == "imagenet"):
        return Resolved(given, {}, "")
    facts = read_file_facts(spec, weights)
    accepted = accepted_arguments(spec)
    named = {k: v for k, v in facts.named.items() if k in accepted}
    name = facts.name_source
    if named and name:
        for key, value in named.items():  # a given width, or the top, must be the file's
            if key == "include_top" and key in given and given[key] != value:
                raise ValueError(
                    f"{facts.path}: {name} holds {spec.keras_name} {'with' if value else 'without'} the classifier "
                    f"(include_top={value}); this command needs include_top={given[key]}"
                )
            if key != "input_shape" and key in given and given[key] != value:
                raise ValueError(
                    f"{facts.path}: {_flag(key)} {given[key]!r} disagrees with the weight file: "
                    f"{name} is {spec.keras_name} with {key}={value!r}"
                )

    # Candidates, most likely first: the given arguments, then the file name's, then every published
    # combination of the width arguments, with and without the top.
    widths = [k for k in SHAPE_ARGUMENTS if k in accepted and k not in given]
    values: dict[str, list[Any]] = {}
    defaults = {k: p.default for k, p in inspect.signature(spec.constructor).parameters.items()}
    hints = {**named, **{k: v for k, v in facts.recorded.items() if k in accepted}}  # a checkpoint's records
    for key in widths:
        seen = [hints[key]] if key in hints else []
        seen.append(defaults[key])
        seen += [wf.args[key] for wf in spec.weights.values() if key in wf.args]
        values[key] = list(dict.fromkeys(seen))
    tops = [given["include_top"]] if "include_top" in given else list(dict.fromkeys([hints.get("include_top", True), True, False]))
    classes = _file_classes(facts)
    size = given.get("input_shape") or facts.recorded.get("input_shape") or named.get("input_shape")

    def candidate(combo, top) -> dict[str, Any]:
        kwargs = {**given, **dict(zip(widths, combo)), "include_top": top}
        kwargs.pop("input_shape", None)
        if not top:
            kwargs.pop("classes", None)
        elif "classes" not in given and classes is not None:
            kwargs["classes"] = classes
        return kwargs

    combos = list(itertools.product(*(values[k] for k in widths)))
    if len(combos) * len(tops) == 1:  # nothing to choose: the loader checks the shapes
        match = candidate(combos[0], tops[0])
    else:
        match = next(
            (kw for top in tops for kw in (candidate(c, top) for c in combos)
             if _misfit(facts, spec, {**kw, "input_shape": size}) is None),
            None,
        )  # fmt: skip
        if match is None:
            _check_given_widths(spec, facts, given, size)
            return Resolved(given, {}, "")  # the loader's own error names the first weight that does not fit

    if named and name:
        for key, value in named.items():
            if key != "input_shape" and key in match and match[key] != value:
                shown = {k: match[k] for k in named if k in match and k != "input_shape"}
                raise ValueError(
                    f"{facts.path}: the file name {name} says {spec.keras_name} with {key}={value!r}, but its "
                    f"weight shapes are those of {_describe(shown)}"
                )
    kwargs = dict(match, **({"input_shape": size} if size else {}))
    inferred = {k: v for k, v in kwargs.items() if k not in given and v != defaults.get(k)}
    if facts.kind != "h5":
        source = f"the metadata and weight shapes of {facts.path.name}" + (f", converted from {name}" if name else "")
    else:
        source = f"the {'name and ' if named else ''}weight shapes of {facts.path.name}"
    return Resolved(kwargs, inferred, source)
