"""VFE metric and VisualMixer's window-size bounds (docs/design.md §3.4)."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data as skdata

from keyveil import schemes
from keyveil.cli import main
from keyveil.metrics import expected_vfe, shuffle_bias, vfe, vfe_map, vfe_std, ws_lower, ws_upper


def reference_vfe_map(x: np.ndarray, window: int) -> np.ndarray:
    """Plain nested loops over windows and pixels: (C,H,W) float64 -> (C,nh,nw)."""
    c, h, w = x.shape
    nh, nw = math.ceil(h / window), math.ceil(w / window)
    out = np.zeros((c, nh, nw))
    for ch in range(c):
        for a in range(nh):
            for b in range(nw):
                top, left = a * window, b * window
                bottom, right = min(top + window, h), min(left + window, w)
                total = 0.0
                for i in range(top, bottom):
                    for j in range(left, right):
                        if j + 1 < right:
                            total += (x[ch, i, j + 1] - x[ch, i, j]) ** 2
                        if i + 1 < bottom:
                            total += (x[ch, i + 1, j] - x[ch, i, j]) ** 2
                out[ch, a, b] = total / ((bottom - top) * (right - left))
    return out


@pytest.mark.parametrize(
    "shape, window",
    [((1, 5, 7), 3), ((3, 16, 16), 4), ((2, 10, 13), 14), ((3, 9, 20), 4), ((1, 1, 6), 2), ((2, 28, 28), 14)],
)
def test_vfe_equals_the_nested_loop_reference(shape, window):
    gen = torch.Generator().manual_seed(sum(shape) + window)
    batch = torch.rand(2, *shape, generator=gen, dtype=torch.float64)
    for dtype in (torch.float64, torch.float32):
        got = vfe_map(batch.to(dtype), window)
        for i in range(2):
            ref = reference_vfe_map(batch[i].numpy(), window)
            assert got[i].shape == ref.shape
            assert np.abs(got[i].double().numpy() - ref).max() <= 1e-5
            assert abs(float(vfe(batch[i].to(dtype), window=window, beta=2.0)[0]) - 2 * ref.mean()) <= 1e-5
    single = vfe_map(batch[0], window)
    assert torch.equal(single, vfe_map(batch, window)[0])


def test_uint8_is_measured_on_the_unit_scale():
    gen = torch.Generator().manual_seed(3)
    x = torch.randint(0, 256, (4, 3, 30, 30), dtype=torch.uint8, generator=gen)
    assert torch.allclose(vfe(x), vfe(x.double() / 255).float(), rtol=1e-5, atol=1e-7)
    assert vfe(x).shape == (4,)
    assert vfe(x[:0]).shape == (0,)
    with pytest.raises(ValueError, match="window"):
        vfe(x, window=0)
    with pytest.raises(ValueError, match="shape"):
        vfe(torch.zeros(30, 30))


def _photos() -> list[torch.Tensor]:
    out = []
    for name in ("astronaut", "chelsea", "coffee", "camera"):
        img = np.asarray(getattr(skdata, name)())
        t = torch.from_numpy(img)
        t = t[None] if t.dim() == 2 else t.permute(2, 0, 1)
        out.append(t[:, :256, :256].contiguous())
    return out


def test_vfe_grows_with_the_window_of_a_plain_shuffle_on_real_photos():
    """The paper's Fig. 3: larger shuffle windows, higher VFE (monotone on every photo)."""
    for photo in _photos():
        values = []
        for ws in (1, 2, 4, 8, 16):
            s = schemes.create("visualmixer", window=ws, channel_shuffle=False)
            y = s.encrypt(photo, generator=torch.Generator().manual_seed(ws))
            values.append(float(vfe(y)[0]))
        assert values[0] == pytest.approx(float(vfe(photo)[0]))  # window 1 changes nothing
        assert all(b > a for a, b in zip(values, values[1:])), values


@pytest.mark.parametrize("ws", [2, 4, 8])
def test_mean_vfe_of_shuffled_gaussian_windows_matches_the_formula(ws):
    sigma = 0.1
    windows = 40_000 if ws == 2 else 12_000
    side = int(math.ceil(math.sqrt(windows))) * ws
    gen = torch.Generator().manual_seed(ws)
    x = 0.5 + sigma * torch.randn(1, 1, side, side, generator=gen, dtype=torch.float64)
    y = schemes.create("visualmixer", window=ws).encrypt(x, generator=gen)
    per_window = vfe_map(y, ws).flatten()
    assert per_window.numel() >= 10_000
    expected = expected_vfe(ws, sigma**2)
    assert expected == pytest.approx(4 * sigma**2 * (ws - 1) / ws)
    assert abs(float(per_window.mean()) / expected - 1) < 0.02
    # the spread of a single window: exact variance (neighbouring differences
    # share pixels) matches; the paper's independent chi-square law is too narrow
    std = float(per_window.std())
    assert std == pytest.approx(vfe_std(ws, sigma**2), rel=0.05)
    assert std > 1.15 * vfe_std(ws, sigma**2, method="chi2")


def test_ws_lower_is_the_smallest_window_reaching_the_target():
    z = NormalDist().inv_cdf(0.95)
    for target, s2 in ((0.1, 0.05), (0.02, 0.01), (0.15, 0.04)):
        for method in ("exact", "chi2"):
            ws = ws_lower(target, s2, 0.95, method=method)
            sd = [vfe_std(w, s2, method=method) for w in (ws - 1, ws)]
            assert expected_vfe(ws, s2) - z * sd[1] >= target
            assert ws == 2 or expected_vfe(ws - 1, s2) - z * sd[0] < target
    assert ws_lower(0.1, 0.05, 0.99) >= ws_lower(0.1, 0.05, 0.9)
    assert ws_lower(0.1, 0.05, 0.95, pixels=224 * 224) <= ws_lower(0.1, 0.05, 0.95)
    with pytest.raises(ValueError, match="4\\*sigma2"):
        ws_lower(0.25, 0.05)
    with pytest.raises(ValueError, match="confidence"):
        ws_lower(0.1, 0.05, 1.5)


def test_ws_upper_is_deterministic_and_monotone():
    a = shuffle_bias(4, trials=500, seed=1)
    assert torch.equal(a, shuffle_bias(4, trials=500, seed=1))
    assert not torch.equal(a, shuffle_bias(4, trials=500, seed=2))
    assert bool((a >= 0).all())
    q = [float(torch.quantile(shuffle_bias(ws, trials=500), 0.95)) for ws in (2, 4, 8)]
    assert q[0] < q[1] < q[2]  # a larger window moves pixels further: more output bias
    ups = [ws_upper(d, 0.95, 500, max_ws=32) for d in (0.5, q[0] + 1e-6, q[1] + 1e-6, 100.0)]
    assert ups == [1, 2, 4, 32]
    assert ws_upper(q[1] + 1e-6, 0.95, 500, max_ws=32) == 4


def test_cli_prints_the_vfe_of_each_image(tmp_path, capsys):
    photo = _photos()[0]
    path = tmp_path / "photo.png"
    Image.fromarray(photo.permute(1, 2, 0).numpy()).save(path)
    assert main(["vfe", str(path), "--window", "8"]) == 0
    out = capsys.readouterr().out.strip().split("\t")
    assert out[0] == str(path)
    assert float(out[1]) == pytest.approx(float(vfe(photo, window=8)[0]), abs=1e-6)
    assert main(["vfe", str(tmp_path / "missing.png")]) == 1


def test_vfe_is_differentiable():
    x = torch.rand(1, 2, 9, 9, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: vfe(t, window=4), (x,))
