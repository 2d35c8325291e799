"""`beit_flax.nnx`: the linen DPT from flax.nnx (bridge.ToNNX) gives the linen outputs, losses and gradients exactly,
holds the linen params tree, trains with nnx.Optimizer and saves back. TINY, spread init, a non-square 48 x 80 input."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx, traverse_util
from tiny_config import TINY as CFG

import beit_flax
import beit_flax.nnx as bnnx
from beit_flax.params import init_params

ROOT = Path(__file__).resolve().parents[1]
LR = 0.5  # large enough that one step visibly moves every parameter that has a gradient


@pytest.fixture(scope="module")
def params():
    return init_params(CFG, seed=0, spread=0.1)


@pytest.fixture(scope="module")
def images():
    return jax.random.uniform(jax.random.key(2), (2, 48, 80, 3), jnp.float32, -1.0, 1.0)


def flat(tree) -> dict[str, np.ndarray]:
    return {path: np.asarray(leaf) for path, leaf in traverse_util.flatten_dict(tree, sep="/").items()}


def assert_same_tree(got, want):
    """Same paths, shapes, dtypes and bit-identical values."""
    got, want = flat(got), flat(want)
    assert got.keys() == want.keys()
    for path in want:
        assert got[path].dtype == want[path].dtype and got[path].shape == want[path].shape, path
        np.testing.assert_array_equal(got[path], want[path], err_msg=path)


def linen_apply(model):
    return jax.jit(lambda p, x: model.apply({"params": p}, x))


def test_state_is_the_linen_tree_and_round_trips(params, tmp_path):
    model = beit_flax.DPT(CFG)
    nnx_model = bnnx.to_nnx(model, params)
    assert isinstance(nnx_model, nnx.Module)
    assert_same_tree(nnx.to_pure_dict(nnx.state(nnx_model, nnx.Param)), params)
    assert set(nnx.state(nnx_model).keys()) == set(params)  # nothing but the params (no RNG state)
    back_model, back = bnnx.from_nnx(nnx_model)
    assert back_model == model
    assert_same_tree(back, params)
    bnnx.save(tmp_path / "w.msgpack", nnx_model)
    loaded_model, loaded = beit_flax.load(tmp_path / "w.msgpack")
    assert loaded_model == model
    assert_same_tree(loaded, params)
    assert_same_tree(nnx.to_pure_dict(nnx.state(bnnx.load(tmp_path / "w.msgpack"), nnx.Param)), params)


def test_outputs_equal_linen_bit_for_bit(params, images):
    nnx_model = bnnx.to_nnx(beit_flax.DPT(CFG), params)
    want = linen_apply(beit_flax.DPT(CFG))(params, images)
    got = nnx.jit(lambda m, x: m(x))(nnx_model, images)
    assert got.shape == (2, 48, 80) and got.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    # the plain eager call, against the eager linen apply
    eager = beit_flax.DPT(CFG).apply({"params": params}, images)
    np.testing.assert_array_equal(np.asarray(nnx_model(images)), np.asarray(eager))


@pytest.mark.parametrize("knobs", [{"dtype": "bfloat16"}, {"scan": True}], ids=["bfloat16", "scan"])
def test_execution_knobs_same_params_same_outputs(params, images, knobs):
    model = beit_flax.DPT(CFG, **knobs)
    nnx_model = bnnx.to_nnx(model, params)
    assert_same_tree(nnx.to_pure_dict(nnx.state(nnx_model, nnx.Param)), params)  # float32 params, unstacked paths
    got = nnx.jit(lambda m, x: m(x))(nnx_model, images)
    assert got.dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(got), np.asarray(linen_apply(model)(params, images)))
    assert_same_tree(bnnx.from_nnx(nnx_model)[1], params)


def test_one_optimizer_step_matches_linen(params, images):
    target = jax.random.uniform(jax.random.key(3), (2, 48, 80), jnp.float32)
    loss_of = lambda depth: jnp.mean((depth - target) ** 2)
    model = beit_flax.DPT(CFG)

    want_loss, want_grads = jax.jit(jax.value_and_grad(lambda p: loss_of(model.apply({"params": p}, images))))(params)
    want_params = optax.apply_updates(params, optax.sgd(LR).update(want_grads, optax.sgd(LR).init(params))[0])

    nnx_model = bnnx.to_nnx(model, params)
    optimizer = nnx.Optimizer(nnx_model, optax.sgd(LR), wrt=nnx.Param)

    @nnx.jit
    def step(m, opt):
        loss, grads = nnx.value_and_grad(lambda m: loss_of(m(images)))(m)
        opt.update(m, grads)
        return loss, grads

    loss, grads = step(nnx_model, optimizer)
    print(f"\nloss nnx {float(loss)!r} linen {float(want_loss)!r}")
    assert float(loss) == float(want_loss)
    assert_same_tree(nnx.to_pure_dict(grads), want_grads)
    trained = bnnx.from_nnx(nnx_model)[1]
    assert_same_tree(trained, want_params)  # the linen SGD step, bit for bit
    unchanged = [path for path, new in flat(trained).items() if np.array_equal(new, flat(params)[path])]
    assert not unchanged, "every parameter should move (spread init)"


def test_errors(params):
    with pytest.raises(ValueError, match="missing head/conv3/bias"):
        bad = {**params, "head": {**params["head"], "conv3": {"kernel": params["head"]["conv3"]["kernel"]}}}
        bnnx.to_nnx(beit_flax.DPT(CFG), bad)
    with pytest.raises(TypeError):
        bnnx.from_nnx(nnx.Linear(2, 2, rngs=nnx.Rngs(0)))
    with pytest.raises(TypeError):
        bnnx.to_nnx(nnx.Linear(2, 2, rngs=nnx.Rngs(0)), params)


def readme_nnx_block() -> str:
    """The fine-tuning block of README's "From flax.nnx", as it stands there."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### From flax.nnx", 1)[1].split("\n## ", 1)[0]
    blocks = [b.split("```", 1)[0] for b in section.split("```python\n")[1:]]
    (block,) = [b for b in blocks if "train_step" in b]
    return block


def test_readme_snippet_runs_as_written(params, tmp_path, monkeypatch):
    """The README's NNX block, unedited, in a folder laid out as the clone after `beit-demo` (the scene, a weights
    file under the name it loads: here the tiny model): it predicts what linen predicts, takes a jitted step that moves
    the parameters, and saves a file that loads back with those parameters."""
    (tmp_path / "assets").mkdir()
    (tmp_path / "assets" / "scene.jpg").write_bytes((ROOT / "assets" / "scene.jpg").read_bytes())
    (tmp_path / "demo_out").mkdir()
    beit_flax.save(tmp_path / "demo_out" / "dpt_beit_base_384.msgpack", CFG, params)
    monkeypatch.chdir(tmp_path)
    names: dict = {}
    exec(compile(readme_nnx_block(), "README.md (From flax.nnx)", "exec"), names)

    assert names["images"].shape == (1, 384, 512, 3) and names["depth"].shape == (1, 384, 512)
    np.testing.assert_array_equal(names["depth"], linen_apply(beit_flax.DPT(CFG))(params, names["images"]))
    assert np.isfinite(float(names["loss"])) and float(names["loss"]) > 0
    saved = beit_flax.load(tmp_path / "demo_out" / "finetuned.msgpack")[1]
    assert_same_tree(saved, names["params"])
    moved = [path for path, new in flat(saved).items() if not np.array_equal(new, flat(params)[path])]
    assert len(moved) > len(flat(params)) // 2, "the step should move the parameters that have a gradient"
