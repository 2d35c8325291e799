"""`beit-depth evaluate` end to end on generated dataset folders: saved predictions and model runs (a relative MiDaS
and a metric ZoeDepth, both tiny) scored against the references of evaluation_helpers, which run the originals'
steps in torch (MiDaS run.py's resize and forward; ZoeDepth evaluate.py's infer: PrepForMidas, the model, the flip);
and its bad inputs: one line, exit 2."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torch_reference as ref
from evaluation_helpers import NINE, midas_relative, nyu_folder, worst_relative, zoedepth_compute_metrics
from predict_helpers import midas_size, read_rgb, tiny_files

from beit_flax.cli import main
from beit_flax.evaluation.datasets import open_dataset

NYU_SHAPE = (480, 640)  # the Eigen crop is a fixed window of NYU's size


@pytest.fixture(autouse=True)
def no_persistent_cache(monkeypatch):
    monkeypatch.setenv("BEIT_FLAX_CACHE_DIR", "off")


@pytest.fixture(scope="module")
def nyu(tmp_path_factory):
    root = tmp_path_factory.mktemp("nyu")
    truth = nyu_folder(root, NYU_SHAPE)
    return root, truth


def run(capsys, *args) -> tuple[int, dict | None, str]:
    code = main(["evaluate", "-q", *map(str, args)])
    out, err = capsys.readouterr()
    return code, json.loads(out) if code in (0, 1) else None, err


def mean(rows: list[dict]) -> dict:
    return {name: float(np.mean([row[name] for row in rows])) for name in rows[0]}


def test_saved_predictions_metric_and_relative(nyu, tmp_path, capsys):
    root, truth = nyu
    rng = np.random.default_rng(0)
    folder = tmp_path / "pred"
    maps = {}
    for key, depth in truth.items():
        small = F.interpolate(torch.from_numpy(depth.astype(np.float32))[None, None], (240, 320), mode="area")
        pred = (small[0, 0].numpy() * 1.1 * np.exp(rng.normal(0, 0.1, (240, 320)))).astype(np.float32)
        pred[5, 5], pred[6, 6] = np.nan, np.inf  # handled as ZoeDepth does
        maps[key] = pred
        (folder / key).parent.mkdir(parents=True, exist_ok=True)
        np.save(folder / f"{key}.npy", pred)
    samples = {item.key: item.load() for item in open_dataset("nyu", root)}
    code, result, _ = run(
        capsys, "--dataset", "nyu", root, "--predictions", folder, "--protocol", "metric", "--out", tmp_path / "r.json"
    )
    assert code == 0 and result["count"] == 2 and result["protocol"]["name"] == "metric"
    reference = mean([zoedepth_compute_metrics(samples[k].depth, maps[k], 1e-3, 10.0, "eigen") for k in maps])
    assert worst_relative(result["metrics"], reference, NINE) <= 1e-6  # seen: 9.8e-8
    assert json.loads((tmp_path / "r.json").read_text())["metrics"] == result["metrics"]
    with open(tmp_path / "r.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["key"] for r in rows] == sorted(truth) and all(r["status"] == "ok" for r in rows)

    # the same maps as relative inverse depth: MiDaS' alignment (1 / depth, then least squares)
    inverse = tmp_path / "inv"
    for key, pred in maps.items():
        (inverse / key).parent.mkdir(parents=True, exist_ok=True)
        np.save(inverse / f"{key}.npy", (1.0 / pred).astype(np.float32))
    code, result, _ = run(capsys, "--dataset", "nyu", root, "--predictions", inverse, "--protocol", "relative")
    assert code == 0 and result["headline"] == {"bad_1.25_pct": result["metrics"]["bad_1.25_pct"]}
    reference = mean([midas_relative(samples[k].depth, samples[k].valid, 1.0 / maps[k], 10.0, 10.0) for k in maps])
    assert worst_relative(result["metrics"], reference, (*NINE, "bad_1.25_pct")) <= 1e-6


def test_relative_model_run_matches_midas_steps_in_torch(nyu, capsys):
    """Tiny MiDaS: the network's output at its resolution (run.py's resize and forward, in torch), bilinear to the
    ground truth, aligned in float64; our run must agree to 1e-4 (the network's parity is ~1e-5)."""
    root, _ = nyu
    weights, sd_midas = tiny_files()
    code, result, _ = run(capsys, "--weights", weights, "--dataset", "nyu", root, "--batch-size", 2)
    assert code == 0 and result["protocol"]["name"] == "relative" and result["count"] == 2
    rows = []
    for item in open_dataset("nyu", root):
        sample = item.load()
        rgb = read_rgb(root / "official_splits" / "test" / f"{item.key}.jpg")
        x = torch.from_numpy(rgb).permute(2, 0, 1)[None]
        x = F.interpolate(x, size=midas_size(*NYU_SHAPE, 64), mode="bicubic", align_corners=False)
        net = ref.midas_forward(sd_midas, ref.TINY, ((x - 0.5) / 0.5).to(torch.float32))
        ref.assert_nondegenerate(net)
        rows.append(midas_relative(sample.depth, sample.valid, net[0].numpy(), 10.0, 10.0))
    assert worst_relative(result["metrics"], mean(rows), (*NINE, "bad_1.25_pct")) <= 1e-4  # seen: 2.7e-6


def test_metric_model_run_matches_zoedepths_evaluate_in_torch(nyu, tmp_path, capsys):
    """Tiny ZoeDepth (transformers, perturbed): evaluate.py's infer (PrepForMidas' bilinear resize, the model, the
    flipped image's output flipped back and averaged, at the network's size), then compute_metrics."""
    from beit_flax.convert import open_checkpoint
    from beit_flax.demo import zoedepth_torch as zt
    from beit_flax.models.dpt.config import TINY
    from beit_flax.models.zoedepth.convert.to_flax import to_flax
    from beit_flax.weights import save

    root, _ = nyu
    config = zt.tiny_configs(TINY)["n"].replace(net_size=(64, 96))
    model = zt.build_reference(config, seed=3)
    model.save_pretrained(tmp_path / "hub")
    (tmp_path / "hub" / "preprocessor_config.json").write_text(json.dumps({"size": {"height": 64, "width": 96}}))
    converted = to_flax(open_checkpoint(tmp_path / "hub"))
    save(tmp_path / "zoe.msgpack", converted.config, converted.params)
    code, result, _ = run(capsys, "--weights", tmp_path / "zoe.msgpack", "--dataset", "nyu", root)
    assert code == 0 and result["protocol"]["name"] == "metric" and result["protocol"]["flip_average"]
    rows = []
    for item in open_dataset("nyu", root):
        sample = item.load()
        x = torch.from_numpy(sample.image).permute(2, 0, 1)[None].float() / 255.0

        def once(x):
            net = (F.interpolate(x, (64, 96), mode="bilinear", align_corners=True) - 0.5) / 0.5  # 480 x 640 -> 64 x 96
            return zt.reference_outputs(model, net)[0]

        with torch.no_grad():
            pred = 0.5 * (once(x) + torch.flip(once(torch.flip(x, [3])), [2]))
        assert pred.std() > 0.05 * pred.abs().max() and (pred > 0).all()  # a map worth comparing
        rows.append(zoedepth_compute_metrics(sample.depth, pred[0].numpy(), 1e-3, 10.0, "eigen"))
    assert worst_relative(result["metrics"], mean(rows), NINE) <= 1e-4  # seen: 1.2e-6


def test_bad_inputs_are_one_line_and_exit_2(nyu, tmp_path, capsys):
    root, truth = nyu
    folder = tmp_path / "pred"
    key = sorted(truth)[0]
    (folder / key).parent.mkdir(parents=True)
    np.save(folder / f"{key}.npy", np.ones((4, 4), np.float32))
    cases = [
        (("--dataset", "nyu", tmp_path / "nowhere", "--predictions", folder, "--protocol", "metric"), "no such file"),
        (("--dataset", "nuy", root, "--predictions", folder, "--protocol", "metric"), "unknown dataset"),
        (("--dataset", "nyu", root, "--predictions", folder, "--protocol", "metric"), "1 of 2 maps missing"),
        (("--dataset", "nyu", root, "--predictions", folder), "needs --units"),
        (("--dataset", "kitti", root, "--predictions", folder, "--protocol", "metric"), "needs --split"),
        (("--dataset", "eth3d", root, "--predictions", folder, "--protocol", "metric"), "no ETH3D images"),
        (
            ("--dataset", "nyu", root, "--predictions", folder, "--units", "inverse-depth", "--protocol", "metric"),
            "no scale",
        ),
        (
            ("--dataset", "nyu", root, "--predictions", folder, "--protocol", "metric", "--out", tmp_path / "r.txt"),
            "name a .json file",
        ),
    ]
    for args, message in cases:
        code = main(["evaluate", "-q", *map(str, args)])
        out, err = capsys.readouterr()
        assert code == 2 and out == "" and message in err and len(err.strip().splitlines()) == 1, (args, err)


def test_a_bad_prediction_file_fails_that_image_only(nyu, tmp_path, capsys):
    root, truth = nyu
    folder = tmp_path / "pred"
    for n, key in enumerate(sorted(truth)):
        (folder / key).parent.mkdir(parents=True, exist_ok=True)
        np.save(folder / f"{key}.npy", np.full((3, 48, 64) if n else (48, 64), 2.0, np.float32))
    code, result, err = run(capsys, "--dataset", "nyu", root, "--predictions", folder, "--protocol", "metric")
    assert code == 1 and result["count"] == 1 and result["failed"] == 1 and "not an (H, W) map" in err
