"""Reading YAML safely: ``yaml.safe_load`` semantics, but a key given twice in one mapping is an error.

PyYAML's ``safe_load`` silently keeps the last of two equal keys (``lr: 0.1`` ... ``lr: 0.01`` gives
0.01 with no warning), so a config edited by hand can mean something else than it says. Every YAML
file hashbench reads goes through :func:`load_yaml`, which builds the same Python objects as
``yaml.safe_load`` (no arbitrary tags, no object construction) and raises
:class:`~hashbench.platform.errors.HashbenchError` naming the file, the line and the key when a
mapping repeats a key. Merge keys (``<<: *anchor``) keep their YAML meaning: a key written in the
mapping overrides a merged one without being a duplicate.
"""

from __future__ import annotations

from typing import Any

import yaml

from hashbench.platform.errors import HashbenchError


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A mapping repeats a key (raised inside the loader, turned into HashbenchError by load_yaml)."""

    def __init__(self, key: Any, first_line: int, mark):
        super().__init__(None, None, f"duplicate key {key!r} (first given on line {first_line})", mark)
        self.key, self.first_line = key, first_line


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # an unhashable key: SafeLoader reports it below
                    continue
                if first is not None:
                    raise DuplicateKeyError(key, first, key_node.start_mark)
                seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
                                UniqueKeyLoader.construct_yaml_map)


def load_yaml(text: str, source: str = "<yaml>") -> Any:
    """Parse YAML ``text`` like ``yaml.safe_load``; duplicate keys and syntax errors become
    HashbenchError ``"<source>:<line>: ..."``."""
    try:
        return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 - UniqueKeyLoader is a SafeLoader
    except DuplicateKeyError as exc:
        raise HashbenchError(f"{source}:{exc.problem_mark.line + 1}: duplicate key {exc.key!r} (first given "
                             f"on line {exc.first_line}); each key may appear once per mapping") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise HashbenchError(f"{source}{line}: malformed YAML: {problem}") from None


def load_yaml_file(path) -> Any:
    """:func:`load_yaml` of the file ``path`` (UTF-8); a missing or unreadable file is HashbenchError."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise HashbenchError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise HashbenchError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    return load_yaml(text, str(path))
