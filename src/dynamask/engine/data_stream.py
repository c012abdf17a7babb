"""The training data stream: a restartable, sharded sequence of augmented batches.

The data order is a pure function of ``(seed, epoch)`` (a DistributedSampler permutation, also
with one process) and the random augmentation of each sample a pure function of
``(seed, epoch, index)`` (its transform runs under its own torch seed, whatever the loader
worker), so the stream can be restarted at any position: a checkpoint stores only the epoch and
the position in it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import Any

import torch

from ..data import collate_fn
from ..data.coco import DatasetError
from ..errors import ConfigError, DynaMaskError
from . import distributed as du
from .rng import sample_seed

__all__ = [
    "InfiniteShardSampler",
    "SeededDataset",
    "SKIPPED_KEY",
    "SkippedImages",
    "load_train_dataset",
    "build_loader",
    "to_device",
]

logger = logging.getLogger("dynamask.train")

#: target key under which SeededDataset reports images it had to skip
SKIPPED_KEY = "_skipped_images"


class InfiniteShardSampler(torch.utils.data.Sampler):
    """Endless stream of ``(epoch, index)`` keys for this process's shard.

    Each epoch is a :class:`~torch.utils.data.DistributedSampler` permutation
    seeded with ``seed + epoch`` (padded so every process gets the same
    number of samples), so the order is a pure function of ``(seed, epoch)``.
    The stream starts at ``start_position`` within ``start_epoch`` (resume).
    """

    def __init__(
        self,
        size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        start_epoch: int = 0,
        start_position: int = 0,
    ):
        if size <= 0:
            raise ValueError("InfiniteShardSampler: the dataset is empty")
        self._inner = torch.utils.data.DistributedSampler(
            range(size), num_replicas=world_size, rank=rank, shuffle=shuffle, seed=int(seed), drop_last=False
        )
        self.start_epoch = int(start_epoch)
        self.start_position = int(start_position)

    @property
    def shard_size(self) -> int:
        """Samples per process per epoch."""
        return len(self._inner)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, skip = self.start_epoch, self.start_position
        while True:
            self._inner.set_epoch(epoch)
            for pos, index in enumerate(self._inner):
                if pos >= skip:
                    yield epoch, int(index)
            epoch, skip = epoch + 1, 0


def _plain_tensor(v: Any) -> Any:
    """tv_tensors (Image, BoundingBoxes, Mask) -> plain tensors; other values unchanged."""
    if isinstance(v, torch.Tensor) and type(v) is not torch.Tensor:
        return v.as_subclass(torch.Tensor)
    return v


class SeededDataset(torch.utils.data.Dataset):
    """Wraps a dataset so that ``ds[(epoch, index)]`` applies its random
    transforms under the torch seed :func:`sample_seed` ``(seed, epoch, index)``.

    The global torch CPU RNG of the calling process is left untouched (so
    loading data in the main process does not disturb the model's random
    numbers). Images and targets come back as plain tensors.
    """

    #: consecutive unreadable images tolerated before the error is raised
    MAX_CONSECUTIVE_UNREADABLE = 8

    def __init__(self, dataset, seed: int):
        self.dataset = dataset
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, index = key
        skipped: list[str] = []
        while True:
            try:
                with torch.random.fork_rng(devices=[]):
                    torch.random.default_generator.manual_seed(sample_seed(self.seed, epoch, index))
                    image, target = self.dataset[index]
                break
            except DatasetError as e:
                # an image that cannot be decoded mid-epoch is skipped (the next one takes its
                # place, deterministically) and reported by the training loop, not fatal
                skipped.append(str(e))
                if len(skipped) >= min(self.MAX_CONSECUTIVE_UNREADABLE, len(self.dataset)):
                    raise
                index = (index + 1) % len(self.dataset)
        image = _plain_tensor(image)
        target = {k: _plain_tensor(v) for k, v in target.items()}
        if skipped:
            target[SKIPPED_KEY] = skipped
        return image, target


def mask_targets_in_use(model_cfg: dict) -> str:
    """``model.mask_targets``, except that the legacy geometry always resizes its masks."""
    if model_cfg.get("mask_geometry") == "torchvision":
        return "resized"
    return model_cfg.get("mask_targets", "original")


def load_train_dataset(cfg: dict):
    """The training set of ``cfg["data"]`` with its transforms; every path checked up front (also the
    validation paths, so a typo fails now rather than at the first evaluation)."""
    from ..data import CocoInstanceDataset, build_transforms

    d, inp = cfg["data"], cfg["input"]
    for key in ("train_json", "train_images"):
        if not d.get(key):
            raise ConfigError(
                f"config: 'data.{key}' is not set; training needs it (set it in the YAML file or pass data.{key}=PATH)"
            )
    if not os.path.isfile(d["train_json"]):
        raise DynaMaskError(f"data.train_json: annotation file not found: {d['train_json']}")
    if not os.path.isdir(d["train_images"]):
        raise DynaMaskError(f"data.train_images: image folder not found: {d['train_images']}")
    transforms = build_transforms(
        True,
        min_size=inp["min_size"],
        max_size=inp["max_size"],
        flip_prob=inp["flip_prob"],
        color_jitter=inp["color_jitter"] > 0,
        resize_masks=mask_targets_in_use(cfg["model"]) == "resized",
    )
    cache = os.path.join(cfg["output_dir"], "cache") if d.get("cache_records", True) and cfg.get("output_dir") else None

    def build():
        return CocoInstanceDataset(
            d["train_json"], d["train_images"], transforms=transforms, keep_empty=d["keep_empty"], cache_dir=cache
        )

    if cache is not None and du.is_dist():
        # one process per node parses and writes the cache; the node's other ranks then map it
        # (instead of every rank holding a parse's peak memory at once)
        ds, failure = None, None
        if du.env_local_rank() == 0:
            try:
                ds = build()
            except Exception as exc:  # every rank raises below, none waits for a dataset that never comes
                failure = exc
        du.agree_on_failure(failure, f"loading data.train_json {d['train_json']}")
        if ds is None:
            ds = build()
    else:
        ds = build()
    if not ds.class_names:
        raise DynaMaskError(f"data.train_json: {d['train_json']} lists no categories")
    if len(ds) == 0:
        raise DynaMaskError(
            f"data.train_json: {d['train_json']} has no usable training image"
            + (
                ""
                if d["keep_empty"]
                else " (images without annotations are dropped; set data.keep_empty=true to keep them)"
            )
        )
    for key in ("val_json", "val_images"):
        if d.get("val_json") and not d.get(key):
            raise ConfigError(f"config: 'data.val_json' is set but 'data.{key}' is not")
        if d.get(key) and not os.path.exists(d[key]):
            raise DynaMaskError(f"data.{key}: not found: {d[key]}")
    missing = ds.drop_missing_images()
    if missing and len(ds) == 0:
        raise DynaMaskError(
            f"data.train_images: none of the {len(missing)} image files listed in {d['train_json']} "
            f"exist under {d['train_images']} (e.g. {missing[0]}); is data.train_images the right folder?"
        )
    if missing:
        logger.warning(
            "%s: skipped %d image(s) whose files do not exist under %s (first: %s)",
            d["train_json"],
            len(missing),
            d["train_images"],
            ", ".join(missing[:3]),
        )
    return ds


def build_loader(
    cfg: dict,
    dataset,
    per_rank_batch: int,
    rank: int,
    world: int,
    start_epoch: int,
    start_position: int,
    device: torch.device,
):
    """This process's DataLoader over :class:`SeededDataset`, starting at the given stream position."""
    sampler = InfiniteShardSampler(
        len(dataset),
        cfg["seed"],
        rank=rank,
        world_size=world,
        shuffle=True,
        start_epoch=start_epoch,
        start_position=start_position,
    )
    loader = torch.utils.data.DataLoader(
        SeededDataset(dataset, cfg["seed"]),
        batch_size=per_rank_batch,
        sampler=sampler,
        num_workers=cfg["data"]["num_workers"],
        collate_fn=collate_fn,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(int(cfg["seed"]) % 2**63),
    )
    return loader, sampler.shard_size


def to_device(images, targets, device):
    non_blocking = device.type == "cuda"
    images = [img.to(device, non_blocking=non_blocking) for img in images]
    targets = [
        {k: (v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v) for k, v in t.items()}
        for t in targets
    ]
    return images, targets


class SkippedImages:
    """Unreadable images the stream skipped: logged (rank 0) and recorded as ``skipped_image``
    events as they come; the loop sums ``count`` over processes at the end."""

    def __init__(self, write_event, main: bool):
        self.write_event, self.main, self.count = write_event, main, 0

    def take(self, targets, step: int) -> None:
        for target in targets:
            for message in target.pop(SKIPPED_KEY, ()):
                self.count += 1
                if self.main:
                    logger.warning("skipped an unreadable training image (%d so far): %s", self.count, message)
                self.write_event({"iteration": step, "event": "skipped_image", "reason": message})
