"""benchmarks/step_profile.py on the CPU at a tiny size, in a subprocess: its tables and JSON."""

import json
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "step_profile.py")
TRAIN_IMAGES = 4708  # pneumoniamnist's train split (the built-in dataset)


def _run(*args, timeout=420):
    return subprocess.run([sys.executable, SCRIPT, "--device", "cpu", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def _table_rows(text: str, first_header: str) -> list:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def test_cpu_run_tables_and_json(tmp_path):
    out = tmp_path / "p.json"
    # batch 1024 over 4708 images: 4 steps, 612 images of the last partial batch dropped
    res = _run("--epochs", "2", "--batch-size", "1024", "--set", "depth=18", "--set", "width=6",
               "--json-out", str(out))
    assert res.returncode == 0, res.stdout + res.stderr
    text = res.stdout
    assert f"4 steps of 1024 per epoch; the last partial batch (612 of {TRAIN_IMAGES} images) is dropped" in text
    assert "CUDA graph: not used (eager step); false: device is CUDA" in text

    rows = _table_rows(text, "epoch")
    assert [r[0] for r in rows] == ["0", "1"]
    for r in rows:
        wall, train, val, steps, ips = float(r[1]), float(r[2]), float(r[3]), int(r[5]), float(r[6])
        assert steps == 4
        assert wall > 0 and train > 0 and val > 0 and wall >= train + val
        assert abs(ips - 4 * 1024 / train) <= 0.01 * ips + 1   # images/s from the loop's own train_s
        assert r[8] == "eager"
    # the profiler runs from the start (before any graph capture); epoch 1's steps are the ones tabled
    assert rows[0][-1] == "profiler on" and rows[1][-1] == "profiled"

    cpu = _table_rows(text, "CPU op (host side)")
    assert cpu and all(float(r[2]) >= 0 and float(r[3]) > 0 for r in cpu)
    ops = {r[0]: float(r[1]) for r in cpu}
    # a ResNet-18's training step: every one of its 20 convolutions (17 3x3 + 3 shortcut 1x1) runs backward once
    assert ops.get("aten::convolution_backward") == 20, ops

    rep = json.loads(out.read_text())
    assert rep["method"] == "drh-nq" and rep["hp"]["depth"] == 18 and rep["steps_per_epoch"] == 4
    assert rep["graph"] is None and rep["graph_conditions"]["device is CUDA"] is False
    assert [e["epoch"] for e in rep["epochs"]] == [0, 1]
    assert rep["profile"]["steps"] == 4 and rep["profile"]["wall_ms_per_step"] > 0
    assert re.search(r"model build [0-9.]+ s", text)


def test_no_profiler_and_max_steps(tmp_path):
    res = _run("--epochs", "1", "--max-steps", "2", "--no-profiler", "--set", "depth=18")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "2 steps of 128 per epoch (cut to --max-steps 2)" in res.stdout
    assert [r[5] for r in _table_rows(res.stdout, "epoch")] == ["2"]
    assert "torch.profiler" not in res.stdout and "CPU op" not in res.stdout


def test_bad_options():
    res = _run("--epochs", "0", timeout=120)
    assert res.returncode == 2 and "--epochs 0: must be at least 1" in res.stderr
    res = _run("--set", "depth", timeout=120)
    assert res.returncode == 2 and "--set 'depth': expected KEY=VALUE" in res.stderr


def test_window_on_fake_cuda_events():
    """The CUDA-only arithmetic (no GPU here): events inside the step ranges, busy time as a union."""
    from types import SimpleNamespace

    from torch.autograd import DeviceType

    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import fused_profile
    import step_profile

    def ev(name, dev, start, end):
        return SimpleNamespace(name=name, device_type=dev, time_range=SimpleNamespace(start=start, end=end))

    cpu, gpu = DeviceType.CPU, DeviceType.CUDA
    events = [ev(step_profile.MARK, cpu, 100, 200), ev(step_profile.MARK, gpu, 100, 200),  # the range + its GPU twin
              ev("kernA", gpu, 110, 130), ev("kernB", gpu, 120, 150), ev("Memcpy HtoD", gpu, 160, 170),
              ev("kernA", gpu, 250, 260)]                                                  # after the range
    win = step_profile.Window(SimpleNamespace(events=lambda: events))
    assert win.spans == [(100, 200)] and win.wall_us == 100
    inside = win.gpu()
    assert sorted(e.name for e in inside) == ["Memcpy HtoD", "kernA", "kernB"]
    assert step_profile.gpu_busy_us(inside) == 50          # [110, 150] and [160, 170]
    assert [step_profile.is_kernel(e.name) for e in inside].count(True) == 2
    # over 2 steps: 25 µs busy of 50 µs wall per step; kernA once per 2 steps, 20 µs
    lines = fused_profile.kernel_table(win, [], win.wall_us / 2, 2)
    assert lines[0].startswith("GPU busy 0.025 ms of 0.050 ms wall per call (50 %")
    rows = {r.split("|")[1].strip(): r for r in lines[3:]}
    assert rows["kernA"].split("|")[2].strip() == "0.5" and rows["kernA"].split("|")[3].strip() == "0.010"
    res = _run("--method", "no-such-method", timeout=120)
    assert res.returncode == 2 and "no-such-method" in res.stderr and "Traceback" not in res.stderr
