"""`beit-demo`: the whole path end to end on a generated checkpoint, with the parity figure against torch.

1. build transformers' DPTForDepthEstimation for a released config with every weight perturbed (real weights cannot
   be downloaded here) and save it the way the `Intel/dpt-beit-*` hub repos ship it (config.json + model.safetensors);
2. convert it with `convert_weights`;
3. load the .msgpack with `beit_flax.load`, preprocess an image exactly like MiDaS run.py, run the jitted model,
   write the depth map (.npy and a colour .png) at the image's own size;
4. run the torch model on the same input and print max|flax - torch| / max|torch|.

The depth of a perturbed model is not a real depth map; the point is that the numbers match. With real weights,
convert the released file and use `beit-depth predict` (see README).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

DEFAULT_IMAGE = Path(__file__).resolve().parents[2] / "assets" / "scene.jpg"  # the repository's assets/


def main(argv: list[str] | None = None) -> int:
    from beit_flax.models.dpt.config import PRESETS

    parser = argparse.ArgumentParser(prog="beit-demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", choices=sorted(PRESETS), default="dpt_beit_base_384")
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE, help="RGB image (default: assets/scene.jpg)")
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="folder for checkpoint, weights, depth")
    parser.add_argument("--seed", type=int, default=0, help="seed of the perturbed weights")
    args = parser.parse_args(argv)

    import jax
    import jax.numpy as jnp
    import torch

    import beit_flax
    from beit_flax.convert.cli import main as convert_weights
    from beit_flax.demo.torch_model import build_reference
    from beit_flax.files import atomic_write_bytes
    from beit_flax.images import colorize, encode_png, read_image
    from beit_flax.models import postprocess, preprocess  # MiDaS run.py's steps (models/dpt/processing.py)
    from beit_flax.transforms import size_text

    args.out.mkdir(parents=True, exist_ok=True)
    config = PRESETS[args.variant]

    start = time.perf_counter()
    reference = build_reference(config, seed=args.seed)
    checkpoint = args.out / f"hf-{args.variant}"
    reference.save_pretrained(checkpoint)
    print(
        f"[1/4] perturbed {args.variant} saved as a transformers checkpoint in {checkpoint} "
        f"({time.perf_counter() - start:.1f} s)"
    )

    weights = args.out / f"{args.variant}.msgpack"
    print("[2/4] ", end="", flush=True)
    if convert_weights([str(checkpoint), str(weights)]) != 0:
        return 1

    model, params = beit_flax.load(weights)
    image = read_image(args.image)
    network_input = preprocess(image, model.config.net_size)[None]  # (1, H', W', 3)
    apply = jax.jit(model.apply)
    start = time.perf_counter()
    raw = np.asarray(apply({"params": params}, jnp.asarray(network_input)).block_until_ready())
    compiled = time.perf_counter() - start
    start = time.perf_counter()
    raw = np.asarray(apply({"params": params}, jnp.asarray(network_input)).block_until_ready())
    seconds = time.perf_counter() - start
    depth = postprocess(raw[0], image.shape[:2])
    np.save(args.out / "depth.npy", depth)
    atomic_write_bytes(args.out / "depth.png", encode_png(colorize(depth)))
    print(
        f"[3/4] {args.image.name} {size_text(*image.shape[:2])} -> network {size_text(*network_input.shape[1:3])}: "
        f"flax {seconds * 1e3:.0f} ms (first call incl. compile {compiled:.1f} s); "
        f"wrote {args.out / 'depth.npy'} and {args.out / 'depth.png'}"
    )

    with torch.inference_mode():
        expected = reference(pixel_values=torch.from_numpy(network_input).permute(0, 3, 1, 2)).predicted_depth
    expected = expected.numpy()
    error = float(np.abs(raw - expected).max() / np.abs(expected).max())
    print(
        f"[4/4] parity vs transformers (torch fp32, CPU): max|flax - torch| / max|torch| = {error:.2e} "
        f"(max|torch| = {np.abs(expected).max():.3f})"
    )
    print(json.dumps({"variant": args.variant, "parity_max_rel": error, "flax_ms": round(seconds * 1e3, 1)}))
    return 0 if error <= 1e-4 else 1


if __name__ == "__main__":
    raise SystemExit(main())
