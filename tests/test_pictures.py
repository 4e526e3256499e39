"""Labelled picture grids: layout, exact cell pixels, visible labels, clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageFont

from keyveil import pictures
from keyveil.attacks.base import AttackResult
from keyveil.attacks.report import save_picture
from keyveil.attacks.scenarios import Scenario
from keyveil.pictures import GridError, column_labels, render_grid, save_grid

H, W, S, PAD = 8, 10, 4, 2  # image size, scale, padding: cells are 32 x 40 output pixels


def _rows(channels: int = 1, n: int = 3) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    # values kept above 150 so that "dark pixels" can only come from the text
    return [torch.randint(150, 256, (n, channels, H, W), generator=g, dtype=torch.uint8) for _ in range(2)]


def _offsets(img: Image.Image, rows: int, cols: int) -> tuple[int, int]:
    """The label margin's width and the label bands' height, from the picture size (cells sit bottom-right)."""
    left = img.width - (PAD + cols * (W * S + PAD))
    top = img.height - (PAD + rows * (H * S + PAD))
    return left, top


def _cell(arr: np.ndarray, left: int, top: int, i: int, j: int) -> np.ndarray:
    y0, x0 = top + PAD + i * (H * S + PAD), left + PAD + j * (W * S + PAD)
    return arr[y0:y0 + H * S, x0:x0 + W * S]


def _big(x: torch.Tensor) -> np.ndarray:
    """One ``(C,H,W)`` image enlarged by S (nearest), as ``(H*S, W*S, C)``."""
    return x.repeat_interleave(S, -2).repeat_interleave(S, -1).permute(1, 2, 0).numpy()


def test_layout_without_labels_is_margins_plus_cells():
    img = render_grid(_rows(), pad=PAD, scale=S)
    assert img.mode == "L"
    assert img.size == (PAD + 3 * (W * S + PAD), PAD + 2 * (H * S + PAD))


@pytest.mark.parametrize("channels", [1, 3])
def test_labelled_layout_and_exact_cell_pixels(channels):
    rows = _rows(channels)
    img = render_grid(rows, row_labels=["plain", "encrypted (pixel)"], col_labels=["image 1", "image 2", "image 3"],
                      pad=PAD, scale=S)
    assert img.mode == "RGB"
    left, top = _offsets(img, 2, 3)
    assert left > 0 and top > 0
    arr = np.asarray(img)
    for i, row in enumerate(rows):
        for j in range(3):
            assert np.array_equal(_cell(arr, left, top, i, j), np.broadcast_to(_big(row[j]), (H * S, W * S, 3)))
    # the label margin and band have text in them; everything else outside the cells is white
    assert arr[top:, :left].min() < 100 and arr[:top, left:].min() < 100
    mask = np.ones(arr.shape[:2], bool)
    mask[:top, :] = mask[:, :left] = False
    for i in range(2):
        for j in range(3):
            y0, x0 = top + PAD + i * (H * S + PAD), left + PAD + j * (W * S + PAD)
            mask[y0:y0 + H * S, x0:x0 + W * S] = False
    assert (arr[mask] == 255).all()


def test_margin_width_follows_the_labels_and_each_band_is_optional():
    rows = _rows()
    short = render_grid(rows, row_labels=["a", "b"], pad=PAD, scale=S)
    long = render_grid(rows, row_labels=["a", "a much longer row name"], pad=PAD, scale=S)
    cols_only = render_grid(rows, col_labels=["x", "y", "z"], pad=PAD, scale=S)
    titled = render_grid(rows, col_labels=["x", "y", "z"], title="a title", pad=PAD, scale=S)
    (l_short, t_short), (l_long, _) = _offsets(short, 2, 3), _offsets(long, 2, 3)
    assert 0 < l_short < l_long and t_short == 0
    (l_cols, t_cols), (l_title, t_title) = _offsets(cols_only, 2, 3), _offsets(titled, 2, 3)
    assert l_cols == 0 and 0 < t_cols < t_title and l_title == 0
    assert np.asarray(titled)[:t_title - t_cols].min() < 100  # the title is drawn


def test_unlabelled_picture_has_only_white_between_cells():
    arr = np.asarray(render_grid(_rows(), pad=PAD, scale=S))
    assert (arr[:PAD] == 255).all() and (arr[:, :PAD] == 255).all()
    assert (arr[PAD + H * S: 2 * PAD + H * S] == 255).all()


def test_float_rows_become_uint8_and_short_rows_leave_white_cells():
    x = torch.rand(3, 1, H, W, generator=torch.Generator().manual_seed(1))
    img = render_grid([x, x[:1]], col_labels=["1", "2", "3"], pad=PAD, scale=S)
    left, top = _offsets(img, 2, 3)
    arr = np.asarray(img)
    expect = (x * 255).round().to(torch.uint8)
    assert np.array_equal(_cell(arr, left, top, 0, 2)[..., :1], _big(expect[2]))
    assert (_cell(arr, left, top, 1, 1) == 255).all()


def test_automatic_scale_makes_small_images_at_least_64_pixels_high():
    x = torch.zeros(2, 1, 28, 28, dtype=torch.uint8)
    img = render_grid([x], pad=0)
    assert img.size == (2 * 84, 84)
    big = torch.zeros(1, 3, 100, 90, dtype=torch.uint8)
    assert render_grid([big], pad=0).size == (90, 100)


def test_long_column_names_wrap_or_shorten_to_their_cell():
    x = torch.zeros(2, 1, 28, 28, dtype=torch.uint8)
    img = render_grid([x], col_labels=["Ankle boot", "Supercalifragilisticexpialidocious"], pad=PAD)
    assert img.width == PAD + 2 * (84 + PAD)  # the picture does not grow for long column names


def test_mismatched_labels_raise_one_clear_error():
    rows = _rows()
    with pytest.raises(ValueError, match=r"1 row labels for 2 rows \(give one label per row\)"):
        render_grid(rows, row_labels=["plain"])
    with pytest.raises(GridError, match=r"2 column labels for 3 columns"):
        render_grid(rows, col_labels=["a", "b"])
    with pytest.raises(GridError) as err:
        render_grid([rows[0], torch.zeros(1, 2, 5, 5, dtype=torch.uint8)], row_labels=["a"], scale=0)
    msg = str(err.value)
    assert all(s in msg for s in ("channels must be 1 or 3", "disagree on the image size", "1 row labels",
                                  "scale must be"))
    with pytest.raises(GridError, match="no rows"):
        render_grid([])


def test_save_grid_writes_a_png_and_the_experiments_reexport_it(tmp_path):
    from keyveil.experiments import save_grid as experiments_save_grid

    assert experiments_save_grid is save_grid
    path = save_grid(_rows(), tmp_path / "sub" / "g.png", row_labels=["a", "b"], pad=PAD, scale=S)
    with Image.open(path) as im:
        assert im.mode == "RGB" and im.size == render_grid(_rows(), row_labels=["a", "b"], pad=PAD, scale=S).size


def test_old_pillow_without_font_sizes_still_draws_labels(monkeypatch):
    default = ImageFont.load_default

    def no_size(*args, **kwargs):
        if args or kwargs:
            raise TypeError("load_default() takes no arguments")
        return default()

    monkeypatch.setattr(ImageFont, "load_default", no_size)
    pictures._font.cache_clear()
    try:
        img = render_grid(_rows(), row_labels=["a", "b"], col_labels=["1", "2", "3"], pad=PAD, scale=S)
    finally:
        pictures._font.cache_clear()
    left, top = _offsets(img, 2, 3)
    assert left > 0 and top > 0 and np.asarray(img)[top:, :left].min() < 100


def test_column_labels_use_class_names_when_they_fit():
    assert column_labels(torch.tensor([1, 0]), ["cat", "dog"]) == ["dog", "cat"]
    assert column_labels([5], ["cat", "dog"], prefix="test") == ["test 1"]
    assert column_labels([0, 1]) == ["image 1", "image 2"]


def test_save_picture_writes_labelled_rows_and_columns(tmp_path):
    g = torch.Generator().manual_seed(2)
    originals = torch.randint(150, 256, (5, 3, 16, 16), generator=g, dtype=torch.uint8)
    encrypted = originals.flip(-1)
    recovered = originals.float() / 255
    sc = Scenario("chosen-plaintext", "pixel", "cifar", AttackResult("chosen-plaintext"), originals, encrypted,
                  recovered)
    path = save_picture(sc, tmp_path / "pic.png", count=4)
    arr = np.asarray(Image.open(path))
    cell = 16 * 4  # 16-pixel images are enlarged 4x to reach 64 pixels
    left = arr.shape[1] - (2 + 4 * (cell + 2))
    top = arr.shape[0] - (2 + 3 * (cell + 2))
    assert arr.ndim == 3 and left > 0 and top > 0
    assert arr[top:, :left].min() < 100 and arr[:top, left:].min() < 100
    for i, row in enumerate([originals, encrypted, originals]):  # recovered (float) shows the originals again
        y0 = top + 2 + i * (cell + 2)
        x0 = left + 2 + 3 * (cell + 2)
        assert np.array_equal(arr[y0:y0 + cell, x0:x0 + cell],
                              row[3].repeat_interleave(4, -2).repeat_interleave(4, -1).permute(1, 2, 0).numpy())
    without = Scenario("membership", "pixel", "cifar", AttackResult("membership"), originals, encrypted, None)
    with Image.open(save_picture(without, tmp_path / "m.png", count=4)) as im:
        assert im.height - (2 + 2 * (cell + 2)) == top  # two rows, same bands
