"""The ``visualmixer`` scheme: Algorithm 1 windows, in-window shuffles, keyed nonces."""

from __future__ import annotations

import math
import pickle
from collections import Counter

import numpy as np
import pytest
import torch
from checkers import check_scheme, random_images
from skimage import data as skdata

from keyveil import Key, schemes
from keyveil.metrics import ws_lower
from keyveil.schemes import NotInvertibleError, SchemeError
from keyveil.schemes.visualmixer import WindowLayout, quadtree_windows, window_sizes


def photo(size: int = 64) -> torch.Tensor:
    img = torch.from_numpy(np.asarray(skdata.astronaut()))[::4, ::4].permute(2, 0, 1)
    return img[:, 20 : 20 + size, 30 : 30 + size].contiguous()


SIZING = ("ws_min", "ws_max", "window", "target_vfe", "delta_max", "window_fraction")


def mixer(seed: int | None = 0, **kw):
    """The mechanism under test; without sizing options, the seed's 2..8 px windows (not the library default)."""
    if not any(k in kw for k in SIZING):
        kw = {"ws_min": 2, "ws_max": 8, **kw}
    return schemes.create("visualmixer", None if seed is None else Key.from_seed(seed), **kw)


def check_windows_are_permuted(x: torch.Tensor, y: torch.Tensor, layout: WindowLayout, per_channel: bool) -> int:
    """Every window of ``y`` holds exactly the values of the same window of ``x``."""
    count = 0
    for b in range(x.shape[0]):
        for top, left, h, w in layout.boxes(b):
            xin = x[b, :, top : top + h, left : left + w].reshape(x.shape[1], -1)
            yin = y[b, :, top : top + h, left : left + w].reshape(x.shape[1], -1)
            if per_channel:
                assert torch.equal(xin.sort(dim=1).values, yin.sort(dim=1).values)
            else:  # whole pixels move together
                xs = sorted(map(tuple, xin.t().tolist()))
                ys = sorted(map(tuple, yin.t().tolist()))
                assert xs == ys
            count += 1
    return count


def check_partition(layout: WindowLayout, lo: int, hi: int) -> None:
    cover = torch.zeros(layout.batch, layout.height, layout.width, dtype=torch.int64)
    for b in range(layout.batch):
        for top, left, h, w in layout.boxes(b):
            cover[b, top : top + h, left : left + w] += 1
    assert bool((cover == 1).all()), "windows must tile every image exactly once"
    sizes = layout.size_map()
    assert bool((sizes >= lo).all()) and bool((sizes <= hi).all())


@pytest.mark.parametrize("shape, kw", [
    ((2, 3, 32, 32), {}),
    ((2, 3, 28, 28), {"ws_max": 8}),  # 28 is not a multiple of 8: clipped edge windows
    ((1, 1, 23, 37), {"ws_min": 2, "ws_max": 16}),
    ((2, 3, 24, 24), {"ws_min": 3, "ws_max": 12}),
])
@pytest.mark.parametrize("channel_shuffle", [True, False])
def test_every_window_keeps_its_values_and_sizes_stay_in_bounds(shape, kw, channel_shuffle):
    s = mixer(None, channel_shuffle=channel_shuffle, **kw)
    x = random_images(shape, torch.uint8, seed=sum(shape))
    x[:, :, : shape[2] // 2] //= 16  # a flat half and a busy half: several window sizes
    y = s.encrypt(x, generator=torch.Generator().manual_seed(1))
    layout = s.windows(x)
    check_partition(layout, s.ws_min, s.ws_max)
    assert check_windows_are_permuted(x, y, layout, channel_shuffle) > 0
    assert not torch.equal(x, y)
    assert len(set(layout.size_map().unique().tolist())) >= 2


def test_real_photo_windows_and_values():
    x = photo(64)[None]
    s = mixer(None, ws_min=2, ws_max=16)
    y = s.encrypt(x)
    layout = s.windows(x)
    check_partition(layout, 2, 16)
    check_windows_are_permuted(x, y, layout, True)
    counts = layout.counts()[0]
    assert counts[0] >= 8  # at least half of the 16 top windows are flat enough to stay whole
    assert int((layout.size_map() ** 0).sum()) == 64 * 64


def reference_quadtree(x: torch.Tensor, sizes: tuple[int, ...]) -> set[tuple[int, int, int]]:
    """Algorithm 1 with a work list, one window at a time (slow and obvious)."""
    img = x.double().numpy()
    c, h, w = img.shape

    def window_vfe(top: int, left: int, s: int) -> float:
        r = img[:, top : min(top + s, h), left : min(left + s, w)]
        total = ((r[:, :, 1:] - r[:, :, :-1]) ** 2).sum() + ((r[:, 1:, :] - r[:, :-1, :]) ** 2).sum()
        return total / (c * r.shape[1] * r.shape[2])

    top_size = sizes[0]
    tiles = [(i, j, top_size) for i in range(0, h, top_size) for j in range(0, w, top_size)]
    values = sorted(window_vfe(*t) for t in tiles)
    median = values[(len(values) - 1) // 2]  # lower median
    out, work = set(), list(tiles)
    while work:
        i, j, s = work.pop()
        if s == sizes[-1] or window_vfe(i, j, s) <= median:
            out.add((i, j, s))
            continue
        half = s // 2
        for di in (0, half):
            for dj in (0, half):
                if i + di < h and j + dj < w:
                    work.append((i + di, j + dj, half))
    return out


@pytest.mark.parametrize("shape, sizes", [((3, 32, 32), (8, 4, 2)), ((1, 20, 12), (8, 4, 2)), ((3, 48, 40), (16, 8, 4))])
def test_quadtree_equals_the_one_window_at_a_time_reference(shape, sizes):
    x = random_images((3, *shape), torch.uint8, seed=7)
    x[0, :, ::2] = 0  # structure so that splits happen at several levels
    x[1] //= 8
    x[2, :, : shape[1] // 2, : shape[2] // 2] = 128
    layout = quadtree_windows(x, sizes)
    for b in range(3):
        got = {(top, left, s) for s, sel in zip(layout.sizes, layout.selected)
               for top, left in (sel[b].nonzero() * s).tolist()}
        assert got == reference_quadtree(x[b], sizes)


def test_same_key_and_nonce_reproduce_and_batched_equals_per_image():
    x = photo(40)[None].repeat(3, 1, 1, 1)
    s = mixer(1, ws_max=8)
    y = check_scheme(s, x)  # contract: no in-place change, batched == per-image with nonces, pickling
    a = s.encrypt(x, nonce=[1, 2, 3])
    assert torch.equal(a, s.encrypt(x, nonce=[1, 2, 3]))
    assert not torch.equal(a[0], a[1])  # same image, different nonces
    assert not torch.equal(a, mixer(2, ws_max=8).encrypt(x, nonce=[1, 2, 3]))
    assert torch.equal(a[2], s.encrypt(x[2], nonce=3))
    assert y.shape == x.shape
    g = [s.encrypt(x, generator=torch.Generator().manual_seed(5)) for _ in range(2)]
    assert torch.equal(g[0], g[1]) and not torch.equal(s.encrypt(x), s.encrypt(x))
    with pytest.raises(SchemeError, match="needs a key"):
        mixer(None).encrypt(x, nonce=[1, 2, 3])


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.float64])
def test_contract_on_odd_sizes(dtype):
    for shape in [(2, 3, 9, 13), (1, 1, 1, 1), (2, 1, 8, 8)]:
        check_scheme(mixer(3, ws_max=4), random_images(shape, dtype))


def test_channel_shuffle_uses_one_permutation_per_channel():
    gray = torch.arange(64 * 64, dtype=torch.float64).view(1, 1, 64, 64).repeat(1, 3, 1, 1)
    gen = torch.Generator().manual_seed(0)
    y = mixer(None, window=8).encrypt(gray, generator=gen)
    assert not torch.equal(y[:, 0], y[:, 1]) and not torch.equal(y[:, 1], y[:, 2])
    z = mixer(None, window=8, channel_shuffle=False).encrypt(gray, generator=gen)
    assert torch.equal(z[:, 0], z[:, 1]) and torch.equal(z[:, 1], z[:, 2])
    assert not torch.equal(z, gray)


def test_window_shuffles_are_uniform():
    """All 24 orders of a 2x2 window, and both orders of a clipped 2x1 edge window, are equally likely."""
    n = 12_000
    x = torch.tensor([[0.0, 1.0, 4.0], [2.0, 3.0, 5.0]]).expand(n, 1, 2, 3).contiguous()
    y = mixer(None, window=2).encrypt(x, generator=torch.Generator().manual_seed(0))
    full = Counter(map(tuple, y[:, 0, :, :2].reshape(n, 4).long().tolist()))
    assert len(full) == 24
    assert max(full.values()) < n / 24 * 1.2 and min(full.values()) > n / 24 * 0.8
    edge = float((y[:, 0, 0, 2] == 5).double().mean())
    assert abs(edge - 0.5) < 0.03


def test_target_vfe_raises_each_images_smallest_window():
    flat = photo(64).double() / 255 / 4  # low contrast: the target is out of its reach
    busy = random_images((3, 64, 64), torch.float64, seed=2)
    x = torch.stack([flat, busy])
    target = 0.2
    s = mixer(None, ws_min=2, ws_max=16, target_vfe=target)
    layout = s.windows(x)
    smallest = [int(layout.size_map()[b].min()) for b in range(2)]
    for b in range(2):
        sigma2 = float(x[b].flatten(1).var(dim=1, unbiased=False).mean())
        try:
            need = ws_lower(target, sigma2, 0.95, pixels=64 * 64)
        except ValueError:
            need = 16
        assert smallest[b] >= min(need, 16)
        assert smallest[b] // 2 < need or smallest[b] == 2
    assert smallest == [16, 4]
    plain = mixer(None, ws_min=2, ws_max=16).windows(x)
    assert int(plain.size_map()[0].min()) <= smallest[0]


def test_options_are_validated_and_described():
    assert window_sizes(2, 16) == (16, 8, 4, 2)
    assert mixer(None).sizes == (8, 4, 2)
    assert mixer(None, window=14).sizes == (14,)
    assert mixer(None, delta_max=7.0).ws_max == 4  # ws_upper: 95% bias 3.0 at WS=2, 6.5 at 4, 9.3 at 8
    for bad in ({"window": 4, "ws_min": 2}, {"ws_min": 0}, {"ws_min": 8, "ws_max": 4},
                {"ws_max": 8, "delta_max": 1.0}, {"delta_max": 1e-9}, {"confidence": 1.0}, {"target_vfe": -1.0}):
        with pytest.raises(SchemeError):
            mixer(None, **bad)
    s = mixer(None, ws_max=16, channel_shuffle=False)
    assert s.config["params"]["ws_max"] == 16 and s.config["key_fingerprint"] is None
    assert pickle.loads(pickle.dumps(s)).config == s.config
    with pytest.raises(NotInvertibleError, match="randomness"):
        s.decrypt(torch.zeros(1, 3, 8, 8))
    assert "visualmixer" in schemes.list_schemes()


def test_key_space_bits_counts_the_smallest_windows():
    lg = math.lgamma(5) / math.log(2)  # log2(4!)
    assert mixer(None).key_space_bits((3, 32, 32)) == pytest.approx(256 * lg * 3)
    assert mixer(None, channel_shuffle=False).key_space_bits((32, 32)) == pytest.approx(256 * lg)
    x = photo(32)[None]
    exact = mixer(None).windows(x).shuffle_bits(3)
    assert float(exact[0]) >= mixer(None).key_space_bits((3, 32, 32))


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float64])
def test_compiled_quadtree_equals_torch_path(monkeypatch, dtype):
    """The compiled CPU quadtree picks exactly the windows of the torch ops used off-CPU,
    per-image lower bounds and clipped edge windows included."""
    from keyveil.schemes.visualmixer import _backend

    x = random_images((6, 3, 37, 29), dtype, seed=5)
    x[:3, :, :18] = x[:3, :, :18] // 16 if dtype == torch.uint8 else x[:3, :, :18] / 16
    min_level = torch.tensor([0, 1, 3, 2, 3, 3])
    layouts = []
    for compiled_on_cpu in (True, False):
        monkeypatch.setattr(_backend, "_COMPILED_ON_CPU", compiled_on_cpu)
        layouts.append([quadtree_windows(x, (16, 8, 4, 2), min_level=m) for m in (None, min_level)])
    for a, b in zip(*layouts):
        assert all(torch.equal(p, q) for p, q in zip(a.selected, b.selected))
        assert torch.equal(a.size_map(), b.size_map())
    assert len(set(layouts[0][0].size_map().unique().tolist())) == 4  # every size is used


@pytest.mark.parametrize("shape", [(4, 3, 32, 32), (5, 1, 28, 28), (3, 3, 9, 13), (2, 2, 20, 12)])
@pytest.mark.parametrize("channel_shuffle", [True, False])
def test_torch_path_equals_compiled_path(monkeypatch, shape, channel_shuffle):
    """The torch ops used off-CPU give exactly the compiled CPU path's output, keyed or from a generator,
    clipped edge windows included."""
    from keyveil.schemes.visualmixer import _backend

    x = random_images(shape, torch.uint8, seed=3)
    x[:, :, : shape[2] // 2] //= 16  # flat half: windows of every size
    s = mixer(1, channel_shuffle=channel_shuffle)
    outs = []
    for compiled_on_cpu in (True, False):
        monkeypatch.setattr(_backend, "_COMPILED_ON_CPU", compiled_on_cpu)
        outs.append((s.encrypt(x, nonce=list(range(shape[0]))),
                     s.encrypt(x, generator=torch.Generator().manual_seed(8))))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
    assert not torch.equal(outs[0][0], x)
    layout = s.windows(x)
    assert check_windows_are_permuted(x, outs[0][1], layout, channel_shuffle) > 0


def test_half_precision_grad_and_strided_inputs():
    gen = torch.Generator().manual_seed(4)
    x = torch.rand(2, 3, 20, 24, generator=gen)
    s = mixer(None, ws_max=4)
    for inp in (x.half(), x.to(torch.bfloat16), x.clone().requires_grad_(), x.transpose(2, 3)):
        y = s.encrypt(inp, generator=torch.Generator().manual_seed(0))
        assert y.dtype == inp.dtype and y.shape == inp.shape
        assert torch.equal(y.detach().flatten(1).sort(1).values, inp.detach().flatten(1).sort(1).values)


def test_worker_threads_run_torch_single_threaded_and_caller_keeps_its_count():
    """Chunks run on a lasting pool whose threads were started with one torch thread
    (else every worker would start its own OpenMP team and they would fight for the cores)."""
    from keyveil.schemes.visualmixer import shuffle as vm

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        if vm._POOL is not None:
            vm._POOL[0].shutdown()
        vm._forget_pool()
        pool = vm._worker_pool(2)
        assert torch.get_num_threads() == 2
        assert sorted(pool.map(lambda _: torch.get_num_threads(), range(8))) == [1] * 8
        assert vm._worker_pool(2) is pool  # reused, not rebuilt
    finally:
        torch.set_num_threads(before)


def test_chunked_batches_are_reproducible_and_permute_windows():
    """A batch of several ~2M-value chunks (run in parallel on CPU threads) keeps the contract,
    and its output does not depend on the number of threads."""
    s = mixer(None, ws_min=2, ws_max=8)
    x = random_images((1500, 3, 32, 32), torch.uint8, seed=7)  # 4.6M values: 4 chunks of 375
    x[:, :, :16] //= 16
    before = torch.get_num_threads()
    outs = []
    try:
        for threads in (1, 2, 2):
            torch.set_num_threads(threads)
            outs.append(s.encrypt(x, generator=torch.Generator().manual_seed(3)))
        other = s.encrypt(x, generator=torch.Generator().manual_seed(4))
    finally:
        torch.set_num_threads(before)
    a = outs[0]
    assert torch.equal(a, outs[1]) and torch.equal(a, outs[2]) and not torch.equal(a, other)
    assert not torch.equal(a[-1], x[-1])  # the last chunk was shuffled too
    picks = [0, 374, 375, 1499]  # both sides of a chunk border
    layout = s.windows(x[picks])
    assert check_windows_are_permuted(x[picks], a[picks], layout, True) > 0


def test_prepare_loads_the_compiled_kernels_before_workers_fork():
    from keyveil.schemes.visualmixer import _backend as vm

    vm._KERNELS = None
    mixer(None).prepare(torch.float32)
    assert vm._KERNELS is not None
    assert any(sig[0].dtype.name == "int32" for sig in vm._KERNELS.shuffle_level.signatures)
    assert any(sig[0].dtype.name == "float32" for sig in vm._KERNELS.quadtree_levels.signatures)


def test_kth_smallest_matches_a_sort():
    """The quickselect behind the compiled quadtree's lower median, ties and odd/even sizes included."""
    from keyveil.schemes.visualmixer._cpu import _kth_smallest

    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 16, 17, 784):
        for values in (rng.random(n), rng.integers(0, 4, n).astype(np.float64), np.zeros(n)):
            for k in {0, (n - 1) // 2, n - 1}:
                assert _kth_smallest(values.copy(), k) == np.sort(values)[k]


def test_default_windows_follow_the_image_size_and_weak_settings_warn():
    import warnings

    from keyveil.schemes import PrivacyWarning

    s = schemes.create("visualmixer")
    assert s.config["params"]["window_fraction"] == 1.0 and s.sizes is None
    x = torch.randint(0, 256, (2, 1, 112, 92), dtype=torch.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PrivacyWarning)
        y = s.encrypt(x, generator=torch.Generator().manual_seed(0))
    assert s.windows(x).sizes == (112,)
    assert torch.equal(y.flatten(1).sort(1).values, x.flatten(1).sort(1).values)  # one window: the whole image
    assert not torch.equal(y[:, :, :56], x[:, :, :56])
    seed_faithful = schemes.create("visualmixer", ws_min=2, ws_max=8)
    with pytest.warns(PrivacyWarning, match="re-identifiable"):
        seed_faithful.encrypt(x, generator=torch.Generator().manual_seed(0))
    assert schemes.create("visualmixer", window_fraction=0.5).sizes_for(28, 20) == (14,)
    assert schemes.create("visualmixer", target_vfe=0.01, ws_min=4).sizes_for(40, 30) == (32, 16, 8, 4)
    for bad in ({"window_fraction": 0}, {"window_fraction": 1.5}, {"window_fraction": 0.5, "window": 4}):
        with pytest.raises(SchemeError):
            schemes.create("visualmixer", **bad)


def test_default_holds_the_glance_attacker_on_faces():
    from keyveil.attacks import Reidentify, face_split

    g, gl, p, pl = face_split()
    r = Reidentify(variants=("glance",), recognizers=("eigenfaces",)).run(
        gallery=g, gallery_labels=gl, probes=p, probe_labels=pl, scheme=schemes.create("visualmixer"))
    assert r.metrics["glance/eigenfaces/top1"] <= 0.10


def test_one_pixel_windows_run_on_the_compiled_path():
    x = torch.randint(0, 256, (2, 3, 16, 12), dtype=torch.uint8)
    s = mixer(ws_min=1, ws_max=8)
    y = s.encrypt(x, generator=torch.Generator().manual_seed(0))
    check_partition(s.windows(x), 1, 8)
    check_windows_are_permuted(x, y, s.windows(x), per_channel=True)
