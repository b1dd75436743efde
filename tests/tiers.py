"""Which registered models each per-model test runs for: the test tiers.

CI runs on 2 cores and must stay under 50 minutes with Keras' 40 models, whose Keras and flaxzoo
programs take up to minutes each to compile (NASNetLarge, EfficientNetB7, ConvNeXtXLarge). So:

- every model (``MODELS``): its registry numbers, layer list and wiring against Keras (abstract traces:
  nothing compiled), and parity of the top probabilities at one small odd size (``2 * min_size + 1``: TF
  'SAME' padding on odd inputs), which runs the preset's whole body and head on a converted file;
- each family's smallest preset (``REPRESENTATIVES``: ResNet50 for ResNet50/101/152, VGG16, DenseNet121,
  NASNetMobile, EfficientNetB0, ...), which runs the same module code as its siblings: top parity at the
  default size too, the no-top features with the three poolings at the default, odd and minimum sizes, a
  training-mode pass, and the per-model surgery, batch-norm folding and constructor-error tests;
- everything for every model with ``FLAXZOO_FULL_TESTS=1`` (``FLAXZOO_FULL_TESTS=1 python -m pytest -q
  -n auto --dist loadgroup``), before a release or after changing a family's module.
"""

import os

from flaxzoo.zoo import get_spec, list_models

FULL = os.environ.get("FLAXZOO_FULL_TESTS", "") not in ("", "0")
MODELS = list_models()


def _representatives() -> list[str]:
    families: dict[type, list[str]] = {}
    for name in MODELS:
        families.setdefault(get_spec(name).family.module, []).append(name)
    return sorted(min(names, key=lambda n: get_spec(n).params) for names in families.values())


FAMILIES = _representatives()  # one model per family, in every tier (export)
REPRESENTATIVES = MODELS if FULL else FAMILIES
