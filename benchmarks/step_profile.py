#!/usr/bin/env python
"""Where the time of a training epoch goes (issue 13): per-epoch times, kernels per step, host syncs.

Runs the platform's own training path, :func:`hashbench.platform.training.fit` under a ``LocalSession``
without Ray (as benchmarks/bench_train_loop.py does), for one method (default ``drh-nq``) on one
dataset (default the built-in ``pneumoniamnist``), and watches it from outside without changing it:
the loop module's ``_sync``, plan functions (``random_plan`` / ``class_balanced_plan``), ``encode_split``,
``_evaluate`` and ``GraphedStep`` are wrapped for the run (timestamps only; each wrapper calls the
original), the session's ``report`` marks the end of each epoch. The session checkpoints as a sweep
trial (``TuneSession``) shorter than the sweep's ``checkpoint_interval_s`` does: never
(``--checkpoint-every-epoch``: after every epoch but the last).

Table 1, per epoch: wall s (train start to the epoch's report), train-step s (the loop's ``train_s``),
validation s (``encode_split`` + ``_evaluate`` of the epoch), other s (the rest: NaN check, scheduler,
best-weights copy, checkpoint if one), steps, images/s, and whether the step ran as a CUDA graph (captures,
capture s, the capture error if one was warned); batch size and what happens to the last partial batch.

Table 2 (unless ``--no-profiler``): ``--profile-epochs`` epochs under ``torch.profiler`` (CPU + CUDA
activities), the first after epoch 0 (warm-up and capture) where there is one. The profiler runs from
before the fit (before the graph capture; ``--profiler-from epoch``: from the first profiled epoch) to
the end of the last profiled epoch; only the events inside
the profiled epochs' training-step windows (the loop's ``_sync`` before and after the steps) count:
GPU activities per step, GPU busy vs wall ms per step, the top kernels by GPU time, the top CPU-side ops
by self time (``cudaGraphLaunch``, ``cudaStreamSynchronize``, ``aten::item`` ...). Then the host
synchronisations of the last epoch (CUDA: ``torch.cuda.set_sync_debug_mode("warn")``), by hashbench
source line and phase (training steps / outside the steps: epoch start, validation, report). Epochs run
under the profiler or the sync debug mode are marked in table 1 (their times carry the overhead). The
tables and the sync sites come from benchmarks/fused_profile.py's helpers.

    python benchmarks/step_profile.py --device cuda                       # drh-nq, pneumoniamnist, 3 epochs
    python benchmarks/step_profile.py --device cuda --no-graph            # the same step eagerly
    python benchmarks/step_profile.py --device cuda --method dch          # the comparison
    python benchmarks/step_profile.py --device cpu --epochs 1 --max-steps 5   # a quick CPU check
    PROCS=8 MPS=1 OUT=out bash benchmarks/step_profile_concurrent.sh      # packed, table 1 only
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
import warnings

HERE = os.path.dirname(os.path.realpath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
import fused_profile  # noqa: E402  (kernel_table, cpu_table, sync_site)

import torch  # noqa: E402

from hashbench.platform.cli.train_cmd import parse_pairs  # noqa: E402
from hashbench.platform.errors import HashbenchError  # noqa: E402
from hashbench.platform.training import LocalSession, TrainConfig, fit  # noqa: E402
from hashbench.platform.training import loop as L  # noqa: E402

MARK = "step_profile::train_steps"   # the profiler range around each profiled epoch's training steps


class Probe:
    """Wraps the loop module's helpers for one ``fit`` and collects what each epoch did."""

    def __init__(self, device: torch.device, max_steps: int | None, prof_epochs: list, sync_epoch: int | None,
                 activities: list, prof_from_start: bool = True):
        self.device, self.max_steps, self.prof_from_start = device, max_steps, prof_from_start
        self.prof_epochs, self.sync_epoch, self.activities = prof_epochs, sync_epoch, activities
        self.phase = "setup"          # setup -> planned -> train -> after -> (report) -> planned ...
        self.epoch = 0
        self.cur: dict = {}
        self.epochs: list = []
        self.stepper = None
        self.prof = None
        self.range = None
        self.sync_on = False
        self.syncs: dict = {}         # (site, phase) -> count in the sync-debug epoch
        self.other_warnings: dict = {}
        self._saved: dict = {}

    # ---- the wrappers
    def _plan(self, orig):
        def plan(*args, **kw):
            p = orig(*args, **kw)
            if self.max_steps:
                p = p[: self.max_steps]
            self.cur = {"epoch": self.epoch, "steps": int(p.shape[0]), "per_step": int(p.shape[2]), "val_s": 0.0}
            self.phase = "planned"
            return p
        return plan

    def _sync(self, orig):
        def sync(device):
            orig(device)
            now = time.perf_counter()
            if self.phase == "planned":           # the sync just before the epoch's first step
                self.phase, self.cur["t0"] = "train", now
                if self.prof is not None and self.cur["epoch"] in self.prof_epochs:
                    self.range = torch.profiler.record_function(MARK)
                    self.range.__enter__()
            elif self.phase == "train":           # the sync after the last step (and the NaN flag)
                self.phase, self.cur["t_train_end"] = "after", now
                if self.range is not None:
                    self.range.__exit__(None, None, None)
                    self.range = None
        return sync

    def _timed(self, orig):
        def timed(*args, **kw):
            t = time.perf_counter()
            try:
                return orig(*args, **kw)
            finally:
                if self.phase == "after":
                    self.cur["val_s"] += time.perf_counter() - t
        return timed

    def __enter__(self):
        probe = self

        class RecordedStep(self._orig("GraphedStep")):
            def __init__(self, *args, **kw):
                super().__init__(*args, **kw)
                probe.stepper = self

        wrap = {"random_plan": self._plan(L.random_plan), "class_balanced_plan": self._plan(L.class_balanced_plan),
                "_sync": self._sync(L._sync), "encode_split": self._timed(L.encode_split),
                "_evaluate": self._timed(L._evaluate), "GraphedStep": RecordedStep}
        for name, fn in wrap.items():
            self._saved[name] = getattr(L, name)
            setattr(L, name, fn)
        self._warn = warnings.catch_warnings()
        self._warn.__enter__()
        warnings.simplefilter("always")
        warnings.showwarning = self._on_warning
        self._set_profiling(0)
        return self

    def _orig(self, name):
        return self._saved.get(name, getattr(L, name))

    def __exit__(self, *exc):
        self._stop_profiler()
        self._sync_debug(False)
        self._warn.__exit__(*exc)
        for name, fn in self._saved.items():
            setattr(L, name, fn)

    # ---- warnings: host syncs (sync debug epoch) and anything else (a failed graph capture)
    def _on_warning(self, message, category, filename, lineno, file=None, line=None):
        text = str(message)
        if "synchroniz" in text:
            if self.sync_on:
                key = (fused_profile.sync_site(traceback.extract_stack()[:-1]),
                       "training steps" if self.phase == "train" else "outside the steps")
                self.syncs[key] = self.syncs.get(key, 0) + 1
            return
        key = f"{category.__name__}: {text.splitlines()[0][:300]}"
        self.other_warnings[key] = self.other_warnings.get(key, 0) + 1

    def _sync_debug(self, on: bool):
        if self.device.type != "cuda" or on == self.sync_on:
            return
        torch.cuda.synchronize(self.device)
        torch.cuda.set_sync_debug_mode("warn" if on else 0)
        self.sync_on = on

    def _stop_profiler(self):
        if self.prof is not None:
            if self.range is not None:
                self.range.__exit__(None, None, None)
                self.range = None
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.prof.__exit__(None, None, None)
            self.prof_done = self.prof
            self.prof = None

    def _set_profiling(self, epoch: int):
        """Before ``epoch`` starts: the profiler and the sync debug mode as that epoch wants them.

        The profiler runs from before the fit (so before the step's CUDA graph is captured: CUPTI that
        first attaches after a capture may break the graph's replays or record none of its kernels)
        to the end of the last profiled epoch; only the profiled epochs' step windows are tabled.
        Without ``prof_from_start`` it attaches at the start of the first profiled epoch."""
        on = bool(self.prof_epochs) and (epoch in self.prof_epochs or (
            self.prof_from_start and 0 <= epoch <= max(self.prof_epochs)))
        if on and self.prof is None:
            self.prof = torch.profiler.profile(activities=self.activities)
            self.prof.__enter__()
        elif not on:
            self._stop_profiler()
        self._sync_debug(epoch == self.sync_epoch)

    # ---- the session's report: the end of an epoch
    def on_report(self, metrics: dict):
        if "done" in metrics:   # the final report (test evaluation done)
            self._set_profiling(-1)
            return
        now = time.perf_counter()
        c, s = self.cur, self.stepper
        row = {"epoch": int(metrics["epoch"]), "wall_s": now - c["t0"], "train_s": float(metrics["train_s"]),
               "val_s": c["val_s"], "steps": c["steps"], "batch": c["per_step"],
               "images_per_s": float(metrics["train_images_per_s"]), "loss": float(metrics["loss"]),
               "val_mAP@100": float(metrics["val_mAP@100"]), "lr": float(metrics["lr"]),
               "profiled": c["epoch"] in self.prof_epochs, "profiler_on": self.prof is not None,
               "sync_debug": self.sync_on,
               "cuda_graph": metrics.get("cuda_graph")}
        row["other_s"] = row["wall_s"] - row["train_s"] - row["val_s"]
        if s is not None:
            prev = self.epochs[-1] if self.epochs else {"captures_total": 0, "capture_s_total": 0.0}
            row.update(captures_total=s.captures, capture_s_total=s.capture_s,
                       captures=s.captures - prev["captures_total"],
                       capture_s=s.capture_s - prev["capture_s_total"], capture_error=s.failed)
        self.epochs.append(row)
        self.epoch = row["epoch"] + 1
        self.phase = "reported"
        if not metrics.get("last_epoch"):
            self._set_profiling(self.epoch)
        else:
            self._set_profiling(-1)


class TrialLikeSession(LocalSession):
    """In-process, checkpointing as a sweep trial does (``TuneSession``): with the sweep's default
    ``checkpoint_interval_s`` (30 s) a trial shorter than that writes no checkpoint; ``every_epoch``:
    one after every epoch but the last (interval 0). No final checkpoint (the run directory is written)."""

    final_checkpoint = False

    def __init__(self, device: str, on_report, every_epoch: bool):
        super().__init__(None, device=device, on_report=on_report)
        self.every_epoch = every_epoch

    def wants_checkpoint(self, epoch: int, last: bool) -> bool:
        return self.every_epoch and not last


# ---------------------------------------------------------------- the profiled window
class Window:
    """The profiler's events inside the training-step ranges, shaped for fused_profile's tables."""

    def __init__(self, prof):
        from torch.autograd import DeviceType
        from torch.autograd.profiler_util import EventList

        evs = list(prof.events())   # (the range's GPU-side annotation, if recorded, is not a span)
        spans = [(e.time_range.start, e.time_range.end) for e in evs if e.name == MARK
                 and e.device_type == DeviceType.CPU]
        self.spans = spans
        self.wall_us = sum(b - a for a, b in spans)

        def inside(e):
            return e.name != MARK and any(a <= e.time_range.start and e.time_range.end <= b for a, b in spans)

        self._in = [e for e in evs if inside(e)]
        self._EventList = EventList

    def events(self):
        return self._in

    def key_averages(self):
        from torch.autograd import DeviceType

        cpu = self._EventList([e for e in self._in if e.device_type == DeviceType.CPU])
        cpu._tree_built = True   # the events keep the parent/child links of the profile's own tree
        return cpu.key_averages()

    def gpu(self):
        from torch.autograd import DeviceType

        return [e for e in self._in if e.device_type == DeviceType.CUDA]


def gpu_busy_us(events) -> float:
    """The union of the activity intervals (µs)."""
    busy, end = 0.0, -1.0
    for e in sorted(events, key=lambda e: e.time_range.start):
        s, f = e.time_range.start, e.time_range.end
        if f > end:
            busy += f - max(s, end)
            end = f
    return busy


def is_kernel(name: str) -> bool:
    return not name.lower().startswith(("memcpy", "memset"))


# ---------------------------------------------------------------- main
def graph_eligibility(cfg, device: torch.device) -> list:
    """The loop's conditions for graphing the step (loop.fit, ``graphed = ...``), each with its value."""
    method = cfg.method_spec
    train = next((v for k, v in L._SPLITS.items() if k[2] == "train"), None)   # this process's one split
    store = str(train.store_device) if train is not None else "?"
    return [("TrainConfig.cuda_graph", cfg.cuda_graph), ("device is CUDA", device.type == "cuda"),
            ("compile off", not cfg.compile),
            (f"train split stored on the device ({store})", train is not None and train.store_device == train.device),
            (f"method {cfg.method!r} graph_safe(hp)", method.graph_safe(cfg.hp))]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--method", default="drh-nq")
    p.add_argument("--dataset", default="pneumoniamnist")
    p.add_argument("--bits", type=int, default=32)
    p.add_argument("--epochs", type=int, default=3, help="epoch 0 warms up (and captures the graph)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--set", dest="params", action="append", default=[], metavar="KEY=VALUE",
                   help="a method hyperparameter (repeatable), e.g. --set depth=18")
    p.add_argument("--batch-size", type=int, help="default: the method's")
    p.add_argument("--no-graph", action="store_true", help="TrainConfig.cuda_graph=False: the step runs eagerly")
    p.add_argument("--no-profiler", action="store_true", help="table 1 only (no profiler, no sync debug mode)")
    p.add_argument("--profile-epochs", type=int, default=1, help="epochs under torch.profiler")
    p.add_argument("--profiler-from", choices=("start", "epoch"), default="start",
                   help="start the profiler before the fit, so before the graph capture (default), or at the "
                        "first profiled epoch (after the capture: try it if the capture fails under the profiler)")
    p.add_argument("--checkpoint-every-epoch", action="store_true",
                   help="write a checkpoint after every epoch but the last (a sweep with checkpoint_interval_s 0); "
                        "default: none, as a sweep trial shorter than its checkpoint_interval_s (30 s)")
    p.add_argument("--max-steps", type=int, help="cut each epoch's plan to this many steps (quick checks)")
    p.add_argument("--torch-threads", type=int, default=1, help="TrainConfig.torch_threads (a sweep trial: 1)")
    p.add_argument("--top", type=int, default=15, help="rows of the kernel and CPU-op tables")
    p.add_argument("--label", default="", help="a tag printed with the results (concurrent runs)")
    p.add_argument("--json-out", help="write every number as JSON here")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: torch sees no CUDA device here; use --device cpu", file=sys.stderr)
        return 2
    for name in ("epochs", "profile_epochs", "max_steps", "batch_size", "torch_threads", "top"):
        v = getattr(args, name)
        if v is not None and v < (0 if name == "profile_epochs" else 1):
            p.error(f"--{name.replace('_', '-')} {v}: must be at least {0 if name == 'profile_epochs' else 1}")
    try:
        params = parse_pairs(args.params, "--set")
    except HashbenchError as exc:
        p.error(str(exc))

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    prof_epochs, sync_epoch = [], None
    if not args.no_profiler:
        first = 1 if args.epochs > 1 else 0     # after the warm-up / capture epoch when there is one
        prof_epochs = list(range(first, min(args.epochs, first + args.profile_epochs)))
        sync_epoch = args.epochs - 1 if cuda else None
    acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])

    out_dir = tempfile.mkdtemp(prefix="step-profile-")
    try:
        try:
            cfg = TrainConfig(method=args.method, dataset=args.dataset, bits=args.bits, epochs=args.epochs,
                              batch_size=args.batch_size, params=params, out_dir=out_dir, device=args.device,
                              cuda_graph=not args.no_graph, torch_threads=args.torch_threads)
        except HashbenchError as exc:
            print(f"step_profile.py: {exc}", file=sys.stderr)
            return 2
        probe = Probe(device, args.max_steps, prof_epochs, sync_epoch, acts, args.profiler_from == "start")
        t0 = time.perf_counter()
        with probe:
            result = fit(cfg, TrialLikeSession(args.device, probe.on_report, args.checkpoint_every_epoch))
        total_s = time.perf_counter() - t0
        eligible = graph_eligibility(cfg, device)
        n_train = len(next(v for k, v in L._SPLITS.items() if k[2] == "train"))
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)

    # ------------------------------------------------------------ table 1
    dev_name = torch.cuda.get_device_name(device) if cuda else "cpu"
    env = {k: os.environ[k] for k in ("CUDA_VISIBLE_DEVICES", "CUDA_MPS_PIPE_DIRECTORY") if k in os.environ}
    tag = f"[{args.label}] " if args.label else ""
    print(f"{tag}{cfg.method} {cfg.bits} bits on {cfg.dataset_name} ({n_train} train images), {dev_name}, "
          f"torch {torch.__version__}, pid {os.getpid()}, torch threads {cfg.torch_threads}"
          + (f", {env}" if env else ""))
    ep = probe.epochs
    steps, per = ep[0]["steps"], ep[0]["batch"]
    used = steps * per
    print(f"params {cfg.hp}")
    print(f"batch size {cfg.batch_size}; sampler {cfg.method_spec.sampler}; {steps} steps of {per} per epoch"
          + (f" (cut to --max-steps {args.max_steps})" if args.max_steps else "")
          + (f"; the last partial batch ({n_train - used} of {n_train} images) is dropped (batches.random_plan)"
             if cfg.method_spec.sampler == "random" and not args.max_steps and n_train > used else ""))
    graph_rows = [e for e in ep if e.get("captures_total") is not None]
    if probe.stepper is None:
        why = [name for name, ok in eligible if not ok]
        print(f"CUDA graph: not used (eager step); false: {', '.join(why) if why else 'none (unknown)'} "
              f"[conditions: {'; '.join(f'{n}={ok}' for n, ok in eligible)}]")
    else:
        s = probe.stepper
        if s.failed and prof_epochs and args.profiler_from == "start":
            print("NOTE: the capture failed with the profiler running; compare --no-profiler or --profiler-from epoch")
        print(f"CUDA graph: {'FELL BACK TO EAGER: ' + s.failed if s.failed else 'used'}; {s.captures} capture(s), "
              f"{s.capture_s:.3f} s capturing, {s.warmed} eager warm-up step(s) on a side stream"
              + ("; captures per epoch " + ", ".join(str(e["captures"]) for e in graph_rows)))
    for w, n in probe.other_warnings.items():
        print(f"warning (x{n}): {w}")
    print("\n| epoch | wall s | train-step s | val s | other s | steps | images/s | ms/step | CUDA graph | "
          "captures | loss | val mAP@100 | note |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for e in ep:
        note = ", ".join(n for n, on in (("profiled", e["profiled"]),
                                         ("profiler on", e["profiler_on"] and not e["profiled"]),
                                         ("sync debug", e["sync_debug"]),
                                         ("warm-up + capture", e.get("captures", 0) > 0)) if on)
        print(f"| {e['epoch']} | {e['wall_s']:.3f} | {e['train_s']:.3f} | {e['val_s']:.3f} | {e['other_s']:.3f} | "
              f"{e['steps']} | {e['images_per_s']:.0f} | {1000 * e['train_s'] / e['steps']:.2f} | "
              f"{e['cuda_graph'] if e['cuda_graph'] is not None else 'eager'} | {e.get('captures', '-')} | "
              f"{e['loss']:.4f} | {e['val_mAP@100']:.4f} | {note} |")
    tm = result.timings
    print(f"\ncheckpoints: {'after every epoch but the last' if args.checkpoint_every_epoch else 'none'}")
    print(f"run: {total_s:.2f} s in fit; setup {tm.get('setup_s', 0):.2f} s, data load {tm.get('load_s', 0):.2f} s, "
          f"model build {tm.get('build_s', 0):.2f} s, final phase {tm.get('final_s', 0):.2f} s")
    report = {"label": args.label, "device": dev_name, "torch": torch.__version__, "pid": os.getpid(), "env": env,
              "method": cfg.method, "dataset": cfg.dataset_name, "bits": cfg.bits, "hp": cfg.hp,
              "batch_size": cfg.batch_size, "train_images": n_train, "steps_per_epoch": steps,
              "graph": None if probe.stepper is None else {"captures": probe.stepper.captures,
                                                            "capture_s": probe.stepper.capture_s,
                                                            "failed": probe.stepper.failed},
              "graph_conditions": {n: bool(ok) for n, ok in eligible}, "warnings": probe.other_warnings,
              "epochs": ep, "timings": tm, "fit_s": total_s}

    # ------------------------------------------------------------ table 2
    prof = getattr(probe, "prof_done", None)
    if prof is not None:
        win = Window(prof)
        n_steps = sum(e["steps"] for e in ep if e["profiled"])
        wall_us = win.wall_us / max(n_steps, 1)
        print(f"\n## under torch.profiler: epoch(s) {prof_epochs}, {n_steps} training steps "
              f"({len(win.spans)} step window(s), {win.wall_us / 1e6:.3f} s; profiler overhead included)")
        prof_rep = {"epochs": prof_epochs, "steps": n_steps, "wall_ms_per_step": wall_us / 1000}
        if cuda:
            gpu = win.gpu()
            kernels = [e for e in gpu if is_kernel(e.name)]
            busy = gpu_busy_us(gpu) / max(n_steps, 1)
            print(f"GPU kernels per training step: {len(kernels) / max(n_steps, 1):.1f} (plus "
                  f"{(len(gpu) - len(kernels)) / max(n_steps, 1):.1f} memcpy/memset); below, a 'call' is one step")
            lines = fused_profile.kernel_table(win, [], wall_us, max(n_steps, 1))
            print("\n".join(lines[: 3 + args.top]))
            if len(lines) > 3 + args.top:
                print(f"| ... {len(lines) - 3 - args.top} more | | | | |")
            prof_rep.update(kernels_per_step=len(kernels) / max(n_steps, 1), gpu_busy_ms_per_step=busy / 1000,
                            gpu_rows=lines[3:3 + args.top])
        print()
        cpu = fused_profile.cpu_table(win, max(n_steps, 1), args.top)
        print("(CPU-side ops inside the training-step windows; per step)")
        print("\n".join(cpu))
        prof_rep["cpu_rows"] = cpu[2:]
        report["profile"] = prof_rep
    if sync_epoch is not None:
        st = next((e["steps"] for e in ep if e["epoch"] == sync_epoch), 1)
        print(f"\n## host synchronisations in epoch {sync_epoch} (torch.cuda.set_sync_debug_mode('warn'); "
              f"{st} steps)")
        if probe.syncs:
            print("| host sync site | phase | syncs in the epoch | per step |\n|---|---|---|---|")
            for (site, phase), n in sorted(probe.syncs.items(), key=lambda kv: (kv[0][1], -kv[1])):
                print(f"| {site.replace('|', '/')} | {phase} | {n} | {n / st:.2f} |")
        else:
            print("(no synchronising call reported)")
        report["syncs"] = [{"site": s, "phase": ph, "count": n} for (s, ph), n in probe.syncs.items()]
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(report, f, indent=2, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
