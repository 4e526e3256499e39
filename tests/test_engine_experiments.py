"""Experiments and the demo, on tiny runs: the keyed model must match the plain one image for image."""

from __future__ import annotations

import json

import torch

from keyveil.cli import main
from keyveil.data import TensorImageDataset
from keyveil.experiments import PaddedDataset, run_privdl


def test_padded_dataset_centres_images_with_zeros():
    x = torch.arange(1, 1 + 2 * 28 * 26, dtype=torch.int64).reshape(2, 1, 28, 26).remainder(255).add(1)
    ds = PaddedDataset(TensorImageDataset(x.to(torch.uint8), [0, 1], name="t", split="test", classes=["a", "b"]), 16)
    y, _ = ds.get_batch([1])
    assert ds.size == (32, 32) and y.shape == (1, 1, 32, 32)
    assert torch.equal(y[0, :, 2:30, 3:29], x[1].to(torch.uint8))
    assert int(y.sum()) == int(x[1].sum())  # everything else is zero


def test_privdl_rows_on_a_tiny_run(tmp_path):
    data = run_privdl(dataset="mnist5k", limit=400, test_limit=100, epochs=2, finetune_epochs=1, batch_size=40,
                      out_dir=tmp_path, progress=False)
    rows = {r["row"].split(" (")[0]: r for r in data["rows"]}
    assert len(data["rows"]) == 5
    plain, keyed = rows["non-private"], rows["keyed model, with the key"]
    assert keyed["correct"] == plain["correct"] and data["keyed_same_predictions"] == 100
    assert rows["keyed model, wrong key"]["correct"] < plain["correct"]
    saved = json.loads((tmp_path / "privdl.json").read_text())
    assert saved["rows"] == data["rows"] and (tmp_path / "privdl_samples.png").stat().st_size > 0
    assert "keyed model, with the key" in (tmp_path / "privdl.md").read_text()


def test_demo_prints_the_table_and_keyed_equals_plain(tmp_path, capsys):
    assert main(["demo", "-o", str(tmp_path), "--train-images", "400", "--test-images", "200"]) == 0
    out = capsys.readouterr().out
    assert "keyed model with the key" in out and "of 200 test images" in out
    report = json.loads((tmp_path / "demo.json").read_text())
    plain, with_key = report["rows"][0], report["rows"][1]
    assert with_key["correct"] == plain["correct"] and report["same_predictions"] == 200
    for name in ("schemes.png", "pixel_samples.png", f"{report['dataset']}_schemes.png"):
        assert (tmp_path / name).stat().st_size > 0
