"""What a long command shows: one progress bar per run; library noise goes to a log file.

``with quiet(log_path) as term:`` points this process's file descriptors 1 and 2 at ``log_path``
for the duration, so everything libraries print (Ray's start-up and token-auth warnings, Ray
workers' output forwarded to the driver, the ``PreemptionWatcher`` line, faiss's CPU-feature
notice, Python warnings, raw ``TrainingReport`` dicts) lands in the log, C-level writes included.
``term`` is a text stream on the original stderr for the progress bar and the final lines. With
``verbose=True`` nothing is redirected and ``term`` is ``sys.stderr``.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Callable, Iterator, Optional, TextIO


@contextlib.contextmanager
def quiet(log_path: Optional[str], verbose: bool = False) -> Iterator[TextIO]:
    """Send fds 1 and 2 to ``log_path`` (appending) inside the block; yield the terminal's stderr."""
    if verbose or not log_path:
        yield sys.stderr
        return
    os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    term = os.fdopen(os.dup(saved[2]), "w", buffering=1, encoding="utf-8", errors="replace")
    log = open(log_path, "ab", buffering=0)
    try:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        yield term
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        for fd, orig in saved.items():
            os.dup2(orig, fd)
            os.close(orig)
        log.close()
        term.close()


class EpochBar:
    """One tqdm bar for one run: epochs done, loss and validation mAP@100, then the test mAP@100.

    Call it with each report of the training loop (``on_epoch``). The final report (``done``) of a
    two-stage method carries the validation mAP of the fitted hash function, which replaces the
    per-epoch (pre-fit) one.
    """

    def __init__(self, total: int, desc: str, file: TextIO):
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc=desc, unit="epoch", file=file, dynamic_ncols=True, leave=True)

    def __call__(self, m: dict) -> None:
        if m.get("done"):
            post = {}
            if m.get("val_mAP@100") is not None:
                post["val_mAP@100"] = f"{m['val_mAP@100']:.4f}"
            if m.get("test_mAP@100") is not None:
                post["test_mAP@100"] = f"{m['test_mAP@100']:.4f}"
            self.bar.set_postfix(post)
            self.bar.refresh()
            return
        self.bar.n = int(m["epoch"]) + 1
        post = {"loss": f"{m['loss']:.4g}"} if isinstance(m.get("loss"), (int, float)) else {}
        post["val_mAP@100"] = f"{m.get('val_mAP@100', float('nan')):.4f}"
        self.bar.set_postfix(post)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def run_with_progress(cfg, train: Callable, *, verbose: bool = False, log_name: str = "train.log"):
    """``train(cfg, on_epoch=...)`` under :func:`quiet` with an :class:`EpochBar`; returns (result, log path).

    The log goes to ``<run_dir>/<log_name>``. A failure names the log in its message.
    """
    from hashbench.platform.errors import HashbenchError

    log_path = os.path.join(cfg.run_dir, log_name)
    with quiet(log_path, verbose) as term:
        bar = EpochBar(cfg.epochs, f"{cfg.method} {cfg.dataset_name} {cfg.bits}b", term)
        try:
            result = train(cfg, on_epoch=bar)
        except HashbenchError as exc:
            raise HashbenchError(f"{exc} (log: {log_path})" if not verbose else str(exc)) from None
        finally:
            bar.close()
    return result, (None if verbose else log_path)
