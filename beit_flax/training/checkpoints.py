"""Orbax checkpoints of a train state (parameters, optimizer state, step) with JSON metadata beside them.

    save_checkpoint("ckpt", state, {"config": ...}); state, metadata = restore_checkpoint("ckpt", state)

A restore needs a template state built the same way (model, optimizer, frozen set): orbax restores into its
structure and, for a sharded state, into its layout.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import sys
import threading
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import serialization

from beit_flax.training.state import TrainState


def _manager(directory: str | os.PathLike, keep: int | None = None, *, create: bool = False) -> ocp.CheckpointManager:
    if not create and not os.path.isdir(directory):
        raise FileNotFoundError(f"{directory}: no checkpoint folder")
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=create)
    return ocp.CheckpointManager(os.path.abspath(directory), options=options)


class CheckpointWriteError(OSError):
    """A checkpoint that could not be written (a full disk, a quota, a file size limit...); the partial checkpoint
    was removed, so it cannot be mistaken for a complete one. The message is one line naming the folder."""


def _loop_closed(exc: BaseException | None) -> bool:
    return isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"


class _OrbaxFailureRecords(logging.Filter):
    """While a save runs, drops every ERROR record (orbax's threads each report the failure the save raises); after
    it, only those about its partial checkpoint (`<step>.orbax-checkpoint-tmp` under `directory`), which asyncio
    logs when orbax's futures are collected, later."""

    def __init__(self, directory: Path) -> None:
        super().__init__()
        self.partial, self.saving = f"{directory}{os.sep}", True

    def filter(self, record: logging.LogRecord) -> bool:
        if self.saving:
            return record.levelno < logging.ERROR
        text = f"{record.getMessage()} {record.exc_info[1] if record.exc_info else ''}"
        return not (self.partial in text and "orbax-checkpoint-tmp" in text)


@contextlib.contextmanager
def _orbax_quiet(directory: Path) -> Iterator[None]:
    """Orbax reports one failed write from each of its threads and tasks besides raising it (absl and asyncio ERROR
    records with tracebacks, and tensorstore callbacks into event loops it has closed: "Event loop is closed",
    through the unraisable hook); `save_checkpoint` raises the failure as one line, so these are held back."""
    records = _OrbaxFailureRecords(directory)
    for name in ("absl", "asyncio"):
        logging.getLogger(name).addFilter(records)
    unraisable, thread_hook = sys.unraisablehook, threading.excepthook
    sys.unraisablehook = lambda info: None if _loop_closed(info.exc_value) else unraisable(info)
    threading.excepthook = lambda args: None if _loop_closed(args.exc_value) else thread_hook(args)
    try:
        yield
    except Exception:
        records.saving = False  # kept for the late records about this partial checkpoint
        # and the writes orbax had scheduled and never ran, reported when the interpreter exits
        warnings.filterwarnings("ignore", "coroutine 'async_serialize_from_host", RuntimeWarning)
        raise
    else:
        for name in ("absl", "asyncio"):
            logging.getLogger(name).removeFilter(records)
    finally:
        sys.unraisablehook, threading.excepthook = unraisable, thread_hook


def _write_error(directory: Path, step: int, err: Exception) -> CheckpointWriteError:
    """Remove what orbax left of `step` (`<step>.orbax-checkpoint-tmp*`; its threads may still be writing there for
    a moment, so until none has reappeared for 0.5 s, 10 s at most) and say why in one line."""
    quiet_since, deadline = time.monotonic(), time.monotonic() + 10
    while time.monotonic() < deadline and time.monotonic() - quiet_since < 0.5:
        for partial in directory.glob(f"{step}.orbax-checkpoint-tmp*"):
            shutil.rmtree(partial, ignore_errors=True)
            quiet_since = time.monotonic()
        time.sleep(0.05)
    code = re.search(r"os_error_code='(\d+)'", str(err))
    errno = int(code[1]) if code else getattr(err, "errno", None)
    reason = os.strerror(errno) if errno else (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
    error = CheckpointWriteError(
        f"{directory}: cannot write the checkpoint of step {step} ({reason}); removed the partial checkpoint"
    )
    error.errno = errno  # kept out of the message: str(error) is the one line
    return error


def save_checkpoint(
    directory: str | os.PathLike, state: TrainState, metadata: Mapping[str, Any] | None = None, *, keep: int = 3
) -> int:
    """Save params, optimizer state and step under `directory/<step>/` (orbax; the newest `keep` are kept), plus
    JSON `metadata` (e.g. the config). Blocks until written. Returns the step.

    A step that is saved already is left as it is (nothing is ever overwritten) and the call does nothing: the
    steps are deterministic, so a run that reaches a saved step again (resumed there) holds the same state.
    Raises CheckpointWriteError (the partial checkpoint removed) when it cannot be written.
    """
    step = int(state.step)
    payload = serialization.to_state_dict({"step": state.step, "params": state.params, "opt_state": state.opt_state})
    folder = Path(directory).absolute()
    with _orbax_quiet(folder):
        try:
            with _manager(directory, keep, create=True) as manager:  # closing it waits for orbax's threads
                if step in manager.all_steps():
                    return step
                manager.save(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardSave(payload), metadata=ocp.args.JsonSave(dict(metadata or {}))
                    ),
                    force=True,
                )
                manager.wait_until_finished()
        except Exception as err:  # orbax and tensorstore raise ValueError, OSError, RuntimeError... for one failure
            raise _write_error(folder, step, err) from err
    return step


def latest_step(directory: str | os.PathLike) -> int | None:
    """The newest saved step in `directory`, or None if there is none (or no directory)."""
    if not os.path.isdir(directory):
        return None
    with _manager(directory) as manager:
        return manager.latest_step()


def checkpoint_metadata(directory: str | os.PathLike, step: int | None = None) -> dict[str, Any]:
    """The JSON metadata saved with a checkpoint (default: the newest), read without restoring any array, e.g. to
    check that a run is resumed with the settings it was started with."""
    with _manager(directory) as manager:
        step = manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"{directory}: no checkpoint")
        return dict(manager.restore(step, args=ocp.args.Composite(metadata=ocp.args.JsonRestore()))["metadata"] or {})


def restore_checkpoint(
    directory: str | os.PathLike, state: TrainState, step: int | None = None
) -> tuple[TrainState, dict[str, Any]]:
    """Restore a `save_checkpoint` into `state` (a fresh state built the same way: its model, optimizer and frozen
    set define the structure). Default: the newest step. Returns (state, metadata)."""
    template = {"step": state.step, "params": state.params, "opt_state": state.opt_state}
    target = serialization.to_state_dict(template)
    with _manager(directory) as manager:
        step = manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"{directory}: no checkpoint to restore")
        try:
            restored = manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(jax.tree.map(ocp.utils.to_shape_dtype_struct, target)),
                    metadata=ocp.args.JsonRestore(),
                ),
            )
        except (ValueError, KeyError, TypeError) as err:  # orbax reports a tree or shape mismatch in many ways
            raise ValueError(
                f"{directory} step {step}: does not fit this train state (another model, optimizer or frozen set?): "
                f"{str(err)[:500]}"
            ) from err
    # orbax returns arrays committed to the template's device; where the template's were not (a state fresh from
    # create_train_state), match that, since jit caches by committedness and would otherwise compile the step again
    like = lambda t, x: x if getattr(t, "committed", True) else jnp.asarray(np.asarray(x))
    values = jax.tree.map(like, target, restored["state"])
    return state.replace(**serialization.from_state_dict(template, values)), dict(restored["metadata"] or {})
