"""Time and peak memory of `convert_weights` on a full-size checkpoint (default BEiT-L 512, ~1.4 GB).

Builds the transformers model for the variant (random init; values do not matter here), saves it in the MiDaS
release layout (renamed by tests/torch_reference.py, with the release file's index buffers and classifier), as a
plain torch `.pt` state dict with transformers names, and as the hub's `config.json + model.safetensors`, then runs
`convert_weights` on each in a fresh process under GNU time. One JSON line per file:
    {"variant", "input", "checkpoint_gib", "seconds", "peak_rss_gib", "peak_over_checkpoint"}
Peak RSS counts the file pages a memory-mapped checkpoint touches.

    python benchmarks/convert_weights.py [--variant dpt_beit_large_512] [--workdir /tmp/beit-convert-bench]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

from beit_flax.demo.torch_model import as_spec, build_model
from beit_flax.models.dpt.config import PRESETS

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from torch_reference import state_dict_v5, to_midas_layout


def measure(checkpoint: Path, out: Path) -> tuple[float, float]:
    """(wall seconds, peak RSS GiB) of one `convert_weights` process."""
    command = ["/usr/bin/time", "-v", sys.executable, "-m", "beit_flax.convert.cli", str(checkpoint), str(out)]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - start
    peak_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)[1])
    print(done.stdout.strip(), file=sys.stderr)
    return seconds, peak_kib / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", choices=sorted(PRESETS), default="dpt_beit_large_512")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/beit-convert-bench"))
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)

    spec = as_spec(PRESETS[args.variant])
    model = build_model(spec)
    midas_file = args.workdir / f"{args.variant}_midas.pt"
    pt_file, hub_dir = args.workdir / f"{args.variant}.pt", args.workdir / f"hf-{args.variant}"
    torch.save(to_midas_layout(state_dict_v5(model), spec), midas_file)
    torch.save(model.state_dict(), pt_file)
    model.save_pretrained(hub_dir)
    del model

    for label, checkpoint, size_file in [
        ("MiDaS release layout .pt", midas_file, midas_file),
        ("torch .pt state dict", pt_file, pt_file),
        ("hub folder (safetensors)", hub_dir, hub_dir / "model.safetensors"),
    ]:
        seconds, peak = measure(checkpoint, args.workdir / "out.msgpack")
        size = size_file.stat().st_size / 2**30
        print(
            json.dumps(
                {
                    "variant": args.variant,
                    "input": label,
                    "checkpoint_gib": round(size, 3),
                    "seconds": round(seconds, 1),
                    "peak_rss_gib": round(peak, 2),
                    "peak_over_checkpoint": round(peak / size, 2),
                }
            )
        )


if __name__ == "__main__":
    main()
