"""``keyveil attack`` and ``keyveil security-report`` end to end (small sizes)."""

from __future__ import annotations

from PIL import Image

from keyveil.cli import main


def test_attack_command_prints_metrics_and_writes_picture(tmp_path, capsys):
    out = tmp_path / "cp.png"
    assert main(["attack", "--attack", "chosen-plaintext", "--scheme", "pixel", "--dataset", "cifar",
                 "--test-n", "4", "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "fraction_recovered             1.0000" in text
    with Image.open(out) as im:  # originals / encrypted / recovered, 32x32 images enlarged to 64x64, labelled
        left, top = im.width - (2 + 4 * 66), im.height - (2 + 3 * 66)
        assert im.mode == "RGB" and left > 0 and top > 0


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
    assert "| pixel | cifar | 100.0 % of the key | 2 crafted images (3×32×32)" in text
    assert len(list((tmp_path / "pics").glob("security-*.png"))) >= 8
