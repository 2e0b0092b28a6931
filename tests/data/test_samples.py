"""The bundled real images: manifest integrity, domain coverage, splits and the samples API."""

import json
from collections import defaultdict

import numpy as np
import pytest

from datprl_edge.core.errors import UnknownChoiceError
from datprl_edge.data.samples import DOMAINS, MANIFEST_PATH, SAMPLES_DIR, list_samples, load_sample
from datprl_edge.io.checkpoint import sha256_file

MANIFEST = json.loads(MANIFEST_PATH.read_text(encoding="utf-8"))
FORBIDDEN = ("scikit-learn", "sklearn", "matplotlib", "debian")


def test_every_file_listed_with_matching_sha256():
    listed = {e["file"]: e for e in MANIFEST["files"]}
    on_disk = {p.name for p in SAMPLES_DIR.iterdir() if p.name != MANIFEST_PATH.name}
    assert on_disk == set(listed)
    for name, entry in listed.items():
        assert sha256_file(SAMPLES_DIR / name) == entry["sha256"], name


def test_manifest_fields_and_size():
    keys = {"file", "domain", "modality", "split", "source_key", "source_package", "source_version",
            "source_file", "license", "crop", "sha256"}
    total = 0
    for e in MANIFEST["files"]:
        assert keys <= set(e), e["file"]
        assert e["domain"] in DOMAINS and e["split"] in ("train", "val") and e["license"]
        assert not any(f in e["source_package"].lower() for f in FORBIDDEN)
        assert set(e["crop"]) == {"y", "x", "h", "w"} and 256 <= min(e["crop"]["h"], e["crop"]["w"]) <= 512
        total += (SAMPLES_DIR / e["file"]).stat().st_size
    assert total < 25e6


def test_at_least_twelve_large_sources_per_domain():
    sources = defaultdict(set)
    for s in MANIFEST["sources"]:
        assert min(s["shape"][:2]) > 256, s["key"]
    used = {e["source_key"] for e in MANIFEST["files"]}
    for s in MANIFEST["sources"]:
        if s["key"] in used:
            sources[s["domain"]].add(s["key"])
    for domain in DOMAINS:
        assert len(sources[domain]) >= 12, domain


def test_train_and_val_disjoint_by_source():
    splits = defaultdict(set)
    for e in MANIFEST["files"]:
        splits[(e["domain"], e["split"])].add(e["source_key"])
    for domain in DOMAINS:
        train, val = splits[(domain, "train")], splits[(domain, "val")]
        assert train and not train & val
        assert 3 <= len(val) <= 4, domain
    by_source = defaultdict(set)
    for e in MANIFEST["files"]:
        by_source[e["source_file"]].add(e["split"])
    assert all(len(s) == 1 for s in by_source.values())


def test_deep_medical_sources_are_sixteen_bit():
    for e in MANIFEST["files"]:
        if e["modality"] in ("ct", "mr", "xray"):
            assert e["dtype"] == "uint16", e["file"]


def test_list_and_load_samples():
    every = list_samples()
    assert len(every) == len(MANIFEST["files"])
    val = list_samples("medical", "val")
    assert val and all(s.domain == "medical" and s.split == "val" for s in val)
    assert {s.modality for s in list_samples("remote")} >= {"aerial", "satellite"}
    for s in (val[0], list_samples("natural")[0], list_samples("remote", "train")[0]):
        arr = load_sample(s)
        assert arr.dtype == np.float32 and arr.ndim == 3 and arr.shape[2] == 3
        assert 0.0 <= arr.min() <= arr.max() <= 1.0 and min(arr.shape[:2]) >= 256
        assert ":" in s.source and s.path.is_file()
    with pytest.raises(UnknownChoiceError, match="did you mean 'medical'"):
        list_samples("medicl")
    with pytest.raises(UnknownChoiceError):
        list_samples(split="test")


def test_bundler_reproduces_a_committed_crop(tmp_path):
    from datprl_edge.data.bundle import SOURCES, PackageFiles, choose_crops, load_source
    from datprl_edge.io.images import ImageInfo, write_image

    src = next(s for s in SOURCES if s.key == "camera")
    arr, _ = load_source(src, PackageFiles(src.package))
    y, x, h, w = choose_crops(arr, src.size, src.count, src.blank_ok)[0]
    entry = next(e for e in MANIFEST["files"] if e["source_key"] == "camera")
    assert entry["crop"] == {"y": y, "x": x, "h": h, "w": w}
    tile = arr[y:y + h, x:x + w]
    write_image(tmp_path / "c.png", tile / 255.0, ImageInfo("png", "uint8", 8, tile.shape))
    assert sha256_file(tmp_path / "c.png") == entry["sha256"]


def test_bundler_explains_missing_packages():
    import importlib.metadata

    from datprl_edge.core.errors import ConfigError
    from datprl_edge.data.bundle import PackageFiles

    try:
        importlib.metadata.distribution("deepforest")
        pytest.skip("deepforest is installed here")
    except importlib.metadata.PackageNotFoundError:
        pass
    with pytest.raises(ConfigError, match="pip download --no-deps deepforest"):
        PackageFiles("deepforest")
