"""Config specs: ``'name'`` or ``'name[key=value,...]'``, loaded and overridden through ml_collections.

A spec names a module of ``experiments/configs``; the bracketed overrides let a variant be timed next
to its base in one run (``'dcgan_mnist[model.d_downsample=space_to_depth,optim.learning_rate=1e-4]'``).
Values are Python literals, else strings (as ml_collections' config flags read them); the overrides
are applied by ``ConfigDict.update_from_flattened_dict``, so the config's types hold.
"""

from __future__ import annotations

import ast
import copy
import difflib
import importlib
from typing import Any, Mapping

from ml_collections import config_dict


def split_specs(text: str) -> tuple[str, ...]:
    """``'a,b[x=1,y=2];c'`` -> ``('a', 'b[x=1,y=2]', 'c')``: commas inside brackets stay."""
    specs, depth, cur = [], 0, ""
    for ch in text:
        depth += (ch == "[") - (ch == "]")
        if ch in ",;" and depth == 0:
            specs.append(cur)
            cur = ""
        else:
            cur += ch
    return tuple(s.strip() for s in specs + [cur] if s.strip())


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``'name[key=value,...]'`` -> ``(name, {key: value})``; a value is a Python literal, else a string.

    Raises:
      ValueError: the brackets are not closed, or an override is not ``key=value``.
    """
    name, _, rest = spec.partition("[")
    if not rest:
        return name.strip(), {}
    if not rest.endswith("]"):
        raise ValueError(f"config spec {spec!r}: expected 'name[key=value,...]'")
    updates = {}
    for item in filter(None, (s.strip() for s in rest[:-1].split(","))):
        key, eq, raw = item.partition("=")
        if not eq:
            raise ValueError(f"config spec {spec!r}: override {item!r} is not key=value")
        try:
            updates[key.strip()] = ast.literal_eval(raw.strip())
        except (ValueError, SyntaxError):
            updates[key.strip()] = raw.strip()
    return name.strip(), updates


def load_config(spec: str, config_arg: str | None) -> config_dict.ConfigDict:
    """The config named by ``spec`` (see the module docstring), from ``get_config(config_arg)``.

    Raises:
      ModuleNotFoundError: no module ``experiments/configs/<name>.py``.
      ValueError: a malformed spec, or an override of a key the config does not have.
      TypeError: an override whose value does not fit the field's type.
    """
    name, updates = parse_spec(spec)
    config = importlib.import_module(f"experiments.configs.{name}").get_config(config_arg)
    return with_overrides(config, updates, what=f"config spec {spec!r}")


def with_overrides(config: config_dict.ConfigDict, updates: Mapping[str, Any], what: str = "override"
                   ) -> config_dict.ConfigDict:
    """A copy of ``config`` with dotted keys replaced (``{'data.batch_size': 64}``).

    Raises:
      ValueError: a key the config does not have (no field is ever added).
      TypeError: a value that does not fit the field's type.
    """
    config = copy.deepcopy(config)
    for key, value in updates.items():
        _check_key(config, key, what)
        try:
            config.update_from_flattened_dict({key: value})
        except TypeError as e:
            raise TypeError(f"{what}: {key}={value!r}: {e}") from None
    return config


def _check_key(config: config_dict.ConfigDict, key: str, what: str) -> None:
    """Raises ValueError naming ``key`` (and the closest existing field) unless the config has it."""
    node = config
    parts = key.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, config_dict.ConfigDict) or part not in node:
            fields = sorted(node.keys()) if isinstance(node, config_dict.ConfigDict) else []
            close = difflib.get_close_matches(part, fields, n=1)
            parent = ".".join(parts[:i]) or "the config"
            hint = f"; did you mean {'.'.join(parts[:i] + close[:1])!r}?" if close else ""
            raise ValueError(f"{what}: unknown key {key!r} ({parent} has no field {part!r}){hint}")
        node = node[part]
