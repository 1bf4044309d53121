"""Dataset loading: bundled digits, the IDX reader, local layouts and their error messages."""

import gzip

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data.distributed import DistributedSampler

from fxprune import data as fxdata
from fxprune.data import DatasetNotFoundError, load_dataset, make_loaders, read_idx


# --------------------------------------------------------------------------- digits

def test_digits_shapes_labels_and_split():
    train, test = load_dataset("digits", split="train"), load_dataset("digits", split="test")
    assert len(train) + len(test) == 1797 and len(test) == 360  # fixed 80/20 split
    x, y = train[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert torch.equal(x[0], x[1]) and torch.equal(x[0], x[2])  # gray repeated to RGB
    assert torch.equal(x[0, :4, :4], x[0, 0, 0].expand(4, 4))  # nearest 4x upsampling
    labels = {int(test[i][1]) for i in range(len(test))}
    assert labels == set(range(10))


def test_digits_split_is_deterministic():
    a, b = load_dataset("digits", split="test"), load_dataset("digits", split="test")
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)


# --------------------------------------------------------------------------- IDX / fashion-mnist

def _idx_bytes(arr: np.ndarray, code: int = 0x08) -> bytes:
    """IDX encoding written independently of the reader: magic, big-endian dims, data."""
    header = bytes([0, 0, code, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def _write(path, payload: bytes, gz: bool):
    if gz:
        path = path.with_name(path.name + ".gz")
        payload = gzip.compress(payload)
    path.write_bytes(payload)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_roundtrip(tmp_path, gz):
    arr = np.arange(2 * 3 * 4, dtype=np.int32).reshape(2, 3, 4) - 7
    _write(tmp_path / "a", _idx_bytes(arr, 0x0C), gz)
    got = read_idx(tmp_path / ("a.gz" if gz else "a"))
    assert got.dtype == np.int32 and np.array_equal(got, arr)


def test_idx_rejects_bad_files(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="not an IDX"):
        read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(_idx_bytes(np.zeros((3, 2), np.uint8))[:-1])
    with pytest.raises(ValueError, match="bytes"):
        read_idx(tmp_path / "short")


def _fake_fashion(folder, n=5, gz=False, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "t10k"):
        _write(folder / f"{split}-images-idx3-ubyte", _idx_bytes(images), gz)
        _write(folder / f"{split}-labels-idx1-ubyte", _idx_bytes(labels), gz)
    return images, labels


@pytest.mark.parametrize("gz", [False, True])
def test_fashion_reader_pads_to_32_and_keeps_pixels(tmp_path, gz):
    images, labels = _fake_fashion(tmp_path / "sub", gz=gz)  # one level below root
    ds = load_dataset("fashion-mnist", tmp_path, split="test")
    assert len(ds) == len(images)
    for i in range(len(ds)):
        x, y = ds[i]
        assert x.shape == (3, 32, 32) and y == labels[i]
        raw = x * fxdata.FASHION_STD[0] + fxdata.FASHION_MEAN[0]  # undo Normalize
        assert torch.allclose(raw[0, 2:30, 2:30] * 255, torch.from_numpy(images[i]).float(),
                              atol=1e-3)
        assert torch.allclose(raw[:, :2, :], torch.zeros(3, 2, 32), atol=1e-5)  # zero padding
        assert torch.equal(x[0], x[2])


def test_fashion_train_split_is_augmented(tmp_path):
    _fake_fashion(tmp_path)
    ds = load_dataset("fashion-mnist", tmp_path, split="train")
    torch.manual_seed(0)
    outs = {tuple(ds[0][0].flatten()[:200].tolist()) for _ in range(20)}
    assert len(outs) > 1  # random crop/flip differ between draws


# --------------------------------------------------------------------------- missing datasets

def test_missing_fashion_names_path_and_layout(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("fashion-mnist", tmp_path)
    msg = str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    assert str(tmp_path) in msg and "fashion-mnist" in msg
    assert "train-images-idx3-ubyte" in msg and "t10k-labels-idx1-ubyte" in msg
    assert "apt-get install dataset-fashion-mnist" in msg
    assert err.value.filename == str(tmp_path)


def test_missing_fashion_default_root_is_debians(monkeypatch):
    monkeypatch.setattr(fxdata, "FASHION_DEFAULT_ROOT", "/nonexistent/fashion-mnist")
    assert fxdata.default_root("fashion-mnist") == "/nonexistent/fashion-mnist"
    with pytest.raises(FileNotFoundError, match="/nonexistent/fashion-mnist"):
        load_dataset("fashion-mnist")


@pytest.mark.parametrize("name,folder,member", [("cifar10", "cifar-10-batches-py", "data_batch_1"),
                                                ("cifar100", "cifar-100-python", "meta")])
def test_missing_cifar_names_path_and_layout(tmp_path, name, folder, member):
    bad = tmp_path / "no-such-root"
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset(name, bad, split="test")
    msg = str(err.value)
    assert str(bad) in msg and name in msg and folder in msg and member in msg
    assert "never downloads" in msg


def test_missing_imagenet_names_path_and_layout(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("imagenet", tmp_path / "imnet", split="train")
    msg = str(err.value)
    assert str(tmp_path / "imnet" / "train") in msg
    assert "train/<wnid>" in msg and "val/<wnid>" in msg
    (tmp_path / "imnet" / "val").mkdir(parents=True)  # present but without class folders
    with pytest.raises(DatasetNotFoundError, match="no class sub-folders"):
        load_dataset("imagenet", tmp_path / "imnet", split="test")


def test_missing_cub_names_both_layouts(tmp_path):
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("cub200", tmp_path)
    msg = str(err.value)
    assert str(tmp_path) in msg and "CUB_200_2011" in msg and "train_test_split.txt" in msg


# --------------------------------------------------------------------------- tiny fake folders

def _png(path, size=(40, 30), value=128):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, value, value)).save(path)


def test_imagenet_imagefolder_layout(tmp_path):
    for split in ("train", "val"):
        _png(tmp_path / split / "n01" / "a.png")
        _png(tmp_path / split / "n02" / "b.png")
    val = load_dataset("imagenet", tmp_path, split="test")
    x, y = val[1]
    assert x.shape == (3, 224, 224) and y == 1 and val.classes == ["n01", "n02"]
    assert load_dataset("imagenet", tmp_path, split="train")[0][0].shape == (3, 224, 224)


def test_cub_official_layout(tmp_path):
    base = tmp_path / "CUB_200_2011"
    names = ["001.Black_footed_Albatross/a.jpg", "002.Laysan_Albatross/b.jpg",
             "002.Laysan_Albatross/c.jpg"]
    for n in names:
        _png(base / "images" / n, size=(60, 50))
    (base / "images.txt").write_text("".join(f"{i + 1} {n}\n" for i, n in enumerate(names)))
    (base / "train_test_split.txt").write_text("1 1\n2 0\n3 1\n")
    train, test = load_dataset("cub200", tmp_path, "train"), load_dataset("cub200", tmp_path, "test")
    assert train.targets == [0, 1] and test.targets == [1]
    assert test[0][0].shape == (3, 448, 448)


# --------------------------------------------------------------------------- samplers / loaders

def test_seeded_sampler_matches_single_replica_distributed_sampler():
    ds = list(range(50))
    ours = fxdata.SeededShuffleSampler(ds, seed=3)
    ref = DistributedSampler(ds, num_replicas=1, rank=0, shuffle=True, seed=3)
    for epoch in (0, 1, 5):
        ours.set_epoch(epoch)
        ref.set_epoch(epoch)
        assert list(ours) == list(ref)
    ours.set_epoch(0)
    first = list(ours)
    ours.set_epoch(1)
    assert list(ours) != first and sorted(first) == ds


def test_shard_sampler_covers_each_index_once():
    ds = list(range(11))
    shards = [list(fxdata.ShardSampler(ds, r, 3)) for r in range(3)]
    assert sorted(sum(shards, [])) == ds and [len(s) for s in shards] == [4, 4, 3]


def test_make_loaders_digits():
    train, val = make_loaders("digits", None, batch_size=32, workers=0, seed=1)
    x, y = next(iter(train))
    assert x.shape == (32, 3, 32, 32) and y.shape == (32,)
    assert isinstance(train.sampler, fxdata.SeededShuffleSampler)
    assert len(val.dataset) == 360


def test_make_loaders_distributed_uses_distributed_sampler(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    train, val = make_loaders("digits", None, batch_size=32, workers=0, distributed=True, seed=4)
    assert isinstance(train.sampler, DistributedSampler)
    assert train.sampler.rank == 1 and train.sampler.seed == 4
    assert train.batch_size == 16  # global batch split over the two ranks
    assert list(val.sampler) == list(range(1, 360, 2))


# --------------------------------------------------------------------------- batches built on the device

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _device_batches(dataset, batch, device, seed=3, epoch=0):
    sampler = fxdata.SeededShuffleSampler(dataset, seed)
    sampler.set_epoch(epoch)
    loader = fxdata.DeviceBatches(dataset, batch, sampler, device, seed)
    loader.generator.manual_seed(seed * 1000 + epoch)
    return loader


@pytest.mark.parametrize("device", DEVICES)
def test_device_batches_equal_the_dataloader_without_augmentation(device):
    test = load_dataset("digits", split="test")
    subset = torch.utils.data.Subset(test, range(7, 300, 2))
    ours = _device_batches(subset, 64, device)
    theirs = torch.utils.data.DataLoader(subset, batch_size=64, sampler=ours.sampler)
    assert len(ours) == len(theirs) == 3
    for (x, y), (x_ref, y_ref) in zip(ours, theirs, strict=True):
        assert x.device.type == device and x.shape == x_ref.shape == (len(y_ref), 3, 32, 32)
        torch.testing.assert_close(x.cpu(), x_ref, rtol=0, atol=1e-6)
        assert torch.equal(y.cpu(), y_ref)


@pytest.mark.parametrize("device", DEVICES)
def test_device_augmentation_is_a_padded_crop_and_flip_of_each_image(device):
    """Each augmented image is one of the 9 x 9 x 2 crops/flips of its 4-padded original, and the
    batch draws many of them; the same (seed, epoch) draws the same batch, another epoch another."""
    plain = load_dataset("digits", split="train")
    augmented = load_dataset("digits", split="train", augment=True)
    x, y = next(iter(_device_batches(augmented, 256, device)))
    x_plain, y_plain = next(iter(_device_batches(plain, 256, device)))
    assert torch.equal(y, y_plain)
    padded = torch.nn.functional.pad(x_plain[:, 0].cpu(), (4, 4, 4, 4))
    zero = (0 - plain.mean[0]) / plain.std[0]  # padding is black before normalization
    padded = torch.where(torch.nn.functional.pad(torch.ones(32, 32), (4, 4, 4, 4)).bool(), padded, zero)
    drawn = set()
    for i in range(len(y)):
        crops = {(dy, dx, f) for dy in range(9) for dx in range(9) for f in (0, 1)
                 if torch.allclose(x[i, 0].cpu(), (lambda c: c.flip(1) if f else c)(padded[i, dy:dy + 32, dx:dx + 32]),
                                   atol=1e-5)}
        assert crops, f"image {i} is no crop/flip of its padded original"
        drawn |= crops
    assert len({(dy, dx) for dy, dx, _ in drawn}) > 40 and {f for *_, f in drawn} == {0, 1}
    again, _ = next(iter(_device_batches(augmented, 256, device)))
    other, _ = next(iter(_device_batches(augmented, 256, device, epoch=1)))
    assert torch.equal(again, x) and not torch.equal(other[:, :, :, :], x)


def test_make_loader_batches_in_memory_images_on_a_cuda_device_only():
    digits = load_dataset("digits", split="test")
    tensors = torch.utils.data.TensorDataset(torch.zeros(4, 3, 8, 8), torch.zeros(4))
    assert fxdata.batched_on_device(digits, "cuda") and fxdata.batched_on_device(torch.utils.data.Subset(digits, [1]), "cuda:0")
    assert not fxdata.batched_on_device(digits, "cpu") and not fxdata.batched_on_device(digits, None)
    assert not fxdata.batched_on_device(tensors, "cuda")
    assert isinstance(fxdata.make_loader(digits, 32, train=False, device="cpu"), torch.utils.data.DataLoader)
    if torch.cuda.is_available():
        assert isinstance(fxdata.make_loader(digits, 32, train=False, device="cuda"), fxdata.DeviceBatches)


def test_cifar10_local_layout(tmp_path, monkeypatch):
    """Fake pickled batches in torchvision's layout (its md5 check is bypassed for fakes)."""
    import pickle

    from torchvision.datasets import cifar
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        entry = {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": [0, 1, 2, 3]}
        (folder / name).write_bytes(pickle.dumps(entry))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [str(i) for i in range(10)]}))
    monkeypatch.setattr(cifar, "check_integrity", lambda *a, **k: True)
    test = load_dataset("cifar10", folder, split="test")  # the batches folder itself works too
    x, y = test[2]
    assert x.shape == (3, 32, 32) and y == 2 and len(test) == 4
    raw = torch.from_numpy(test.data[2]).permute(2, 0, 1).float() / 255
    mean = torch.tensor(fxdata.CIFAR_MEAN)[:, None, None]
    std = torch.tensor(fxdata.CIFAR_STD)[:, None, None]
    assert torch.allclose(x, (raw - mean) / std, atol=1e-5)  # test split: normalize only
    assert len(load_dataset("cifar10", tmp_path, split="train")) == 20
