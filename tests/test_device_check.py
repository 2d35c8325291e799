"""benchmarks/device_check.sh / .py without a GPU: the summary's verdicts on rows written here, and the script's
time budget (every section past it says so in one JSON line; the summary still comes). The whole tiny run
(`bash benchmarks/device_check.sh --tiny`, every section on the tiny configs) takes minutes on this 2-core machine,
too long for the suite: it was run by hand (README, Speed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from sharding_helpers import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
import device_check  # benchmarks/device_check.py


def rows(**measured) -> list[dict]:
    """The rows the summary reads, with the given figures."""
    flax = {"section": "flax", "what": "bf16", "attention": "auto"}
    return [
        {"section": "flax", "what": "parity", "vs_torch_fp32": {"max_over_max": measured["fp32"]}},
        {
            **flax,
            "batch": 1,
            "compile_s": 20.0,
            "ms_synced_median": measured["b1_ms"],
            "cudnn_calls": 24,
            "vs_flax_fp32": {"median_rel": measured["bf16"]},
        },
        {**flax, "batch": 32, "compile_s": measured["compile_s"], "img_per_s": measured["flax"], "cudnn_calls": 24},
        {**flax, "attention": "xla", "batch": 32, "compile_s": 90.0, "img_per_s": 10 * measured["flax"]},  # not auto
        {"section": "torch-speed", "impl": "torch-eager", "batch": 1, "ms_synced_median": 9.0},
        {
            "section": "torch-speed",
            "impl": "torch-eager",
            "batch": 32,
            "img_per_s": measured["torch"] / 2,
            "attn_implementation": "sdpa",
        },
        {
            "section": "torch-speed",
            "impl": "torch-compile",
            "batch": 32,
            "img_per_s": measured["torch"],
            "attn_implementation": "sdpa",
        },
        {"section": "torch-speed", "impl": "torch-autocast", "batch": 32, "error": "OutOfMemoryError: ..."},
    ]


def summary(tmp_path, capsys, written: list[dict]) -> dict:
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in written))
    assert device_check.main(["summary", "--work", str(tmp_path)]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.parametrize(
    ("figures", "verdict"),
    [
        ({"flax": 500.0, "torch": 200.0, "b1_ms": 3.5, "compile_s": 45.0, "bf16": 0.008, "fp32": 2e-5}, "met"),
        ({"flax": 300.0, "torch": 200.0, "b1_ms": 4.5, "compile_s": 75.0, "bf16": 0.012, "fp32": 3e-4}, "missed"),
    ],
)
def test_summary_judges_each_goal(tmp_path, capsys, figures, verdict):
    result = summary(tmp_path, capsys, rows(**figures))
    assert result["verdict"] == dict.fromkeys(device_check.GOALS, verdict)
    measured = result["measured"]
    assert measured["flax_vs_best_torch_b32"] == round(figures["flax"] / figures["torch"], 3)  # vs torch.compile
    assert measured["flax_b1_ms"] == figures["b1_ms"] and measured["compile_s"] == figures["compile_s"]
    assert result["best_torch"] == "torch-compile (sdpa)" and result["error_rows"] == 1
    assert result["cudnn_calls_in_bf16_auto"] == 24


def test_summary_says_what_was_not_measured(tmp_path, capsys):
    result = summary(tmp_path, capsys, [{"section": "flax", "error": "ImportError: no jax"}])
    assert set(result["verdict"].values()) == {"not measured"}
    assert all(value is None for value in result["measured"].values())


def test_the_script_keeps_its_time_budget(tmp_path):
    """BUDGET_S=25: no section has the 10 s a section needs besides the 20 s kept for the summary, so each one is
    skipped with a line saying so, and the summary runs; stdout is JSON lines only."""
    run = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "device_check.sh"), "--tiny", "--work", str(tmp_path)],
        env={**os.environ, "BUDGET_S": "25", "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    lines = [json.loads(line) for line in run.stdout.strip().splitlines()]
    skipped = [line["section"] for line in lines if "time budget" in line.get("skipped", "")]
    assert skipped == ["env", "torch-reference", "flax", "torch-speed", "depth-anything"]
    assert lines[-2]["summary"] and set(lines[-2]["verdict"].values()) == {"not measured"}
    assert lines[-1]["device_check"] == "done" and lines[-1]["kept"] == 1
    assert (tmp_path / "rows.jsonl").exists()  # the summary's own row; the work folder given is kept
