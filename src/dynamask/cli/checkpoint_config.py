"""The config a command runs a checkpoint with (evaluate, export): ``--config`` plus the KEY=VALUE
overrides, else the config stored in the checkpoint plus the overrides."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence

from ..errors import DynaMaskError


def _checkpoint_config(path: str) -> dict | None:
    """The config stored in a checkpoint (memory-mapped read; no weights are copied)."""
    import torch

    from ..inference import load_checkpoint

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        ckpt = load_checkpoint(path)  # gives the proper error message
    cfg = ckpt.get("config") if isinstance(ckpt, dict) else None
    return cfg if isinstance(cfg, dict) else None


def config_for_checkpoint(config: str | None, overrides: Sequence[str], weights: str) -> dict | None:
    """Config from --config (+ overrides), else the checkpoint's (+ overrides), else None."""
    from ..config import load_config, save_config

    if config is not None:
        return load_config(config, overrides)
    if not overrides:
        return None
    if not os.path.isfile(weights):
        raise DynaMaskError(f"{weights}: checkpoint file not found")
    base = _checkpoint_config(weights)
    if base is None:
        from ..models.torchvision_weights import read_torchvision_detection_file

        if read_torchvision_detection_file(weights) is not None:  # torchvision's weights: defaults + overrides
            return load_config(None, overrides)
        raise DynaMaskError(f"{weights}: the checkpoint carries no config; pass --config")
    with tempfile.TemporaryDirectory(prefix="dynamask-cfg-") as tmp:
        path = os.path.join(tmp, "checkpoint_config.yaml")
        save_config(base, path)
        return load_config(path, overrides)
