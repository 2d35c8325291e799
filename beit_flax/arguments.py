"""What `beit-depth`'s commands and the app share, below both: the program's name and exit codes, the argument
types (positive ints, net size, fps, field of view), one-line reports and the progress bar."""

from __future__ import annotations

import argparse
import math
import re
import sys

from beit_flax.transforms import MIN_NET_SIZE

PROG = "beit-depth"
EXIT_FAILED_INPUTS = 1  # some inputs could not be processed; the others were
EXIT_USAGE = 2  # bad arguments, weights or output paths: nothing was processed
EXIT_CANNOT_WRITE = 3  # an output (a file, the weights cache) that cannot be written or is refused


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def net_size_arg(text: str) -> int:
    value = positive_int(text)  # the bound (--max-pixels) is checked once both flags are known
    if value < MIN_NET_SIZE:
        raise argparse.ArgumentTypeError(f"net size must be an int >= {MIN_NET_SIZE}, got {value}")
    return value


MAX_FPS = 1000.0  # beyond any camera or player: a larger value is a typo


def fps_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected frames per second, got {text!r}") from None
    if not (math.isfinite(value) and 0 < value <= MAX_FPS):
        raise argparse.ArgumentTypeError(f"expected frames per second in (0, {MAX_FPS:g}], got {text}")
    return value


def fov_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a field of view in degrees, got {text!r}") from None
    if not (math.isfinite(value) and 0 < value < 180):
        raise argparse.ArgumentTypeError(f"expected a horizontal field of view in (0, 180) degrees, got {text}")
    return value


def weights_help() -> str:
    """The help of every `--weights W` (predict, video, export): every known name of every family, from the one list
    `models.registry.releases` (a family added there shows up here), and the other things W may be."""
    from beit_flax.models import registry

    return (
        f"a known name ({', '.join(registry.releases())}: downloaded, converted and cached once), a hub repo id "
        "(Intel/dpt-beit-large-512[@revision]), a PyTorch checkpoint or transformers folder (converted once, "
        "cached), or a beit-flax .msgpack"
    )


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def one_line(text: str) -> str:
    """`text` with control characters escaped as Python writes them (a file named "broken\\nname.png" stays on one
    line); other characters, accents included, as they are."""
    return _CONTROL.sub(lambda m: repr(m[0])[1:-1], str(text))


def report(message: str) -> None:
    """One line on stderr that does not break the progress bar (control characters escaped: `one_line`)."""
    from tqdm import tqdm

    tqdm.write(f"{PROG}: {one_line(message)}", file=sys.stderr)


def progress(total: int | None, unit: str, quiet: bool):
    from tqdm import tqdm

    # disable=None: no bar when stderr is not a terminal (logs, CI); the summary line is printed either way
    return tqdm(total=total, unit=unit, file=sys.stderr, disable=True if quiet else None, dynamic_ncols=True)
