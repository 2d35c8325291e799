"""The known names: one table mapping each released model to its official sources (release file, hub repo).

A name resolves to its release file (the original MiDaS / ZoeDepth `.pt`); the hub repo is the same model converted
by Intel for transformers, used when the repo id itself is given (`Intel/dpt-beit-large-512[@revision]`).
$BEIT_FLAX_RELEASE_MIRROR (a base URL) replaces `https://github.com` in release URLs: a local mirror, or the tests.
"""

from __future__ import annotations

import dataclasses
import os
import re

MIRROR_ENV = "BEIT_FLAX_RELEASE_MIRROR"
GITHUB = "https://github.com"
_MIDAS = f"{GITHUB}/isl-org/MiDaS/releases/download/v3_1/"
_ZOE = f"{GITHUB}/isl-org/ZoeDepth/releases/download/v1.0/"
SUPPORTED_FAMILIES = {"dpt", "zoedepth"}  # the families beit_flax.convert.cli.convert dispatches to a converter


@dataclasses.dataclass(frozen=True)
class Known:
    """A released model: `url` its release file, `repo` its hub repo, `sha256` where the source publishes one."""

    name: str
    url: str
    repo: str
    sha256: str | None = None  # MiDaS and ZoeDepth publish none: the converter's tensor accounting verifies them
    family: str = "dpt"  # which converter and model it needs

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


KNOWN: dict[str, Known] = {
    k.name: k
    for k in (
        Known("dpt_beit_large_512", _MIDAS + "dpt_beit_large_512.pt", "Intel/dpt-beit-large-512"),
        Known("dpt_beit_large_384", _MIDAS + "dpt_beit_large_384.pt", "Intel/dpt-beit-large-384"),
        Known("dpt_beit_base_384", _MIDAS + "dpt_beit_base_384.pt", "Intel/dpt-beit-base-384"),
        Known("zoedepth_nyu", _ZOE + "ZoeD_M12_N.pt", "Intel/zoedepth-nyu", family="zoedepth"),
        Known("zoedepth_kitti", _ZOE + "ZoeD_M12_K.pt", "Intel/zoedepth-kitti", family="zoedepth"),
        Known("zoedepth_nyu_kitti", _ZOE + "ZoeD_M12_NK.pt", "Intel/zoedepth-nyu-kitti", family="zoedepth"),
    )
}

# owner/name[@revision], as the hub spells them; a weights-file suffix means a path (`models/w.msgpack`), not a repo
REPO_ID = re.compile(r"(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]*[\w-])(?:@(?P<revision>[\w./-]+))?")
FILE_SUFFIXES = (".msgpack", ".pt", ".pth", ".bin", ".safetensors", ".ckpt")


def download_url(url: str) -> str:
    """`url` with https://github.com replaced by $BEIT_FLAX_RELEASE_MIRROR when that is set."""
    mirror = os.environ.get(MIRROR_ENV, "").strip().rstrip("/")
    return mirror + url[len(GITHUB) :] if mirror and url.startswith(GITHUB + "/") else url


def parse_repo_id(text: str) -> tuple[str, str | None] | None:
    """(repo id, revision or None) if `text` reads as a hub repo id, else None."""
    match = REPO_ID.fullmatch(text)
    if match is None or text.lower().endswith(FILE_SUFFIXES):
        return None
    return match["repo"], match["revision"]
