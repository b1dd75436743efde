"""Indexes for two scans of jax2onnx (0.17) that are quadratic in the graph's size.

After every equation jax2onnx checks that its outputs are connected to the graph by scanning every input,
initializer and node so far; its optimizer looks up a value's producer by building the set of all nodes and
scanning their outputs, once per lookup. NASNetMobile's 10,000 nodes took over 15 minutes. While
:func:`indexed_scans` is active both answer from indexes, and every answer is the one the scan gives:

- a value whose producer (or, for inputs and initializers, whose graph) is the builder's graph is connected;
  anything else still goes to jax2onnx's scan;
- a producer lookup indexes each node list once (node ids, and output names in node order), rebuilt when
  the list's length changes or any value is renamed (``onnx_ir.Value.name``'s setter, the only way to
  rename one, bumps a counter while active). jax2onnx passes snapshots (``list(graph)``) and never changes
  one in place; anything but a list or tuple goes to the scan.

Where jax2onnx's internals differ from these names, nothing is patched.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Iterator
from unittest import mock


def owned_by_graph(ctx, value) -> bool:
    """Whether jax2onnx's builder graph owns ``value`` (a graph input or initializer, or the output of one
    of its nodes), from onnx_ir's own links: when True, jax2onnx's scan finds it too."""
    graph = getattr(getattr(ctx, "builder", None), "graph", None)
    if graph is None or value is None:
        return False
    producer = value.producer()
    if producer is not None:
        return producer.graph is graph
    return (value.is_graph_input() or value.is_initializer()) and value.graph is graph


class ProducerIndex:
    """``_producer_node(nodes, value)`` answered from a per-list index: the first node of ``nodes`` that
    produces ``value`` or has an output of the same name, as jax2onnx's scan returns it."""

    KEEP = 8  # node lists indexed at once: the optimizer works on one snapshot of the graph at a time

    def __init__(self, scan, ir):
        self.scan, self.ir, self.renames = scan, ir, 0
        self.indexes: OrderedDict[int, tuple] = OrderedDict()

    def index(self, nodes) -> tuple:
        entry = self.indexes.get(id(nodes))
        if entry is not None and entry[0] is nodes and entry[1] == len(nodes) and entry[2] == self.renames:
            self.indexes.move_to_end(id(nodes))
            return entry
        names: dict[str, object] = {}
        for node in nodes:
            for output in node.outputs:
                if output.name:
                    names.setdefault(output.name, node)
        # the list itself is kept so that its id is not reused while indexed
        entry = (nodes, len(nodes), self.renames, {id(node) for node in nodes}, names)
        self.indexes[id(nodes)] = entry
        while len(self.indexes) > self.KEEP:
            self.indexes.popitem(last=False)
        return entry

    def __call__(self, nodes, value_or_name):
        if type(nodes) not in (list, tuple):  # a live graph changes under an index; jax2onnx passes snapshots
            return self.scan(nodes, value_or_name)
        if isinstance(value_or_name, str):
            name, producer = value_or_name, None
        elif isinstance(value_or_name, self.ir.Value):
            name, producer = value_or_name.name, value_or_name.producer()
        else:
            return self.scan(nodes, value_or_name)
        _, _, _, ids, names = self.index(nodes)
        if isinstance(producer, self.ir.Node) and id(producer) in ids:
            return producer
        # a value's own producer is not in the list, so only a namesake output can match
        return names.get(name) if name else None


@contextlib.contextmanager
def indexed_scans() -> Iterator[None]:
    """Answer jax2onnx's connection check and producer lookups from indexes while active."""
    try:
        import onnx_ir as ir
        from jax2onnx.converter import conv_transpose_bias_folding, ir_optimizations, optimizer_graph_utils
        from jax2onnx.converter import output_binding
    except ImportError:
        yield
        return
    with contextlib.ExitStack() as stack:
        connected = getattr(output_binding, "_value_is_graph_connected", None)
        if connected is not None:
            stack.enter_context(mock.patch.object(
                output_binding, "_value_is_graph_connected",
                lambda ctx, value: owned_by_graph(ctx, value) or connected(ctx, value),
            ))  # fmt: skip
        scan = getattr(optimizer_graph_utils, "_producer_node", None)
        name = getattr(ir.Value, "name", None)
        if scan is not None and isinstance(name, property) and name.fset is not None:
            lookup = ProducerIndex(scan, ir)

            def rename(value, new_name):
                name.fset(value, new_name)
                lookup.renames += 1

            stack.enter_context(mock.patch.object(ir.Value, "name", property(name.fget, rename, name.fdel, name.__doc__)))
            for module in (optimizer_graph_utils, ir_optimizations, conv_transpose_bias_folding):
                if getattr(module, "_producer_node", None) is scan:
                    stack.enter_context(mock.patch.object(module, "_producer_node", lookup))
        yield
