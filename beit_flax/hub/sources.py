"""The known names: each released model of each family (`Family.releases`) with its official sources (release file,
hub repo).

A name resolves to its release file (the original MiDaS / ZoeDepth `.pt`); the hub repo is the same model converted
by Intel for transformers, used when the repo id itself is given (`Intel/dpt-beit-large-512[@revision]`).
$BEIT_FLAX_RELEASE_MIRROR (a base URL) replaces the host of release URLs (`RELEASE_HOSTS`: GitHub's for MiDaS and
ZoeDepth, Hugging Face's for Depth Anything), keeping the path: a local mirror, or the tests.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Iterator, Mapping, MutableMapping
from typing import Any

from beit_flax.files import MAX_CHECKPOINT_BYTES
from beit_flax.models import registry

MIRROR_ENV = "BEIT_FLAX_RELEASE_MIRROR"
# A release file holds its float32 parameters, what releases carry beside them (classifier heads, fc_norm) and
# buffers (BEiT's relative_position_index: 0.2 GB in dpt_beit_large_512) in a container: a known name's download is
# bounded by twice its parameters' bytes plus this slack; a name without an architecture by any checkpoint's bound
RELEASE_SLACK_BYTES = 2**30
RELEASE_HOSTS = ("https://github.com", "https://huggingface.co")


@dataclasses.dataclass(frozen=True)
class Known:
    """A released model: `url` its release file, `repo` its hub repo, `sha256` where the source publishes one,
    `family` the model family that reads it (`models.registry`), `licence` its weights' licence, `config` the
    architecture the name promises (the family preset `Release.preset_name`; None: a name added without one)."""

    name: str
    url: str
    repo: str
    sha256: str | None = None  # MiDaS and ZoeDepth publish none: the converter's tensor accounting verifies them
    family: str = registry.DEFAULT
    licence: str = "MIT"  # the model card's; stated in beit-depth's summary line
    config: Any = None

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]

    @property
    def max_bytes(self) -> int:
        """The most its release file may hold (a download past it is refused)."""
        if self.config is None:
            return MAX_CHECKPOINT_BYTES
        shapes = registry.FAMILIES[self.family].param_shapes(self.config)
        return 2 * 4 * sum(math.prod(s) for s in shapes.values()) + RELEASE_SLACK_BYTES

    def check(self, config: Any, params: Mapping[str, Any]) -> None:
        """Refuse a conversion (`config`, nested `params`) that is not the model this name promises: another family,
        or any parameter of another shape (a 4-block tiny model served as `dpt_beit_large_512`). ValueError naming
        both. Shapes are the architecture: the released key lists match the presets' (tests/test_torch_reference.py).
        """
        if self.config is None:
            return
        family = registry.FAMILIES[self.family]
        want = family.param_shapes(self.config)
        got = {"/".join(path): tuple(leaf.shape) for path, leaf in _flat(params)}
        if registry.of_config(config) is family and got == want:
            return
        differs = next((p for p in sorted(want.keys() | got.keys()) if want.get(p) != got.get(p)), "")
        size = [sum(math.prod(s) for s in shapes.values()) / 1e6 for shapes in (want, got)]
        raise ValueError(
            f"not the model {self.name} names: that is a {family.name} model of {size[0]:.1f}M parameters, this "
            f"file is a {registry.of_config(config).name} model of {size[1]:.1f}M (first difference: {differs} "
            f"{want.get(differs, 'absent')} vs {got.get(differs, 'absent')})"
        )


class KnownNames(MutableMapping[str, Known]):
    """{name: Known}: every family's releases (`Family.releases`, read when asked, so that a family registered later
    is included), plus names set here (a mirror's own, the tests')."""

    def __init__(self) -> None:
        self.added: dict[str, Known] = {}

    def _all(self) -> dict[str, Known]:
        from_families = {
            name: Known(name, r.url, r.repo, r.sha256, family.name, r.licence, family.presets[r.preset_name])
            for name, (family, r) in registry.releases().items()
        }
        return from_families | self.added

    def __getitem__(self, name: str) -> Known:
        return self._all()[name]

    def __setitem__(self, name: str, known: Known) -> None:
        self.added[name] = known

    def __delitem__(self, name: str) -> None:
        del self.added[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())


KNOWN = KnownNames()


def _flat(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    for key, value in tree.items():
        if isinstance(value, Mapping):
            yield from _flat(value, (*prefix, key))
        else:
            yield (*prefix, key), value


def known_repo(repo: str) -> Known | None:
    """The known name whose hub repo is `repo` (its promise applies to the repo too), else None."""
    return next((known for known in KNOWN.values() if known.repo == repo), None)


# owner/name[@revision], as the hub spells them; a weights-file suffix means a path (`models/w.msgpack`), not a repo
REPO_ID = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]*[\w-])(?:@(?P<revision>[\w./-]+))?")
FILE_SUFFIXES = (".msgpack", ".pt", ".pth", ".bin", ".safetensors", ".ckpt")


def download_url(url: str) -> str:
    """`url` with its host (one of `RELEASE_HOSTS`) replaced by $BEIT_FLAX_RELEASE_MIRROR when that is set."""
    mirror = os.environ.get(MIRROR_ENV, "").strip().rstrip("/")
    host = next((h for h in RELEASE_HOSTS if url.startswith(h + "/")), None)
    return mirror + url[len(host) :] if mirror and host else url


def parse_repo_id(text: str) -> tuple[str, str | None] | None:
    """(repo id, revision or None) if `text` reads as a hub repo id, else None."""
    match = REPO_ID.fullmatch(text)
    if match is None or text.lower().endswith(FILE_SUFFIXES):
        return None
    return match["repo"], match["revision"]
