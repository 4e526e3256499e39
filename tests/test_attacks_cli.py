"""``keyveil attack`` and ``keyveil security-report`` end to end (small sizes)."""

from __future__ import annotations

from PIL import Image

from keyveil.cli import main


def test_attack_command_prints_metrics_and_writes_picture(tmp_path, capsys):
    out = tmp_path / "cp.png"
    assert main(["attack", "--attack", "chosen-plaintext", "--scheme", "pixel", "--dataset",
                 "cifar10-sample", "--test-n", "4", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "fraction_recovered             1.0000" in text
    with Image.open(out) as im:  # originals / encrypted / recovered, 32x32 images enlarged to 64x64, labelled
        left, top = im.width - (2 + 4 * 66), im.height - (2 + 3 * 66)
        assert im.mode == "RGB" and left > 0 and top > 0


def test_attack_command_takes_the_registry_names_and_warns_on_the_old_ones(tmp_path, capsys):
    import pytest

    from keyveil.attacks import _data

    with pytest.warns(FutureWarning, match="'cifar' is deprecated; use 'cifar10-sample'"):
        assert main(["attack", "chosen-plaintext", "--scheme", "pixel", "--dataset", "cifar", "--test-n", "2",
                     "-o", str(tmp_path / "a.png")]) == 0
    assert "on cifar10-sample" in capsys.readouterr().out
    assert main(["attack", "chosen-plaintext", "--scheme", "pixel", "--dataset", "att-face"]) == 2
    assert "did you mean 'att-faces'" in capsys.readouterr().err
    x, y = _data.load("cifar10-sample", "test", 20)  # real labels now, not zeros
    assert x.shape == (20, 3, 32, 32) and len(set(y.tolist())) > 1
    assert {"fashion-mnist", "att-faces", "att-faces-heldout", "photos"} <= set(_data.attack_datasets())


def test_attack_command_rejects_unknown_scheme(capsys):
    assert main(["attack", "--attack", "jigsaw", "--scheme", "pixle"]) == 2
    assert "did you mean 'pixel'" in capsys.readouterr().err


def test_security_report_quick_section(tmp_path):
    md = tmp_path / "SECURITY.md"
    assert main(["security-report", "--quick", "--only", "chosen-plaintext", "--only", "known-plaintext",
                 "--pictures", str(tmp_path / "pics"), "-o", str(md)]) == 0
    text = md.read_text()
    assert "## Threat model" in text and "QUICK RUN" in text
    assert "keyveil security-report --only chosen-plaintext" in text
    assert ("| pixel | cifar10-sample | 100.0 % of the key | key units recovered 100.00 % [99.88, 100.00] "
            "(n=3072 units); images decrypted exactly 100.0 % [61.0, 100.0] (n=6 images) | 2 crafted images "
            "(3×32×32)") in text
    assert len(list((tmp_path / "pics").glob("security-*.png"))) >= 8


def test_security_report_runs_sections_in_parallel_processes_with_the_same_rows(tmp_path):
    from keyveil.attacks.report import security_report

    sections = ("chosen-plaintext", "known-plaintext")
    one, rows1 = security_report(sections=sections, quick=True, pictures=None)
    two, rows2 = security_report(sections=sections, quick=True, pictures=None, jobs=2)
    # chains draw per-image randomness from the process's generator: only their figures may differ
    strip = lambda rows: [(r.section, r.scheme, r.dataset, r.data) + ((r.figure, r.verdict) if "+" not in r.scheme  # noqa: E731
                          else ()) for r in rows]
    assert strip(rows2) == strip(rows1) and [r.section for r in rows2] == sorted(
        (r.section for r in rows2), key=sections.index)  # section order kept whatever finished first
    assert "2 processes: each section in its own" in two and "processes" not in one.split("## Threat")[0]


def test_security_report_reuses_the_rows_a_previous_report_has(tmp_path, monkeypatch, capsys):
    import dataclasses

    import keyveil.attacks.report as report

    md = tmp_path / "SECURITY.md"
    assert main(["security-report", "--quick", "--only", "chosen-plaintext", "--pictures", str(tmp_path / "pics"),
                 "-o", str(md)]) == 0
    first = md.read_text()
    rows = report.parse_report(first)
    assert len(rows) >= 9 and {r.section for r in rows} == {"chosen-plaintext"}
    assert all(r.picture.startswith(str(tmp_path / "pics")) for r in rows)  # each row finds its own picture
    assert len({r.picture for r in rows}) == len(rows)

    def must_not_run(*a, **k):
        raise AssertionError("a reused row was measured again")

    monkeypatch.setattr(report.runner, "run_scenario", must_not_run)
    again, again_rows = report.security_report(sections=("chosen-plaintext",), quick=True, pictures=None,
                                               reuse=rows)
    assert [dataclasses.astuple(r) for r in again_rows] == [dataclasses.astuple(r) for r in rows]
    tables = lambda text: [line for line in text.splitlines() if line.startswith("| ")]  # noqa: E731
    assert tables(again) == tables(first)
    assert f"0 of the {len(rows)} rows by the latest run" in again and "--reuse SECURITY.md" in again
    empty = tmp_path / "empty.md"
    empty.write_text("# not a report\n")
    for bad, message in ((tmp_path / "missing.md", "cannot read --reuse"), (empty, "holds no report rows")):
        try:
            main(["security-report", "--only", "chosen-plaintext", "--reuse", str(bad)])
        except SystemExit as e:
            assert message in str(e)
        else:
            raise AssertionError("a bad --reuse file was accepted")


def test_report_reuses_rows_an_older_report_wrote_under_the_old_dataset_names():
    from keyveil import Key
    from keyveil.attacks.report import Row, Runner

    old = [Row("jigsaw", "etc", "cifar", "f1", "d1", 1.0, "holds"), Row("jigsaw", "patch", "orl", "f2", "d2", 2.0, "holds"),
           Row("reidentify", "pixel", "orl", "f3", "d3", 3.0, "holds")]
    r = Runner(None, Key.from_seed(0), True, lambda s: None, reuse=old)
    assert r.run("jigsaw", "etc", "cifar10-sample", str, "") is None
    assert r.run("jigsaw", "patch", "att-faces-heldout", str, "") is None
    assert r.run("reidentify", "pixel", "att-faces", str, "") is None
    assert [row.figure for row in r.rows] == ["f1", "f2", "f3"] and r.reused == 3
