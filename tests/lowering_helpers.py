"""What tests/test_lowering.py reads off a program lowered for a platform this machine does not have
(`jax.jit(f).trace(*args).lower(lowering_platforms=("cuda",))`): its StableHLO text and its `main` signature.

Run as a script (`python tests/lowering_helpers.py`, with N forced CPU devices: `sharding_helpers.
forced_devices_env`), it lowers the sharded programs on a mesh of every device and prints one JSON object of what
it read (`sharded_report`): XLA_FLAGS must be set before JAX starts, so this cannot run inside the test process.
"""

from __future__ import annotations

import json
import re
from typing import Any

import jax
import jax.numpy as jnp
from flax import traverse_util
from jax._src.lib.mlir import ir

from beit_flax.params import param_shapes

PLATFORMS = ("cuda", "tpu")
# Host transfers: a Python callback (jax.debug.callback / pure_callback / io_callback: custom calls named
# xla_python_{cpu,gpu}_callback, xla_ffi_python_..._callback), TPU host send / recv, infeed / outfeed.
HOST_OPS = ("stablehlo.send", "stablehlo.recv", "stablehlo.infeed", "stablehlo.outfeed")
PRODUCT_OPS = ("stablehlo.dot_general", "stablehlo.convolution")


def abstract_params(config: Any) -> dict[str, Any]:
    """The parameter tree of `config` as float32 `jax.ShapeDtypeStruct`s (nothing allocated)."""
    flat = {
        tuple(path.split("/")): jax.ShapeDtypeStruct(shape, jnp.float32) for path, shape in param_shapes(config).items()
    }
    return traverse_util.unflatten_dict(flat)


def network_size(family: Any, config: Any) -> tuple[int, int]:
    """The network input beit-depth feeds for a 100 x 100 picture (the family's own processing)."""
    return family.processing(config).network_size(100, 100)


def lowered_texts(jitted: Any, *args: Any, platforms: tuple[str, ...] = PLATFORMS) -> dict[str, Any]:
    """{platform: jax.stages.Lowered} of `jitted` traced once on `args` (arrays or ShapeDtypeStructs)."""
    traced = jitted.trace(*args)
    return {platform: traced.lower(lowering_platforms=(platform,)) for platform in platforms}


def custom_call_targets(text: str) -> list[str]:
    """Every custom call's target, in order (pretty and generic StableHLO forms)."""
    return re.findall(r"custom_call @([^\s(]+)\(", text) + re.findall(r'call_target_name = "([^"]+)"', text)


def host_transfers(text: str) -> list[str]:
    """The host callbacks and host transfers in a lowered program (empty: it runs on the device alone)."""
    found = [t for t in custom_call_targets(text) if "callback" in t.lower()]
    found += [op for op in HOST_OPS if op + " " in text or op + "(" in text or f'"{op}"' in text]
    return found + (["custom call with a side effect"] if "has_side_effect = true" in text else [])


def products(text: str) -> list[tuple[str, list[str], str]]:
    """(op, operand element types, precision text) of every matrix product and convolution."""
    out = []
    for line in text.splitlines():
        op = next((op for op in PRODUCT_OPS if op in line), None)
        if op is None:
            continue
        operands = line.rsplit(" : (", 1)[-1].split(") ->")[0]
        types = re.findall(r"tensor<(?:[\d?]+x)*(\w+)>", operands)
        precision = re.findall(r"precision(?:_config)? = \[([^\]]*)\]", line)
        out.append((op.split(".")[1], types, precision[0] if precision else "none"))
    return out


def signature(lowered: Any) -> dict[str, list[dict[str, str]]]:
    """{"args": [...], "results": [...]} of the module's `main`, each {"type": "tensor<...>", "attrs": "{...}"}."""
    module = lowered.compiler_ir("stablehlo")
    main = next((op for op in module.body.operations if str(op.attributes["sym_name"]) == '"main"'), None)
    assert main is not None, "no main function in the lowered module"
    kind = ir.FunctionType(ir.TypeAttr(main.attributes["function_type"]).value)
    attrs = lambda name, n: [str(a) for a in main.attributes[name]] if name in main.attributes else ["{}"] * n
    args = zip(map(str, kind.inputs), attrs("arg_attrs", len(kind.inputs)))
    results = zip(map(str, kind.results), attrs("res_attrs", len(kind.results)))
    return {
        "args": [{"type": t, "attrs": a} for t, a in args],
        "results": [{"type": t, "attrs": a} for t, a in results],
    }


def donated(attrs: str) -> bool:
    """An argument whose buffer the program may reuse: aliased to an output, or donated without a match."""
    return "tf.aliasing_output" in attrs or "jax.buffer_donor" in attrs


def split_dims(attrs: str) -> tuple[bool, ...] | None:
    """Which dimensions an argument's or result's sharding splits over devices (None: no sharding attribute).
    Shardy (`sdy.sharding = #sdy.sharding<@mesh, [{"batch"}, {}]>`) or GSPMD (`mhlo.sharding = "{devices=[4,1]..}"`)."""
    sdy = re.search(r"#sdy\.sharding<@?\w+, \[(.*?)\]>", attrs)
    if sdy:
        return tuple(dim.strip() != "{}" for dim in re.findall(r"\{[^}]*\}", sdy.group(1)))
    gspmd = re.search(r'mhlo\.sharding = "\{([^"]*)\}"', attrs)
    if gspmd is None:
        return None
    tiles = re.match(r"devices=\[([\d,]+)\]", gspmd.group(1))
    if tiles is None:  # {replicated}, {maximal device=0}
        return ()
    counts = [int(c) for c in tiles.group(1).split(",")]
    if "last_tile_dim_replicate" in gspmd.group(1):
        counts = counts[:-1]
    return tuple(c > 1 for c in counts)


def mesh_devices(text: str) -> int:
    """Devices of the program's mesh: the Shardy mesh's axes, else `mhlo.num_partitions`."""
    mesh = re.search(r"sdy\.mesh @\w+ = <\[(.*?)\]>", text)
    if mesh:
        sizes = [int(s) for s in re.findall(r"=(\d+)", mesh.group(1))]
        return int(jnp.prod(jnp.array(sizes))) if sizes else 1
    partitions = re.search(r"mhlo\.num_partitions = (\d+)", text)
    return int(partitions.group(1)) if partitions else 1


def describe(lowered: Any) -> dict[str, Any]:
    """What the sharded tests check, as JSON: host transfers, custom calls, the mesh, and per argument / result
    its type, split dimensions and donation."""
    text = lowered.as_text()
    sig = signature(lowered)
    entry = lambda e: {"type": e["type"], "split": split_dims(e["attrs"]), "donated": donated(e["attrs"])}
    return {
        "host_transfers": host_transfers(text),
        "custom_calls": sorted(set(custom_call_targets(text))),
        "mesh_devices": mesh_devices(text),
        "args": [entry(e) for e in sig["args"]],
        "results": [entry(e) for e in sig["results"]],
    }


def sharded_report() -> dict[str, Any]:
    """The sharded predict (`batcher.jitted_apply` on every device, each family's tiny model) and the FSDP train
    step with donation (`training.sharded_steps`, the first family), lowered for cuda and tpu."""
    import numpy as np
    import optax

    from beit_flax import batcher, sharding, training
    from beit_flax.models import registry
    from beit_flax.params import init_params

    devices = jax.device_count()
    report: dict[str, Any] = {"devices": devices, "predict": {}, "train": {}}
    for name, family in registry.FAMILIES.items():
        config = family.tiny
        model = family.build(config, dtype="bfloat16")
        images = jax.ShapeDtypeStruct((2 * devices, *network_size(family, config), 3), jnp.float32)
        program = batcher.jitted_apply(model, sharding.local_mesh())
        lowered = lowered_texts(program, abstract_params(config), images)
        report["predict"][name] = {platform: describe(low) for platform, low in lowered.items()}
    family = next(iter(registry.FAMILIES.values()))
    config = family.tiny
    model = family.build(config)
    state = training.create_train_state(model, init_params(config, 0), optax.adamw(1e-3))
    mesh = sharding.train_mesh()
    shardings = sharding.state_shardings(state, mesh, fsdp=True, min_size=256)  # the tiny model's matrices split
    step, _ = training.sharded_steps(shardings, mesh, donate=True)
    h, w = network_size(family, config)
    target = training.LOSS_TARGETS[state.loss]
    batch = {
        "image": jax.ShapeDtypeStruct((2 * devices, h, w, 3), jnp.float32),
        target: jax.ShapeDtypeStruct((2 * devices, h, w), jnp.float32),
        "mask": jax.ShapeDtypeStruct((2 * devices, h, w), np.bool_),
    }
    lowered = lowered_texts(step, state, batch)
    report["train"] = {platform: describe(low) for platform, low in lowered.items()}
    report["train"]["state_leaves"] = len(jax.tree.leaves(state))
    report["train"]["fsdp_split_leaves"] = sum(
        any(s is not None for s in spec.spec) for spec in jax.tree.leaves(shardings)
    )
    report["train"]["family"] = family.name
    return report


if __name__ == "__main__":
    print(json.dumps(sharded_report()))
