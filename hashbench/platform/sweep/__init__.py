"""Sweeps: Ray Tune + Optuna over the methods' search spaces (docs/sweeps.md).

```python
from hashbench.platform.sweep import load_config, run_sweep
summary = run_sweep(load_config("configs/quickstart.yaml"), resume=False)
```
``load_config`` validates everything before anything starts; ``run_sweep`` (in
``hashbench.platform.sweep.driver``, which imports Ray) runs it.
"""

from hashbench.platform.sweep.config import SearchDim, Study, SweepConfig, load_config, parse_text, train_config


def run_sweep(cfg, **kwargs):
    """See :func:`hashbench.platform.sweep.driver.run_sweep`."""
    from hashbench.platform.sweep.driver import run_sweep as _run

    return _run(cfg, **kwargs)


__all__ = ["SearchDim", "Study", "SweepConfig", "load_config", "parse_text", "run_sweep", "train_config"]
