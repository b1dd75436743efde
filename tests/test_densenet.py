"""DenseNet-specific checks; the registry-wide tests cover parity, parameters, layer names, errors and weight order."""

import dataclasses

from flaxzoo.models.densenet import BLOCKS, DenseNetModule
from flaxzoo.zoo import create_model

PRESETS = ["densenet121", "densenet169", "densenet201"]


def test_presets_share_one_module_and_differ_only_in_blocks():
    modules = {name: create_model(name, abstract=True, weights=None)[0] for name in PRESETS}
    assert {type(m) for m in modules.values()} == {DenseNetModule}
    assert {name: m.blocks for name, m in modules.items()} == {
        "densenet121": (6, 12, 24, 16),
        "densenet169": (6, 12, 32, 32),
        "densenet201": (6, 12, 48, 32),
    } == BLOCKS
    others = [{f.name: getattr(m, f.name) for f in dataclasses.fields(m) if f.name not in ("blocks", "name", "model_name")}
              for m in modules.values()]
    assert others[0] == others[1] == others[2]
