"""Value types shared by every config section: durations, sizes, and the strict, frozen model base."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, WithJsonSchema

__all__ = ["ByteSize", "ConfigModel", "Duration", "parse_duration", "parse_size"]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_SIZE = re.compile(r"^\s*(\d+)\s*(B|KiB|MiB|GiB|KB|MB|GB)?\s*$")
_UNIT_BYTES = {
    None: 1, "B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "KB": 1000, "MB": 1000**2, "GB": 1000**3,
}


def parse_duration(value: object) -> float:
    """Turn ``250ms``, ``2s``, ``1.5m``, ``1h`` or a bare number of seconds into seconds."""
    if isinstance(value, bool):
        raise ValueError("must be a duration such as 250ms, 2s or 1m")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    else:
        raise ValueError(f"must be a duration such as 250ms, 2s or 1m (got {value!r})")
    if seconds < 0:
        raise ValueError(f"must not be negative (got {value!r})")
    return seconds


def parse_size(value: object) -> int:
    """Turn ``4MiB``, ``512KiB`` or a bare number of bytes into bytes."""
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    elif isinstance(value, str) and (match := _SIZE.match(value)):
        size = int(match.group(1)) * _UNIT_BYTES[match.group(2)]
    else:
        raise ValueError(f"must be a size such as 4MiB or 65536 (got {value!r})")
    if size <= 0:
        raise ValueError(f"must be > 0 (got {value!r})")
    return size


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*(ms|s|m|h)?\s*$"},
                {"type": "number", "minimum": 0},
            ],
            "description": "A duration: 250ms, 2s, 1m, 1h, or a number of seconds.",
        }
    ),
]
ByteSize = Annotated[
    int,
    BeforeValidator(parse_size),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "pattern": r"^\s*\d+\s*(B|KiB|MiB|GiB|KB|MB|GB)?\s*$"},
                {"type": "integer", "minimum": 1},
            ],
            "description": "A size: 4MiB, 512KiB, or a number of bytes.",
        }
    ),
]


class ConfigModel(BaseModel):
    """Base of every config section: unknown keys are errors, values are frozen once validated."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)
