"""Ctrl-C and SIGTERM (beit_flax.interrupts): one line, 130 / 143, nothing written, wherever the signal lands, in a
garbage-collection callback or a `__del__` (where Python swallows the exception), and in the console scripts from
their first import on."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from predict_helpers import tiny_files

from beit_flax import files, interrupts


def line(prog: str, signum: int) -> str:
    return f"{prog}: interrupted ({signal.Signals(signum).name}); no partial output was left"


def test_sigterm_and_ctrl_c_end_a_command_with_one_line(tmp_path, capsys):
    """SIGTERM and SIGHUP are raised in the main thread like Ctrl-C: every `finally` runs (the temp file goes), one
    line on stderr, 143 / 130 / 129, and the previous handlers are back afterwards."""
    before = [signal.getsignal(s) for s in interrupts.SIGNALS]

    def main(signum: int) -> int:
        with files.temp_beside(tmp_path / "out.bin") as temp:
            temp.write_bytes(b"partial")
            os.kill(os.getpid(), signum)
            threading.Event().wait(10)  # the handler interrupts this
        return 0

    for signum, code in ((signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGHUP, 129)):
        assert interrupts.interruptible("prog", lambda s=signum: main(s)) == code
        assert capsys.readouterr().err.strip().splitlines() == [line("prog", signum)]
        assert list(tmp_path.iterdir()) == []
    assert [signal.getsignal(s) for s in interrupts.SIGNALS] == before
    assert interrupts.interruptible("prog", lambda: 7) == 7


class _SignalInDel:
    def __init__(self, signum: int) -> None:
        self.signum = signum

    def __del__(self) -> None:
        os.kill(os.getpid(), self.signum)
        sum(range(10_000))  # bytecodes: the handler runs here, inside __del__, and Python swallows what it raises


def _signal_in_gc_callback(signum: int) -> None:
    def callback(phase: str, info: dict) -> None:
        if phase == "start":
            gc.callbacks.remove(callback)
            os.kill(os.getpid(), signum)
            sum(range(10_000))

    gc.callbacks.append(callback)
    gc.collect()


def test_a_second_signal_does_not_cut_the_clean_up_short(tmp_path, capsys):
    """Ctrl-C during the clean-up that the first one started is ignored: the clean-up finishes."""
    cleaned = []

    def main() -> int:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            threading.Event().wait(10)
        finally:
            os.kill(os.getpid(), signal.SIGINT)
            sum(range(10_000))  # the handler would run here
            cleaned.append(True)
        return 0

    assert interrupts.interruptible("prog", main) == 143 and cleaned == [True]
    assert capsys.readouterr().err.strip().splitlines() == [line("prog", signal.SIGTERM)]


@pytest.mark.parametrize("where", ["gc callback", "__del__"])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_swallowed_where_it_landed_still_stops_the_command(tmp_path, capsys, where, signum):
    """As jax's `_xla_gc_callback` did with Ctrl-C two seconds into `convert_weights`: the exception is swallowed
    ("Exception ignored in ..."), the work goes on; the write after it is refused and the command still ends with
    the one line and 128 + the signal, with no "Exception ignored" lines."""
    out = tmp_path / "out.msgpack"

    def main() -> int:
        if where == "gc callback":
            _signal_in_gc_callback(signum)
        else:
            _SignalInDel(signum)  # dropped at once: __del__ runs
        files.atomic_write_bytes(out, b"converted")  # the work that went on
        return 0

    assert interrupts.interruptible("convert_weights", main) == 128 + signum
    assert capsys.readouterr().err.strip().splitlines() == [line("convert_weights", signum)]
    assert list(tmp_path.iterdir()) == []


def _written_after(argv: list, output: Path) -> float:
    """Seconds from the start of an uninterrupted run to its output appearing (the run then shuts down)."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not output.exists() and proc.poll() is None:
        time.sleep(0.01)
    seconds = time.perf_counter() - start
    assert proc.wait(timeout=120) == 0 and output.exists()
    output.unlink()
    return seconds


def test_the_console_scripts_stop_on_the_first_signal_at_any_point(tmp_path):
    """`convert_weights` (the console script, as a user runs it) on a tiny checkpoint, sent SIGINT or SIGTERM at
    fractions of the time an uninterrupted run takes to write its output, imports included: each run still going
    ends with exactly one line, 130 / 143, no output and no temp file. (A run whose output was complete when the
    signal came exits 0, its output whole: the signal came after the work.)"""
    script = Path(sys.executable).parent / "convert_weights"
    out = tmp_path / "out"
    out.mkdir()
    argv = [script, tiny_files()[0].parent / "midas.pt", out / "w.msgpack"]
    written = _written_after(argv, out / "w.msgpack")
    interrupted = 0
    for fraction in (0.1, 0.35, 0.6, 0.85):
        for signum in (signal.SIGINT, signal.SIGTERM):
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            time.sleep(fraction * written)
            done = (out / "w.msgpack").exists()
            proc.send_signal(signum)
            _, err = proc.communicate(timeout=120)
            if done:
                assert proc.returncode == 0 and (out / "w.msgpack").stat().st_size > 0, err
                (out / "w.msgpack").unlink()
                continue
            assert (proc.returncode, err.strip().splitlines()) == (128 + signum, [line("convert_weights", signum)]), (
                fraction,
                err,
            )
            assert list(out.iterdir()) == [], fraction
            interrupted += 1
    assert interrupted >= 6, f"only {interrupted} of 8 runs were still going when signalled ({written:.1f} s each)"
