"""Ctrl-C, SIGTERM and SIGHUP: every command stops on the first one, at any point, with one line, 128 + the signal
number (130, 143, 129) and no partial output; a second one cannot cut the clean-up short.

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

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # each stops a command like Ctrl-C (a closed terminal too)
_received: int | None = None  # the first of them since `install`, until `interruptible` has reported it


class Interrupted(KeyboardInterrupt):
    """One of SIGNALS, raised in the main thread like Ctrl-C's KeyboardInterrupt; `signum` says which."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signum)
        self.signum = signum


def _ignore(signums: tuple[int, ...]) -> None:
    for signum in signums:
        signal.signal(signum, signal.SIG_IGN)


def _handler(signum: int, frame: object) -> None:
    global _received
    _received = _received or signum
    _ignore(SIGNALS)  # once: a second signal must not cut the clean-up (temp files, the app's folder) short
    raise Interrupted(signum)


def check() -> None:
    """Raise the recorded signal's exception again, if one arrived (see the module docstring)."""
    if _received is not None:
        raise Interrupted(_received)


def _unraisable(hook: Callable) -> Callable:
    def unraisable(info) -> None:
        if isinstance(info.exc_value, KeyboardInterrupt) and _received is not None:
            return  # our signal, swallowed where it landed: recorded, and `check` raises it again
        hook(info)

    unraisable.wrapped = hook  # type: ignore[attr-defined]
    return unraisable


def install() -> Callable[[], None]:
    """Handle SIGNALS as above (main thread only; elsewhere nothing changes); returns what restores the previous
    handlers."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {s: signal.signal(s, _handler) for s in SIGNALS}
    hook = sys.unraisablehook
    sys.unraisablehook = _unraisable(getattr(hook, "wrapped", hook))

    def restore() -> None:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        sys.unraisablehook = hook

    return restore


def interruptible(
    prog: str,
    main: Callable[[], int],
    *,
    exiting: bool = False,
    line: str = "interrupted ({signal}); no partial output was left",
) -> int:
    """`main()`; a signal of SIGNALS stops it with an exception (every `finally` runs: temp files are removed),
    prints `prog: line` ({signal}: its name) and returns 128 + its number (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP),
    also when the signal landed where it was swallowed.

    exiting: the process ends when this returns (a console script): afterwards the signals are ignored instead of
    the previous handlers restored, since one while the interpreter shuts down could only kill it with no line (or
    a traceback) after its work is complete.
    """
    global _received
    restore = install()
    if exiting:
        restore = functools.partial(_ignore, SIGNALS)
    try:
        code = main()
        check()
        return code
    except KeyboardInterrupt as err:
        signum = _received or getattr(err, "signum", signal.SIGINT)
        print(f"{prog}: {line.format(signal=signal.Signals(signum).name)}", file=sys.stderr)
        _received = None  # reported: an enclosing `interruptible` does not report it again
        return 128 + signum
    finally:
        restore()
