"""The alternative to one folded file per task: a small fixed task switch (benchmark helper).

Every prompted conv1 holds the per-task weights stacked and picks one with `index_select` on an
integer task input: what an exported multi-task graph does (a Gather on the weights feeding Conv).
"""

from __future__ import annotations

import copy
import statistics
import tempfile
import time
from pathlib import Path


def task_switch(student, folded: dict):
    """(switch module taking (x, task index tensor), wrapper class fixing the index as an input)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from datprl_edge.models.folded import prompted_blocks

    class SwitchConv(nn.Module):
        def __init__(self, convs):
            super().__init__()
            self.weight = nn.Parameter(torch.stack([c.weight.detach() for c in convs]))
            self.bias = nn.Parameter(torch.stack([c.bias.detach() for c in convs]))
            self.index = torch.zeros(1, dtype=torch.long)

        def forward(self, x):
            w = self.weight.index_select(0, self.index)[0]
            return F.conv2d(x, w, self.bias.index_select(0, self.index)[0])

    class Switch(nn.Module):
        def __init__(self):
            super().__init__()
            models = list(folded.values())
            self.net = copy.deepcopy(models[0])
            self.switches = []
            for name in prompted_blocks(student):
                sw = SwitchConv([m.get_submodule(name).conv1 for m in models])
                self.net.get_submodule(name).conv1 = sw
                self.switches.append(sw)

        def forward(self, x, task):
            for sw in self.switches:
                sw.index = task
            return self.net(x)

    class Fixed(nn.Module):  # the switch with one task index, fed as a tensor at every call
        def __init__(self, switch, index):
            super().__init__()
            self.switch, self.index = switch, torch.tensor([index])

        def forward(self, x):
            return self.switch(x, self.index)

    return Switch().eval(), Fixed


def check_switch(switch, folded: dict) -> None:
    import torch

    x = torch.rand(2, 3, 64, 64)
    with torch.inference_mode():
        for i, (task, model) in enumerate(folded.items()):
            diff = (switch(x, torch.tensor([i])) - model(x)).abs().max().item()
            if diff > 1e-5:
                raise AssertionError(f"task switch differs from the {task} file by {diff}")


def onnx_head_to_head(file_model, switch, shape, rounds: int, iters: int) -> dict:
    """onnxruntime (1 thread) latency of the per-task graph vs the switch graph, interleaved."""
    import numpy as np
    import onnxruntime as ort
    import torch

    from datprl_edge.core.artifacts import quiet

    x = torch.rand(shape)
    with tempfile.TemporaryDirectory(prefix="fold-switch-") as tmp:
        paths = {"file": Path(tmp) / "file.onnx", "switch": Path(tmp) / "switch.onnx"}
        with quiet():
            torch.onnx.export(file_model, (x,), str(paths["file"]), opset_version=18, dynamo=True,
                              external_data=False)
            torch.onnx.export(switch, (x, torch.tensor([0])), str(paths["switch"]), opset_version=18,
                              dynamo=True, external_data=False)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.log_severity_level = 3
        loads = []
        for _ in range(5):
            t0 = time.perf_counter()
            ort.InferenceSession(str(paths["file"]), opts, providers=["CPUExecutionProvider"])
            loads.append((time.perf_counter() - t0) * 1e3)
        sess = {k: ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"])
                for k, p in paths.items()}
        xn = x.numpy()
        feeds = {"file": {sess["file"].get_inputs()[0].name: xn},
                 "switch": {sess["switch"].get_inputs()[0].name: xn,
                            sess["switch"].get_inputs()[1].name: np.array([0], dtype=np.int64)}}
        outs = {k: sess[k].run(None, feeds[k])[0] for k in sess}
        diff = float(np.abs(outs["file"] - outs["switch"]).max())
        per = {"file": [], "switch": []}
        for _ in range(rounds):
            for k in per:
                sess[k].run(None, feeds[k])
                times = []
                for _ in range(iters):
                    t0 = time.perf_counter()
                    sess[k].run(None, feeds[k])
                    times.append((time.perf_counter() - t0) * 1e3)
                per[k].append(statistics.median(times))
        sizes = {k: p.stat().st_size for k, p in paths.items()}
    return {"file_ms": round(statistics.median(per["file"]), 3),
            "switch_ms": round(statistics.median(per["switch"]), 3),
            "file_min_ms": round(min(per["file"]), 3), "switch_min_ms": round(min(per["switch"]), 3),
            "file_load_ms": round(statistics.median(loads), 2), "max_abs_diff": diff, "rounds": rounds,
            "iters": iters, "threads": 1, "bytes_file": sizes["file"], "bytes_switch": sizes["switch"],
            "export": "torch.onnx.export(dynamo=True, opset 18)"}
