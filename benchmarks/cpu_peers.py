#!/usr/bin/env python
"""CPU peers (issue 24): every way to run the same network on this machine's CPU, side by side in one process.

    python benchmarks/cpu_peers.py        # BEiT-B 384 at 384^2, Depth Anything V2-S at 518^2; batch 1 and 4
    python benchmarks/cpu_peers.py --model beit_b_384 --batch 1 --rounds 3
    python benchmarks/cpu_peers.py --tiny # the tiny configs: a check of the script itself

Rows (`ROWS`), all on the same random input, each model's weights random (nothing downloaded):

    ours   flax-fp32, flax-bf16          the jitted Flax model (`beit-depth predict --runtime jax [--dtype bfloat16]`)
           onnxruntime-ours, openvino-ours  our ONNX export (`--runtime onnxruntime | openvino`: `runtimes.artifact`)
           openvino-ours-bf16            the same in OpenVINO inferring in bf16 (`--runtime openvino --dtype bfloat16`)
    peers  torch-eager-fp32, torch-sdpa-fp32  transformers' model, eager / SDPA attention
           torch-bf16, torch-autocast-bf16    pure bfloat16 / autocast over fp32 (SDPA)
           torch-compile-fp32, torch-compile-bf16  torch.compile of the SDPA model (pure bf16); first call = compile
           onnxruntime-torch, openvino-torch  `torch.onnx.export` (TorchScript exporter, opset 17) of the fp32 model
           openvino-torch-bf16           the same in OpenVINO inferring in bf16

Timing: every row is warmed up first; then `--rounds` rounds go over the rows in turn, each row timing `--calls`
calls in a block of its own after a `--pause` (onnxruntime's and OpenMP's spinning threads otherwise take the next
row's cores); a row's figure is the median over its rounds, so every row saw the same spread of machine load. torch,
onnxruntime and OpenVINO get `--threads` threads (default: the cores this process may use); XLA uses every such
core (restrict all of them with `taskset`).

One JSON line per row (`row`, `s_per_batch` median / min, `cpu_s_per_batch`, `setup_s`: compile, export or session
load, `vs_source`: an ONNX row's max |difference| / max |output| against the model it was exported from), then one
summary line per (model, batch) with the goals' ratios (> 1: ours faster): `flax_fp32_vs_best_torch`,
`flax_bf16_vs_best_torch` (the fastest torch row of either dtype), `flax_fp32_vs_best_torch_fp32`,
`flax_bf16_vs_best_torch_bf16` (like for like), `best_runtime_vs_best_peer` (our fastest row
against every peer row), `ours_onnx_vs_torch_onnx` (per runtime); each line carries the CPU model, its ISA flags,
the 1-minute load average at the start and end, and the versions.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import numpy as np
from machine import cpu_name, isa_flags  # benchmarks/machine.py

OURS = ("flax-fp32", "flax-bf16", "onnxruntime-ours", "openvino-ours", "openvino-ours-bf16")
TORCH = (
    "torch-eager-fp32",
    "torch-sdpa-fp32",
    "torch-bf16",
    "torch-autocast-bf16",
    "torch-compile-fp32",
    "torch-compile-bf16",
)
ROWS = (*OURS, *TORCH, "onnxruntime-torch", "openvino-torch", "openvino-torch-bf16")
MODELS = {"beit_b_384": 384, "da_v2_s": 518}
"""Model -> its native input side; --tiny: the tiny configs at 64 and 56."""


def configs(name: str, tiny: bool) -> tuple[Any, int, Any, Callable[[str], Any]]:
    """(Flax config, side, Flax module class, build_torch(attn_implementation) -> transformers model, fp32)."""
    import torch
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, DPTForDepthEstimation

    import beit_flax
    from beit_flax.models.depth_anything import TINY as DA_TINY
    from beit_flax.models.depth_anything import DepthAnything
    from beit_flax.models.depth_anything.config import encoder_config
    from beit_flax.models.depth_anything.convert.hf_config import hf_config_dict
    from beit_flax.models.dpt.config import TINY

    torch.manual_seed(0)
    if name == "beit_b_384":
        from beit_flax.demo.torch_model import build_model

        config = TINY if tiny else beit_flax.PRESETS["dpt_beit_base_384"]

        def build(attention: str) -> Any:
            model = build_model(config)  # transformers' init, eager attention, MiDaS' head channels
            if attention != "eager":
                model.set_attn_implementation(attention)
            assert isinstance(model, DPTForDepthEstimation)
            return model.float().eval()

        return config, 64 if tiny else MODELS[name], beit_flax.DPT, build
    config = DA_TINY if tiny else encoder_config("vits")
    hf = DepthAnythingConfig.from_dict(hf_config_dict(config))

    def build(attention: str) -> Any:
        model = DepthAnythingForDepthEstimation._from_config(hf, attn_implementation="eager")
        if attention != "eager":  # the DINOv2 backbone has SDPA; the wrapper refuses to be asked for it
            model.backbone.set_attn_implementation(attention)
        return model.eval()

    return config, 56 if tiny else MODELS[name], DepthAnything, build


def flax_rows(config: Any, module: Any) -> dict[str, Callable]:
    import jax

    from beit_flax.models.precast import precast
    from beit_flax.params import init_params

    params = jax.device_put(init_params(config, seed=0, spread=0.02))
    rows = {}
    for row, dtype in (("flax-fp32", "float32"), ("flax-bf16", "bfloat16")):
        model = module(config, dtype=dtype)  # and its params as `Batcher` places them (`--runtime jax`)
        placed = jax.device_put(precast(model, params))
        apply = jax.jit(model.apply)
        rows[row] = lambda x, apply=apply, placed=placed: np.asarray(apply({"params": placed}, x))
    rows["_flax_model"], rows["_flax_params"] = module(config), params
    return rows


def torch_rows(build: Callable[[str], Any], compiled: bool) -> dict[str, Callable]:
    import torch

    torch.manual_seed(0)
    eager, sdpa = build("eager"), build("sdpa")
    sdpa.load_state_dict(eager.state_dict())
    pure = build("sdpa").to(torch.bfloat16)
    pure.load_state_dict(eager.state_dict())

    def call(model: Any, dtype: Any = torch.float32, autocast: bool = False) -> Callable:
        def run(x: np.ndarray) -> np.ndarray:
            with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=autocast):
                out = model(pixel_values=torch.from_numpy(x.transpose(0, 3, 1, 2)).to(dtype)).predicted_depth
            return out.float().numpy()

        return run

    rows = {
        "torch-eager-fp32": call(eager),
        "torch-sdpa-fp32": call(sdpa),
        "torch-bf16": call(pure, torch.bfloat16),
        "torch-autocast-bf16": call(sdpa, autocast=True),
        "_torch_model": sdpa,
    }
    if compiled:
        rows["torch-compile-fp32"] = call(torch.compile(sdpa, dynamic=False))
        rows["torch-compile-bf16"] = call(torch.compile(pure, dynamic=False), torch.bfloat16)
    return rows


def onnx_rows(rows: dict, side: int, name: str, work: Path, threads: int) -> dict[str, Any]:
    """The six ONNX rows, and `_setup_<row>`: the export (ours: `runtimes.artifact`, as `--runtime` builds it;
    torch's: `torch.onnx.export`, both kept in `work`) plus the session's load, in seconds."""
    import onnxruntime
    import torch

    from beit_flax.runtimes import artifact, import_openvino

    class Depth(torch.nn.Module):  # what the exporter traces: pixel_values -> predicted_depth
        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, pixel_values: Any) -> Any:
            return self.model(pixel_values=pixel_values).predicted_depth

    start = time.perf_counter()
    paths = {"ours": artifact(rows["_flax_model"], rows["_flax_params"], (side, side), folder=work)}
    exported = {"ours": time.perf_counter() - start}
    paths["torch"] = work / f"torch-{name}-{side}.onnx"
    start = time.perf_counter()
    if not paths["torch"].is_file():
        example = torch.zeros(1, 3, side, side)
        axes = {"pixel_values": {0: "B"}, "depth": {0: "B"}}
        names = {"input_names": ["pixel_values"], "output_names": ["depth"], "dynamic_axes": axes}
        torch.onnx.export(
            Depth(rows["_torch_model"]), (example,), str(paths["torch"]), dynamo=False, opset_version=17, **names
        )
    exported["torch"] = time.perf_counter() - start
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    openvino = import_openvino()
    settings = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    found: dict[str, Any] = {}
    for who, path in paths.items():
        feed = (lambda x: np.ascontiguousarray(x.transpose(0, 3, 1, 2))) if who == "torch" else (lambda x: x)
        start = time.perf_counter()
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        found[f"_setup_onnxruntime-{who}"] = exported[who] + time.perf_counter() - start
        feed_name = session.get_inputs()[0].name
        found[f"onnxruntime-{who}"] = lambda x, s=session, f=feed, n=feed_name: s.run(None, {n: f(x)})[0]
        for suffix, precision in (("", "f32"), ("-bf16", "bf16")):
            start = time.perf_counter()
            hint = {"INFERENCE_PRECISION_HINT": precision}
            compiled = openvino.Core().compile_model(str(path), "CPU", settings | hint)
            found[f"_setup_openvino-{who}{suffix}"] = exported[who] + time.perf_counter() - start
            found[f"openvino-{who}{suffix}"] = lambda x, c=compiled, f=feed: np.asarray(c(f(x))[c.output(0)])
    return found


def timed(run: Callable, x: np.ndarray, calls: int) -> tuple[list[float], list[float]]:
    walls, cpus = [], []
    for _ in range(calls):
        wall, cpu = time.perf_counter(), time.process_time()
        run(x)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return walls, cpus


def relative(out: np.ndarray, ref: np.ndarray) -> float | None:
    """max |out - ref| / max |ref|; None for an all-zero reference (the tiny torch models' ReLU output at init)."""
    scale = float(np.abs(ref).max())
    return float(np.abs(np.asarray(out, np.float32) - ref).max() / scale) if scale > 0 else None


def measure(rows: dict[str, Any], wanted: list[str], x: np.ndarray, args: argparse.Namespace, head: dict) -> dict:
    """Warm every row up, time them in interleaved rounds, print one line per row; -> row -> median s per batch."""
    load = [round(os.getloadavg()[0], 2)]
    first: dict[str, float] = {}
    outputs: dict[str, np.ndarray] = {}
    for row in wanted:  # warm-up: jit / torch.compile compile here, sessions allocate
        started = time.perf_counter()
        outputs[row] = np.asarray(rows[row](x), np.float32).reshape(x.shape[:3])
        first[row] = time.perf_counter() - started
    times: dict[str, list[float]] = {r: [] for r in wanted}
    cpu: dict[str, list[float]] = {r: [] for r in wanted}
    for _ in range(args.rounds):
        for row in wanted:
            time.sleep(args.pause)
            walls, cpus = timed(rows[row], x, args.calls)
            times[row].append(statistics.median(walls))
            cpu[row].append(statistics.median(cpus))
    load.append(round(os.getloadavg()[0], 2))
    medians = {r: statistics.median(v) for r, v in times.items()}
    exported_from = {"ours": "flax-fp32", "torch": "torch-sdpa-fp32"}
    for row in wanted:
        setup = rows.get(f"_setup_{row}")  # ONNX rows: export + session load; the others compile in first_call_s
        line = {"row": row, "s_per_batch": round(medians[row], 4), "s_min": round(min(times[row]), 4)}
        line |= {"cpu_s_per_batch": round(statistics.median(cpu[row]), 4), "first_call_s": round(first[row], 2)}
        line |= {"setup_s": None if setup is None else round(setup, 1), "loadavg_1m": load}
        onnx = row.startswith(("onnxruntime", "openvino"))
        source = exported_from["ours" if "-ours" in row else "torch"] if onnx else None
        if source in outputs:
            line["vs_source"] = relative(outputs[row], outputs[source])
        emit(head | line)
    return {"medians": medians, "loadavg_1m": load, "rounds": args.rounds, "calls": args.calls, "pause_s": args.pause}


def summary(measured: dict) -> dict:
    """The goals' ratios (> 1: ours faster) from the rows' medians."""
    medians = measured.pop("medians")
    ratio = lambda slow, fast: round(medians[slow] / medians[fast], 3) if {slow, fast} <= set(medians) else None
    best = lambda names: min((r for r in names if r in medians), key=medians.get, default=None)
    best_torch, best_peer, best_ours = best(TORCH), best([r for r in ROWS if r not in OURS]), best(OURS)
    return {
        "summary": True,
        "s_per_batch": {r: round(v, 4) for r, v in medians.items()},
        "best_torch_row": best_torch,
        "flax_fp32_vs_best_torch": ratio(best_torch, "flax-fp32"),
        "flax_bf16_vs_best_torch": ratio(best_torch, "flax-bf16"),
        # the same precision on both sides: an fp32 row cannot beat a bf16 row where bf16 runs at twice the FLOPs
        "flax_fp32_vs_best_torch_fp32": ratio(best([r for r in TORCH if "fp32" in r]), "flax-fp32"),
        "flax_bf16_vs_best_torch_bf16": ratio(best([r for r in TORCH if "bf16" in r]), "flax-bf16"),
        "best_runtime_row": best_ours,
        "best_peer_row": best_peer,
        "best_runtime_vs_best_peer": ratio(best_peer, best_ours),
        "ours_onnx_vs_torch_onnx": {
            "onnxruntime": ratio("onnxruntime-torch", "onnxruntime-ours"),
            "openvino": ratio("openvino-torch", "openvino-ours"),
            "openvino-bf16": ratio("openvino-torch-bf16", "openvino-ours-bf16"),
        },
        **measured,
    }


def emit(row: dict) -> None:
    print(json.dumps(row), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--batch", nargs="+", type=int, default=[1, 4])
    parser.add_argument("--rows", nargs="+", choices=ROWS, default=list(ROWS), help="a subset of the rows")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds over the rows (default: 5)")
    parser.add_argument("--calls", type=int, default=1, help="timed calls per row per round (default: 1)")
    parser.add_argument("--pause", type=float, default=2.0, help="seconds of idle before each block (default: 2)")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--no-compile", action="store_true", help="no torch.compile rows (minutes to compile)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/beit_flax_cpu_peers"), help="exports kept here")
    parser.add_argument("--tiny", action="store_true", help="the tiny configs (a check of the script)")
    args = parser.parse_args(argv)

    import jax
    import onnxruntime
    import torch
    import transformers

    from beit_flax.runtimes import import_openvino

    torch.set_num_threads(args.threads)
    machine = {
        "cpu": cpu_name(),
        "isa": isa_flags(),
        "threads": args.threads,
        "versions": {
            "jax": jax.__version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "onnxruntime": onnxruntime.__version__,
            "openvino": import_openvino().__version__,
        },
    }
    for name in args.model:
        config, side, module, build = configs(name, args.tiny)
        rows: dict[str, Any] = {}
        start = time.perf_counter()
        rows.update(flax_rows(config, module))
        rows.update(torch_rows(build, compiled=not args.no_compile and any("compile" in r for r in args.rows)))
        rows.update(onnx_rows(rows, side, name + "-tiny" * args.tiny, args.work, args.threads))
        for batch in args.batch:
            x = np.random.default_rng(batch).standard_normal((batch, side, side, 3), dtype=np.float32)
            head = {"model": name, "tiny": args.tiny, "side": side, "batch": batch}
            medians = measure(rows, [r for r in args.rows if r in rows], x, args, head | machine)
            emit(summary(medians) | head | {"wall_s": round(time.perf_counter() - start, 1)} | machine)
    return 0


if __name__ == "__main__":
    sys.exit(main())
