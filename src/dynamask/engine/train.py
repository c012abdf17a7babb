"""Training loop: single process or DistributedDataParallel, exact resume, robust to NaNs and signals.

:func:`train` is what ``dynamask train`` runs. Everything it writes goes to the
output directory (``out_dir`` argument, else ``cfg["output_dir"]``):

``config.yaml``
    the resolved config of the run.
``metrics.jsonl``
    one JSON object per line: every ``solver.log_period`` steps the losses
    (averaged over the period and over processes), ``total_loss``, ``lr``,
    ``grad_norm``, ``time_per_iter``, ``data_time`` and ``images_per_s``;
    ``{"event": "nonfinite_loss", ...}`` for each skipped step;
    ``{"event": "eval", "metrics": ...}`` after each evaluation;
    ``{"event": "final", ...}`` at the end. Non-finite numbers are written as
    the strings ``"nan"``, ``"inf"``, ``"-inf"`` (the file stays strict JSON).
``tb/``
    TensorBoard events (the same scalars).
``checkpoint_last.pt``
    model, optimizer, LR scheduler, iteration, RNG states and data-order
    position; every ``solver.checkpoint_period`` steps (0 = only at the end),
    at the end, and when the run is interrupted or aborted.
``model_final.pt``
    the trained model with its config, class names and category ids (no
    optimizer state); the file ``evaluate``/``predict`` take.

Reproducibility and resume
--------------------------
``seed`` seeds Python, NumPy and torch. The data order is a pure function of
``(seed, epoch)`` (a :class:`~torch.utils.data.DistributedSampler`
permutation, also with one process), and the random augmentation of each
sample is a pure function of ``(seed, epoch, index)`` (its transform runs
under its own torch seed, whatever the worker), so the stream of batches can
be restarted at any position. ``checkpoint_last.pt`` stores the epoch and
position in it together with the torch/NumPy/Python (and CUDA) RNG states of
every process -- the model draws random numbers too: RPN/RoI sampling and the
Gumbel noise of the resolution selector use the global torch RNG. A run
resumed with ``resume=True`` therefore continues exactly as if it had not
stopped (on CPU: bit-identical weights).

Multi-process training
----------------------
Under ``torchrun --nproc_per_node=N -m dynamask train ...`` the process group
is created from the environment (NCCL on CUDA, Gloo on CPU), the model is
wrapped in ``DistributedDataParallel`` with ``find_unused_parameters=True``
(the DynaMask head does not use every branch in every step: e.g. the
resolution selector only with the dynamic policy, deeper refinement stages
only for some RoIs), each process reads its own shard of every epoch, and
``solver.ims_per_batch`` is the *global* batch (divided by the number of
processes). Only rank 0 writes files, logs and shows progress. Decisions that
must be collective (skip a non-finite step, stop on a signal) are agreed on by
all processes. At the end each process hashes its weights and rank 0 checks
that they are identical (the hashes go to the final ``metrics.jsonl`` line).
"""

from __future__ import annotations

import bisect
import contextlib
import copy
import hashlib
import json
import logging
import math
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
import warnings
from typing import Any, Dict, Iterator, List, Optional, Tuple

import numpy as np
import torch

from ..config import ConfigError, effective_lr, flatten, load_config, save_config
from ..errors import DynaMaskError
from . import distributed as du
from ..data import collate_fn
from ..data.coco import DatasetError
from ..atomic import atomic_path
from .build import (build_model, checkpoint_geometry, checkpoint_mismatches, fits_coco_label_space, hyper_parameters,
                    load_checkpoint, save_checkpoint, torchvision_weights_plan)

__all__ = [
    "train",
    "TrainingInterrupted",
    "NonFiniteLossError",
    "InfiniteShardSampler",
    "SeededDataset",
    "make_lr_lambda",
    "seed_everything",
    "get_rng_state",
    "set_rng_state",
    "sample_seed",
    "weights_hash",
    "CHECKPOINT_LAST",
    "MODEL_FINAL",
    "METRICS_FILE",
]

logger = logging.getLogger("dynamask.train")

CHECKPOINT_LAST = "checkpoint_last.pt"
MODEL_FINAL = "model_final.pt"
METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.yaml"


class TrainingInterrupted(DynaMaskError):
    """Training stopped on SIGINT/SIGTERM after writing ``checkpoint_last.pt``."""

    def __init__(self, message: str, iteration: int = 0, checkpoint: str = "", signal_name: str = ""):
        super().__init__(message)
        self.iteration = iteration
        self.checkpoint = checkpoint
        self.signal_name = signal_name


class NonFiniteLossError(DynaMaskError):
    """Too many consecutive steps with a non-finite loss (``solver.max_nonfinite_steps``)."""

    def __init__(self, message: str, iteration: int = 0, checkpoint: str = ""):
        super().__init__(message)
        self.iteration = iteration
        self.checkpoint = checkpoint


# --------------------------------------------------------------------------
# Seeding and RNG state (weights_only-loadable)
# --------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global RNG and torch (CPU and CUDA)."""
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed % 2**64)


def get_rng_state() -> Dict[str, Any]:
    """The global RNG states as tensors, numbers and lists (loadable with ``weights_only=True``)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: Dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": str(name), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": int(version), "state": [int(x) for x in internal], "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Inverse of :func:`get_rng_state`."""
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), int(n["pos"]), int(n["has_gauss"]),
                         float(n["cached_gaussian"])))
    p = state["python"]
    random.setstate((int(p["version"]), tuple(int(x) for x in p["state"]), p["gauss_next"]))
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
        else:
            logger.warning("checkpoint has CUDA RNG states for %d devices, this machine has %d: not restored",
                           len(cuda), torch.cuda.device_count())


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """Seed of the random augmentation of sample ``index`` in ``epoch`` (well mixed, 63 bits)."""
    ss = np.random.SeedSequence([int(seed) & 0xFFFFFFFFFFFFFFFF, int(epoch), int(index)])
    return int(ss.generate_state(1, dtype=np.uint64)[0]) & 0x7FFFFFFFFFFFFFFF


# --------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------


class InfiniteShardSampler(torch.utils.data.Sampler):
    """Endless stream of ``(epoch, index)`` keys for this process's shard.

    Each epoch is a :class:`~torch.utils.data.DistributedSampler` permutation
    seeded with ``seed + epoch`` (padded so every process gets the same
    number of samples), so the order is a pure function of ``(seed, epoch)``.
    The stream starts at ``start_position`` within ``start_epoch`` (resume).
    """

    def __init__(self, size: int, seed: int, rank: int = 0, world_size: int = 1, shuffle: bool = True,
                 start_epoch: int = 0, start_position: int = 0):
        if size <= 0:
            raise ValueError("InfiniteShardSampler: the dataset is empty")
        self._inner = torch.utils.data.DistributedSampler(
            range(size), num_replicas=world_size, rank=rank, shuffle=shuffle, seed=int(seed), drop_last=False)
        self.start_epoch = int(start_epoch)
        self.start_position = int(start_position)

    @property
    def shard_size(self) -> int:
        """Samples per process per epoch."""
        return len(self._inner)

    def __iter__(self) -> Iterator[Tuple[int, int]]:
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

    def __init__(self, dataset, seed: int):
        self.dataset = dataset
        self.seed = int(seed)

    def __len__(self) -> int:
        return len(self.dataset)

    #: consecutive unreadable images tolerated before the error is raised
    MAX_CONSECUTIVE_UNREADABLE = 8

    def __getitem__(self, key):
        epoch, index = key
        skipped: List[str] = []
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


SKIPPED_KEY = "_skipped_images"


def _to_device(images, targets, device):
    non_blocking = device.type == "cuda"
    images = [img.to(device, non_blocking=non_blocking) for img in images]
    targets = [{k: (v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v)
                for k, v in t.items()} for t in targets]
    return images, targets


# --------------------------------------------------------------------------
# Optimisation
# --------------------------------------------------------------------------


def make_lr_lambda(warmup_iters: int, warmup_factor: float, steps, gamma: float):
    """LR multiplier for step ``it`` (0-based count of finished steps): linear
    warm-up from ``warmup_factor`` to 1 over ``warmup_iters`` steps, then
    ``gamma ** (number of solver.steps <= it)``."""
    steps = sorted(int(s) for s in steps)

    def lr_lambda(it: int) -> float:
        factor = 1.0
        if it < warmup_iters:
            alpha = it / float(warmup_iters)
            factor = warmup_factor * (1.0 - alpha) + alpha
        return factor * (gamma ** bisect.bisect_right(steps, it))

    return lr_lambda


def _build_optimizer(cfg: dict, model: torch.nn.Module) -> torch.optim.Optimizer:
    s = cfg["solver"]
    lr = effective_lr(cfg)
    # The Mask Switch Module learns a classification from a noisy per-batch target; at the
    # detector's LR its logits moved too slowly to become decisive in a CPU-length run.
    switch = [p for n, p in model.named_parameters() if p.requires_grad and ".switch." in n]
    rest = [p for n, p in model.named_parameters() if p.requires_grad and ".switch." not in n]
    params = [{"params": rest}] + ([{"params": switch, "lr": lr * s["switch_lr_multiplier"]}] if switch else [])
    if s["optimizer"] == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=s["momentum"], weight_decay=s["weight_decay"])
    if s["optimizer"] == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=(s["momentum"], 0.999), weight_decay=s["weight_decay"])
    raise ConfigError(f"solver.optimizer: unsupported optimizer {s['optimizer']!r}")


def weights_hash(model: torch.nn.Module) -> str:
    """SHA-256 of the state dict (keys and raw tensor bytes, in key order)."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        t = v.detach().cpu().contiguous()
        h.update(str(t.dtype).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


# --------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------


def _check_writable(out_dir: str) -> None:
    try:
        os.makedirs(out_dir, exist_ok=True)
    except FileExistsError:
        raise DynaMaskError(f"output directory {out_dir!r} cannot be created: a file of that name exists") from None
    except NotADirectoryError:
        raise DynaMaskError(f"output directory {out_dir!r} cannot be created: part of the path is a file, "
                            f"not a directory") from None
    except OSError as e:
        raise DynaMaskError(f"output directory {out_dir!r} cannot be created: {e.strerror or e}") from None
    if not os.path.isdir(out_dir):
        raise DynaMaskError(f"output directory {out_dir!r} is not a directory")
    try:
        with tempfile.NamedTemporaryFile(dir=out_dir, prefix=".write-test-", delete=True):
            pass
    except OSError as e:
        raise DynaMaskError(f"output directory {out_dir!r} is not writable: {e.strerror or e}") from None


def _initialise_from(model, cfg: dict, key: str, num_classes: int, detector_only: bool) -> None:
    """``model.init_weights`` (the whole model) or ``model.detector_weights`` (all but the mask
    branch) from a checkpoint, refused with the differences named when it does not fit."""
    path = cfg["model"][key]
    source = load_checkpoint(path)
    problems = checkpoint_mismatches(source, cfg, num_classes, detector_only=detector_only)
    try:
        if problems:
            raise RuntimeError("; ".join(problems))
        if detector_only:
            model.load_detector_state(source["model"])
        else:
            model.load_state_dict(source["model"])
    except RuntimeError as e:
        raise DynaMaskError(f"model.{key}: {path} does not fit the configured model: "
                            f"{str(e).splitlines()[0]}") from None
    logger.info("initialised %s from %s", "the detector (all but the mask branch)" if detector_only else "the model",
                path)
    trained_in = checkpoint_geometry(source)
    if not detector_only and trained_in != model.mask_geometry:
        logger.warning("model.%s: %s was trained in the %r mask geometry; training goes on in %r "
                       "(model.mask_geometry), so its masks first land half a pixel off", key, path, trained_in,
                       model.mask_geometry)


def _initialise_from_torchvision(model, cfg: dict, plan: dict, detector_only: bool) -> None:
    """``model.init_weights`` / ``model.detector_weights`` from a torchvision detection file:
    backbone, FPN, RPN and box head; torchvision's mask head too for ``init_weights`` with the
    Mask R-CNN head. Logs what was loaded and what starts from its initialisation."""
    from ..models.torchvision_weights import has_mask_head, load_torchvision_detection

    key, path, state = plan["key"], plan["path"], plan["state"]
    with_mask = not detector_only and cfg["model"]["head"] == "maskrcnn" and has_mask_head(state)
    try:
        done = load_torchvision_detection(model, state, path, with_mask_head=with_mask)
    except DynaMaskError as exc:
        raise DynaMaskError(f"model.{key}: {exc}") from None
    parts = "backbone, FPN, RPN, box head" + (" and mask head" if done["mask_head_loaded"] else "")
    logger.info("model.%s: loaded %s from torchvision file %s (%d classes)", key, parts, path, done["num_classes"])
    if done["reinitialised"]:
        logger.info("model.%s: the file has %d classes and the data %d: %s start from initialisation and train",
                    key, done["num_classes"], model.roi_heads.box_predictor.cls_score.out_features,
                    ", ".join(done["reinitialised"]))
    if done["mask_head_loaded"] and model.mask_geometry != "torchvision":
        logger.warning("model.%s: torchvision's mask head was trained in the 'torchvision' mask geometry; training "
                       "goes on in %r (model.mask_geometry), so its masks first land half a pixel off",
                       key, model.mask_geometry)


def _check_free_space(out_dir: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Refuse to start when the output folder cannot hold the checkpoints training will write:
    checkpoint_last.pt twice (the new one is written beside the old before replacing it),
    model_final.pt, and 10 % for logs and evaluation results. checkpoint_last.pt holds the
    weights and buffers plus the optimiser's per-parameter state (AdamW two tensors, SGD one)."""
    final = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    last = final + (2 if isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW) else 1) * trainable
    existing = sum(os.path.getsize(os.path.join(out_dir, f)) for f in (CHECKPOINT_LAST, MODEL_FINAL)
                   if os.path.isfile(os.path.join(out_dir, f)))
    needed = int(1.1 * (2 * last + final)) - existing
    free = shutil.disk_usage(out_dir).free
    if free < needed:
        raise DynaMaskError(f"output directory {out_dir!r} has {free / 2**20:.0f} MiB free, but training writes "
                            f"checkpoints needing about {needed / 2**20:.0f} MiB "
                            f"(checkpoint_last.pt ≈ {last / 2**20:.0f} MiB, kept twice while it is replaced, "
                            f"plus model_final.pt); free space or choose another --out")


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, torch.Tensor) and v.numel() == 1:
        v = v.item()
    if isinstance(v, (np.floating, np.integer)):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    return str(v)


class _MetricsFile:
    """Append-only JSON-lines writer (a no-op on ranks other than 0)."""

    def __init__(self, path: str, enabled: bool):
        self.path = path
        self.enabled = enabled

    def write(self, record: Dict[str, Any]) -> None:
        if not self.enabled:
            return
        line = json.dumps(_jsonable(record), allow_nan=False)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")

    def truncate_after(self, iteration: int) -> None:
        """Keep only records up to ``iteration`` (used on resume)."""
        if not self.enabled or not os.path.exists(self.path):
            return
        kept = []
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a torn last line
                if isinstance(rec, dict) and isinstance(rec.get("iteration"), int) and rec["iteration"] > iteration:
                    continue
                kept.append(line if line.endswith("\n") else line + "\n")
        with atomic_path(self.path) as tmp, open(tmp, "w", encoding="utf-8") as f:
            f.writelines(kept)

    def reset(self) -> None:
        if self.enabled:
            with open(self.path, "w", encoding="utf-8"):
                pass


def _open_tensorboard(log_dir: str, purge_step: Optional[int]):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception as e:  # tensorboard missing or broken: train anyway
        logger.warning("TensorBoard logging disabled (%s: %s)", type(e).__name__, e)
        return None
    return SummaryWriter(log_dir=log_dir, purge_step=purge_step)


# --------------------------------------------------------------------------
# Signals
# --------------------------------------------------------------------------


class _StopFlag:
    """SIGINT/SIGTERM set a flag; the loop stops after the current iteration.

    A second SIGINT while the flag is set raises KeyboardInterrupt at once.
    Handlers are installed only in the main thread and restored on exit.
    """

    def __init__(self):
        self.signum: Optional[int] = None
        self._previous: Dict[int, Any] = {}

    def _handler(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        if self.signum is None:
            return ""
        try:
            return signal.Signals(self.signum).name
        except ValueError:
            return f"signal {self.signum}"

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                try:
                    self._previous[sig] = signal.getsignal(sig)
                    signal.signal(sig, self._handler)
                except (ValueError, OSError):  # not allowed here
                    self._previous.pop(sig, None)
        return self

    def __exit__(self, *exc):
        for sig, prev in self._previous.items():
            try:
                signal.signal(sig, prev if prev is not None else signal.SIG_DFL)
            except (ValueError, OSError):
                pass
        self._previous.clear()
        return False


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def _resolve_device(device: Optional[str], distributed: bool) -> torch.device:
    if device is None or device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise DynaMaskError(f"--device: unknown device {device!r} (use cpu, cuda or cuda:N)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DynaMaskError(f"--device {device}: CUDA is not available on this machine (use --device cpu)")
        if distributed:
            dev = torch.device("cuda", du.env_local_rank())
        elif dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        if dev.index >= torch.cuda.device_count():
            raise DynaMaskError(f"--device {dev}: only {torch.cuda.device_count()} CUDA device(s) available")
    elif dev.type != "cpu":
        raise DynaMaskError(f"--device: unsupported device type {dev.type!r} (use cpu, cuda or cuda:N)")
    return dev


def _normalise_cfg(cfg: dict) -> dict:
    """A full, validated copy of ``cfg`` (missing keys take their defaults)."""
    if not isinstance(cfg, dict):
        raise ConfigError(f"train: cfg must be a dict, got {type(cfg).__name__}")
    return load_config(None, flatten(cfg))


def _load_train_dataset(cfg: dict):
    from ..data import CocoInstanceDataset, build_transforms

    d, inp = cfg["data"], cfg["input"]
    for key in ("train_json", "train_images"):
        if not d.get(key):
            raise ConfigError(f"config: 'data.{key}' is not set; training needs it "
                              f"(set it in the YAML file or pass data.{key}=PATH)")
    if not os.path.isfile(d["train_json"]):
        raise DynaMaskError(f"data.train_json: annotation file not found: {d['train_json']}")
    if not os.path.isdir(d["train_images"]):
        raise DynaMaskError(f"data.train_images: image folder not found: {d['train_images']}")
    transforms = build_transforms(True, min_size=inp["min_size"], max_size=inp["max_size"],
                                  flip_prob=inp["flip_prob"], color_jitter=inp["color_jitter"] > 0)
    ds = CocoInstanceDataset(d["train_json"], d["train_images"], transforms=transforms,
                             keep_empty=d["keep_empty"])
    if not ds.class_names:
        raise DynaMaskError(f"data.train_json: {d['train_json']} lists no categories")
    if len(ds) == 0:
        raise DynaMaskError(f"data.train_json: {d['train_json']} has no usable training image"
                            + ("" if d["keep_empty"] else " (images without annotations are dropped; "
                               "set data.keep_empty=true to keep them)"))
    for key in ("val_json", "val_images"):  # checked now rather than at the first evaluation
        if d.get("val_json") and not d.get(key):
            raise ConfigError(f"config: 'data.val_json' is set but 'data.{key}' is not")
        if d.get(key) and not os.path.exists(d[key]):
            raise DynaMaskError(f"data.{key}: not found: {d[key]}")
    missing = ds.drop_missing_images()
    if missing and len(ds) == 0:
        raise DynaMaskError(f"data.train_images: none of the {len(missing)} image files listed in {d['train_json']} "
                            f"exist under {d['train_images']} (e.g. {missing[0]}); is data.train_images the right folder?")
    if missing:
        logger.warning("%s: skipped %d image(s) whose files do not exist under %s (first: %s)",
                       d["train_json"], len(missing), d["train_images"], ", ".join(missing[:3]))
    return ds


def _config_differences(a: dict, b: dict) -> List[str]:
    fa, fb = flatten(a), flatten(b)
    return sorted(k for k in set(fa) | set(fb) if fa.get(k) != fb.get(k))


def _fmt_lr(lr: float) -> str:
    return f"{lr:.3g}"


def _eta(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


# --------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------


def train(cfg: dict, out_dir: Optional[str] = None, resume: bool = False, progress: bool = True,
          device: Optional[str] = None) -> dict:
    """Train a model as described by ``cfg``; returns a summary dict.

    Args:
        cfg: config dict (see :data:`dynamask.config.DEFAULTS`; missing keys take defaults).
        out_dir: output directory (default ``cfg["output_dir"]``).
        resume: continue from ``out_dir/checkpoint_last.pt`` (error if there is none).
        progress: show a tqdm progress bar (only on a terminal, and only on rank 0).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` (default: CUDA if available). Under torchrun
            each process uses ``cuda:LOCAL_RANK``.

    Returns a dict with ``iteration``, ``output_dir``, ``checkpoint``, ``model_final``,
    ``losses`` (the last logged averages), ``total_loss``, ``lr``, ``nonfinite_steps``,
    ``time_s``, ``world_size``, ``weights_sha256`` (one per process) and ``eval``
    (metrics of the final evaluation, or None).

    Raises :class:`DynaMaskError` for user errors (bad config, unwritable output
    directory, missing data, nothing to resume), :class:`NonFiniteLossError`
    after ``solver.max_nonfinite_steps`` consecutive non-finite losses and
    :class:`TrainingInterrupted` after SIGINT/SIGTERM (both write
    ``checkpoint_last.pt`` first).
    """
    cfg = _normalise_cfg(cfg)
    out_dir = os.path.abspath(os.path.expanduser(out_dir if out_dir is not None else cfg["output_dir"]))
    cfg["output_dir"] = out_dir

    distributed_env = du.launched_distributed()
    dev = _resolve_device(device, distributed_env)
    created_pg = du.init_distributed(device=str(dev)) if distributed_env else False
    try:
        return _train(cfg, out_dir, resume, progress, dev)
    finally:
        if created_pg:
            du.cleanup_distributed()


def _train(cfg: dict, out_dir: str, resume: bool, progress: bool, dev: torch.device) -> dict:
    t_start = time.perf_counter()
    rank, world = du.get_rank(), du.get_world_size()
    main = rank == 0
    s = cfg["solver"]

    def info(msg, *args):
        if main:
            logger.info(msg, *args)

    def warn(msg, *args):
        if main:
            logger.warning(msg, *args)

    # ---------------------------------------------------------------- checks before anything is written
    if s["ims_per_batch"] % world:
        raise ConfigError(f"solver.ims_per_batch ({s['ims_per_batch']}) is the global batch and must be "
                          f"divisible by the number of processes ({world})")
    per_rank_batch = s["ims_per_batch"] // world
    for key in ("train_json", "train_images"):
        if not cfg["data"].get(key):
            raise ConfigError(f"config: 'data.{key}' is not set; training needs it "
                              f"(set it in the YAML file or pass data.{key}=PATH)")
    _check_writable(out_dir)
    ckpt_path = os.path.join(out_dir, CHECKPOINT_LAST)
    final_path = os.path.join(out_dir, MODEL_FINAL)
    ckpt = None
    if resume:
        if not os.path.isfile(ckpt_path):
            raise DynaMaskError(f"--resume: there is no checkpoint to resume from ({ckpt_path} does not exist); "
                                f"start without --resume to train from scratch")
        ckpt = load_checkpoint(ckpt_path)
        for key in ("optimizer", "scheduler", "iteration"):
            if key not in ckpt:
                raise DynaMaskError(f"--resume: {ckpt_path} is not a resumable checkpoint (no {key!r} entry)")
    elif main and os.path.exists(ckpt_path):
        logger.warning("%s exists and will be overwritten (use --resume to continue that run)", ckpt_path)

    amp = s["amp"]
    if amp != "none" and dev.type != "cuda":
        warn("solver.amp=%s is ignored on %s (mixed precision is used on CUDA only)", amp, dev.type)
        amp = "none"

    # ---------------------------------------------------------------- data, model, optimizer
    seed_everything(cfg["seed"])
    tv_plan = torchvision_weights_plan(cfg)
    dataset = _load_train_dataset(cfg)
    if tv_plan and tv_plan["num_classes"] == 91 and fits_coco_label_space(dataset.cat_ids, dataset.class_names):
        from ..models.torchvision_weights import coco_label_space

        dataset.use_categories(coco_label_space())
        info("model.%s: %s is torchvision's 91-class COCO model and the data's categories are COCO's: "
             "labels keep torchvision's label space (label = COCO category id)", tv_plan["key"], tv_plan["path"])
    n_classes = len(dataset.class_names)
    if cfg["model"]["num_classes"] is not None and cfg["model"]["num_classes"] != n_classes:
        raise ConfigError(f"model.num_classes is {cfg['model']['num_classes']} but the training set "
                          f"{cfg['data']['train_json']} has {n_classes} categories")
    if ckpt is not None:
        ck_classes = ckpt.get("class_names")
        if ck_classes is not None and list(ck_classes) != list(dataset.class_names):
            raise DynaMaskError(f"--resume: {ckpt_path} was trained on classes {list(ck_classes)}, but "
                                f"{cfg['data']['train_json']} has {list(dataset.class_names)}")
        if isinstance(ckpt.get("config"), dict):
            diff = [k for k in _config_differences(ckpt["config"], cfg)
                    if k not in ("output_dir", "solver.max_iter")]
            if diff:
                warn("--resume: the config differs from the checkpoint's in: %s", ", ".join(diff))

    model = build_model(cfg, n_classes + 1)
    retrain_box_predictor = tv_plan is not None and tv_plan["num_classes"] != n_classes + 1
    if cfg["model"].get("freeze_detector"):
        model.freeze_detector()
        if retrain_box_predictor:  # the file's classes are not the data's: a new box predictor must learn
            for parameter in model.roi_heads.box_predictor.parameters():
                parameter.requires_grad_(True)
            info("model.freeze_detector: the box predictor trains (new classes); backbone, FPN, RPN and box "
                 "head stay frozen")
    model.to(dev)
    model.train()
    optimizer = _build_optimizer(cfg, model)
    lr_lambda = make_lr_lambda(s["warmup_iters"], s["warmup_factor"], s["steps"], s["gamma"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
    scaler = torch.amp.GradScaler("cuda") if amp == "fp16" else None
    if main:
        _check_free_space(out_dir, model, optimizer)

    start_iter = 0
    data_epoch, data_pos = 0, 0
    seed_everything(cfg["seed"] + rank)  # per-process stream for the model's own randomness
    if ckpt is None:
        for key, detector_only in (("init_weights", False), ("detector_weights", True)):
            if tv_plan is not None and tv_plan["key"] == key:
                _initialise_from_torchvision(model, cfg, tv_plan, detector_only)
            elif cfg["model"].get(key):
                _initialise_from(model, cfg, key, n_classes + 1, detector_only)
    if ckpt is not None:
        problems = checkpoint_mismatches(ckpt, cfg, n_classes + 1)
        if problems:
            raise DynaMaskError(f"--resume: {ckpt_path} does not fit the configured model: {'; '.join(problems)}")
        try:
            model.load_state_dict(ckpt["model"])
        except RuntimeError as e:
            raise DynaMaskError(f"--resume: {ckpt_path} does not fit the configured model: "
                                f"{str(e).splitlines()[0]}") from None
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        start_iter = int(ckpt["iteration"])
        rng = ckpt.get("rng") or {}
        states = rng.get("states") or []
        if len(states) == world:
            set_rng_state(states[rank])
        else:
            warn("--resume: checkpoint has RNG states for %d process(es), this run has %d: reseeding",
                 len(states), world)
            seed_everything(cfg["seed"] + rank + 7919 * start_iter)
        data = ckpt.get("data") or {}
        if data.get("world_size") == world and data.get("per_rank_batch") == per_rank_batch:
            data_epoch, data_pos = int(data["epoch"]), int(data["position"])
        else:
            consumed = start_iter * s["ims_per_batch"] // world
            shard = math.ceil(len(dataset) / world)
            data_epoch, data_pos = divmod(consumed, shard)
            if data:
                warn("--resume: batch size or process count changed; data order continues approximately")
        info("resuming from %s at iteration %d", ckpt_path, start_iter)
        del ckpt

    train_model: torch.nn.Module = model
    if world > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[dev.index] if dev.type == "cuda" else None, find_unused_parameters=True)

    sampler = InfiniteShardSampler(len(dataset), cfg["seed"], rank=rank, world_size=world, shuffle=True,
                                   start_epoch=data_epoch, start_position=data_pos)
    shard_size = sampler.shard_size
    loader = torch.utils.data.DataLoader(
        SeededDataset(dataset, cfg["seed"]), batch_size=per_rank_batch, sampler=sampler,
        num_workers=cfg["data"]["num_workers"], collate_fn=collate_fn, pin_memory=dev.type == "cuda",
        generator=torch.Generator().manual_seed(int(cfg["seed"]) % 2**63))

    # ---------------------------------------------------------------- outputs (rank 0)
    metrics = _MetricsFile(os.path.join(out_dir, METRICS_FILE), enabled=main)
    writer = None
    if main:
        save_config(cfg, os.path.join(out_dir, CONFIG_FILE))
        if resume:
            metrics.truncate_after(start_iter)
        else:
            metrics.reset()
        writer = _open_tensorboard(os.path.join(out_dir, "tb"), purge_step=start_iter if resume else None)

    max_iter = s["max_iter"]
    class_info = {"class_names": list(dataset.class_names), "cat_ids": [int(c) for c in dataset.cat_ids],
                  "num_classes": n_classes + 1}

    def checkpoint_state(iteration: int, full: bool) -> Dict[str, Any]:
        state = {"model": model.state_dict(), "config": copy.deepcopy(cfg), **class_info, "iteration": iteration,
                 "hyper_parameters": hyper_parameters(cfg, n_classes + 1)}
        if full:
            consumed = iteration * per_rank_batch
            epoch, pos = divmod(consumed, shard_size)
            state.update(optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                         data={"epoch": epoch, "position": pos, "per_rank_batch": per_rank_batch,
                               "world_size": world, "seed": int(cfg["seed"])})
            if scaler is not None:
                state["scaler"] = scaler.state_dict()
        return state

    def save_last(iteration: int) -> None:
        # collective: every process contributes its RNG state
        states = du.all_gather_object(get_rng_state())
        if main:
            state = checkpoint_state(iteration, full=True)
            state["rng"] = {"world_size": world, "states": states}
            write_checkpoint(ckpt_path, state, iteration)
        du.barrier()

    def write_checkpoint(path: str, state: dict, iteration: int) -> None:
        try:
            save_checkpoint(path, state)
        except OSError as e:
            kept = (f"the previous {os.path.basename(path)} is intact" if os.path.exists(path)
                    else "no earlier checkpoint exists")
            raise DynaMaskError(f"could not write {path} at iteration {iteration}: {e.strerror or e} "
                                f"({kept}; free space and run again with --resume)") from None

    evaluate_fn = None
    if cfg["data"].get("val_json"):
        try:
            from .evaluate import evaluate as evaluate_fn  # noqa: F811
        except ImportError as e:
            warn("evaluation during training disabled: dynamask.engine.evaluate is not available (%s)", e)

    def run_eval(iteration: int) -> Optional[dict]:
        result = None
        if main and evaluate_fn is not None:
            info("evaluating at iteration %d", iteration)
            devices = [dev.index] if dev.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):  # evaluation must not shift the training RNG
                try:
                    result = evaluate_fn(cfg, model=model, out_dir=os.path.join(out_dir, "eval"), device=dev,
                                         progress=False, cat_ids=class_info["cat_ids"])
                except Exception as e:  # keep training (and keep the other processes from waiting forever)
                    logger.error("evaluation at iteration %d failed: %s: %s", iteration, type(e).__name__, e)
                    metrics.write({"iteration": iteration, "event": "eval_failed",
                                   "error": f"{type(e).__name__}: {e}"})
                    result = None
                finally:
                    model.train()
            if result is not None:
                metrics.write({"iteration": iteration, "event": "eval", "metrics": result})
            if writer is not None and isinstance(result, dict):
                for k, v in _flat_numbers(result).items():
                    writer.add_scalar(f"eval/{k}", v, iteration)
        du.barrier()
        return result

    # ---------------------------------------------------------------- loop
    import tqdm as _tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    show_bar = bool(progress and main and sys.stderr.isatty())
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16 if amp == "bf16" else torch.float16)) \
        if amp != "none" else contextlib.nullcontext
    clip = s["clip_grad_norm"]
    max_bad = max(1, int(s["max_nonfinite_steps"]))
    log_period, ckpt_period = s["log_period"], s["checkpoint_period"]
    eval_period = cfg["test"]["eval_period"]

    win_sums: Dict[str, float] = {}
    win_counts: Dict[str, int] = {}
    win_time = win_data_time = 0.0
    win_iters = 0
    last_logged: Dict[str, Any] = {}
    nonfinite_total = 0
    bad_run = 0
    iteration = start_iter
    params = [p for p in model.parameters() if p.requires_grad]

    info("training %s (%s head, %s policy) on %d image(s), %d classes: iterations %d..%d, batch %d "
         "(%d process(es) x %d), lr %s, device %s", cfg["model"]["backbone"], cfg["model"]["head"],
         cfg["model"]["policy"], len(dataset), n_classes, start_iter + 1, max_iter, s["ims_per_batch"], world,
         per_rank_batch, _fmt_lr(effective_lr(cfg)), dev)

    bar = _tqdm.tqdm(total=max_iter, initial=start_iter, disable=not show_bar, desc="train", unit="it",
                     dynamic_ncols=True, file=sys.stderr)
    stop = _StopFlag()
    redirect = logging_redirect_tqdm(loggers=[logging.getLogger("dynamask")]) if show_bar \
        else contextlib.nullcontext()
    data_iter = None
    skipped_images = 0
    try:
        with stop, redirect:
            data_iter = iter(loader)
            t_iter = time.perf_counter()
            for it in range(start_iter, max_iter):
                step = it + 1
                images, targets = next(data_iter)
                for target in targets:
                    for message in target.pop(SKIPPED_KEY, ()):
                        skipped_images += 1
                        warn("skipped an unreadable training image (%d so far): %s", skipped_images, message)
                        metrics.write({"iteration": step, "event": "skipped_image", "reason": message})
                t_data = time.perf_counter() - t_iter
                images, targets = _to_device(images, targets, dev)

                with autocast():
                    loss_dict = train_model(images, targets)
                loss_dict = {k: v.float() for k, v in loss_dict.items()}
                total = sum(loss_dict.values()) if loss_dict else torch.zeros((), device=dev)
                finite = bool(torch.isfinite(total).item())
                if world > 1:  # agree on skipping and stopping
                    bad_ranks, stop_ranks = du.all_reduce_sum([0.0 if finite else 1.0,
                                                               1.0 if stop.requested else 0.0])
                    finite, stop_now = bad_ranks == 0, stop_ranks > 0
                else:
                    stop_now = stop.requested

                grad_norm = float("nan")
                backward_done = finite
                if finite:
                    optimizer.zero_grad(set_to_none=True)
                    if scaler is not None:
                        scaler.scale(total).backward()
                        scaler.unscale_(optimizer)
                    else:
                        total.backward()
                    grad_norm = float(torch.nn.utils.clip_grad_norm_(
                        params, max_norm=clip if clip else float("inf")))
                    if scaler is not None:
                        scaler.step(optimizer)  # skips the update itself on inf/nan gradients
                        scaler.update()
                    elif math.isfinite(grad_norm):
                        optimizer.step()
                    else:
                        finite = False  # finite loss but non-finite gradients: skip the step as well
                    optimizer.zero_grad(set_to_none=True)
                lr = optimizer.param_groups[0]["lr"]  # the LR this step used
                with warnings.catch_warnings():
                    # skipped steps still advance the schedule (LR is a function of the iteration)
                    warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
                    scheduler.step()
                iteration = step

                dt = time.perf_counter() - t_iter
                win_time += dt
                win_data_time += t_data
                win_iters += 1

                local_vals = {k: float(v.detach().item()) for k, v in loss_dict.items()}
                local_total = float(total.detach().item())
                if finite:
                    bad_run = 0
                    items = list(local_vals.items()) + [("total_loss", local_total)]
                    if math.isfinite(grad_norm):
                        items.append(("grad_norm", grad_norm))
                    for k, v in items:
                        win_sums[k] = win_sums.get(k, 0.0) + v
                        win_counts[k] = win_counts.get(k, 0) + 1
                else:
                    bad_run += 1
                    nonfinite_total += 1
                    if not math.isfinite(local_total):
                        what = "loss"
                    elif not backward_done:  # another process had a non-finite loss
                        what = "loss (on another process)"
                    else:
                        what = "gradient norm"
                    bad_terms = ", ".join(f"{k}={v:.4g}" for k, v in local_vals.items() if not math.isfinite(v))
                    warn("non-finite %s at iteration %d (%s); step skipped (%d in a row, limit %d)", what, step,
                         bad_terms or f"total={local_total:.4g}, grad_norm={grad_norm:.4g}", bad_run, max_bad)
                    metrics.write({"iteration": step, "event": "nonfinite_loss", "total_loss": local_total,
                                   "grad_norm": grad_norm, "losses": local_vals, "consecutive": bad_run})
                    if bad_run >= max_bad:
                        save_last(step)
                        raise NonFiniteLossError(
                            f"training diverged: non-finite {what} in {bad_run} consecutive step(s) up to "
                            f"iteration {step} (solver.max_nonfinite_steps={s['max_nonfinite_steps']}); "
                            f"checkpoint written to {ckpt_path}. Try a lower solver.base_lr, a longer "
                            f"solver.warmup_iters, solver.clip_grad_norm or solver.amp=none",
                            iteration=step, checkpoint=ckpt_path)

                if show_bar:
                    bar.update(1)
                    bar.set_postfix_str(f"loss {local_total:.4f} lr {_fmt_lr(lr)}", refresh=False)

                if (step % log_period == 0 or step == max_iter) and win_sums:  # (skipped steps: events only)
                    means = {k: win_sums[k] / win_counts[k] for k in win_sums}
                    means = du.reduce_dict(means) if world > 1 else means
                    t_per_iter = win_time / max(1, win_iters)
                    rec: Dict[str, Any] = {"iteration": step}
                    rec.update({k: v for k, v in sorted(means.items()) if k not in ("total_loss", "grad_norm")})
                    rec.update(total_loss=means.get("total_loss", float("nan")), lr=lr,
                               grad_norm=means.get("grad_norm", float("nan")), time_per_iter=t_per_iter,
                               data_time=win_data_time / max(1, win_iters),
                               images_per_s=s["ims_per_batch"] / t_per_iter if t_per_iter > 0 else 0.0,
                               epoch=(step * per_rank_batch) // shard_size)
                    metrics.write(rec)
                    last_logged = rec
                    if writer is not None:
                        for k, v in rec.items():
                            if k != "iteration" and isinstance(v, (int, float)) and math.isfinite(v):
                                tag = f"loss/{k}" if k.startswith("loss") or k == "total_loss" else f"train/{k}"
                                writer.add_scalar(tag, v, step)
                    if not show_bar:
                        info("iter %d/%d  loss %.4f  lr %s  %.3fs/it  %.1f img/s  eta %s", step, max_iter,
                             rec["total_loss"], _fmt_lr(lr), t_per_iter, rec["images_per_s"],
                             _eta(t_per_iter * (max_iter - step)))
                    win_sums, win_counts = {}, {}
                    win_time = win_data_time = 0.0
                    win_iters = 0

                if ckpt_period and step % ckpt_period == 0 and step != max_iter:
                    save_last(step)
                if eval_period and step % eval_period == 0 and step != max_iter:
                    run_eval(step)

                if stop_now:
                    save_last(step)
                    name = stop.name or "a signal on another process"
                    if main:
                        logger.warning("interrupted by %s at iteration %d; checkpoint written", name, step)
                    raise TrainingInterrupted(
                        f"interrupted ({name}) at iteration {step}; checkpoint written to {ckpt_path}, "
                        f"resume with --resume", iteration=step, checkpoint=ckpt_path, signal_name=name)
                t_iter = time.perf_counter()
            # ------------------------------------------------------------ end of training
            del data_iter
            data_iter = None
            if world > 1:
                # DDP broadcasts buffers (BatchNorm statistics) from rank 0 at the start of each forward, so
                # after the last forward they differ per process: take rank 0's, as the next forward would.
                with torch.no_grad():
                    for buf in model.buffers():
                        torch.distributed.broadcast(buf, src=0)
            save_last(iteration)
            if main:
                write_checkpoint(final_path, checkpoint_state(iteration, full=False), iteration)
            hashes = du.all_gather_object(weights_hash(model)) if world > 1 else [weights_hash(model)]
            if len(set(hashes)) != 1:
                warn("the weights differ between processes after training (sha256 per rank: %s); "
                     "model_final.pt holds rank 0's", hashes)
            final_eval = run_eval(iteration) if cfg["data"].get("val_json") else None
    finally:
        bar.close()
        if data_iter is not None:
            del data_iter
        if writer is not None:
            writer.flush()
            writer.close()

    elapsed = time.perf_counter() - t_start
    losses = {k: v for k, v in last_logged.items() if k.startswith("loss")}
    summary = {
        "iteration": iteration,
        "output_dir": out_dir,
        "checkpoint": ckpt_path,
        "model_final": final_path,
        "losses": losses,
        "total_loss": last_logged.get("total_loss"),
        "lr": optimizer.param_groups[0]["lr"],
        "nonfinite_steps": nonfinite_total,
        "skipped_images": skipped_images,
        "time_s": elapsed,
        "world_size": world,
        "weights_sha256": hashes,
        "eval": final_eval,
    }
    metrics.write({"iteration": iteration, "event": "final", "total_loss": summary["total_loss"],
                   "nonfinite_steps": nonfinite_total, "time_s": elapsed, "world_size": world,
                   "weights_sha256": hashes})
    info("training finished: %d iterations in %s; model written to %s", iteration - start_iter, _eta(elapsed),
         final_path)
    return summary


def _flat_numbers(d: dict, prefix: str = "") -> Dict[str, float]:
    """Finite numbers of a nested dict under slash-joined keys (for TensorBoard)."""
    out: Dict[str, float] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat_numbers(v, key + "/"))
        elif isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out[key] = float(v)
    return out
