"""Orbax checkpoints of a train state (parameters, optimizer state, step) with JSON metadata beside them.

    save_checkpoint("ckpt", state, {"config": ...}); state, metadata = restore_checkpoint("ckpt", state)

A restore needs a template state built the same way (model, optimizer, frozen set): orbax restores into its
structure and, for a sharded state, into its layout.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
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


def save_checkpoint(
    directory: str | os.PathLike, state: TrainState, metadata: Mapping[str, Any] | None = None, *, keep: int = 3
) -> int:
    """Save params, optimizer state and step under `directory/<step>/` (orbax; the newest `keep` are kept), plus
    JSON `metadata` (e.g. the config). Blocks until written. Returns the step.

    A step that is saved already is left as it is (nothing is ever overwritten) and the call does nothing: the
    steps are deterministic, so a run that reaches a saved step again (resumed there) holds the same state.
    """
    step = int(state.step)
    payload = serialization.to_state_dict({"step": state.step, "params": state.params, "opt_state": state.opt_state})
    with _manager(directory, keep, create=True) as manager:
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
