"""The security report's calibration: every figure's interval, verdicts at their thresholds, and a matrix
with no hole (planned without running anything)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from keyveil import Key
from keyveil.attacks import AttackResult
from keyveil.attacks.report.calibrate import calibrate, describe
from keyveil.attacks.report.markdown import Row, matrix_scheme, parse_report, render
from keyveil.attacks.report.plan import plan_report, planned_cells
from keyveil.attacks.report.verdicts import THRESHOLDS, threshold_text, verdict
from keyveil.attacks.scenarios import Scenario, make_scheme
from keyveil.metrics.intervals import (
    Rate,
    Score,
    advantage,
    advantage_interval,
    auc_interval,
    wilson_interval,
)
from keyveil.metrics.quality import ssim

# -- intervals -----------------------------------------------------------------------------------------------

def test_advantage_matches_a_direct_search_over_thresholds():
    rng = np.random.default_rng(1)
    a, b = rng.normal(0.3, 1, 80), rng.normal(0, 1, 70)
    best = max(float((a >= t).mean() - (b >= t).mean()) for t in np.concatenate([a, b]))
    assert advantage(a, b) == pytest.approx(max(best, 0.0))
    adv, (lo, hi) = advantage_interval(a, b)
    assert lo <= adv <= hi and hi - lo < 0.5
    assert advantage(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 1.0  # perfectly separated


def test_rate_describe_names_its_trials_and_unit():
    assert Rate.of(5, 200).describe("probes") == "2.5 % [1.1, 5.7] (n=200 probes)"
    lo, _ = wilson_interval(3072, 3072)
    assert Rate.of(3072, 3072).describe("units") == f"100.00 % [{100 * lo:.2f}, 100.00] (n=3072 units)"
    assert Score(0.5, 10, 0.4, 0.6).describe(1, "images") == "0.5 [0.4, 0.6] (n=10 images)"


def _scenario(section: str, originals, encrypted, recovered, metrics, details=None, settings=None) -> Scenario:
    r = AttackResult(section, reconstructions=recovered, metrics=dict(metrics), details=dict(details or {}))
    return Scenario(section, "x", "d", r, originals, encrypted, recovered, dict(settings or {}))


def test_calibrate_key_recovery_counts_units_and_exactly_decrypted_images():
    key = Key.from_seed(3)
    scheme = make_scheme("pixel", "fashion-mnist", key)
    x = torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8)
    rec = x.clone()
    rec[0, 0, 0, 0] ^= 1  # one image off by one value
    cal = calibrate("known-plaintext", _scenario("known-plaintext", x, scheme.encrypt(x), rec,
                                                 {"fraction_recovered": 0.5, "fraction_determined": 0.25}), scheme)
    assert cal["key"].estimate == Rate.of(392, 784)  # 1×28×28 values
    assert cal["determined"].estimate.successes == 196
    assert cal["decrypted_exactly"].estimate == Rate.of(4, 5)
    assert verdict("known-plaintext", {"fraction_recovered": 0.5}, cal) == "partly"
    assert describe(cal).startswith("key units recovered 50.0 % [")


def test_calibrate_inversion_bootstraps_per_image_ssim_and_refuses_a_mismatch():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (12, 1, 28, 28), dtype=torch.uint8, generator=g)
    enc = torch.randint(0, 256, x.shape, dtype=torch.uint8, generator=g)
    rec = (x.float() * 0.8 + 20).round().to(torch.uint8)
    s_rec, s_enc = ssim(x, rec), ssim(x, enc)
    m = {"ssim": float(s_rec.mean()), "ssim_encrypted": float(s_enc.mean()), "psnr": 0.0, "psnr_encrypted": 0.0}
    cal = calibrate("learned-inversion", _scenario("learned-inversion", x, enc, rec, m))
    assert cal["ssim"].value == pytest.approx(m["ssim"]) and cal["ssim"].estimate.trials == 12
    assert cal["ssim_gain"].value == pytest.approx(m["ssim"] - m["ssim_encrypted"])
    assert cal["ssim"].low < m["ssim"] < cal["ssim"].high
    assert "psnr" not in cal  # 0.0 is not what these images give: no interval rather than a wrong one
    wrong = calibrate("learned-inversion", _scenario("learned-inversion", x, enc, rec, {**m, "ssim": 0.0}))
    assert "ssim" not in wrong and "ssim_gain" not in wrong


def test_calibrate_membership_reads_the_kept_scores():
    rng = np.random.default_rng(0)
    a, b = torch.tensor(rng.normal(1, 1, 100)), torch.tensor(rng.normal(0, 1, 100))
    x = torch.zeros(2, 1, 8, 8)
    cal = calibrate("membership", _scenario("membership", x, x, None, {"auc": 0.0, "advantage": 0.0},
                                            {"member_scores": a, "nonmember_scores": b}))
    auc, (lo, hi) = auc_interval(a.numpy(), b.numpy())
    assert (cal["auc"].value, cal["auc"].low, cal["auc"].high) == (auc, lo, hi)
    assert cal["auc"].estimate.trials == 200 and cal["advantage"].value == pytest.approx(advantage(a, b))


def test_membership_attack_keeps_per_record_scores():
    from keyveil.attacks import MembershipInference, train_classifier

    x, y = torch.rand(24, 1, 8, 8), torch.randint(0, 2, (24,))
    net = train_classifier(x[:12], y[:12], classes=2, epochs=3)
    r = MembershipInference().run(model=net, members=(x[:12], y[:12]), nonmembers=(x[12:], y[12:]))
    from keyveil.attacks.membership import auc

    assert r.details["member_scores"].shape == (12,)
    assert auc(r.details["member_scores"], r.details["nonmember_scores"]) == r.metrics["auc"]
    soft = torch.nn.functional.one_hot(y, 2).float() * 0.7 + 0.15  # mixed labels, as InstaHide trains on
    r2 = MembershipInference().run(model=net, members=(x[:12], soft[:12]), nonmembers=(x[12:], soft[12:]))
    assert 0 <= r2.metrics["auc"] <= 1


# -- verdicts at the thresholds ------------------------------------------------------------------------------

class _Iv:
    def __init__(self, v: float, low: float, high: float) -> None:
        self.value, self.low, self.high = v, low, high


@pytest.mark.parametrize("section,key,metric,bold", [
    ("ciphertext-only", "neighbour", "neighbour_accuracy", "**leaks** layout"),
    ("jigsaw", "neighbour", "neighbour", "**falls** (most edges rejoined)"),
])
def test_rate_verdicts_read_the_interval_not_the_point(section, key, metric, bold):
    _, t_bold, t_holds = THRESHOLDS[section]
    m = {metric: t_bold + 0.05, "direct": 0.0}
    assert verdict(section, m, {key: _Iv(t_bold + 0.05, t_bold, t_bold + 0.1)}) == bold  # lower bound at it
    assert verdict(section, m, {key: _Iv(t_bold + 0.05, t_bold - 1e-6, t_bold + 0.1)}) == "partly"
    assert verdict(section, m, {key: _Iv(0.0, 0.0, t_holds - 1e-6)}) == "holds"
    assert verdict(section, m, {key: _Iv(0.0, 0.0, t_holds)}) == "partly"


def test_key_membership_and_inversion_verdicts_at_their_thresholds():
    full = {"fraction_recovered": 1.0}
    assert verdict("chosen-plaintext", full, {"key": Rate.of(784, 784)}) == "**broken**: key fully recovered"
    assert verdict("chosen-plaintext", full, {"key": _Iv(1.0, 0.89, 1.0)}) == "partly"  # 9 units: low 70 %
    assert verdict("key-from-model", full, {"key": Rate.of(784, 784)}).startswith("**broken**: the model")
    assert verdict("known-plaintext", {"fraction_recovered": 0.95}, {"key": Rate.of(950, 1000)}) == \
        "**broken**: most of the key"
    assert verdict("known-plaintext", {"fraction_recovered": 0.28}, {"key": Rate.of(280, 1000)}) == "partly"
    assert verdict("known-plaintext", {"fraction_recovered": 0.2}, {"key": Rate.of(200, 1000)}) == "holds"
    assert verdict("membership", {"auc": 0.6}, {"auc": _Iv(0.6, 0.55, 0.65)}) == "**leaks** membership"
    assert verdict("membership", {"auc": 0.6}, {"auc": _Iv(0.6, 0.54, 0.65)}) == "partly: a small leak"
    assert verdict("membership", {"auc": 0.6}, {"auc": _Iv(0.6, 0.5, 0.7)}) == "no measurable leak"
    m = {"ssim": 0.5, "ssim_encrypted": 0.2}
    assert verdict("learned-inversion", m, {"ssim_gain": _Iv(0.3, 0.2, 0.4)}) == "**structure recovered**"
    assert verdict("learned-inversion", m, {"ssim_gain": _Iv(0.3, 0.19, 0.4)}) == "partly"
    assert verdict("learned-inversion", m, {"ssim_gain": _Iv(0.0, -0.1, 0.049)}) == "holds"
    ih = {"recovered_ssim": 0.3, "encoded_ssim": 0.1, "reid_recovered_top1": 0.0}
    assert verdict("instahide", ih, {"reid": Rate.of(30, 200)}) == "**broken**: private images recovered"
    assert verdict("instahide", ih, {"reid": Rate.of(0, 200), "recovered_ssim": _Iv(0.3, 0.25, 0.35),
                                     "encoded_ssim": _Iv(0.1, 0.09, 0.11)}) == "partly"


def test_the_header_states_every_threshold_once():
    text = "\n".join(threshold_text())
    for section, (what, _, _) in THRESHOLDS.items():
        assert section in text and what in text
    md = render([Row("membership", "pixel", "fashion-mnist", "AUC 0.6", "500 members", 1.0, "**leaks** membership",
                     interval="AUC 0.600 [0.560, 0.640] (n=1000 records)")], ("membership",), True, (1.0, 1.0))
    assert md.count("lower bound ≥ 0.55") == 1 and md.index("How the verdicts read") < md.index("Which scheme")
    assert "| pixel | **leaks** membership (fashion-mnist: AUC 0.600 [0.560, 0.640] (n=1000 records); 500" in md
    again = parse_report(md)
    assert again[0].interval == "AUC 0.600 [0.560, 0.640] (n=1000 records)"


# -- no hole in the matrix -----------------------------------------------------------------------------------

def test_option_variants_fold_into_their_schemes_row():
    rows = [Row("chosen-plaintext", "pixel", "photos", "f", "d", 0.0, "holds"),
            Row("chosen-plaintext", "pixel (spatial attack)", "photos", "f", "d", 0.0, "**broken**: key fully recovered",
                interval="key units recovered 100.0 % [99.9, 100.0] (n=3072 units)"),
            Row("instahide", "instahide k=2", "att-faces", "f", "d", 0.0, "partly")]
    md = render(rows, ("chosen-plaintext", "instahide"), True, (1.0, 1.0))
    matrix = md[md.index("## Which scheme"):md.index("('not applicable'")]
    assert "| pixel (spatial attack) |" not in matrix and "| instahide k=2 |" not in matrix
    assert "**broken**: key fully recovered ((spatial attack), photos: key units recovered 100.0 %" in matrix
    assert "partly (k=2, att-faces:" in matrix
    assert "| pixel (spatial attack) | photos |" in md  # the details table keeps the label
    assert matrix_scheme("visualmixer-seed+pixel") == "visualmixer-seed+pixel"


def test_full_report_plan_leaves_no_cell_not_run():
    cells = planned_cells()
    explained = ("not applicable", "covered by ")
    holes = sorted(k for k, v in cells.items() if v != "planned" and not v.startswith(explained))
    assert holes == [], f"cells a full report leaves not run: {holes}"
    from keyveil.schemes import list_schemes

    assert {s for s, _ in cells} == {"plain", *list_schemes()}  # rows are schemes: no option labels


def test_plan_runs_nothing_and_names_every_membership_scheme():
    planned = plan_report(("membership", "reidentify"))
    from keyveil.schemes import list_schemes

    for sec in ("membership", "reidentify"):
        assert {matrix_scheme(label) for s, label, _ in planned if s == sec} == {"plain", *list_schemes()}
