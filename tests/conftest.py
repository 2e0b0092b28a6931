import os

import pytest

# Two cores are shared by everything in CI; more threads only add contention.
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(autouse=True)
def _torch_threads():
    try:
        import torch
    except ImportError:  # the torch-free tests run without it
        yield
        return
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="module")
def one_torch_thread():
    """For modules of tiny models: one intra-op thread is faster, and far faster when other jobs
    share the two cores (OpenMP threads spin against each other). Use with
    `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run_cli(capsys, *argv):
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""
    from datprl_edge.cli.main import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def tiny_teacher():
    """A seeded restormer-ref at width 8: a teacher that trains in seconds."""
    import torch

    from datprl_edge.models.registry import create_model

    torch.manual_seed(1)
    return create_model("restormer-ref", dim=8, enc_blk_nums=[1, 1, 1], middle_blk_num=1,
                        dec_blk_nums=[1, 1, 1], refine_blk_num=0, domain_prompt_dim=16,
                        degradation_prompt_dim=16)


def routed_student(name: str):
    """A seeded (0) random-init student whose prompt pools are spread (random-init pools hold
    near-identical prompts), so that its routing choices matter."""
    import torch

    from datprl_edge.models.registry import create_model

    torch.manual_seed(0)
    model = create_model(name)
    with torch.no_grad():
        model.domain_prompt_pool.prompt_values.normal_()
        model.degradation_prompt_pool.prompt_values.normal_()
    return model


def flat(model):
    """Every tensor of a model's state dict, concatenated (to compare weights)."""
    import torch

    return torch.cat([p.detach().flatten() for p in model.state_dict().values()])


def stop_at(step: int):
    """A training step callback that interrupts the run at `step`, as Ctrl-C would."""
    def stop(current):
        if current == step:
            raise KeyboardInterrupt

    return stop


@pytest.fixture(scope="module")
def untrained_edge_xs():
    """An untrained edge-xs student (seed 0): export must reproduce any weights."""
    import torch

    from datprl_edge.models.registry import create_model

    torch.manual_seed(0)
    return create_model("edge-xs")


def ptq_export(name: str, out, verify_size=(60, 68), verify_images=2):
    """The OpenVINO INT8 report of a random-weight registry model after PTQ on two synthetic crops."""
    import torch

    from datprl_edge.export.driver import ExportConfig, export_model
    from datprl_edge.models.registry import create_model
    from datprl_edge.quantize.qat import QATConfig, run_qat
    from datprl_edge.sources import _synthetic

    torch.manual_seed(0)
    calib = [_synthetic(64, 64, 3, s)[0] for s in range(2)]
    config = QATConfig(target="openvino", steps=0, calib_batches=1, batch_size=2, val_images=0)
    qat = run_qat(create_model(name), config, calib)
    cfg = ExportConfig(targets="openvino", precision="int8", model_name=name, verify_images=verify_images,
                       verify_size=verify_size)
    (report,) = export_model(qat, cfg, out)
    return report
