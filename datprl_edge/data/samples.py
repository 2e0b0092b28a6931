"""The bundled real images: list them and load them as float32 RGB arrays in [0, 1]."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from datprl_edge.core.errors import UnknownChoiceError

SAMPLES_DIR = Path(__file__).resolve().parent / "samples"
MANIFEST_PATH = SAMPLES_DIR / "MANIFEST.json"
DOMAINS = ("natural", "medical", "remote")
SPLITS = ("train", "val")


@dataclass(frozen=True)
class Sample:
    name: str  # file name inside the samples folder
    path: Path
    domain: str  # 'natural' | 'medical' | 'remote'
    split: str  # 'train' | 'val'
    source: str  # package:file the image was cut from
    modality: str  # 'rgb', 'gray', 'ct', 'mr', 'xray', 'us', 'nm', 'pet', 'aerial', 'satellite', ...


@lru_cache(maxsize=1)
def _manifest_entries() -> tuple[dict, ...]:
    if not MANIFEST_PATH.exists():
        return ()
    data = json.loads(MANIFEST_PATH.read_text(encoding="utf-8"))
    return tuple(data.get("files", []))


def list_samples(domain: str | None = None, split: str | None = None) -> list[Sample]:
    """Bundled samples, optionally filtered by domain and split, sorted by name."""
    if domain is not None and domain not in DOMAINS:
        raise UnknownChoiceError("domain", domain, DOMAINS)
    if split is not None and split not in SPLITS:
        raise UnknownChoiceError("split", split, SPLITS)
    out = []
    for e in _manifest_entries():
        if domain is not None and e["domain"] != domain:
            continue
        if split is not None and e["split"] != split:
            continue
        out.append(
            Sample(
                name=e["file"],
                path=SAMPLES_DIR / e["file"],
                domain=e["domain"],
                split=e["split"],
                source=f"{e['source_package']}:{e['source_file']}",
                modality=e["modality"],
            )
        )
    return sorted(out, key=lambda s: s.name)


def load_sample(sample: Sample) -> np.ndarray:
    """Float32 (H, W, 3) RGB in [0, 1]; grayscale is replicated to three channels."""
    from datprl_edge.io.images import read_image

    arr, _ = read_image(sample.path)
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return np.ascontiguousarray(arr, dtype=np.float32)
