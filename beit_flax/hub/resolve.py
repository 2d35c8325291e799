"""One resolver for `--weights` and `beit_flax.load`: a weights file, a checkpoint, a known name or a hub repo id
-> the path of a beit-flax .msgpack, downloading, verifying, converting and caching on the way (see beit_flax.hub).
"""

from __future__ import annotations

import hashlib
import os
import stat
import sys
from pathlib import Path

from beit_flax.files import first_line
from beit_flax.hub import cache
from beit_flax.hub.download import DigestError, DownloadError, NoNetworkError, download, sha256_file
from beit_flax.hub.sources import KNOWN, Known, download_url, known_repo, parse_repo_id

OFFLINE_ENVS = ("BEIT_FLAX_OFFLINE", "HF_HUB_OFFLINE")  # either one set: no network at all
_TRUE = {"1", "on", "yes", "true"}


class NotCachedError(DownloadError):
    """Offline (or no network) and not in the cache; the message says what to download, from where, to where."""


def is_offline() -> bool:
    return any(os.environ.get(name, "").strip().lower() in _TRUE for name in OFFLINE_ENVS)


def _say(message: str, progress: bool) -> None:
    if progress:
        print(f"beit-flax: {message}", file=sys.stderr, flush=True)


def _checkpoint_kind(path: Path) -> str | None:
    """What `path` is if it is a checkpoint to convert ("a PyTorch checkpoint", ...), else None (a weights file, or
    anything `weights.load` refuses with its own message). Non-regular files are never opened (a FIFO blocks)."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    if stat.S_ISDIR(info.st_mode):
        found = any((path / n).is_file() for n in ("model.safetensors", "pytorch_model.bin"))
        return "a transformers checkpoint folder" if found else None
    if not stat.S_ISREG(info.st_mode):
        return None
    try:
        with open(path, "rb") as file:
            head = file.read(16)
    except OSError:
        return None  # weights.load says why it cannot be read
    if head.startswith(b"PK\x03\x04"):
        return "a PyTorch checkpoint (zip)"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):  # pickle PROTO; msgpack maps differ
        return "a pickled PyTorch checkpoint"
    header = int.from_bytes(head[:8], "little") if len(head) >= 8 else 0
    if 0 < header <= info.st_size - 8 and head[8:9] == b"{":
        return "a safetensors checkpoint"
    return None


def _digest(files: list[Path]) -> str:
    """sha256 of one file, or of the files' digests in order (a folder: weights + config.json)."""
    digests = [sha256_file(f) for f in files]
    return digests[0] if len(digests) == 1 else hashlib.sha256("".join(digests).encode()).hexdigest()


def _convert(checkpoint: Path, out: Path, progress: bool, promise: Known | None = None) -> None:
    """beit_flax.convert.cli.convert (it dispatches on the checkpoint's kind), written atomically to `out`; when a
    known name is resolved, only if the result is the model the name promises (`Known.check`)."""
    from beit_flax.convert.cli import convert

    check = None if promise is None else promise.check
    _say(f"{convert(str(checkpoint), str(out), check=check)} (once: cached)", progress)


def _local(path: Path, kind: str, folder: Path, progress: bool) -> Path:
    """A checkpoint on disk: its cached conversion, by (path, size, mtime, ctime, device, inode) without reading it,
    else by digest. ctime and the inode change whenever a file is written or replaced, even by `cp -p`, which keeps
    size and mtime: a stamp that still matches is the same content."""
    from beit_flax.convert.checkpoint import checkpoint_files

    files = checkpoint_files(path)
    source = f"file:{path.resolve()}"
    stamp = [[s.st_size, s.st_mtime_ns, s.st_ctime_ns, s.st_dev, s.st_ino] for s in map(os.stat, files)]
    if (hit := cache.find(folder, source=source, stamp=stamp)) is not None:
        return hit.weights
    # no lock: two processes converting one local file at once only duplicate work (every write is atomic), and a
    # checkpoint that does not convert leaves nothing in the cache
    digest = _digest(files)
    if (hit := cache.find(folder, sha256=digest)) is not None:
        return hit.weights
    out = cache.target(folder, path.stem if path.is_file() else path.name, digest)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _convert(path, out, progress)
    except ValueError as err:  # ConversionError, params that do not fit: the old advice, with the reason
        raise ValueError(
            f"{path}: {kind}, not a beit-flax weights file, and converting it failed "
            f"({first_line(err)}); convert it by hand to see why: convert_weights {path} "
            f"{path.stem}.msgpack"
        ) from None
    return cache.record(out, name=str(path), source=source, sha256=digest, checkpoint=str(path), stamp=stamp).weights


def _not_cached(known: Known, folder: Path, why: str) -> NotCachedError:
    place = folder / "downloads" / known.filename
    return NotCachedError(
        f"{known.name} is not cached and {why}: download {known.url} (or the hub repo {known.repo}) on a machine "
        f"with internet and put it at {place} (used as is next time), or run convert_weights {known.filename} "
        f"{known.name}.msgpack and pass --weights {known.name}.msgpack"
    )


def _release(known: Known, folder: Path, progress: bool) -> Path:
    """A known name: its cached conversion, else download (resumable), verify, convert, cache."""
    if (hit := cache.find(folder, source=known.url)) is not None:
        return hit.weights
    downloads = folder / "downloads"
    final = downloads / known.filename
    if not final.is_file() and is_offline():
        raise _not_cached(known, folder, "this machine is offline (BEIT_FLAX_OFFLINE / HF_HUB_OFFLINE)")
    downloads.mkdir(parents=True, exist_ok=True)
    with cache.locked(folder, known.url):
        if (hit := cache.find(folder, source=known.url)) is not None:  # another process did it while we waited
            return hit.weights
        if final.is_file():  # a verified download whose conversion was cleared, or a file put there by hand
            digest = sha256_file(final)
            if known.sha256 and digest != known.sha256:
                final.unlink()
                raise DigestError(f"{final}: sha256 {digest} does not match the published {known.sha256}; deleted")
            checkpoint = final
        else:
            checkpoint = downloads / f".{final.stem}.part{final.suffix}"  # the converter reads the suffix
            url = download_url(known.url)
            _say(f"downloading {url}", progress)
            try:
                digest = download(url, checkpoint, max_bytes=known.max_bytes, sha256=known.sha256, progress=progress)
            except NoNetworkError as err:
                raise _not_cached(known, folder, f"the download failed ({err})") from None
        out = cache.target(folder, known.name, digest)
        try:
            _convert(checkpoint, out, progress, known)  # the tensor accounting, then the name's architecture
        except ValueError as err:
            checkpoint.unlink(missing_ok=True)
            what = final if checkpoint == final else f"the download of {known.url}"
            raise ValueError(f"{what}: not a valid {known.name} checkpoint ({first_line(err)}); deleted it") from None
        if checkpoint != final:
            from beit_flax.files import replace

            replace(checkpoint, final)  # verified: only now under its final name
        return cache.record(out, name=known.name, source=known.url, sha256=digest, checkpoint=str(final)).weights


def _hub(repo: str, revision: str | None, folder: Path, hub_cache: str | os.PathLike | None, progress: bool) -> Path:
    """A hub repo: config.json + model.safetensors (else pytorch_model.bin) through huggingface_hub (its cache,
    HF_HOME, HF_HUB_OFFLINE, HF_ENDPOINT, tokens), the weights' sha256 checked against the hub's (the LFS etag)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import EntryNotFoundError, LocalEntryNotFoundError

    source = f"hub:{repo}@{revision or 'main'}"
    options = dict(repo_id=repo, revision=revision, cache_dir=hub_cache, local_files_only=is_offline())
    try:
        config = Path(hf_hub_download(filename="config.json", **options))
        weights = None
        for name in ("model.safetensors", "pytorch_model.bin"):
            try:
                weights = Path(hf_hub_download(filename=name, **options))
                break
            except EntryNotFoundError:  # LocalEntryNotFoundError too: this one is not cached, try the other
                continue
        if weights is None:
            raise LocalEntryNotFoundError(f"{repo}: no model.safetensors or pytorch_model.bin")
    except (LocalEntryNotFoundError, ConnectionError) as err:  # offline / no network, and not in the hub cache
        if (hit := cache.find(folder, source=source)) is not None:
            return hit.weights
        raise NotCachedError(
            f"{repo} is not in the Hugging Face cache and cannot be downloaded ({first_line(err)}): on a machine with "
            f"internet run `hf download {repo} config.json model.safetensors` and copy its cache folder "
            f"models--{repo.replace('/', '--')} into {hub_cache or '$HF_HOME/hub'}, or run "
            f"convert_weights <that folder> {repo.split('/')[-1]}.msgpack"
        ) from None
    except OSError as err:  # HTTP errors: missing or gated repo, bad revision, server errors
        raise DownloadError(f"{repo}: {first_line(err)}") from None
    blob, config_blob = weights.resolve(), config.resolve()
    published = blob.name if len(blob.name) == 64 and all(c in "0123456789abcdef" for c in blob.name) else None
    key = hashlib.sha256(f"{blob.name}:{config_blob.name}".encode()).hexdigest()
    if (hit := cache.find(folder, sha256=key)) is not None:
        return hit.weights
    with cache.locked(folder, source):
        if (hit := cache.find(folder, sha256=key)) is not None:
            return hit.weights
        digest = sha256_file(blob)
        if published and digest != published:
            for path in (weights, blob):  # the next run downloads it again
                path.unlink(missing_ok=True)
            raise DigestError(
                f"{repo}: {weights.name} has sha256 {digest}, the hub publishes {published}; "
                f"deleted it from the Hugging Face cache"
            )
        out = cache.target(folder, repo, key)
        try:
            _convert(weights.parent, out, progress, known_repo(repo))
        except ValueError as err:
            raise ValueError(f"{repo}: cannot convert its checkpoint ({first_line(err)})") from None
        return cache.record(
            out,
            name=repo if revision is None else f"{repo}@{revision}",
            source=source,
            sha256=key,
            weights_sha256=digest,
            checkpoint=str(weights.parent),
        ).weights


def resolve(
    weights: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None = None,
    hub_cache: str | os.PathLike | None = None,
    progress: bool = True,
) -> Path:
    """The path of a beit-flax .msgpack for `weights`:

    - a beit-flax weights file (any name) -> itself, as is; so is anything that is not a checkpoint (a missing
      file, a FIFO, a folder without weights...): `weights.load` then says what is wrong with it;
    - a PyTorch / safetensors checkpoint or a transformers folder -> converted once, cached by its sha256;
    - a known name (`KNOWN`: dpt_beit_large_512, ...) -> its release file, downloaded, verified, converted, cached;
    - a hub repo id (`Intel/dpt-beit-large-512`, `owner/name@revision`) -> through huggingface_hub, converted, cached.

    cache_dir: the converted-weights cache (default `cache.weights_dir()`); hub_cache: huggingface_hub's cache_dir
    (default: its own, $HF_HOME/hub). progress: status lines and download bars on stderr.
    Raises ValueError (unknown name, a checkpoint that does not convert), DownloadError (an OSError: network, HTTP,
    digest mismatch, NotCachedError when offline), OSError (the cache cannot be written).
    """
    text = os.fspath(weights)
    path = Path(text).expanduser()
    folder = cache.weights_dir(cache_dir)
    if os.path.lexists(path):
        kind = _checkpoint_kind(path)
        return path if kind is None else _local(path, kind, folder, progress)
    if text in KNOWN:
        return _release(KNOWN[text], folder, progress)
    if (repo := parse_repo_id(text)) is not None:
        return _hub(*repo, folder, hub_cache, progress)
    if "/" not in text and os.sep not in text and not path.suffix:
        raise ValueError(f"{text}: no such file, known name ({', '.join(KNOWN)}) or hub repo id (owner/name)")
    return path


def load(weights: str | os.PathLike, dtype: str = "float32", **options):
    """`beit_flax.weights.load(resolve(weights, **options), dtype)`: `(model, params)` from a weights file, a
    checkpoint, a known name or a hub repo id (see `resolve`)."""
    from beit_flax.weights import load as load_file

    return load_file(resolve(weights, **options), dtype=dtype)
