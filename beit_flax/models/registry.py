"""The registry of model families: one line per family (`FAMILIES`), and the questions the application layer asks
of it (which family a weights file, a config, a module or a checkpoint belongs to; which names `--weights` knows).

A family is added with one line here (or, for a family that lives outside this package, `register(FAMILY)` at
import time: the tests' toy family does that). Nothing else outside `models/` names a family.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from beit_flax.models.depth_anything.family import FAMILY as DEPTH_ANYTHING
from beit_flax.models.dpt.family import FAMILY as DPT
from beit_flax.models.family import Family, Release
from beit_flax.models.zoedepth.family import FAMILY as ZOEDEPTH

FAMILIES: dict[str, Family] = {family.name: family for family in (DPT, ZOEDEPTH, DEPTH_ANYTHING)}
DEFAULT = DPT.name  # weights files written before the family was recorded hold a DPT


def register(family: Family) -> Family:
    """Add `family` (ValueError if its name, or one of its release names, is taken); returns it."""
    if family.name in FAMILIES:
        raise ValueError(f"a model family named {family.name!r} is registered already")
    taken = {r.name for r in family.releases} & set(releases())
    if taken:
        raise ValueError(f"release names {sorted(taken)} are taken by another family")
    FAMILIES[family.name] = family
    return family


def unregister(name: str) -> None:
    """Remove a family added with `register` (tests)."""
    FAMILIES.pop(name, None)


def named(name: str) -> Family:
    """The family called `name`; ValueError naming the known ones otherwise."""
    if not isinstance(name, str) or name not in FAMILIES:
        raise ValueError(f"unknown model family {name!r} (this beit-flax knows {sorted(FAMILIES)})")
    return FAMILIES[name]


def of_config(config: Any) -> Family:
    """The family whose config class `config` is an instance of; TypeError otherwise."""
    for family in FAMILIES.values():
        if isinstance(config, family.config_class):
            return family
    names = ", ".join(f.config_class.__name__ for f in FAMILIES.values())
    raise TypeError(f"config must be one of {names}, got {type(config).__name__}")


def of_model(model: Any) -> Family:
    """The family of a linen module built by one (`family.build`, `beit_flax.load`); TypeError otherwise."""
    for family in FAMILIES.values():
        if isinstance(model, family.module):
            return family
    names = ", ".join(f.module.__name__ for f in FAMILIES.values())
    raise TypeError(f"model must be a beit_flax model ({names}; from beit_flax.load), got {type(model).__name__}")


def detect(shapes: Mapping[str, tuple[int, ...]]) -> tuple[Family, str] | None:
    """(family, layout) of the checkpoint with these tensor names and shapes, or None: the family whose key table
    claims it; where two do, the one that extends the other (a ZoeDepth file holds a whole DPT core)."""
    claims = {f.name: (f, layout) for f in FAMILIES.values() if (layout := f.checkpoints.detect(shapes)) is not None}
    for family, _ in list(claims.values()):
        if family.extends in claims and len(claims) > 1:
            del claims[family.extends]
    return next(iter(claims.values()), None) if len(claims) == 1 else None


def unsupported(shapes: Mapping[str, tuple[int, ...]]) -> str:
    """Why no family reads a checkpoint: a family's own explanation (a relative it does not support), else the
    list of what this beit-flax reads."""
    for family in FAMILIES.values():
        if (why := family.checkpoints.explain(shapes)) is not None:
            return why
    what = "; ".join(family.checkpoints.description for family in FAMILIES.values())
    sample = ", ".join(sorted(shapes)[:5]) or "none"
    return f"not a checkpoint of a known model family ({what}); first keys: {sample}"


def releases() -> dict[str, tuple[Family, Release]]:
    """Every name `--weights` knows: {name: (family, release)}."""
    return {r.name: (f, r) for f in FAMILIES.values() for r in f.releases}


def presets() -> Iterator[tuple[Family, str, Any]]:
    """(family, preset name, config) of every preset."""
    for family in FAMILIES.values():
        for name, config in family.presets.items():
            yield family, name, config
