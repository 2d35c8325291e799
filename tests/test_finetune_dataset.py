"""Fine-tuning on a benchmark's own files: the training splits the readers give (NYU's sync/ and official_splits/train,
the labelled .mat's trainNdxs, KITTI's Eigen train list), the Grain pipeline (deterministic, split over processes
without changing the global batch, resumable from its state; the crops checked against slices written here), and
`examples/finetune.py --dataset` end to end on generated NYU and KITTI folders: the test-split score improves, and
a run interrupted and resumed ends with the same parameters as one that was not."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from evaluation_helpers import nyu_folder, png16, rgb, room
from finetune_helpers import FAST_COMPILE

import beit_flax
from beit_flax import training
from beit_flax.evaluation.datasets import DatasetError, Item, Sample, open_dataset
from beit_flax.training.data import make_batch, resize_to_cover
from beit_flax.training.datasets import augment, fixed_crop, train_batches

BAD = "bad_1.25_pct"
SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "finetune.py"


@pytest.fixture(scope="module")
def finetune():
    spec = importlib.util.spec_from_file_location("finetune_dataset", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def no_persistent_cache(monkeypatch):
    monkeypatch.setenv("BEIT_FLAX_CACHE_DIR", "off")


@pytest.fixture
def fast_compile(monkeypatch):
    """The example's steps compiled with XLA's backend optimisation off (finetune_helpers.FAST_COMPILE: the same HLO
    and float semantics, about half the compile time); every run of a comparison compiles them the same way."""
    sharded_steps = training.sharded_steps
    monkeypatch.setattr(
        training, "sharded_steps", lambda *args, **kwargs: sharded_steps(*args, **kwargs, compiler_options=FAST_COMPILE)
    )


def nyu_train(root: Path, count: int = 6, shape=(48, 64)) -> list[str]:
    """BTS's training layout sync/<scene>/rgb_X.jpg + sync_depth_X.png (uint16 mm, 0 = hole); -> the keys."""
    keys = []
    for n in range(count):
        scene = f"living_room_{n % 2:04d}"
        image, depth = room(*shape, 100 + n)
        mm = np.round(depth * 1000).astype(np.uint16)
        mm[-3:, :] = 0
        rgb(root / "sync" / scene / f"rgb_{n:05d}.jpg", image)
        png16(root / "sync" / scene / f"sync_depth_{n:05d}.png", mm)
        keys.append(f"{scene}/rgb_{n:05d}")
    return keys


@pytest.fixture(scope="module")
def nyu_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("nyu")
    nyu_train(root)
    nyu_folder(root, scenes=("bathroom", "kitchen", "office"))  # official_splits/test
    return root


# --- the readers' training splits ----------------------------------------------------------------------------------


def test_nyu_training_split_layouts(nyu_root, tmp_path):
    keys = sorted(nyu_train(tmp_path / "a"))
    assert [item.key for item in open_dataset("nyu", tmp_path / "a", part="train")] == keys
    assert [item.key for item in open_dataset("nyu", tmp_path / "a" / "sync", part="train")] == keys
    listed = tmp_path / "train.txt"  # BTS's list: leading slashes, a focal length
    listed.write_text(f"/{keys[3]}.jpg /{keys[3].replace('rgb_', 'sync_depth_')}.png 518.8579\n")
    (item,) = open_dataset("nyu", tmp_path / "a", listed, part="train")
    assert item.key == keys[3] and item.load().depth.shape == (48, 64)
    # official_splits/train (the labelled set's 795) when there is no sync/
    official = tmp_path / "b" / "official_splits"
    nyu_folder(tmp_path / "b")
    (official / "test").rename(official / "train")
    assert len(open_dataset("nyu", tmp_path / "b", part="train")) == 2
    # a test folder is never taken for training data, and a dataset without a training split says which have one
    with pytest.raises(DatasetError, match="no NYU train images"):
        open_dataset("nyu", nyu_root / "official_splits" / "test", part="train")
    with pytest.raises(DatasetError, match=r"sintel has no training split here .*nyu, nyu_labeled, kitti"):
        open_dataset("sintel", tmp_path, part="train")


def test_nyu_labeled_and_kitti_training_splits(tmp_path):
    import h5py

    images, depths = zip(*(room(24, 32, i) for i in range(3)))
    with h5py.File(tmp_path / "nyu_depth_v2_labeled.mat", "w") as f:
        f["images"] = np.stack([im.transpose(2, 1, 0) for im in images])
        f["depths"] = np.stack([d.T for d in depths]).astype(np.float32)
    scipy.io.savemat(tmp_path / "splits.mat", {"testNdxs": np.array([[3]]), "trainNdxs": np.array([[2], [1]])})
    train = {item.key: item.load() for item in open_dataset("nyu_labeled", tmp_path, part="train")}
    assert list(train) == ["labeled/0002", "labeled/0001"]
    np.testing.assert_array_equal(train["labeled/0002"].image, images[1])

    kitti = tmp_path / "kitti"
    lines = []
    for n in range(2):
        image_rel = f"2011_09_26/2011_09_26_drive_0001_sync/image_02/data/{n:010d}.png"
        depth_rel = f"2011_09_26_drive_0001_sync/proj_depth/groundtruth/image_02/{n:010d}.png"
        rgb(kitti / "raw" / image_rel, room(20, 30, n)[0])
        png16(kitti / "data_depth_annotated" / "train" / depth_rel, np.full((20, 30), 256 * 7))
        lines.append(f"{image_rel} {depth_rel} 721.5377")
    (kitti / "train.txt").write_text("\n".join(lines))
    items = open_dataset("kitti", kitti, kitti / "train.txt", part="train")
    assert [item.key for item in items] == [line.split()[0][:-4] for line in lines]
    np.testing.assert_allclose(items[1].load().depth, 7.0)
    with pytest.raises(DatasetError, match="kitti needs --train-split FILE: the Eigen train list"):
        open_dataset("kitti", kitti, part="train")


# --- the Grain pipeline -------------------------------------------------------------------------------------------


def numbered(count: int, shape=(40, 56)) -> list[Item]:
    """Items whose image is filled with their number (so a batch says which items it holds); depth 1 + number."""

    def item(n: int) -> Item:
        image = np.full((*shape, 3), n, np.uint8)
        return Item(f"k{n}", lambda: Sample(image, np.full(shape, 1.0 + n, np.float32), np.ones(shape, bool)))

    return [item(n) for n in range(count)]


def which(batch) -> list[int]:
    return [round((x[0, 0, 0] * 0.5 + 0.5) * 255) for x in batch["image"]]


def test_batches_are_deterministic_per_epoch_shuffled_sharded_and_resumable():
    items = numbered(5)
    stream = train_batches(items, size=16, batch_size=4, seed=3, workers=2)
    steps = [which(next(stream)) for _ in range(5)]  # 20 positions: 4 epochs of 5
    assert stream.get_state() == {"next_index": 5}
    stream.close()
    order = [n for step in steps for n in step]
    epochs = [order[i : i + 5] for i in range(0, 20, 5)]
    assert all(sorted(e) == list(range(5)) for e in epochs) and len({tuple(e) for e in epochs}) > 1
    again = train_batches(items, size=16, batch_size=4, seed=3, workers=0)
    assert [which(next(again)) for _ in range(5)] == steps
    other = train_batches(items, size=16, batch_size=4, seed=4, workers=0)
    assert [which(next(other)) for _ in range(5)] != steps
    # two processes: each reads its half of every global batch, which is the one-process batch
    halves = [train_batches(items, size=16, batch_size=4, seed=3, process_index=p, process_count=2) for p in (0, 1)]
    assert [which(next(halves[0])) + which(next(halves[1])) for _ in range(5)] == steps
    # resumed from the state of step 3: the batches of an uninterrupted stream
    resumed = train_batches(items, size=16, batch_size=4, seed=3)
    resumed.set_state({"next_index": 3})
    assert [which(next(resumed)) for _ in range(2)] == steps[3:]
    with pytest.raises(ValueError, match="2 processes split evenly"):
        train_batches(items, size=16, batch_size=3, process_index=0, process_count=2)


def test_the_fixed_crops_and_the_random_window():
    frame = np.arange(480 * 640).reshape(480, 640)
    np.testing.assert_array_equal(fixed_crop(frame, "nyu_border"), frame[45:472, 43:608])  # BTS's (43, 45, 608, 472)
    kitti = np.arange(375 * 1242).reshape(375, 1242)
    np.testing.assert_array_equal(fixed_crop(kitti, "kb"), kitti[375 - 352 :, 13 : 13 + 1216])
    assert fixed_crop(kitti[:300], "kb").shape == (300, 1242)  # smaller than KITTI's frames: used whole
    with pytest.raises(ValueError, match="unknown training crop"):
        fixed_crop(frame, "garg")

    image, depth = room(48, 64, 7)
    valid = np.random.default_rng(0).random((48, 64)) > 0.2
    item = Item("x", lambda: Sample(image, depth.astype(np.float32), valid))
    # rows 45/480 .. 472/480 of 48 = 4.5 .. 47.2, columns 43/640 .. 608/640 of 64 = 4.3 .. 60.8, rounded
    cropped = [a[4:47, 4:61] for a in (image, depth.astype(np.float32), valid)]
    full = resize_to_cover(*cropped, 32)  # 32 x 42: the window moves along the columns only
    flips, offsets = set(), set()
    for seed in range(12):
        out = augment(item, 32, "nyu_border", np.random.default_rng(seed))
        assert out["image"].shape == (32, 32, 3) and out["depth"].dtype == np.float32
        matches = [
            (flip, left)
            for flip in (False, True)
            for left in range(full[1].shape[1] - 31)
            if np.array_equal((out["depth"][:, ::-1] if flip else out["depth"]), full[1][:, left : left + 32])
            and np.array_equal((out["image"][:, ::-1] if flip else out["image"]), full[0][:, left : left + 32])
            and np.array_equal((out["mask"][:, ::-1] if flip else out["mask"]), full[2][:, left : left + 32])
        ]
        assert matches, seed
        flips.add(matches[0][0])
        offsets.add(matches[0][1])
    assert flips == {False, True} and len(offsets) > 3
    # the batch is data.make_batch's of the samples (inverse depth at median 1 per image)
    batch = next(train_batches([item] * 2, size=32, batch_size=2, seed=1, crop="nyu_border", workers=0))
    assert set(batch) == {"image", "inverse_depth", "mask"}
    np.testing.assert_allclose(np.median(batch["inverse_depth"][0][batch["mask"][0]]), 1.0, rtol=1e-6)
    assert make_batch  # the target the loss reads is make_batch's (tests/test_data.py tests it)


# --- examples/finetune.py --dataset -----------------------------------------------------------------------------


def run_nyu(finetune, root: Path, out: Path, *extra: str) -> int:
    argv = ["--dataset", "nyu", str(root), "--steps", "24", "--size", "32", "--batch-size", "2", "--lr", "2e-3"]
    try:
        return finetune.main([*argv, "--save-every", "8", "--eval-every", "12", "--out", str(out), *extra])
    except SystemExit as exit:
        return exit.code


def evaluations(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "eval.jsonl").read_text().splitlines()]


def test_finetune_on_nyu_improves_the_test_score_and_resumes_exactly(
    finetune, nyu_root, tmp_path, monkeypatch, capsys, fast_compile
):
    whole = tmp_path / "whole"
    assert run_nyu(finetune, nyu_root, whole) == 0
    log = capsys.readouterr().out
    assert "nyu: 6 training / 3 test images" in log and "summary: relative protocol: abs_rel" in log
    scores = evaluations(whole)
    assert [s["step"] for s in scores] == [0, 12, 24]
    assert all(s["dataset"] == "nyu" and s["count"] == 3 and s["failed"] == 0 for s in scores)
    assert scores[0]["protocol"]["name"] == "relative" and scores[0]["protocol"]["depth_cap_m"] == 10.0
    first, last = scores[0]["metrics"], scores[-1]["metrics"]
    print(f"abs_rel {first['abs_rel']:.4f} -> {last['abs_rel']:.4f}, bad {first[BAD]:.2f} -> {last[BAD]:.2f} %")
    assert last["abs_rel"] < 0.8 * first["abs_rel"] and last[BAD] < first[BAD]

    # interrupted right after the checkpoint of step 8 (Ctrl-C: exit 130), then resumed: the same parameters
    parts, save = tmp_path / "parts", training.save_checkpoint

    def save_then_interrupt(directory, state, metadata=None, **kwargs):
        step = save(directory, state, metadata, **kwargs)
        if step == 8:
            raise KeyboardInterrupt
        return step

    monkeypatch.setattr(training, "save_checkpoint", save_then_interrupt)
    assert run_nyu(finetune, nyu_root, parts) == 130
    monkeypatch.setattr(training, "save_checkpoint", save)
    assert training.checkpoint_metadata(parts / "checkpoints")["loader"] == {"next_index": 8}
    assert run_nyu(finetune, nyu_root, parts, "--resume") == 0
    assert "resumed from step 8" in capsys.readouterr().out
    assert (parts / "finetuned.msgpack").read_bytes() == (whole / "finetuned.msgpack").read_bytes()
    assert [s["step"] for s in evaluations(parts)] == [0, 8, 12, 24]
    assert [s["metrics"] for s in evaluations(parts) if s["step"] == 24] == [last]

    # another training set under the same --out: refused, naming what changed
    (nyu_root / "sync" / "living_room_0000" / "rgb_00000.jpg").rename(nyu_root / "moved.jpg")
    try:
        assert run_nyu(finetune, nyu_root, parts, "--resume") == 2
    finally:
        (nyu_root / "moved.jpg").rename(nyu_root / "sync" / "living_room_0000" / "rgb_00000.jpg")
    err = capsys.readouterr().err
    assert err.startswith(f"finetune.py: error: {parts / 'checkpoints'} holds a run with other settings (dataset ")


def test_finetune_on_kitti_metric_with_the_kb_crop(finetune, tmp_path, capsys, fast_compile):
    """A tiny ZoeDepth (--loss silog) on KITTI-sized frames: the metric protocol (KB crop, Garg crop, 80 m)."""
    lines = {"train": [], "test": []}
    for n in range(4):
        part = "train" if n < 3 else "test"
        image_rel = f"2011_09_26/2011_09_26_drive_000{n}_sync/image_02/data/0000000000.png"
        depth_rel = f"2011_09_26_drive_000{n}_sync/proj_depth/groundtruth/image_02/0000000000.png"
        image, depth = room(375, 1242, n)
        value = np.round(depth * 4 * 256).astype(np.uint16)  # 4 .. 38 m
        value[np.random.default_rng(n).random(value.shape) < 0.7] = 0  # sparse LiDAR
        rgb(tmp_path / "raw" / image_rel, image)
        png16(tmp_path / "data_depth_annotated" / ("val" if part == "test" else "train") / depth_rel, value)
        lines[part].append(f"{image_rel} {depth_rel} 721.5377")
    for part, listed in lines.items():
        (tmp_path / f"{part}.txt").write_text("\n".join(listed))
    out = tmp_path / "run"
    argv = ["--dataset", "kitti", str(tmp_path), "--train-split", str(tmp_path / "train.txt")]
    argv += ["--loss", "silog", "--steps", "2", "--size", "32", "--batch-size", "2", "--out", str(out)]
    with pytest.raises(SystemExit) as exit:  # without the test list: one line, exit 1
        finetune.main(argv)
    assert exit.value.code == 1
    assert capsys.readouterr().err == (
        "finetune.py: error: --dataset: kitti needs --split FILE: the Eigen test list "
        "(kitti_eigen_test_files_with_gt.txt of BTS / ZoeDepth)\n"
    )
    assert finetune.main([*argv, "--split", str(tmp_path / "test.txt")]) == 0
    (before, after) = evaluations(out)
    assert before["protocol"]["name"] == "metric" and before["protocol"]["kb_crop"] is True
    assert before["count"] == after["count"] == 1 and np.isfinite(after["metrics"]["rmse"])
    assert beit_flax.load(out / "finetuned.msgpack")[0].config == finetune.small_zoedepth_config(32)


def test_dataset_arguments_are_checked_first(finetune, tmp_path, capsys):
    out = ["--out", str(tmp_path / "run")]
    cases = [
        (["--dataset", "sintel", str(tmp_path)], "--dataset NAME ROOT: NAME one of nyu, nyu_labeled, kitti"),
        (["--dataset", "nyu", str(tmp_path), "--data", str(tmp_path)], "and no --data"),
        (["--eval-every", "5"], "--train-split, --split, --eval-every and --eval-limit go with --dataset"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as exit:
            finetune.main([*argv, *out])
        assert exit.value.code == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
    with pytest.raises(SystemExit) as exit:
        finetune.main(["--dataset", "nyu", str(tmp_path / "missing"), *out])
    assert exit.value.code == 1
    assert capsys.readouterr().err == f"finetune.py: error: --dataset: {tmp_path / 'missing'}: no such file or folder\n"
    assert not (tmp_path / "run").exists()
