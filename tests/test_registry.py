"""The method registry itself: Param validation, Method checks, resolve(), search_space(),
error messages that list what is valid, requirements, discovery of a method file, the CLI."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

import hashbench.methods
from hashbench.platform import registry
from hashbench.platform.cli import main
from hashbench.platform.errors import HashbenchError
from hashbench.platform.registry import Method, ModelContext, Param, Requirements


def _method(mid="toy", params=(), **kw):
    return Method(id=mid, summary="toy", citation="nobody", build_model=lambda ctx, hp: None,
                  build_loss=lambda ctx, hp: None, build_optimizer=lambda ps, hp: None, params=params, **kw)


# ---------------------------------------------------------------- Param

@pytest.mark.parametrize("kwargs,msg", [
    (dict(type="complex"), "type must be one of"),
    (dict(type="choice"), "needs choices"),
    (dict(search=(1.0, 1.0)), "low < high"),
    (dict(search=(2.0, 1.0)), "low < high"),
    (dict(search=(0.0, 1.0), log=True), "log search range needs low > 0"),
])
def test_param_definition_errors(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        Param("p", 0.5, **kwargs)


def test_param_default_must_be_valid():
    with pytest.raises(HashbenchError, match=r"'p': 5.0 is outside the valid range \[0, 1\]"):
        Param("p", 5.0, bounds=(0, 1))
    with pytest.raises(HashbenchError, match="not one of"):
        Param("p", "c", type="choice", choices=("a", "b"))


def test_float_param_coercion():
    p = Param("lr", 0.1, bounds=(0, None))
    assert p.coerce("1e-3") == 1e-3 and p.coerce(2) == 2.0 and isinstance(p.coerce(2), float)
    assert p.coerce(0) == 0.0                                      # bounds are inclusive
    for bad, msg in [("fast", "expected a number, got 'fast'"), (True, "expected a number"),
                     (None, "expected a number"), (math.inf, "must be finite"), ("nan", "must be finite"),
                     (-1, r"-1.0 is outside the valid range \[0, inf\]")]:
        with pytest.raises(HashbenchError, match=msg):
            p.coerce(bad, where="run.yaml: ")
    with pytest.raises(HashbenchError, match="^run.yaml: parameter 'lr'"):
        p.coerce("x", where="run.yaml: ")


def test_int_bool_choice_str_coercion():
    n = Param("n", 3, type="int", bounds=(1, 10))
    assert n.coerce("4") == 4 and n.coerce(5.0) == 5 and n.coerce("6.0") == 6
    for bad in (2.5, "2.5", "x", 0, 11):
        with pytest.raises(HashbenchError, match="'n'"):
            n.coerce(bad)
    b = Param("flag", False, type="bool")
    assert [b.coerce(v) for v in (True, "yes", "TRUE", "1", "no", "0", "false")] == \
        [True, True, True, True, False, False, False]
    for bad in ("maybe", 1, None):
        with pytest.raises(HashbenchError, match="expected true or false"):
            b.coerce(bad)
    c = Param("depth", 18, type="choice", choices=(18, 34))
    assert c.coerce("34") == 34 and c.coerce(18) == 18
    with pytest.raises(HashbenchError, match=r"50 is not one of \[18, 34\]"):
        c.coerce(50)
    s = Param("weights", "", type="str")
    assert s.coerce("a.pt") == "a.pt"
    with pytest.raises(HashbenchError, match="expected a string"):
        s.coerce(3)


def test_param_describe():
    d = Param("g", 1e-4, search=(1e-6, 10.0), log=True, bounds=(0, None), help="h").describe()
    assert d == {"name": "g", "type": "float", "default": 1e-4, "search": [1e-6, 10.0], "log": True,
                 "bounds": [0, None], "choices": None, "help": "h"}


# ---------------------------------------------------------------- Method

@pytest.mark.parametrize("kw,msg", [
    (dict(mid="bad id"), "use letters"),
    (dict(mid=""), "use letters"),
    (dict(code_type="ternary"), "code_type"),
    (dict(distance="manhattan"), "distance"),
    (dict(distance="l2"), "binary codes are compared by hamming"),
    (dict(sampler="stratified"), "sampler"),
    (dict(params=(Param("a", 1.0), Param("a", 2.0))), "duplicate parameter names"),
])
def test_method_definition_errors(kw, msg):
    with pytest.raises(ValueError, match=msg):
        _method(**kw)


def test_resolve_and_search_space():
    m = _method(params=(Param("lr", 0.1, search=(1e-3, 1.0), log=True, bounds=(0, None)),
                        Param("depth", 18, type="choice", choices=(18, 34)),
                        Param("alpha", 0.5, bounds=(0, 1))))
    assert m.resolve() == {"lr": 0.1, "depth": 18, "alpha": 0.5}
    assert m.resolve({"depth": "34", "lr": "0.01"}) == {"lr": 0.01, "depth": 34, "alpha": 0.5}
    assert m.resolve({"alpha": 1}) is not m.resolve({"alpha": 1})          # a fresh dict each time
    with pytest.raises(HashbenchError, match=r"^cfg: method 'toy' has no parameter 'beta'; "
                                             r"valid parameters: alpha, depth, lr$"):
        m.resolve({"beta": 1}, where="cfg: ")
    with pytest.raises(HashbenchError, match="method 'toy' parameter 'alpha'"):
        m.resolve({"alpha": 2})
    assert list(m.search_space()) == ["lr"]
    assert _method(params=()).resolve() == {}
    with pytest.raises(HashbenchError, match=r"valid parameters: \(none\)"):
        _method(params=()).resolve({"x": 1})


def test_describe_is_json_for_every_registered_method():
    ids = registry.list_methods()
    assert {"dch", "drh", "dph", "drh-nq"} <= set(ids) and "drh-nb" not in ids   # drh-nb: a readout of drh
    for m in registry.iter_methods():
        d = json.loads(json.dumps(m.describe()))
        assert d["id"] == m.id and d["citation"] and d["paper"] and d["family"]
        assert [p["name"] for p in d["params"]] == [p.name for p in m.params]
        m.resolve()                                                   # defaults are valid


def test_register_get_and_unknown_method(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    m = _method("toy-registry")
    assert registry.register(m) is m and registry.register(m) is m     # same object: idempotent
    with pytest.raises(ValueError, match="registered twice"):
        registry.register(_method("toy-registry"))
    assert registry.get_method("toy-registry") is m
    with pytest.raises(HashbenchError, match=r"unknown method 'nope'; registered methods: .*dch, .*dph, drh"):
        registry.get_method("nope")


def test_create_model_validates_overrides():
    ctx = ModelContext(in_channels=1, image_size=8, num_classes=2, bits=4)
    net = registry.create_model("drh", ctx, depth=18, width=2)
    assert net.encode(torch.rand(2, 1, 8, 8)).shape == (2, 4)
    with pytest.raises(HashbenchError, match="no parameter 'widht'"):
        registry.create_model("drh", ctx, widht=2)


def test_check_requirements_messages():
    m = _method(requires=Requirements(masks=True, multi_label=False, min_image_size=32))
    ok = dict(has_masks=True, multi_label=False, image_size=32)
    registry.check_requirements(m, **ok)
    with pytest.raises(HashbenchError, match="needs segmentation masks, but dataset 'x' has none"):
        registry.check_requirements(m, **{**ok, "has_masks": False}, dataset="x")
    with pytest.raises(HashbenchError, match="single-label data only"):
        registry.check_requirements(m, **{**ok, "multi_label": True})
    with pytest.raises(HashbenchError, match="at least 32 px.*16 px.*--size 32"):
        registry.check_requirements(m, **{**ok, "image_size": 16})


# ---------------------------------------------------------------- discovery

METHOD_FILE = '''
from hashbench.platform.registry import Method, Param, register
register(Method(id="discovered-toy", summary="from a file", citation="me",
                build_model=lambda ctx, hp: None, build_loss=lambda ctx, hp: None,
                build_optimizer=lambda ps, hp: None, params=(Param("k", 2, type="int"),)))
'''


def test_a_method_file_is_discovered_and_helpers_are_skipped(tmp_path, monkeypatch):
    """Run hashbench/methods/__init__.py over a folder holding one method file and one helper."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    (tmp_path / "toy_method.py").write_text(METHOD_FILE)
    (tmp_path / "_helper.py").write_text("raise RuntimeError('helpers must not be imported')\n")
    name = "hashbench_discovery_probe"
    spec = importlib.util.spec_from_file_location(name, Path(hashbench.methods.__file__),
                                                  submodule_search_locations=[str(tmp_path)])
    pkg = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, pkg)
    try:
        spec.loader.exec_module(pkg)
        assert f"{name}.toy_method" in sys.modules and f"{name}._helper" not in sys.modules
    finally:
        sys.modules.pop(f"{name}.toy_method", None)
    m = registry.get_method("discovered-toy")
    assert m.resolve({"k": "5"}) == {"k": 5}


# ---------------------------------------------------------------- CLI

def test_methods_command(capsys):
    assert main(["methods", "drh", "--json"]) == 0
    (d,) = json.loads(capsys.readouterr().out)
    assert d["id"] == "drh" and d["code_type"] == "binary" and d["distance"] == "hamming"
    assert [(r["name"], r["code_type"], r["distance"], r["entry"]) for r in d["readouts"]] == \
        [("sign", "binary", "hamming", "drh"), ("float", "float", "l2", "drh-nb")]
    assert {p["name"]: p["default"] for p in d["params"]}["lambda_q"] == 0.05
    assert main(["methods"]) == 0
    text = capsys.readouterr().out
    assert "dch  [binary, hamming]" in text and "gamma" in text
    assert main(["methods", "deep-cauchy"]) == 2
    assert "unknown method 'deep-cauchy'; registered methods:" in capsys.readouterr().err
