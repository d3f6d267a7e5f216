"""Typed configs: dataclasses filled from a YAML file and command-line flags (flags win)."""
from __future__ import annotations

import argparse
import dataclasses
import difflib
from pathlib import Path
from typing import TypeVar

import yaml

T = TypeVar("T")


def check_options(data, cls: type, source: str) -> dict:
    """Check that `data` maps field names of `cls` to values.

    Raises:
        ValueError: not a mapping, or an unknown key (naming `source`, with the closest field suggested).
    """
    if not isinstance(data, dict):
        raise ValueError(f"{source}: expected a mapping of option names to values")
    fields = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; options: {', '.join(fields)}"
            raise ValueError(f"{source}: unknown option {key!r} for {cls.__name__}{hint}")
    return data


def parse_config(cls: type[T], argv: list[str], prog: str, defaults: dict | None = None) -> T:
    """`cls` from `defaults`, then `--config FILE.yaml`, then `--field value` flags (each wins over the
    one before), as TRL's TrlParser does."""
    from transformers import HfArgumentParser

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    parser = HfArgumentParser(cls, prog=prog)
    parser.add_argument("--config", help="YAML file with option values (flags override it)")
    parser.set_defaults(**check_options(defaults or {}, cls, prog))
    if known.config:
        data = yaml.safe_load(Path(known.config).read_text()) or {}
        parser.set_defaults(**check_options(data, cls, known.config))
    namespace = parser.parse_args(argv)
    del namespace.config
    return cls(**vars(namespace))
