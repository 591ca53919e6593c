"""The embedded shapes dataset: deterministic, cached, written atomically, read by timm, learnable by shape only."""
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from backbones.data import CLASSES, make_shapes_dataset, shapes_dataset_root
from backbones.data import shapes as shapes_mod

SMALL = dict(image_size=32, train_per_class=6, val_per_class=3)


def _files(root: Path):
    return sorted(p.relative_to(root) for p in root.rglob("*.png"))


def test_layout_and_counts(tmp_path):
    root = make_shapes_dataset(tmp_path / "ds", seed=0, **SMALL)
    assert root == tmp_path / "ds"
    assert len(CLASSES) == len(set(CLASSES)) == 10 and CLASSES == sorted(CLASSES)
    for split, n in (("train", 6), ("val", 3)):
        assert sorted(p.name for p in (root / split).iterdir()) == sorted(CLASSES)
        for cls in CLASSES:
            pngs = list((root / split / cls).glob("*.png"))
            assert len(pngs) == n
            with Image.open(pngs[0]) as im:
                assert im.size == (32, 32) and im.mode == "RGB"
    # nothing but the dataset and its marker next to it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_deterministic_and_seed_dependent(tmp_path):
    a = make_shapes_dataset(tmp_path / "a", seed=0, **SMALL)
    b = make_shapes_dataset(tmp_path / "b", seed=0, **SMALL)
    c = make_shapes_dataset(tmp_path / "c", seed=1, **SMALL)
    assert _files(a) == _files(b) == _files(c)
    sample = _files(a)[::7]
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in sample)
    assert all((a / f).read_bytes() != (c / f).read_bytes() for f in sample)
    # train and val images differ (per-image seeds depend on the split)
    assert (a / "train/circle/circle_00000.png").read_bytes() != (a / "val/circle/circle_00000.png").read_bytes()


def test_default_root_uses_cache_env_and_is_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("BACKBONES_DATA_CACHE", str(tmp_path / "cache"))
    root = make_shapes_dataset(seed=3, **SMALL)
    assert root == shapes_dataset_root(seed=3, **SMALL)
    assert root.parent == tmp_path / "cache" and root.name.startswith("shapes-v1-")
    assert shapes_dataset_root(seed=4, **SMALL) != root
    mtimes = {f: (root / f).stat().st_mtime_ns for f in _files(root)}

    calls = []
    monkeypatch.setattr(shapes_mod, "_write_split", lambda *a, **k: calls.append(a))
    assert make_shapes_dataset(seed=3, **SMALL) == root
    assert calls == []  # nothing regenerated
    assert {f: (root / f).stat().st_mtime_ns for f in _files(root)} == mtimes


def test_explicit_root_with_other_params_or_foreign_content_is_refused(tmp_path):
    root = make_shapes_dataset(tmp_path / "ds", seed=0, **SMALL)
    with pytest.raises(FileExistsError, match="different parameters"):
        make_shapes_dataset(root, seed=1, **SMALL)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a complete shapes dataset"):
        make_shapes_dataset(tmp_path / "other", **SMALL)
    assert (tmp_path / "other" / "x.txt").read_text() == "mine"
    (tmp_path / "empty").mkdir()  # an empty directory is simply filled
    assert len(_files(make_shapes_dataset(tmp_path / "empty", **SMALL))) == 90


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    real = shapes_mod.draw_shape_image
    n = {"calls": 0}

    def flaky(*a, **k):
        n["calls"] += 1
        if n["calls"] == 25:
            raise KeyboardInterrupt("simulated kill mid-way")
        return real(*a, **k)

    monkeypatch.setattr(shapes_mod, "draw_shape_image", flaky)
    with pytest.raises(KeyboardInterrupt):
        make_shapes_dataset(tmp_path / "ds", **SMALL)
    assert list(tmp_path.iterdir()) == []  # neither the target nor a temporary directory
    monkeypatch.setattr(shapes_mod, "draw_shape_image", real)
    assert len(_files(make_shapes_dataset(tmp_path / "ds", **SMALL))) == 90


def test_concurrent_writer_wins_race_without_corruption(tmp_path, monkeypatch):
    """Another process finishes the same dataset while we are still writing: ours is discarded, theirs kept."""
    real = shapes_mod._write_split
    state = {"nested": False}

    def racing(tmp, split, *a):
        if not state["nested"]:
            state["nested"] = True
            make_shapes_dataset(tmp_path / "ds", **SMALL)  # the "other process" completes first
        return real(tmp, split, *a)

    monkeypatch.setattr(shapes_mod, "_write_split", racing)
    root = make_shapes_dataset(tmp_path / "ds", **SMALL)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]
    ref = make_shapes_dataset(tmp_path / "ref", **SMALL)
    assert all((root / f).read_bytes() == (ref / f).read_bytes() for f in _files(ref))
    assert len(_files(root)) == 90


def test_timm_reads_it_as_image_folder(tmp_path):
    from timm.data import create_dataset, create_loader

    root = make_shapes_dataset(tmp_path / "ds", **SMALL)
    train = create_dataset("", root=str(root), split="train", is_training=True)
    val = create_dataset("", root=str(root), split="validation")
    assert len(train) == 60 and len(val) == 30
    assert train.reader.class_to_idx == {c: i for i, c in enumerate(CLASSES)}  # same order as CLASSES
    loader = create_loader(val, input_size=(3, 32, 32), batch_size=8, is_training=False, num_workers=0,
                           use_prefetcher=False, crop_pct=1.0)
    x, y = next(iter(loader))
    assert x.shape == (8, 3, 32, 32) and y.dtype == torch.int64 and int(y.max()) < 10


def _load(root: Path, split: str):
    xs, ys = [], []
    for ci, cls in enumerate(CLASSES):
        for f in sorted((root / split / cls).glob("*.png")):
            with Image.open(f) as im:
                xs.append(np.asarray(im.convert("RGB")))
            ys.append(ci)
    return torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).float().div(255), torch.tensor(ys)


def test_learnable_by_shape_not_by_colour(tmp_path):
    """A tiny CNN trained for a few seconds is far above chance; the mean colour of an image predicts nothing."""
    root = make_shapes_dataset(tmp_path / "ds", image_size=32, train_per_class=60, val_per_class=20, seed=0)
    xtr, ytr = _load(root, "train")
    xva, yva = _load(root, "val")
    chance = 1 / len(CLASSES)

    # colour-only baseline: nearest class centroid of the mean RGB
    mtr, mva = xtr.mean((2, 3)), xva.mean((2, 3))
    centroids = torch.stack([mtr[ytr == k].mean(0) for k in range(len(CLASSES))])
    colour_acc = (torch.cdist(mva, centroids).argmin(1) == yva).float().mean().item()
    assert colour_acc < 2 * chance, colour_acc

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a net this small runs faster (and steadier on a busy machine) on one thread
    try:
        torch.manual_seed(0)

        def block(i, o):
            return nn.Sequential(nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(),
                                 nn.MaxPool2d(2))

        net = nn.Sequential(block(3, 8), block(8, 16), block(16, 32), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
                            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, len(CLASSES)))
        steps = 300
        opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
        mean, std = xtr.mean((0, 2, 3), keepdim=True), xtr.std((0, 2, 3), keepdim=True)
        g = torch.Generator().manual_seed(0)
        for s in range(steps):
            idx = torch.randint(0, len(xtr), (32,), generator=g)
            xb = (xtr[idx] - mean) / std
            if s % 2:
                xb = xb.flip(3)
            loss = nn.functional.cross_entropy(net(xb), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        net.eval()
        with torch.no_grad():
            cnn_acc = (net((xva - mean) / std).argmax(1) == yva).float().mean().item()
    finally:
        torch.set_num_threads(threads)
    assert cnn_acc > 3 * chance, cnn_acc
    assert cnn_acc > colour_acc + 0.2
