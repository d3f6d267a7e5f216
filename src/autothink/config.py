"""Typed configs: dataclasses filled from a YAML file and command-line flags (flags win)."""
from __future__ import annotations

import argparse
import dataclasses
import difflib
from pathlib import Path
from typing import TypeVar

import yaml

T = TypeVar("T")


def load_yaml(path: str | Path, cls: type) -> dict:
    """Read a YAML mapping and check every key is a field of `cls`.

    Raises:
        ValueError: not a mapping, or an unknown key (with the closest field name suggested).
    """
    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of option names to values")
    fields = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; options: {', '.join(fields)}"
            raise ValueError(f"{path}: unknown option {key!r} for {cls.__name__}{hint}")
    return data


def parse_config(cls: type[T], argv: list[str], prog: str) -> T:
    """`cls` from `--config FILE.yaml` and `--field value` flags, as TRL's TrlParser does."""
    from transformers import HfArgumentParser

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    parser = HfArgumentParser(cls, prog=prog)
    parser.add_argument("--config", help="YAML file with option values (flags override it)")
    if known.config:
        parser.set_defaults(**load_yaml(known.config, cls))
    namespace = parser.parse_args(argv)
    del namespace.config
    return cls(**vars(namespace))
