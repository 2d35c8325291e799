"""beit_flax.training.checkpoints: an orbax round trip resumes bit-identically, metadata, refusals, no overwrites.

Uses the train state and jitted step of tests/test_steps.py (finetune_helpers: one compile for both modules).
"""

from __future__ import annotations

import jax
import numpy as np
import optax
import pytest
from finetune_helpers import TINY, flat, run, tiny_batch, tiny_state

from beit_flax import DPT, training


def test_resume_from_orbax_is_bit_identical(tmp_path):
    state0 = tiny_state()
    batches = [tiny_batch(seed=10 + s) for s in range(4)]
    straight, _ = run(state0, batches)

    first, _ = run(state0, batches[:2])
    assert training.save_checkpoint(tmp_path, first, {"note": "half way"}) == 2
    assert training.latest_step(tmp_path) == 2
    restored, meta = training.restore_checkpoint(tmp_path, state0)  # a fresh state is the template
    assert meta == {"note": "half way"} and int(restored.step) == 2
    resumed, _ = run(restored, batches[2:])

    assert int(resumed.step) == int(straight.step) == 4
    for name in ("params", "opt_state"):
        a, b = jax.tree.leaves(getattr(straight, name)), jax.tree.leaves(getattr(resumed, name))
        assert len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b)), name
    with pytest.raises(FileNotFoundError):
        training.restore_checkpoint(tmp_path / "empty", state0)


def test_checkpoint_metadata_and_a_mismatched_state(tmp_path):
    state0 = tiny_state()
    training.save_checkpoint(tmp_path, state0, {"config": TINY.to_dict()})
    assert training.checkpoint_metadata(tmp_path) == {"config": TINY.to_dict()}  # readable before restoring
    other = training.create_train_state(
        DPT(TINY), state0.params, optax.adamw(1e-3, weight_decay=1e-4), freeze=("encoder",)
    )
    with pytest.raises(ValueError, match="does not fit this train state"):
        training.restore_checkpoint(tmp_path, other)
    assert training.latest_step(tmp_path / "missing") is None
    with pytest.raises(FileNotFoundError, match="no checkpoint folder"):
        training.checkpoint_metadata(tmp_path / "missing")


def test_saving_a_saved_step_again_changes_nothing(tmp_path):
    """What a resumed run that is already at its last step does: the call is a no-op, the checkpoint stays."""
    state0 = tiny_state()
    assert training.save_checkpoint(tmp_path, state0, {"run": 1}) == 0
    other = state0.replace(params=jax.tree.map(lambda x: x + 1, state0.params))
    assert training.save_checkpoint(tmp_path, other, {"run": 2}) == 0
    restored, meta = training.restore_checkpoint(tmp_path, state0)
    assert meta == {"run": 1} and training.checkpoint_metadata(tmp_path) == {"run": 1}
    for path, leaf in flat(restored.params).items():
        np.testing.assert_array_equal(leaf, flat(state0.params)[path], err_msg=path)
    # an older step than the newest is still saved (it is not there yet)
    assert training.save_checkpoint(tmp_path, state0.replace(step=state0.step + 3)) == 3
    assert training.save_checkpoint(tmp_path, state0.replace(step=state0.step + 2)) == 2
    assert training.latest_step(tmp_path) == 3 and training.checkpoint_metadata(tmp_path, 2) == {}


FULL_DISK = """
import resource, signal, sys
sys.path.insert(0, {tests!r})
from finetune_helpers import tiny_state
from beit_flax import training
state = tiny_state()
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))
try:
    training.save_checkpoint(sys.argv[1], state, {{"run": 1}})
except training.CheckpointWriteError as err:
    print(err)
"""


def test_a_checkpoint_that_cannot_be_written_is_one_error_and_leaves_no_partial(tmp_path):
    """The disk fills up under orbax (a file size limit in a child process: the same failed writes): one
    CheckpointWriteError naming the folder and the reason, nothing else on stderr (orbax's threads each report it,
    with tracebacks), and no partial checkpoint left to be mistaken for a complete one."""
    import subprocess
    import sys
    from pathlib import Path

    code = FULL_DISK.format(tests=str(Path(__file__).parent))
    done = subprocess.run([sys.executable, "-c", code, tmp_path / "ckpt"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stderr == "", done.stderr[-3000:]
    assert done.stdout.strip() == (
        f"{tmp_path / 'ckpt'}: cannot write the checkpoint of step 0 (File too large); removed the partial checkpoint"
    )
    assert [p.name for p in (tmp_path / "ckpt").iterdir()] == []
