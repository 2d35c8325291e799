"""examples/finetune.py end to end with tiny settings: --help, a run, a second run into the same --out (refused
without --resume; with it, at its last step, it writes the final weights again), resumes with other settings
refused with the list of what changed, and one-line errors with their exit codes. A few seconds of compiling."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from beit_flax import training

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "finetune.py"
TINY_RUN = ["--steps", "2", "--scenes", "8", "--size", "32", "--batch-size", "2", "--save-every", "1"]


@pytest.fixture(scope="module")
def finetune():
    spec = importlib.util.spec_from_file_location("finetune", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def exit_status(finetune, argv: list[str]) -> int:
    try:
        return finetune.main(argv)
    except SystemExit as exit:
        return exit.code


def test_help_shows_every_default_and_the_run_folder(finetune, capsys):
    assert exit_status(finetune, ["--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps to the terminal width
    for default in (
        "--steps STEPS total optimizer steps (default: 400)",
        "(default: 8)",
        "(default: 64)",
        "(default: finetune_out)",
        "(default: 0.0005)",
        "(default: 512)",
        "(default: 100)",
        "(default: 0)",
    ):
        assert default in text, default
    assert "Exit status: 0 done; 1 --weights, --data or --dataset cannot be read (or Grain is not installed); 2" in text
    assert "--out (default finetune_out)" in " ".join(finetune.__doc__.split())


def test_a_run_is_never_overwritten_and_a_finished_run_resumes(finetune, tmp_path, capsys):
    out = tmp_path / "run"
    run = [*TINY_RUN, "--out", str(out)]
    checkpoints, weights = out / "checkpoints", out / "finetuned.msgpack"
    assert finetune.main(run) == 0
    assert "after:" in capsys.readouterr().out
    assert sorted(int(p.name) for p in checkpoints.iterdir()) == [1, 2]
    first = weights.read_bytes()

    # the same command again: refused before any work, one line on stderr, exit status 2 (a real process: no traceback)
    again = subprocess.run([sys.executable, str(SCRIPT), *run], capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and again.stdout == "", again.stderr
    assert again.stderr == (
        f"finetune.py: error: --out {out} already holds a run (checkpoints up to step 2); pass "
        "--resume to continue it, or use another --out\n"
    )
    assert weights.read_bytes() == first and training.latest_step(checkpoints) == 2

    # --resume of a run at its --steps: nothing to train, no checkpoint saved twice, the final weights written
    weights.unlink()
    assert finetune.main([*run, "--resume"]) == 0
    log = capsys.readouterr().out
    assert "resumed from step 2" in log and "0 steps; wrote" in log
    assert weights.read_bytes() == first and sorted(int(p.name) for p in checkpoints.iterdir()) == [1, 2]

    # the schedule and the optimizer depend on these: a resume with other values is refused, naming each
    assert exit_status(finetune, [*run, "--resume", "--steps", "3", "--lr", "1e-3", "--freeze-encoder"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert captured.err.startswith(
        f"finetune.py: error: {checkpoints} holds a run with other settings (steps 2 -> 3; "
        "lr 0.0005 -> 0.001; freeze_encoder False -> True): "
    )
    assert exit_status(finetune, [*run, "--resume", "--layer-decay", "0.9", "--seed", "1"]) == 2
    assert "(seed 0 -> 1; layer_decay None -> 0.9)" in capsys.readouterr().err
    assert weights.read_bytes() == first and training.latest_step(checkpoints) == 2


def test_unreadable_inputs_are_one_line_errors(finetune, tmp_path, capsys):
    out = ["--out", str(tmp_path / "run")]
    assert exit_status(finetune, [*TINY_RUN, *out, "--data", str(tmp_path / "missing")]) == 1
    assert capsys.readouterr().err == (
        f"finetune.py: error: --data: {tmp_path / 'missing'}: needs images/ and depth/ folders (masks/ optional)\n"
    )
    assert exit_status(finetune, [*TINY_RUN, *out, "--weights", str(tmp_path / "missing.msgpack")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("finetune.py: error: --weights: ") and "missing.msgpack" in err and err.count("\n") == 1
    assert exit_status(finetune, [*TINY_RUN, *out, "--size", "40"]) == 2  # the random-init MiDaS: patch 16
    assert (
        capsys.readouterr().err == "finetune.py: error: --size 40 is not a multiple of the model's input multiple 16\n"
    )
    assert exit_status(finetune, [*TINY_RUN, *out, "--size", "8"]) == 2
    assert capsys.readouterr().err == (
        "finetune.py: error: --size must be at least 14 (and a multiple of the model's input multiple), got 8 "
        "(--help lists the options)\n"
    )
    assert exit_status(finetune, [*TINY_RUN, *out, "--step", "x"]) == 2
    assert capsys.readouterr().err == (
        "finetune.py: error: argument --steps: invalid int value: 'x' (--help lists the options)\n"
    )
    assert not (tmp_path / "run").exists()
