"""One module per Keras application file; importing this package imports (and so registers) every one.

A model file needs no entry here: every module of this package but ``common`` is imported.
"""

import importlib
import pkgutil

for _info in pkgutil.iter_modules(__path__):
    if _info.name != "common":
        importlib.import_module(f"{__name__}.{_info.name}")
