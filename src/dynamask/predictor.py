"""Single-image / small-batch inference with a trained dynamask checkpoint.

>>> p = Predictor("runs/shapes/model_final.pt", score_thresh=0.5)
>>> out = p.predict("image.png")            # or a PIL image, a numpy array, a tensor
>>> out["masks"].shape, out["mask_resolution"]

Outputs are torchvision-style dicts on the CPU: ``boxes`` (N×4 XYXY, image pixels), ``labels``
(1..K; ``class_names[label - 1]`` names them), ``scores``, ``masks`` (N×1×H×W float in [0, 1]),
``mask_resolution`` (N int64: 14/28/56/112) and ``mask_flops`` (N float), sorted by score and
filtered by ``score_thresh``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .data.coco import pil_image_to_tensor
from .errors import DynaMaskError
from .inference import apply_policy, model_from_checkpoint, resolve_device

__all__ = ["Predictor", "image_to_tensor", "load_image_file"]

OUTPUT_KEYS = ("boxes", "labels", "scores", "masks", "mask_resolution", "mask_flops")


def load_image_file(path: str | os.PathLike) -> torch.Tensor:
    """:func:`dynamask.data.load_image` of the photo as shown upright (its EXIF orientation applied),
    with a :class:`DynaMaskError` naming the file on failure."""
    from .data import load_image

    p = os.fspath(path)
    if not os.path.exists(p):
        raise DynaMaskError(f"{p}: image file not found")
    if os.path.isdir(p):
        raise DynaMaskError(f"{p}: is a folder, not an image file")
    try:
        return load_image(p, exif_transpose=True)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DynaMaskError(f"{p}: cannot read image ({type(exc).__name__}: {exc})") from None


def _scale_to_unit(t: torch.Tensor, what: str) -> torch.Tensor:
    if t.dtype == torch.uint8:
        return t.float().div_(255.0)
    if t.dtype == torch.bool:
        return t.float()
    if t.dtype in (torch.uint16, torch.int16, torch.int32, torch.int64):
        mx = float(t.max()) if t.numel() else 0.0
        return t.float().div_(65535.0 if mx > 255 else 255.0).clamp_(0.0, 1.0)
    if t.dtype.is_floating_point:
        t = t.float()
        if t.numel() and not bool(torch.isfinite(t).all()):
            raise DynaMaskError(f"{what}: image has non-finite values")
        if t.numel() and float(t.max()) > 1.0 + 1e-6:
            raise DynaMaskError(
                f"{what}: float images must be in [0, 1] (max is {float(t.max()):.3g}); divide by 255 or pass uint8"
            )
        return t.clamp(0.0, 1.0)
    raise DynaMaskError(f"{what}: unsupported image dtype {t.dtype}")


def image_to_tensor(image: Any) -> torch.Tensor:
    """Any supported image → float32 3×H×W tensor in [0, 1] (CPU).

    Accepts a file path (str / Path; shown upright: its EXIF orientation is applied), a PIL image
    (any mode, as given; 16-bit scaled by 1/65535), a numpy array H×W (gray) or H×W×C (C = 1, 3 or 4; alpha dropped; uint8 /255, uint16 /65535, float
    in [0, 1]), or a torch tensor C×H×W / H×W (float in [0, 1] or uint8). Raises
    :class:`DynaMaskError` for anything else or an unreadable file (naming the path).
    """
    if isinstance(image, (str, os.PathLike)):
        return load_image_file(image)
    if isinstance(image, Image.Image):
        return pil_image_to_tensor(image)
    if isinstance(image, np.ndarray):
        arr = image
        if arr.ndim == 2:
            arr = arr[:, :, None]
        if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
            raise DynaMaskError(f"numpy image must be H×W or H×W×C with C in (1, 3, 4), got shape {image.shape}")
        if arr.shape[2] == 4:
            arr = arr[:, :, :3]
        if arr.dtype == np.uint8:
            t = torch.from_numpy(np.array(arr, dtype=np.float32)).div_(255.0)
        elif arr.dtype == np.uint16:
            t = torch.from_numpy(arr.astype(np.float32) / 65535.0)
        elif arr.dtype == np.bool_:
            t = torch.from_numpy(arr.astype(np.float32))
        elif np.issubdtype(arr.dtype, np.floating):
            t = _scale_to_unit(torch.from_numpy(np.array(arr, dtype=np.float32)), "numpy image")
        elif np.issubdtype(arr.dtype, np.integer):
            t = _scale_to_unit(torch.from_numpy(arr.astype(np.int64)), "numpy image")
        else:
            raise DynaMaskError(f"numpy image: unsupported dtype {arr.dtype}")
        t = t.permute(2, 0, 1)
        if t.shape[0] == 1:
            t = t.expand(3, -1, -1)
        return t.contiguous()
    if isinstance(image, torch.Tensor):
        t = image.detach().cpu()
        if hasattr(t, "as_subclass"):
            t = t.as_subclass(torch.Tensor)
        if t.ndim == 2:
            t = t[None]
        if t.ndim == 4 and t.shape[0] == 1:
            t = t[0]
        if t.ndim != 3:
            raise DynaMaskError(f"tensor image must be C×H×W or H×W, got shape {tuple(image.shape)}")
        if t.shape[0] not in (1, 3, 4) and t.shape[-1] in (1, 3, 4):  # H×W×C given
            t = t.permute(2, 0, 1)
        if t.shape[0] not in (1, 3, 4):
            raise DynaMaskError(
                f"tensor image must have 1, 3 or 4 channels first (C×H×W), got shape {tuple(image.shape)}"
            )
        t = _scale_to_unit(t[:3], "tensor image")
        if t.shape[0] == 1:
            t = t.expand(3, -1, -1)
        return t.contiguous()
    raise DynaMaskError(
        f"unsupported image type {type(image).__name__} (use a path, a PIL image, a numpy array or a torch tensor)"
    )


class Predictor:
    """Inference wrapper around a dynamask checkpoint.

    ``config``: a config dict or YAML path (default: the one stored in the checkpoint).
    ``device``: e.g. ``"cpu"``, ``"cuda"`` (default: CUDA when available). ``policy`` and
    ``mask_budget`` set the resolution policy / test-time budget (see ``model.policy``); a policy
    the checkpoint cannot run raises :class:`DynaMaskError`. Attributes: ``model``,
    ``class_names``, ``cat_ids``, ``score_thresh``, ``device``, ``config``.
    """

    def __init__(
        self,
        weights: str | os.PathLike,
        config: None | str | os.PathLike | dict = None,
        device: Any = None,
        score_thresh: float = 0.5,
        policy: str | None = None,
        mask_budget: float | None = None,
        batch_size: int = 4,
    ):
        if isinstance(config, (str, os.PathLike)):
            from .config import load_config

            config = load_config(config)
        if not 0.0 <= float(score_thresh) <= 1.0:
            raise DynaMaskError(f"score_thresh must be in [0, 1], got {score_thresh}")
        self.weights = os.fspath(weights)
        self.score_thresh = float(score_thresh)
        self.batch_size = max(1, int(batch_size))
        from .export import ExportedRunner, is_exported_file

        self.runner = None
        if is_exported_file(self.weights):  # ONNX / TorchScript from `dynamask export`: runs on CPU as exported
            self.runner = ExportedRunner(self.weights)
            for name, value in (("policy", policy), ("mask_budget", mask_budget)):
                if value is not None:
                    self._settable(name)
            self.model, self.config, self.device = None, config, torch.device("cpu")
            self.class_names = [str(n) for n in self.runner.metadata.get("class_names") or []]
            self.cat_ids = [
                int(c) for c in (self.runner.metadata.get("cat_ids") or range(1, len(self.class_names) + 1))
            ]
            return
        self.model, ckpt = model_from_checkpoint(self.weights, config)
        self.config = config or ckpt.get("config")
        num_classes = int(ckpt.get("num_classes") or len(ckpt.get("class_names", [])) + 1)
        names = ckpt.get("class_names") or [f"class {i}" for i in range(1, num_classes)]
        self.class_names: list[str] = [str(n) for n in names]
        self.cat_ids: list[int] = [int(c) for c in (ckpt.get("cat_ids") or range(1, len(self.class_names) + 1))]
        self.device = resolve_device(device)
        apply_policy(self.model, policy, mask_budget)
        self.model.to(self.device).eval()

    # ------------------------------------------------------------ settings
    @property
    def policy(self) -> str:
        return self.runner.metadata.get("policy", "") if self.runner else self.model.policy

    @policy.setter
    def policy(self, value: str) -> None:
        self._settable("policy")
        apply_policy(self.model, value, None)

    @property
    def mask_budget(self) -> float:
        return 1.0 if self.runner else float(self.model.mask_budget)

    @mask_budget.setter
    def mask_budget(self, value: float) -> None:
        self._settable("mask_budget")
        apply_policy(self.model, None, value)

    def _settable(self, name: str) -> None:
        if self.runner is not None:
            raise DynaMaskError(f"{self.weights}: an exported file holds its own policy ({name} cannot be set)")

    # ------------------------------------------------------------ inference
    def _postprocess(self, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        scores = out["scores"].detach().float().cpu()
        order = torch.argsort(scores, descending=True, stable=True)
        order = order[scores[order] >= self.score_thresh]
        result = {}
        for k in OUTPUT_KEYS:
            if k in out:
                result[k] = out[k].detach().cpu()[order]
        if "masks" in result:
            result["masks"] = result["masks"].float()
        return result

    @torch.inference_mode()
    def _run(self, tensors: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        if self.runner is not None:
            return [self._postprocess(self.runner(t)) for t in tensors]
        outs = self.model([t.to(self.device) for t in tensors])
        return [self._postprocess(o) for o in outs]

    def predict(self, image: Any) -> dict[str, torch.Tensor]:
        """Predict one image (path, PIL image, numpy array or tensor); see the module docstring."""
        return self._run([image_to_tensor(image)])[0]

    def predict_batch(self, images: Sequence[Any], batch_size: int | None = None) -> list[dict[str, torch.Tensor]]:
        """Predict several images (any mix of supported types), ``batch_size`` per forward pass."""
        bs = max(1, int(batch_size or self.batch_size))
        tensors = [image_to_tensor(im) for im in images]
        results: list[dict[str, torch.Tensor]] = []
        for i in range(0, len(tensors), bs):
            results.extend(self._run(tensors[i : i + bs]))
        return results

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(weights={self.weights!r}, classes={len(self.class_names)}, "
            f"policy={self.policy!r}, mask_budget={self.mask_budget}, score_thresh={self.score_thresh}, "
            f"device={str(self.device)!r})"
        )
