"""Ctrl-C and SIGTERM: every command stops on the first one, at any point, with one line, 128 + the signal number
(130, 143) and no partial output.

Python runs a signal handler between two bytecodes of the main thread, and the exception it raises propagates from
there, except where the interpreter swallows it: in a garbage-collection callback (jax's `_xla_gc_callback`), a
`__del__` or a weakref callback ("Exception ignored in ..."), after which the work would go on and exit 0. So the
handler also records the signal, and `check()` raises it again where work is committed (`files.replace`, so no output
is written after it) or repeated (each tensor a converter reads, each batch the devices run); `interruptible` reports
it even when its `main` returned. Standard library only: the console scripts (`beit_flax.entry`) install it before
anything heavy is imported.
"""

from __future__ import annotations

import functools
import signal
import sys
import threading
from collections.abc import Callable

_received: int | None = None  # the first signal since `install`, until `interruptible` has reported it


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C's KeyboardInterrupt."""

    signum = signal.SIGTERM


def _exception(signum: int) -> KeyboardInterrupt:
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def _handler(signum: int, frame: object) -> None:
    global _received
    _received = _received or signum
    if signum == signal.SIGTERM:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the cleanup short
    raise _exception(signum)


def _ignore(signums: tuple[int, ...]) -> None:
    for signum in signums:
        signal.signal(signum, signal.SIG_IGN)


def check() -> None:
    """Raise the recorded signal's exception again, if one arrived (see the module docstring)."""
    if _received is not None:
        raise _exception(_received)


def _unraisable(hook: Callable) -> Callable:
    def unraisable(info) -> None:
        if isinstance(info.exc_value, KeyboardInterrupt) and _received is not None:
            return  # our signal, swallowed where it landed: recorded, and `check` raises it again
        hook(info)

    unraisable.wrapped = hook  # type: ignore[attr-defined]
    return unraisable


def install() -> Callable[[], None]:
    """Handle SIGINT and SIGTERM as above (main thread only; elsewhere nothing changes); returns what restores the
    previous handlers."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {s: signal.signal(s, _handler) for s in (signal.SIGINT, signal.SIGTERM)}
    hook = sys.unraisablehook
    sys.unraisablehook = _unraisable(getattr(hook, "wrapped", hook))

    def restore() -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        sys.unraisablehook = hook

    return restore


def interruptible(prog: str, main: Callable[[], int], *, exiting: bool = False) -> int:
    """`main()`; Ctrl-C or SIGTERM stop it with an exception (every `finally` runs: temp files are removed), print
    one line and return 128 + the signal number (130, 143), also when the signal landed where it was swallowed.

    exiting: the process ends when this returns (a console script): afterwards both signals are ignored instead of
    the previous handlers restored, since a signal while the interpreter shuts down could only kill it with no line
    (or a traceback) after its work is complete.
    """
    global _received
    restore = install()
    if exiting:
        restore = functools.partial(_ignore, (signal.SIGINT, signal.SIGTERM))
    try:
        code = main()
        check()
        return code
    except KeyboardInterrupt as err:
        signum = _received or getattr(err, "signum", signal.SIGINT)
        print(f"{prog}: interrupted ({signal.Signals(signum).name}); no partial output was left", file=sys.stderr)
        _received = None  # reported: an enclosing `interruptible` does not report it again
        return 128 + signum
    finally:
        restore()
