"""Datasets: paired folders, on-the-fly synthetic pairs, fixed validation sets."""

import numpy as np
import pytest
import torch
from PIL import Image

from datprl_edge.core.errors import ConfigError, InputNotFoundError, UnknownChoiceError
from datprl_edge.data.datasets import PairedFolderDataset, SyntheticDataset, validation_set
from datprl_edge.data.samples import list_samples


def _png(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def test_paired_folder_matches_by_stem(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("b", "a"):
        gt = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
        _png(tmp_path / "gt" / f"{name}.png", gt)
        _png(tmp_path / "lq" / f"{name}.png", gt[..., 0])  # grey lq becomes 3 equal channels
    ds = PairedFolderDataset(tmp_path, task="natural/denoise")
    assert len(ds) == 2
    item = ds[0]
    assert item["name"] == "a" and item["task"] == "natural/denoise" and item["domain"] == "natural"
    assert item["gt"].shape == (3, 20, 24) and item["gt"].dtype == torch.float32
    assert torch.equal(item["lq"][0], item["lq"][2])
    assert torch.allclose(item["lq"][0], item["gt"][0])


def test_paired_folder_errors(tmp_path):
    img = np.zeros((16, 16, 3), np.uint8)
    _png(tmp_path / "gt" / "one.png", img)
    with pytest.raises(InputNotFoundError, match="lq"):
        PairedFolderDataset(tmp_path)
    _png(tmp_path / "lq" / "two.png", img)
    with pytest.raises(ConfigError, match=r"1 in gt/ only \(one.png\); 1 in lq/ only \(two.png\)"):
        PairedFolderDataset(tmp_path)
    (tmp_path / "lq" / "two.png").unlink()
    _png(tmp_path / "lq" / "one.png", np.zeros((8, 16, 3), np.uint8))
    with pytest.raises(ConfigError, match="same size"):
        PairedFolderDataset(tmp_path)[0]


def test_synthetic_dataset_items_and_determinism():
    ds = SyntheticDataset(tasks="9task", severities=[0.3, 0.7], crop=48, length=18, seed=1)
    assert len(ds) == 18
    items = [ds[i] for i in range(9)]
    assert [it["task"] for it in items] == list(t.id for t in ds.tasks)
    for it in items:
        assert set(it) == {"lq", "gt", "task", "domain", "severity", "task_index"}
        assert it["lq"].shape == it["gt"].shape == (3, 48, 48) and it["lq"].dtype == torch.float32
        assert it["domain"] == it["task"].split("/")[0] and it["severity"] in (0.3, 0.7)
        assert 0 <= float(it["lq"].min()) and float(it["lq"].max()) <= 1
    again = SyntheticDataset(tasks="9task", severities=[0.3, 0.7], crop=48, length=18, seed=1)
    assert torch.equal(again[4]["lq"], items[4]["lq"]) and torch.equal(again[4]["gt"], items[4]["gt"])
    other = SyntheticDataset(tasks="9task", severities=[0.3, 0.7], crop=48, length=18, seed=2)
    assert not torch.equal(other[4]["gt"], items[4]["gt"])
    with pytest.raises(IndexError):
        ds[18]


def test_synthetic_dataset_draws_the_task_domain():
    natural = list_samples(domain="natural", split="train")
    with pytest.raises(ConfigError, match="no samples of domain 'medical'"):
        SyntheticDataset(natural, tasks=["medical/ct_denoise"], crop=32, length=2)
    ds = SyntheticDataset(tasks=["medical/mri_sr"], crop=32, length=4)
    assert {s.modality for s in ds.pools["medical/mri_sr"]} == {"mr"}
    with pytest.raises(ConfigError, match="severities"):
        SyntheticDataset(tasks="natural5", severities=[1.5])
    with pytest.raises(UnknownChoiceError):
        SyntheticDataset(tasks=["natural/rain"])


def test_validation_set_is_fixed_and_from_val():
    from datprl_edge.data.datasets import _validation_set

    a = validation_set("natural/derain", count=3, size=64, seed=0)
    assert a.lq.shape == a.gt.shape == (3, 3, 64, 64) and a.lq.dtype == np.float32
    assert validation_set("natural/derain", count=3, size=64, seed=0) is a  # cached
    assert not a.lq.flags.writeable
    val_names = {s.name for s in list_samples(domain="natural", split="val")}
    assert set(a.sources) <= val_names
    _validation_set.cache_clear()
    b = validation_set("natural/derain", count=3, size=64, seed=0)
    assert b is not a and np.array_equal(a.lq, b.lq) and np.array_equal(a.gt, b.gt)
    assert not np.array_equal(validation_set("natural/derain", 3, 64, seed=1).gt, a.gt)
    lq, gt = a.tensors()
    assert lq.shape == (3, 3, 64, 64) and a[1]["task"] == "natural/derain" and len(a) == 3
