"""Teacher-output cache: the teacher runs once per training pair, not once per step.

The training pairs are a fixed indexed pool, so the teacher's output, routing logits and the
features that feature distillation needs can be computed once and read back by pair index. Stored
as `.npy` memory maps (outputs and features float16, logits float32) with `meta.json` holding a
fingerprint of the teacher weights and the data; a stale cache (other teacher or data) is rebuilt.
Under DDP each rank fills every world_size-th row of the shared files.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from datprl_edge.io.atomic import write_text_atomic
from datprl_edge.train import distributed as D
from datprl_edge.train.losses import POOLS

FORMAT = "datprl-edge-teacher-cache/1"


def teacher_fingerprint(teacher, data_desc: str, feature_names) -> str:
    h = hashlib.sha256()
    for k, v in teacher.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().float().cpu().contiguous().numpy().tobytes())
    h.update(json.dumps([data_desc, sorted(feature_names)]).encode())
    return h.hexdigest()


class TeacherCache:
    def __init__(self, root: Path, meta: dict):
        self.root = Path(root)
        self.meta = meta
        self.arrays = {k: np.load(self.root / f"{k}.npy", mmap_mode="r") for k in meta["layout"]}

    @property
    def num_items(self) -> int:
        return int(self.meta["num_items"])

    @classmethod
    def prepare(cls, root, teacher, data, feature_names, env, batch: int = 8, progress: bool = False):
        """Open the cache at `root`, (re)building it first when it is missing, incomplete or stale."""
        root = Path(root)
        fp = teacher_fingerprint(teacher, data.describe(), feature_names)
        meta = _read_meta(root)
        if meta is not None and meta.get("fingerprint") == fp and meta.get("complete"):
            return cls(root, meta)
        layout = _layout(teacher, data, feature_names)
        meta = {"format": FORMAT, "fingerprint": fp, "num_items": len(data), "layout": layout,
                "complete": False}
        if env.is_main:
            root.mkdir(parents=True, exist_ok=True)
            write_text_atomic(root / "meta.json", json.dumps(meta))
            for key, (shape, dtype) in layout.items():
                arr = np.lib.format.open_memmap(root / f"{key}.npy", mode="w+", dtype=dtype,
                                                shape=tuple(shape))
                arr.flush()
        D.barrier(env)
        _fill(root, layout, teacher, data, feature_names, env, batch, progress and env.is_main)
        D.barrier(env)
        if env.is_main:
            meta["complete"] = True
            write_text_atomic(root / "meta.json", json.dumps(meta))
        D.barrier(env)
        return cls(root, meta)

    def lookup(self, items, device) -> dict:
        """Teacher targets of the given pair indices, as tensors on `device` (float32)."""
        idx = np.asarray(items, dtype=np.int64)

        def get(key):
            return torch.from_numpy(np.ascontiguousarray(self.arrays[key][idx])).to(device, torch.float32)

        return {"output": get("output"),
                "routing": {p: get(f"routing.{p}") for p in POOLS},
                "features": {k[len("feature."):]: get(k) for k in self.arrays if k.startswith("feature.")}}


def _read_meta(root: Path):
    p = root / "meta.json"
    if not p.is_file():
        return None
    try:
        meta = json.loads(p.read_text())
    except (json.JSONDecodeError, OSError):
        return None
    return meta if meta.get("format") == FORMAT else None


@torch.no_grad()
def _teacher_forward(teacher, lq):
    out, aux = teacher.forward_with_aux(lq)
    return out, aux


def _layout(teacher, data, feature_names) -> dict:
    lq, _ = data.load(np.array([0]))
    p = next(teacher.parameters())
    out, aux = _teacher_forward(teacher, lq.to(p.device))
    n = len(data)
    layout = {"output": [[n, *out.shape[1:]], "float16"]}
    for pool in POOLS:
        layout[f"routing.{pool}"] = [[n, aux["routing"][pool].logits.shape[1]], "float32"]
    for name in feature_names:
        layout[f"feature.{name}"] = [[n, *aux["features"][name].shape[1:]], "float16"]
    return layout


def _fill(root, layout, teacher, data, feature_names, env, batch, progress):
    arrays = {k: np.load(root / f"{k}.npy", mmap_mode="r+") for k in layout}
    mine = np.arange(env.rank, len(data), env.world_size)
    p = next(teacher.parameters())
    for i in tqdm(range(0, len(mine), batch), desc="teacher cache", unit="batch", disable=not progress,
                  dynamic_ncols=True):
        idx = mine[i:i + batch]
        lq, _ = data.load(idx)
        out, aux = _teacher_forward(teacher, lq.to(p.device, p.dtype))
        arrays["output"][idx] = out.float().cpu().numpy().astype(np.float16)
        for pool in POOLS:
            arrays[f"routing.{pool}"][idx] = aux["routing"][pool].logits.float().cpu().numpy()
        for name in feature_names:
            arrays[f"feature.{name}"][idx] = aux["features"][name].float().cpu().numpy().astype(np.float16)
    for a in arrays.values():
        a.flush()
