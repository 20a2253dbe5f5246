"""Retrieval methods, one file each.

Every module in this package is imported on first use of the registry and
registers its methods with :func:`hashbench.platform.registry.register`.
Modules whose name starts with ``_`` are helpers shared by several methods.
Third-party packages can add methods through the ``hashbench.methods`` entry
point group (each entry point names a module to import).
"""

import importlib
import pkgutil
from importlib.metadata import entry_points

for _info in pkgutil.iter_modules(__path__):
    if not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")

for _ep in entry_points(group="hashbench.methods"):
    _ep.load()
