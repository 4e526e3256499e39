"""Two-process training under torchrun (DDP, gloo on CPU)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

import torch

from keyveil.engine import load_checkpoint


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(args: list[str], tmp_path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--nnodes", "1",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


SCRIPT = textwrap.dedent('''
    import sys, torch
    import torch.distributed as dist
    from keyveil import Key, schemes
    from keyveil.data import EncryptedDataset, create_dataset
    from keyveil.engine import build_model, fit, seed_everything

    out = sys.argv[1]
    train = create_dataset("mnist5k", "train").limit(120)
    enc = EncryptedDataset(train, schemes.create("pixel", Key.from_seed(3)))
    seed_everything(0)
    model = build_model("smallcnn", in_channels=1, num_classes=10, image_size=(28, 28))
    r = fit(model, enc, test_set=create_dataset("mnist5k", "test").limit(40), epochs=2, batch_size=20,
            progress=False, device="cpu", checkpoint=out + "/ddp.pt", meta={"arch": "smallcnn"})
    rank, world = dist.get_rank(), dist.get_world_size()
    params = {k: v.detach() for k, v in r.model.named_parameters()}
    torch.save({"state": params, "history": r.history, "world": world},
               f"{out}/rank{rank}.pt")
''')


def test_two_process_torchrun_training_keeps_replicas_identical(tmp_path):
    (tmp_path / "job.py").write_text(SCRIPT)
    proc = _torchrun(["job.py", str(tmp_path)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["world"] == r1["world"] == 2
    for name, a in r0["state"].items():  # DDP kept the weights of both replicas in step (BN running stats are rank 0's)
        assert torch.equal(a, r1["state"][name]), name
    # every training image was seen once per epoch across the two ranks
    assert [h["epoch"] for h in r0["history"]] == [1, 2]
    state = load_checkpoint(tmp_path / "ddp.pt")
    assert state["hparams"]["world_size"] == 2 and state["epoch"] == 2
    assert "test_accuracy" in state["metrics"] and state["metrics"]["train_loss"] > 0
    for name, a in r0["state"].items():  # rank 0 wrote the checkpoint
        assert torch.equal(a, state["model_state"][name]), name


def test_train_command_under_torchrun(tmp_path):
    proc = _torchrun(["-m", "keyveil.cli", "train", "--dataset", "mnist5k", "--limit", "80", "--test-limit", "40",
                      "--epochs", "1", "--batch-size", "20", "--device", "cpu", "-o", "m.pt", "--quiet"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("epoch 1:") == 1  # only rank 0 prints
    state = load_checkpoint(tmp_path / "m.pt")
    assert state["hparams"]["world_size"] == 2 and state["dataset"]["length"] == 80
