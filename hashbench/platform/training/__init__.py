"""The one training loop (docs/training.md).

```python
from hashbench.platform.training import TrainConfig, run_local, run_training, fit, LocalSession
cfg = TrainConfig(method="dch", dataset="pneumoniamnist", bits=32, epochs=5)
result = run_training(cfg)          # Ray Train TorchTrainer, cfg.workers DDP workers
result = run_local(cfg)             # the same loop in this process, no Ray
result.metrics["test_mAP@100"], result.run_dir
```
"""

from hashbench.platform.training.config import AUGMENT_DEFAULTS, TrainConfig, resolve_augment
from hashbench.platform.training.loop import FAIL_ENV, RunResult, encode_split, fit
from hashbench.platform.training.runner import run_local, run_training
from hashbench.platform.training.session import LocalSession, RayTrainSession, Session, default_device

__all__ = ["AUGMENT_DEFAULTS", "FAIL_ENV", "LocalSession", "RayTrainSession", "RunResult", "Session",
           "TrainConfig", "default_device", "encode_split", "fit", "resolve_augment", "run_local",
           "run_training"]
