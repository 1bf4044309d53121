"""Datasets and data loaders for fine-tuning pruned models.

Everything here reads local files only and never downloads: pruning runs are often on machines
without network access, and a silent download into the wrong place is worse than a clear error.
A missing dataset raises :class:`DatasetNotFoundError` (a ``FileNotFoundError``) that names the
path, the dataset and the layout that has to be there.

Supported names (``load_dataset(name, root, split)``):

* ``digits``: scikit-learn's bundled 8x8 digits, nearest-upsampled to 32x32 and repeated to 3
  channels; a fixed, stratified 80/20 train/test split (seed 0). Needs no files; used by tests.
* ``fashion-mnist``: the four IDX files (optionally ``.gz``) in ``root`` or one sub-folder of it;
  default root ``/usr/share/datasets/fashion-mnist`` (Debian package ``dataset-fashion-mnist``).
  28x28 images are zero-padded to 32x32 and repeated to 3 channels.
* ``cifar10`` / ``cifar100``: torchvision's python-pickle layout (``cifar-10-batches-py`` /
  ``cifar-100-python``) under ``root``.
* ``cub200``: the official ``CUB_200_2011`` archive extracted under ``root`` (``images.txt``,
  ``train_test_split.txt``, ``images/``), or an ImageFolder tree ``root/train``, ``root/test``.
* ``imagenet``: ImageFolder trees ``root/train/<wnid>/*`` and ``root/val/<wnid>/*``.

Transforms follow the seed papers: CIFAR mean (0.4914, 0.4822, 0.4465), std (0.2023, 0.1994,
0.2010) with RandomCrop(32, padding 4) + horizontal flip for training (RGD uses the same constants
for CIFAR-100); ImageNet RandomResizedCrop(224) + flip / Resize(256) + CenterCrop(224); CUB-200 as
RGD's ``prune_cub200.py`` recipe (Resize(448) + flip + RandomCrop(448) / Resize(448) +
CenterCrop(448)).
"""

from __future__ import annotations

import gzip
import logging
import os
from pathlib import Path
from typing import Callable, Iterator, Sized

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

log = logging.getLogger(__name__)

__all__ = [
    "DATASETS",
    "DatasetNotFoundError",
    "DeviceBatches",
    "SeededShuffleSampler",
    "ShardSampler",
    "TensorImages",
    "default_root",
    "load_dataset",
    "make_loaders",
    "num_classes",
    "read_idx",
]

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FASHION_MEAN = (0.2860,) * 3
FASHION_STD = (0.3530,) * 3

FASHION_DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
FASHION_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

_NUM_CLASSES = {"digits": 10, "fashion-mnist": 10, "cifar10": 10, "cifar100": 100,
                "cub200": 200, "imagenet": 1000}
DATASETS = tuple(_NUM_CLASSES)


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are not where they were looked for (we never download them)."""

    def __init__(self, dataset: str, path, layout: str, detail: str = ""):
        self.dataset = dataset
        self.path = str(path)
        self.layout = layout
        msg = f"{dataset} dataset not found at {self.path!r}"
        if detail:
            msg += f" ({detail})"
        msg += f".\nExpected layout:\n{layout}\nfxprune never downloads datasets."
        super().__init__(msg)
        self.filename = self.path

    def __str__(self) -> str:  # FileNotFoundError's own __str__ would drop the layout
        return self.args[0]


# --------------------------------------------------------------------------- helpers

def num_classes(name: str) -> int:
    """Number of classes of a supported dataset (models need it before data is loaded)."""
    return _NUM_CLASSES[_canonical(name)]


def _canonical(name: str) -> str:
    key = name.lower().replace("_", "-")
    aliases = {"fashion": "fashion-mnist", "fashionmnist": "fashion-mnist", "cifar-10": "cifar10",
               "cifar-100": "cifar100", "cub": "cub200", "cub-200": "cub200",
               "cub-200-2011": "cub200", "ilsvrc": "imagenet", "imagenet-1k": "imagenet"}
    key = aliases.get(key, key)
    if key not in _NUM_CLASSES:
        raise ValueError(f"unknown dataset {name!r}; supported: {', '.join(DATASETS)}")
    return key


def default_root(name: str) -> str:
    """Where a dataset is looked for when no root is given.

    Fashion-MNIST defaults to Debian's location; the others to ``$FXPRUNE_DATA/<name>``
    (``./data/<name>`` when the variable is unset).
    """
    name = _canonical(name)
    if name == "fashion-mnist":
        return FASHION_DEFAULT_ROOT
    return os.path.join(os.environ.get("FXPRUNE_DATA", "data"), name)


def _check_split(split: str) -> str:
    if split in ("val", "valid", "validation"):
        return "test"
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    return split


class TensorImages(Dataset):
    """In-memory one-channel images (digits, Fashion-MNIST) as normalized 3-channel tensors.

    ``augment`` applies the seeds' CIFAR recipe (a random 32x32 crop of the image padded by 4, a
    random horizontal flip). Items go through torchvision transforms for a CPU DataLoader;
    :meth:`batch` builds a whole batch with the same recipe on any device, so a GPU run is not
    held back by CPU workers cropping one image at a time.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, scale: float, mean, std,
                 augment: bool):
        self.images = images  # N x H x W (one channel, uint8 or float)
        self.labels = labels.long()
        self.targets = self.labels.tolist()
        self.scale, self.mean, self.std, self.augment = scale, tuple(mean), tuple(std), augment
        self.transform = _cifar_like_transform(augment, mean, std, tensor_input=True,
                                               size=tuple(images.shape[-2:]))
        self._on_device: dict[torch.device, tuple[torch.Tensor, ...]] = {}

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        img = self.images[i].float().div(self.scale).unsqueeze(0).expand(3, -1, -1).contiguous()
        return self.transform(img), int(self.labels[i])

    def batch(self, indices: torch.Tensor, device: torch.device,
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``indices`` as one normalized B x 3 x H x W batch on ``device``, with labels."""
        images, labels, mean, std = self._resident(torch.device(device))
        indices = indices.to(images.device)
        x = images[indices].float().div(self.scale)
        if self.augment:
            x = random_crop_flip(x, CROP_PADDING, generator)
        return (x.unsqueeze(1) - mean) / std, labels[indices]

    def _resident(self, device: torch.device) -> tuple[torch.Tensor, ...]:
        """Images, labels and normalization on ``device``, copied once (Fashion-MNIST: 61 MB as uint8)."""
        if device not in self._on_device:
            self._on_device[device] = (self.images.to(device), self.labels.to(device),
                                       torch.tensor(self.mean, device=device).view(1, -1, 1, 1),
                                       torch.tensor(self.std, device=device).view(1, -1, 1, 1))
        return self._on_device[device]


#: RandomCrop(32, padding=4) of the seeds' CIFAR recipe.
CROP_PADDING = 4


def random_crop_flip(x: torch.Tensor, pad: int, generator: torch.Generator | None) -> torch.Tensor:
    """Per image of B x H x W: an H x W crop of the zero-padded image at a uniform offset, mirrored
    with probability 1/2 (torchvision's RandomCrop(padding=pad) + RandomHorizontalFlip, batched)."""
    b, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    offsets = torch.randint(0, 2 * pad + 1, (2, b), device=x.device, generator=generator)
    flip = torch.rand(b, device=x.device, generator=generator) < 0.5
    rows = offsets[0, :, None] + torch.arange(h, device=x.device)
    cols = offsets[1, :, None] + torch.arange(w, device=x.device)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    return padded[torch.arange(b, device=x.device)[:, None, None], rows[:, :, None], cols[:, None, :]]


class DeviceBatches:
    """Loader-like batches of a :class:`TensorImages` set (or a Subset of one), built on ``device``.

    Order comes from ``sampler`` as in a DataLoader (``set_epoch`` and sharding included), and
    augmentation draws from ``generator``, which the runner re-seeds per epoch: an epoch's batches
    depend only on (seed, epoch, rank), as with the CPU loader, though the two draw different crops.
    """

    def __init__(self, dataset: Dataset, batch_size: int, sampler: Sampler, device: torch.device, seed: int):
        self.batch_size, self.sampler = batch_size, sampler
        self.images, self.index = _tensor_images(dataset)
        self.device = torch.device(device)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(seed)

    def __len__(self) -> int:
        return -(-len(self.sampler) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.as_tensor(list(self.sampler), dtype=torch.long)
        if self.index is not None:
            order = self.index[order]
        for chunk in order.split(self.batch_size):
            yield self.images.batch(chunk, self.device, self.generator)


def batched_on_device(dataset: Dataset, device) -> bool:
    """Whether :func:`make_loader` builds ``dataset``'s batches on ``device``: in-memory images bound for CUDA."""
    return device is not None and torch.device(device).type == "cuda" and _tensor_images(dataset)[0] is not None


def _tensor_images(dataset: Dataset) -> tuple[TensorImages | None, torch.Tensor | None]:
    """(the TensorImages under ``dataset``, the Subset's indices into it or None); (None, None) if none."""
    if isinstance(dataset, TensorImages):
        return dataset, None
    if isinstance(dataset, torch.utils.data.Subset):
        base, index = _tensor_images(dataset.dataset)
        if base is not None:
            sub = torch.as_tensor(list(dataset.indices), dtype=torch.long)
            return base, sub if index is None else index[sub]
    return None, None


def _cifar_like_transform(train: bool, mean, std, tensor_input: bool, size=32):
    """RandomCrop(size, pad 4) + flip for training, normalization always (the seeds' CIFAR recipe)."""
    from torchvision import transforms as T
    steps = [T.RandomCrop(size, padding=CROP_PADDING), T.RandomHorizontalFlip()] if train else []
    if not tensor_input:
        steps.append(T.ToTensor())
    steps.append(T.Normalize(mean, std))
    return T.Compose(steps)


def _imagenet_transform(train: bool, size: int = 224, resize: int = 256):
    from torchvision import transforms as T
    if train:
        steps = [T.RandomResizedCrop(size), T.RandomHorizontalFlip()]
    else:
        steps = [T.Resize(resize), T.CenterCrop(size)]
    return T.Compose(steps + [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def _cub_transform(train: bool, size: int = 448):
    from torchvision import transforms as T
    if train:
        steps = [T.Resize(size), T.RandomHorizontalFlip(), T.RandomCrop(size)]
    else:
        steps = [T.Resize(size), T.CenterCrop(size)]
    return T.Compose(steps + [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


# --------------------------------------------------------------------------- digits

def _load_digits(split: str, augment: bool, seed: int = 0) -> Dataset:
    """sklearn digits as a 3x32x32 task: tiny, bundled, so tests need no files."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = bunch.images.astype(np.float32)  # N x 8 x 8, values 0..16
    idx_train, idx_test = train_test_split(np.arange(len(x)), test_size=0.2, random_state=seed,
                                           stratify=bunch.target)
    idx = idx_train if split == "train" else idx_test
    imgs = torch.from_numpy(x[idx]).repeat_interleave(4, 1).repeat_interleave(4, 2) / 16.0
    train_px = x[idx_train] / 16.0  # normalization statistics from the training split only
    mean, std = float(train_px.mean()), float(train_px.std())
    return TensorImages(imgs, torch.from_numpy(bunch.target[idx]), 1.0, (mean,) * 3, (std,) * 3, augment)


# --------------------------------------------------------------------------- fashion-mnist (IDX)

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path) -> np.ndarray:
    """Read an IDX file (the MNIST format; gzip detected from its magic bytes)."""
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (bad magic {raw[:4]!r})")
    dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(raw[4:header], dtype=">u4"))
    count = int(np.prod(shape)) if shape else 1
    if len(raw) - header != count * dtype.itemsize:
        raise ValueError(f"{path}: IDX header says shape {shape} ({count * dtype.itemsize} bytes)"
                         f" but the file holds {len(raw) - header} data bytes")
    return np.frombuffer(raw, dtype=dtype, count=count, offset=header).reshape(shape).astype(
        dtype.newbyteorder("="))


def _fashion_layout(root) -> str:
    names = "\n".join(f"    {n}[.gz]" for pair in FASHION_FILES.values() for n in pair)
    return (f"  {root}/  (or one sub-folder of it) holding the four IDX files\n{names}\n"
            f"  Get them with `apt-get install dataset-fashion-mnist` (installs into "
            f"{FASHION_DEFAULT_ROOT}) or from https://github.com/zalandoresearch/fashion-mnist "
            f"(data/fashion/*.gz), then pass root=<that folder>.")


def _find_file(root: Path, name: str) -> Path | None:
    """Look for ``name`` or ``name.gz`` in root and in its direct sub-folders."""
    dirs = [root] + (sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else [])
    for d in dirs:
        for candidate in (d / name, d / (name + ".gz")):
            if candidate.is_file():
                return candidate
    return None


def _load_fashion(root, split: str, augment: bool) -> Dataset:
    """Fashion-MNIST from IDX files, padded 28 -> 32 with zeros (keeps every pixel)."""
    root = Path(root)
    names = FASHION_FILES[split]
    found = [_find_file(root, n) for n in names]
    missing = [n for n, p in zip(names, found) if p is None]
    if missing:
        raise DatasetNotFoundError("fashion-mnist", root, _fashion_layout(root),
                                   f"missing {', '.join(missing)}")
    images, labels = read_idx(found[0]), read_idx(found[1])
    if images.ndim != 3 or len(images) != len(labels):
        raise ValueError(f"fashion-mnist: {found[0]} has shape {images.shape}, labels "
                         f"{labels.shape}; expected N x H x W images and N labels")
    padded = torch.nn.functional.pad(torch.from_numpy(images), (2, 2, 2, 2)) \
        if images.shape[1:] == (28, 28) else _resize_to_32(images)
    return TensorImages(padded, torch.from_numpy(labels.astype(np.int64)), 255.0, FASHION_MEAN, FASHION_STD,
                        augment)


def _resize_to_32(images: np.ndarray) -> torch.Tensor:
    """Images that are not 28x28 are bilinearly resized to 32x32 (kept as uint8)."""
    x = torch.from_numpy(images).float().unsqueeze(1)
    x = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    return x.squeeze(1).round().clamp(0, 255).to(torch.uint8)


# --------------------------------------------------------------------------- CIFAR

_CIFAR = {
    "cifar10": ("cifar-10-batches-py",
                ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5",
                 "test_batch", "batches.meta"],
                "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"),
    "cifar100": ("cifar-100-python", ["train", "test", "meta"],
                 "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"),
}


def _load_cifar(name: str, root, split: str, augment: bool) -> Dataset:
    """torchvision CIFAR from a local root (download=False); root may also be the batches folder."""
    from torchvision import datasets
    folder, files, url = _CIFAR[name]
    root = Path(root)
    if root.name == folder:
        root = root.parent
    missing = [f for f in files if not (root / folder / f).is_file()]
    if missing:
        layout = (f"  {root}/{folder}/ containing {', '.join(files)}\n"
                  f"  (extract {url.rsplit('/', 1)[1]} from {url} into {root})")
        raise DatasetNotFoundError(name, root / folder, layout, f"missing {', '.join(missing)}")
    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    tf = _cifar_like_transform(augment, CIFAR_MEAN, CIFAR_STD, tensor_input=False)
    return cls(str(root), train=(split == "train"), transform=tf, download=False)


# --------------------------------------------------------------------------- ImageFolder sets

def _imagefolder(name: str, folder: Path, layout: str, transform) -> Dataset:
    """ImageFolder with a DatasetNotFoundError instead of torchvision's generic errors."""
    from torchvision import datasets
    if not folder.is_dir():
        raise DatasetNotFoundError(name, folder, layout, "folder does not exist")
    if not any(p.is_dir() for p in folder.iterdir()):
        raise DatasetNotFoundError(name, folder, layout, "no class sub-folders")
    return datasets.ImageFolder(str(folder), transform=transform)


def _imagenet_layout(root) -> str:
    return (f"  {root}/train/<wnid>/*.JPEG   (1000 class folders, e.g. n01440764/)\n"
            f"  {root}/val/<wnid>/*.JPEG     (validation images sorted into the same class "
            f"folders)\n  Obtain ILSVRC2012 from https://image-net.org (registration required), "
            f"extract the train tars per class and sort val/ into class folders.")


def _load_imagenet(root, split: str, augment: bool) -> Dataset:
    root = Path(root)
    folder = root / ("train" if split == "train" else "val")
    return _imagefolder("imagenet", folder, _imagenet_layout(root), _imagenet_transform(augment))


class CUBOfficial(Dataset):
    """CUB-200-2011 read through the archive's own index files (the split RGD uses)."""

    def __init__(self, base: Path, train: bool, transform=None):
        from torchvision.datasets.folder import default_loader
        names = dict(line.split() for line in (base / "images.txt").read_text().splitlines()
                     if line.strip())
        is_train = dict(line.split() for line in
                        (base / "train_test_split.txt").read_text().splitlines() if line.strip())
        want = "1" if train else "0"
        self.samples = [(base / "images" / names[i], int(names[i].split(".", 1)[0]) - 1)
                        for i in sorted(names, key=int) if is_train[i] == want]
        self.targets = [t for _, t in self.samples]
        self.transform, self.loader = transform, default_loader

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i):
        path, target = self.samples[i]
        img = self.loader(str(path))
        return (self.transform(img) if self.transform else img), target


def _cub_layout(root) -> str:
    return (f"  either the official archive extracted so that {root}/CUB_200_2011/ (or {root} "
            f"itself) holds images.txt, train_test_split.txt and images/<class>/*.jpg\n"
            f"    (CUB_200_2011.tgz from https://www.vision.caltech.edu/datasets/cub_200_2011/),\n"
            f"  or an ImageFolder tree {root}/train/<class>/*.jpg and {root}/test/<class>/*.jpg.")


def _load_cub(root, split: str, augment: bool) -> Dataset:
    root = Path(root)
    tf = _cub_transform(augment)
    for base in (root / "CUB_200_2011", root):
        if (base / "images.txt").is_file() and (base / "train_test_split.txt").is_file():
            return CUBOfficial(base, split == "train", tf)
    if split == "test" and not (root / "test").is_dir() and (root / "val").is_dir():
        return _imagefolder("cub200", root / "val", _cub_layout(root), tf)
    return _imagefolder("cub200", root / split, _cub_layout(root), tf)


# --------------------------------------------------------------------------- public API

def load_dataset(name: str, root=None, split: str = "train", augment: bool | None = None,
                 seed: int = 0) -> Dataset:
    """Build one split of a supported dataset from local files.

    ``augment`` defaults to True for the training split of image datasets and False for
    ``digits`` (tiny, kept deterministic for tests). ``seed`` fixes the digits train/test split.
    """
    name, split = _canonical(name), _check_split(split)
    root = default_root(name) if root is None else root
    if augment is None:
        augment = split == "train" and name != "digits"
    if name == "digits":
        return _load_digits(split, augment, seed)
    if name == "fashion-mnist":
        return _load_fashion(root, split, augment)
    if name in _CIFAR:
        return _load_cifar(name, root, split, augment)
    if name == "cub200":
        return _load_cub(root, split, augment)
    return _load_imagenet(root, split, augment)


def _world() -> tuple[int, int]:
    """(rank, world size) from an initialised process group, else from torchrun's environment."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


class SeededShuffleSampler(Sampler[int]):
    """Shuffle whose order depends only on (seed, epoch): makes resumed runs replay exactly.

    Produces the same order as ``DistributedSampler(num_replicas=1, seed=seed)``, so a
    single-process run sees the same global batches as a torchrun run over the same data.
    """

    def __init__(self, data_source: Sized, seed: int = 0):
        self.n, self.seed, self.epoch = len(data_source), int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


class ShardSampler(Sampler[int]):
    """Strided, unpadded evaluation shard: summed metrics over ranks count each sample once."""

    def __init__(self, data_source: Sized, rank: int, world_size: int):
        self.n, self.rank, self.world = len(data_source), rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world))


def train_sampler(dataset: Dataset, seed: int, distributed: bool) -> Sampler:
    """The (seed, epoch)-determined training sampler; DistributedSampler across ranks."""
    if not distributed:
        return SeededShuffleSampler(dataset, seed)
    from torch.utils.data.distributed import DistributedSampler
    rank, world = _world()
    return DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed)


def eval_sampler(dataset: Dataset, distributed: bool) -> Sampler:
    if not distributed:
        return torch.utils.data.SequentialSampler(dataset)
    rank, world = _world()
    return ShardSampler(dataset, rank, world)


def per_rank_batch(batch_size: int, distributed: bool) -> int:
    """Split a global batch evenly over ranks (so recipes keep their global batch size)."""
    world = _world()[1] if distributed else 1
    if batch_size % world:
        raise ValueError(f"global batch size {batch_size} is not divisible by world size {world}")
    return batch_size // world


def make_loader(dataset: Dataset, batch_size: int, workers: int = 0, *, train: bool,
                distributed: bool = False, seed: int = 0, device=None) -> DataLoader | DeviceBatches:
    """One loader with a reproducible sampler; ``batch_size`` is the global batch.

    Workers are not persistent and the loader carries its own generator (re-seeded per epoch
    by the runner), so augmentation randomness in workers also depends only on (seed, epoch).
    An in-memory image set (:class:`TensorImages`) bound for a CUDA ``device`` is batched on
    that device instead (:class:`DeviceBatches`; ``workers`` is then not needed).
    """
    sampler = train_sampler(dataset, seed, distributed) if train else eval_sampler(dataset,
                                                                                  distributed)
    per_rank = per_rank_batch(batch_size, distributed)
    if batched_on_device(dataset, device):
        return DeviceBatches(dataset, per_rank, sampler, device, seed)
    gen = torch.Generator()
    gen.manual_seed(seed)
    return DataLoader(dataset, batch_size=per_rank, sampler=sampler, num_workers=workers, generator=gen,
                      pin_memory=torch.cuda.is_available(), drop_last=False)


def make_loaders(dataset_name: str, root=None, batch_size: int = 128, workers: int = 4,
                 distributed: bool = False, seed: int = 0, eval_batch_size: int | None = None
                 ) -> tuple[DataLoader, DataLoader]:
    """Train and validation loaders for a named dataset (global ``batch_size``).

    When ``distributed``, the training loader uses a ``DistributedSampler`` (seeded with
    ``seed``; call ``set_epoch``, which :func:`fxprune.runner.finetune` does) and validation is
    sharded without padding so all-reduced metrics are exact.
    """
    train = load_dataset(dataset_name, root, "train", seed=seed)
    val = load_dataset(dataset_name, root, "test", seed=seed)
    return (make_loader(train, batch_size, workers, train=True, distributed=distributed, seed=seed),
            make_loader(val, eval_batch_size or batch_size, workers, train=False,
                        distributed=distributed, seed=seed))

