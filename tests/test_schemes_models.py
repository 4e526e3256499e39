"""`keyveil experiment schemes --models`: every scheme on several model families, on a tiny subset."""

import json
import math

from keyveil.cli import main
from keyveil.experiments.schemes import FRONTIER_POINTS, gather_schemes_by_model


def _fake_frontier(path):
    rows = [{"scheme": scheme, "label": label, "reid": {"glance": 0.01 * (i + 1)}, "worst_top1": 0.1 * (i + 1)}
            for i, (scheme, label) in enumerate(FRONTIER_POINTS.values())]
    path.write_text(json.dumps({"rows": rows}))


def test_schemes_by_model_on_a_tiny_subset(tmp_path, capsys):
    _fake_frontier(tmp_path / "frontier.json")
    out = tmp_path / "out"
    assert main(["experiment", "schemes", "--datasets", "mnist5k", "--models", "smallcnn", "vit_mini",
                 "--schemes", "plain", "pixel", "--limit", "32", "--test-limit", "16", "--epochs", "1",
                 "--frontier", str(tmp_path / "frontier.json"), "-o", str(out), "--quiet"]) == 0
    data = json.loads((out / "schemes-models.json").read_text())
    assert data["models"] == ["smallcnn", "vit_mini"]
    cnn, vit = data["records"]
    assert cnn["complete"] and vit["complete"]
    rows = {r["scheme"]: r for r in cnn["rows"]}
    # the keyed CNN gives the plain model's predictions on shuffled images: the same accuracy, no training
    assert rows["pixel"]["how"].startswith("keyed") and rows["pixel"]["accuracy"] == rows["plain"]["accuracy"]
    assert rows["pixel"]["epochs"] == 0 and cnn["epochs_used"] == 1 and not cnn["transformer"]
    # the transformer trained on plain images for 1 and ceil(1.5) = 2 epochs and kept 2 only if it gained >= 1 point
    assert vit["transformer"] and set(vit["plain_runs"]) == {"1", "2"}
    gain = 100 * (vit["plain_runs"]["2"]["accuracy"] - vit["plain_runs"]["1"]["accuracy"])
    assert vit["epochs_used"] == (2 if gain >= 1.0 else 1)
    vrows = {r["scheme"]: r for r in vit["rows"]}
    assert vrows["plain"]["accuracy"] == vit["plain_runs"][str(vit["epochs_used"])]["accuracy"]
    assert vrows["pixel"]["how"] == "trained on encrypted images" and vrows["pixel"]["epochs"] == vit["epochs_used"]
    assert math.isclose(vrows["pixel"]["drop_points"],
                        100 * (vrows["plain"]["accuracy"] - vrows["pixel"]["accuracy"]), abs_tol=1e-9)
    md = (out / "schemes-models.md").read_text()
    assert "| scheme | faces re-identified: glance / worst (%) | smallcnn | vit_mini |" in md
    assert "| pixel | 2.0 / 20.0 |" in md and "ᵏ" in md  # the fake frontier's pixel point: glance 2 %, worst 20 %
    assert "CPU" in capsys.readouterr().out
    # a model measured with another recipe in the same folder is not gathered
    other = {**cnn, "model": "resnet18", "recipe": {**cnn["recipe"], "epochs": 9}}
    (out / "schemes-models-resnet18.json").write_text(json.dumps(other))
    assert gather_schemes_by_model(out, cnn["recipe"])["models"] == ["smallcnn", "vit_mini"]
    # --gather rebuilds the table from the files without training; a model cut short is marked
    (out / "schemes-models-vit_mini.json").write_text(json.dumps({**vit, "complete": False}))
    (out / "schemes-models.md").unlink()
    assert main(["experiment", "schemes", "--gather", "--datasets", "mnist5k", "--limit", "32", "--test-limit", "16",
                 "--epochs", "1", "-o", str(out), "--quiet"]) == 0
    assert "| vit_mini (cut short) |" in (out / "schemes-models.md").read_text()


def test_schemes_by_model_rejects_bad_input(tmp_path, capsys):
    base = ["experiment", "schemes", "-o", str(tmp_path), "--quiet"]
    assert main([*base, "--models", "resnet19"]) != 0
    err = capsys.readouterr().err
    assert "unknown model(s) resnet19" in err and "shufflenet_v2_x0_5" in err and "swin_t" in err
    assert main([*base, "--models", "smallcnn", "--weights", "smallcnn"]) != 0
    assert "expected ARCH=PATH" in capsys.readouterr().err
    assert main([*base, "--models", "smallcnn", "--weights", "resnet18=w.pt"]) != 0
    assert "not among the models" in capsys.readouterr().err
    assert main([*base, "--test-limit", "10"]) != 0
    assert "only apply with --models" in capsys.readouterr().err
    assert main([*base, "--models", "smallcnn", "--epochs", "fashion-mnist=2"]) != 0
    assert "one number" in capsys.readouterr().err
    assert main([*base, "--models", "smallcnn", "--schemes", "nope"]) != 0
    assert "unknown scheme(s) nope" in capsys.readouterr().err
