"""The checks every family's config runs on its integer fields when it is made (from a weights file, a checkpoint,
config.json or code), so that a small file cannot make us trace or allocate without end."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def is_int(value: Any) -> bool:
    """An int that is not a bool (JSON's true would pass as 1)."""
    return isinstance(value, int) and not isinstance(value, bool)


def size_problems(sizes: Mapping[str, tuple[Any, int]]) -> list[str]:
    """{field name: (value, limit)} -> a message for each value that is not a positive int or is over its limit."""
    problems = []
    for name, (value, limit) in sizes.items():
        if not is_int(value) or value < 1:
            problems.append(f"{name} must be a positive int, got {value!r}")
        elif value > limit:
            problems.append(f"{name} {value} is over the limit of {limit}")
    return problems
