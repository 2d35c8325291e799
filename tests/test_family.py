"""A model family is one folder: the toy family (`toy_family.py`, defined only in the tests) is registered as a family
that lives outside the package would be, and runs through every public entry point (convert_weights and
export_weights, `beit_flax.load` / `predict`, `beit-depth predict / video / export`, training), while no module under
`beit_flax/` knows it exists, nothing outside `models/` names a real family, and the package's imports have no
cycle."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import toy_family
from PIL import Image
from toy_family import FAMILY, ToyConfig, ToyDepth

import beit_flax
from beit_flax import training
from beit_flax.cli import main
from beit_flax.convert.cli import export_main
from beit_flax.convert.cli import main as convert_main
from beit_flax.models import registry
from beit_flax.params import init_params
from beit_flax.training.data import make_batch

PACKAGE = Path(beit_flax.__file__).resolve().parent
MAX_MODULE_LINES = 350
IMAGE_HW = (48, 64)  # not square, not a multiple of the net size: the pipeline resizes both ways


@pytest.fixture(scope="module")
def family() -> Iterator[object]:
    registry.register(FAMILY)
    try:
        yield FAMILY
    finally:
        registry.unregister(FAMILY.name)


@pytest.fixture(autouse=True)
def no_persistent_cache(monkeypatch):
    monkeypatch.setenv("BEIT_FLAX_CACHE_DIR", "off")  # in-process runs must not write to ~/.cache


@pytest.fixture(scope="module")
def weights(family, tmp_path_factory) -> Path:
    """A toy weights file from the package's one random init (the head bias from the family's `init_constants`)."""
    path = tmp_path_factory.mktemp("toy") / "toy.msgpack"
    beit_flax.save(path, FAMILY.tiny, init_params(FAMILY.tiny, seed=1, spread=0.1))
    return path


def toy_image(seed: int = 0) -> np.ndarray:
    """(48, 64, 3) uint8: a gradient with noise, so that the map varies."""
    rng = np.random.default_rng(seed)
    h, w = IMAGE_HW
    ramp = np.linspace(0, 255, w)[None, :, None] * np.linspace(0.2, 1.0, h)[:, None, None]
    return np.clip(ramp + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


def toy_state_dict(config: ToyConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    """A checkpoint of the toy's own torch layout, named and shaped here (not from the family's key table)."""
    g = torch.Generator().manual_seed(seed)
    randn = lambda *shape: torch.randn(*shape, generator=g)
    c, p = config.width, config.patch_size
    state = {"toy.embed.weight": randn(c, 3, p, p), "toy.embed.bias": randn(c)}
    for i in range(config.depth):
        state[f"toy.blocks.{i}.fc.weight"] = randn(c, c)
        state[f"toy.blocks.{i}.fc.bias"] = randn(c)
    state |= {"toy.head.weight": randn(1, c, 3, 3), "toy.head.bias": randn(1)}
    return state


# --- convert_weights / beit_flax.load / export_weights ---------------------------------------------------------------


def test_convert_load_and_export_round_trip(family, tmp_path):
    config = ToyConfig(width=6, depth=3, patch_size=4)  # not the default: the converter reads it off the shapes
    state = toy_state_dict(config)
    pt, out, back = tmp_path / "toy.pt", tmp_path / "toy.msgpack", tmp_path / "back.pt"
    torch.save(state, pt)
    assert convert_main([str(pt), str(out)]) == 0

    model, params = beit_flax.load(out)
    assert type(model) is ToyDepth and model.config == config
    assert registry.of_model(model) is FAMILY
    conv = lambda name: state[name].permute(2, 3, 1, 0).numpy()  # (out, in, kh, kw) -> (kh, kw, in, out)
    expected = {
        ("patch_embed", "proj", "kernel"): conv("toy.embed.weight"),
        ("patch_embed", "proj", "bias"): state["toy.embed.bias"].numpy(),
        ("head", "conv", "kernel"): conv("toy.head.weight"),
        ("head", "conv", "bias"): state["toy.head.bias"].numpy(),
    }
    for i in range(config.depth):
        expected[("encoder", f"block_{i}", "dense", "kernel")] = state[f"toy.blocks.{i}.fc.weight"].numpy().T
        expected[("encoder", f"block_{i}", "dense", "bias")] = state[f"toy.blocks.{i}.fc.bias"].numpy()
    flat = {path: np.asarray(leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
    flat = {tuple(k.key for k in path): leaf for path, leaf in flat.items()}
    assert flat.keys() == expected.keys()
    for path, value in expected.items():
        assert flat[path].dtype == np.float32
        np.testing.assert_array_equal(flat[path], value, err_msg="/".join(path))

    assert export_main([str(out), str(back)]) == 0
    restored = torch.load(back, weights_only=True)
    assert restored.keys() == state.keys()
    for name, tensor in state.items():
        assert restored[name].dtype == torch.float32 and torch.equal(restored[name], tensor), name


def test_convert_refuses_unknown_keys(family, tmp_path, capsys):
    state = toy_state_dict(FAMILY.tiny) | {"toy.extra.weight": torch.zeros(3)}
    torch.save(state, tmp_path / "toy.pt")
    assert convert_main([str(tmp_path / "toy.pt"), str(tmp_path / "toy.msgpack")]) == 2
    assert "toy.extra.weight" in capsys.readouterr().err
    assert not (tmp_path / "toy.msgpack").exists()


# --- beit-depth predict / video / export -----------------------------------------------------------------------------


def test_predict_cli_writes_the_api_maps_in_meters(weights, tmp_path):
    image = toy_image()
    Image.fromarray(image).save(tmp_path / "scene.png")
    out = tmp_path / "out"
    argv = ["predict", "--weights", str(weights), str(tmp_path / "scene.png"), "--out", str(out), "--ply", "-q"]
    assert main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == ["scene.npy", "scene.ply", "scene.png"]

    depth = np.load(out / "scene.npy")
    model, params = beit_flax.load(weights)
    expected = beit_flax.predict(model, params, [image])[0]
    assert depth.shape == IMAGE_HW and depth.dtype == np.float32
    np.testing.assert_array_equal(depth, expected)
    assert np.ptp(depth) > 0 and np.all(depth > 0)  # softplus: positive meters, and not a constant map

    with Image.open(out / "scene.png") as png:
        assert png.size == IMAGE_HW[::-1]
        assert png.text["depth_range_m"] == "0 5"

    import trimesh

    cloud = trimesh.load(out / "scene.ply")
    assert len(cloud.vertices) == depth.size
    # metric: the point cloud's z is the map itself, in meters (the camera looks down -z)
    np.testing.assert_allclose(-cloud.vertices[:, 2], depth.reshape(-1), rtol=1e-6)


def test_predict_cli_refuses_no_pad(weights, tmp_path, capsys):
    Image.fromarray(toy_image()).save(tmp_path / "scene.png")
    argv = ["predict", "--weights", str(weights), str(tmp_path / "scene.png"), "--out", str(tmp_path / "out")]
    assert main([*argv, "--no-pad", "-q"]) == 2
    err = capsys.readouterr().err
    assert "--no-pad" in err and "Toy" in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")  # imageio-ffmpeg: fork + exec at once
def test_video_cli(weights, tmp_path):
    imageio = pytest.importorskip("imageio.v2")
    pytest.importorskip("imageio_ffmpeg")
    clip, out = tmp_path / "clip.mp4", tmp_path / "depth.mp4"
    with imageio.get_writer(clip, fps=5, codec="libx264", macro_block_size=1) as writer:
        for k in range(6):
            writer.append_data(np.roll(toy_image(k), 4 * k, axis=1))
    assert main(["video", str(clip), "--weights", str(weights), "--out", str(out), "-q"]) == 0
    assert out.is_file() and out.stat().st_size > 0
    with imageio.get_reader(out) as reader:
        frames = [frame for frame in reader]
    assert len(frames) == 6 and frames[0].shape[:2] == IMAGE_HW


def test_export_stablehlo_cli(weights, tmp_path):
    out = tmp_path / "toy.stablehlo"
    argv = ["export", "--weights", str(weights), "--format", "stablehlo", "--size", "32x48", "--platforms", "cpu"]
    assert main([*argv, "--out", str(out)]) == 0
    exported = jax.export.deserialize(bytearray(out.read_bytes()))
    x = jax.random.normal(jax.random.key(0), (2, 32, 48, 3), jnp.float32)
    model, params = beit_flax.load(weights)
    got = np.asarray(exported.call(x))
    assert got.shape == (2, 32, 48) and got.dtype == np.float32
    # the baked-in weights are constants XLA may fold: equal up to float32 rounding (an ulp or so)
    np.testing.assert_allclose(got, np.asarray(model.apply({"params": params}, x)), rtol=1e-6, atol=1e-6)
    # the size must be a multiple of the family's input multiple (the patch size, 8)
    assert main(["export", "--weights", str(weights), "--format", "stablehlo", "--size", "36", "--out", str(out)]) == 2


# --- training --------------------------------------------------------------------------------------------------------


def test_train_step_with_the_family_loss(weights):
    model, params = beit_flax.load(weights)
    state = training.create_train_state(model, params, optax.adam(1e-3))
    assert state.loss == "silog" and state.input_multiple == FAMILY.tiny.patch_size
    assert training.backbone(model) == ("patch_embed", "encoder")

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    depth = rng.uniform(0.5, 4.0, (2, 32, 32)).astype(np.float32)
    batch = make_batch(images, depth, np.ones(depth.shape, bool), target="depth")
    new_state, metrics = training.jit_train_step(state, batch)
    assert np.isfinite(float(metrics["loss"])) and float(metrics["grad_norm"]) > 0
    changed = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))), state.params, new_state.params)
    assert all(jax.tree.leaves(changed)), changed


# --- what the package knows ------------------------------------------------------------------------------------------


def package_files(*, exclude: tuple[str, ...] = ()) -> list[Path]:
    files = sorted(PACKAGE.rglob("*.py"))
    return [f for f in files if not any(f.relative_to(PACKAGE).as_posix().startswith(e) for e in exclude)]


def code_only(source: str) -> str:
    """The module's code without its comments and docstrings (`ast.unparse` drops comments): what it does, not what
    its prose refers to."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            node.body = body[1:] or [ast.Pass()]
    return ast.unparse(tree)


def test_no_module_knows_the_toy_family():
    """No code under beit_flax/ says "toy" (names, strings); no text at all, prose included, names the toy's own
    classes or module. (Prose may speak of "the tests' toy family": registry.py's module doc does.)"""
    word = re.compile(r"\btoy\b", re.IGNORECASE)
    names = re.compile(r"toydepth|toyconfig|toy_family|toyprocessing", re.IGNORECASE)
    found = []
    for path in package_files():
        text = path.read_text()
        found += [f"{path.relative_to(PACKAGE.parent)}: {m[0]!r} in code" for m in word.finditer(code_only(text))]
        found += [f"{path.relative_to(PACKAGE.parent)}: {m[0]!r}" for m in names.finditer(text)]
    assert not found, found


REAL_FAMILIES = ("beit_flax.models.dpt", "beit_flax.models.zoedepth")


def test_nothing_outside_models_names_a_real_family():
    problems = []
    for path in package_files(exclude=("models/", "demo/")):
        where = path.relative_to(PACKAGE.parent)
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            named = [n for n in names if any(n == real or n.startswith(real + ".") for real in REAL_FAMILIES)]
            if named:
                problems.append(f"{where}:{node.lineno}: imports {named[0]}")
        code = code_only(path.read_text())
        for call in re.finditer(r"isinstance\([^)]*\b(DPT|ZoeDepth|DPTConfig|ZoeDepthConfig)\b", code):
            problems.append(f"{where}: {call[0]}")
    assert not problems, problems


# --- the import graph ------------------------------------------------------------------------------------------------


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_exists(name: str) -> bool:
    base = PACKAGE.parent.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def top_level_imports(tree: ast.Module) -> Iterator[ast.Import | ast.ImportFrom]:
    """Import statements that run when the module is imported: at module level (inside module-level if / try /
    with / class bodies too), not inside functions, not under `if TYPE_CHECKING:`."""
    stack: list[ast.AST] = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        elif isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
        else:
            stack.extend(child for child in ast.iter_child_nodes(node) if isinstance(child, ast.stmt))
            stack.extend(h for h in getattr(node, "handlers", ()))


def import_graph() -> dict[str, set[str]]:
    """{module: the beit_flax modules its top-level imports load}: `from a.b import c` is a.b.c where that is a
    module, else a.b; a package is its __init__."""
    graph: dict[str, set[str]] = {}
    for path in package_files():
        name = module_name(path)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = graph.setdefault(name, set())
        for node in top_level_imports(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:  # relative: from the package, up level - 1
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                sub = [f"{base}.{alias.name}" for alias in node.names]
                targets = [t if module_exists(t) else base for t in sub]
            edges.update(t for t in targets if t.split(".")[0] == PACKAGE.name and module_exists(t))
        edges.discard(name)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def test_import_graph_is_acyclic():
    graph = import_graph()
    assert "beit_flax.models.registry" in graph["beit_flax.weights"]  # the graph sees the imports it should
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_module_is_over_the_line_limit():
    long = {
        str(path.relative_to(PACKAGE.parent)): n
        for path in package_files()
        if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_the_toy_family_is_found_by_its_checkpoint_and_nothing_else(family):
    names = {name: tuple(t.shape) for name, t in toy_state_dict(FAMILY.tiny).items()}
    assert registry.detect(names) == (FAMILY, "release")
    assert toy_family.detect({"pretrained.model.cls_token": (1, 1, 8)}) is None
    assert registry.of_config(FAMILY.tiny) is FAMILY
