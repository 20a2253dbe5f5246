#!/usr/bin/env python
"""One training epoch two ways: a conventional loop vs. hashbench's loop, same model, same device.

Conventional: a torch ``DataLoader`` over a ``Dataset`` that holds every training image as PNG
bytes and, per sample, decodes it with PIL, applies a random horizontal flip and brightness /
contrast jitter with PIL, and converts it to a tensor; batches are copied to the device.
hashbench: :func:`hashbench.platform.training.fit` with a ``LocalSession`` — the split held as
one uint8 tensor on the device, index batches, augmentation on the device.

Both train the same method (default ``dch``) with the same batch size, optimizer, bf16 autocast on
GPUs, and the same augmentation (hflip, brightness 0.1, contrast 0.1). The time of the last epoch is
compared (the first includes warm-up); hashbench's epoch time excludes its per-epoch validation.
Needs only torch, numpy and pillow (plus hashbench on PYTHONPATH); no Ray.

    python benchmarks/bench_train_loop.py --device cuda --dataset pneumoniamnist --epochs 2
    python benchmarks/bench_train_loop.py --device cuda --method drh --set depth=34 --batch-size 128
    python benchmarks/bench_train_loop.py --device cuda --compile reduce-overhead   # torch.compile, both loops

On CUDA hashbench's loop captures the whole step as one CUDA graph (methods that allow it); the
same loop is also run once without it (``--no-eager`` skips that) to show what the graph adds.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class GpuBusy:
    """Samples ``nvidia-smi`` GPU utilisation (%) every 0.2 s while active; mean of the samples."""

    def __init__(self, device: torch.device):
        self.index = device.index or 0
        self.enabled = device.type == "cuda" and shutil.which("nvidia-smi") is not None
        self.samples: list = []
        self._stop = threading.Event()

    def _run(self):
        cmd = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-i", str(self.index)]
        while not self._stop.is_set():
            try:
                self.samples.append(float(subprocess.check_output(cmd, timeout=5).decode().strip()))
            except (subprocess.SubprocessError, ValueError, OSError):
                pass
            self._stop.wait(0.2)

    def __enter__(self):
        if self.enabled:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.enabled:
            self._stop.set()
            self._thread.join()

    @property
    def mean(self):
        return float(np.mean(self.samples)) if self.samples else None


class PngDataset(torch.utils.data.Dataset):
    """Images stored as PNG bytes; decode + per-sample PIL augmentation in ``__getitem__``."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, brightness=0.1, contrast=0.1):
        from PIL import Image

        self.mode = "L" if images.shape[1] == 1 else "RGB"
        self.blobs = []
        for im in images:
            arr = im[0] if images.shape[1] == 1 else im.transpose(1, 2, 0)
            buf = io.BytesIO()
            Image.fromarray(arr).save(buf, format="PNG")
            self.blobs.append(buf.getvalue())
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.float32))
        self.brightness, self.contrast = brightness, contrast

    def __len__(self):
        return len(self.blobs)

    def __getitem__(self, i):
        from PIL import Image, ImageEnhance, ImageOps

        im = Image.open(io.BytesIO(self.blobs[i])).convert(self.mode)
        if random.random() < 0.5:
            im = ImageOps.mirror(im)
        im = ImageEnhance.Brightness(im).enhance(1 + random.uniform(-self.brightness, self.brightness))
        im = ImageEnhance.Contrast(im).enhance(1 + random.uniform(-self.contrast, self.contrast))
        x = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0)
        x = x.unsqueeze(0) if x.dim() == 2 else x.permute(2, 0, 1)
        return x, self.labels[i], i


def conventional(cfg, ds, device: torch.device, workers: int) -> list:
    """Epoch times (s) of a DataLoader loop training ``cfg``'s method."""
    from hashbench.platform.registry import Batch, ModelContext

    method, hp = cfg.method_spec, cfg.hp
    idx = ds.indices("train")
    data = PngDataset(np.asarray(ds.images[idx]), np.asarray(ds.labels[idx]))
    torch.manual_seed(cfg.seed)
    ctx = ModelContext(ds.channels, ds.image_size, ds.num_classes, cfg.bits, ds.multi_label)
    model = method.build_model(ctx, hp).to(device)
    loss_fn = method.build_loss(ctx, hp).to(device)
    opt = method.build_optimizer(model.parameters(), hp)
    net = torch.compile(model, mode=cfg.compile) if cfg.compile else model
    loader = torch.utils.data.DataLoader(data, batch_size=cfg.batch_size, shuffle=True, drop_last=True,
                                         num_workers=workers, pin_memory=device.type == "cuda",
                                         persistent_workers=workers > 0)
    times = []
    for _ in range(cfg.epochs):
        model.train()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        for x, y, i in loader:
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            batch = Batch(images=x, labels=y, targets=y.argmax(1), index=i.to(device))
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
                out = net(x)
            out = {k: v.float() if v.is_floating_point() else v for k, v in out.items()}
            loss = loss_fn(out, batch, model)["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
        model.eval()  # as hashbench's loop does between epochs
    return times


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dataset", default="pneumoniamnist")
    p.add_argument("--method", default="dch")
    p.add_argument("--bits", type=int, default=32)
    p.add_argument("--epochs", type=int, default=2, help="epochs per loop; the last one is compared")
    p.add_argument("--batch-size", type=int, help="default: the method's")
    p.add_argument("--set", dest="params", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--loader-workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="DataLoader worker processes of the conventional loop")
    p.add_argument("--compile", choices=("default", "reduce-overhead", "max-autotune"),
                   help="torch.compile the model's training forward in both loops")
    p.add_argument("--no-eager", action="store_true", help="skip the extra run of hashbench's loop without graphs")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    from hashbench.platform.data import load_dataset
    from hashbench.platform.training import LocalSession, TrainConfig, fit

    device = torch.device(args.device)
    out = tempfile.mkdtemp(prefix="bench-train-")
    try:
        cfg = TrainConfig(method=args.method, dataset=args.dataset, bits=args.bits, epochs=args.epochs,
                          batch_size=args.batch_size, params=dict(kv.split("=", 1) for kv in args.params),
                          out_dir=out, device=args.device, compile=args.compile,
                          augment={"hflip": True, "brightness": 0.1, "contrast": 0.1})
        ds = load_dataset(cfg.dataset)
        with GpuBusy(device) as busy_conv:
            conv = conventional(cfg, ds, device, args.loader_workers)
        with GpuBusy(device) as busy_hb:
            res = fit(cfg, LocalSession(None, device=args.device))
        hb = [h["train_s"] for h in res.history]
        eager_res = None
        if device.type == "cuda" and not args.no_eager:   # the same loop without the CUDA graph
            eager_cfg = dataclasses.replace(cfg, cuda_graph=False, run_name="eager")
            eager_res = fit(eager_cfg, LocalSession(None, device=args.device))
    finally:
        shutil.rmtree(out, ignore_errors=True)
    n = len(ds.indices("train"))
    report = {
        "device": res.device, "dataset": cfg.dataset_name, "method": cfg.method, "bits": cfg.bits,
        "batch_size": cfg.batch_size, "compile": cfg.compile, "train_images": n, "loader_workers": args.loader_workers,
        "conventional_epoch_s": conv, "hashbench_epoch_s": hb,
        "speedup_last_epoch": conv[-1] / hb[-1],
        "conventional_images_per_s": n / conv[-1], "hashbench_images_per_s": res.history[-1]["train_images_per_s"],
        "gpu_busy_pct_conventional": busy_conv.mean, "gpu_busy_pct_hashbench_run": busy_hb.mean,
        "hashbench_test_mAP@100": res.metrics.get("test_mAP@100"),
        "cuda_graph": bool(res.history[-1].get("cuda_graph", False)),
        "loss_last_epoch": res.history[-1].get("loss"),
    }
    if eager_res is not None:
        report.update({"hashbench_eager_epoch_s": [h["train_s"] for h in eager_res.history],
                       "hashbench_eager_test_mAP@100": eager_res.metrics.get("test_mAP@100"),
                       "eager_loss_last_epoch": eager_res.history[-1].get("loss")})
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{report['method']} {report['bits']}b on {report['dataset']} ({n} train images, batch "
              f"{cfg.batch_size}, compile {cfg.compile}) on {report['device']}")
        print(f"  conventional (DataLoader + PIL, {args.loader_workers} workers): "
              f"{' / '.join(f'{t:.2f}' for t in conv)} s per epoch, {report['conventional_images_per_s']:.0f} images/s")
        print(f"  hashbench (device-resident data + augmentation): "
              f"{' / '.join(f'{t:.2f}' for t in hb)} s per epoch, {report['hashbench_images_per_s']:.0f} images/s")
        print(f"    CUDA graph used: {report['cuda_graph']}; test mAP@100 {report['hashbench_test_mAP@100']:.4f}, "
              f"last-epoch loss {report['loss_last_epoch']:.4f}")
        if eager_res is not None:
            eg = report["hashbench_eager_epoch_s"]
            print(f"  hashbench without the CUDA graph: {' / '.join(f'{t:.2f}' for t in eg)} s per epoch "
                  f"({conv[-1] / eg[-1]:.1f}x), test mAP@100 {report['hashbench_eager_test_mAP@100']:.4f}, "
                  f"last-epoch loss {report['eager_loss_last_epoch']:.4f}")
        print(f"  speed-up (last epoch): {report['speedup_last_epoch']:.1f}x")
        if busy_hb.mean is not None:
            print(f"  GPU busy: conventional {busy_conv.mean:.0f}%, hashbench run {busy_hb.mean:.0f}% (nvidia-smi)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
