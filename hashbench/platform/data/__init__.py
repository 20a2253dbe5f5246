"""Prepared datasets: the store every part of hashbench trains and evaluates on.

```python
from hashbench.platform.data import load_dataset
ds = load_dataset("pneumoniamnist")   # a built-in or prepared name, or a store directory
x = ds.images[ds.indices("train")]    # uint8 (n, C, S, S), memory-mapped
```
See docs/data.md for the store layout, the five source formats and ``write_store``.
"""

from hashbench.platform.data.base import Options
from hashbench.platform.data.prepare import FORMATS, RECIPES, prepare
from hashbench.platform.data.store import (
    SPLIT_NAMES,
    PreparedDataset,
    compute_fingerprint,
    data_root,
    list_datasets,
    load_dataset,
    write_store,
)

__all__ = ["FORMATS", "RECIPES", "SPLIT_NAMES", "Options", "PreparedDataset", "compute_fingerprint",
           "data_root", "list_datasets", "load_dataset", "prepare", "write_store"]
