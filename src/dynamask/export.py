"""Export a trained model to ONNX or TorchScript with one fixed interface.

Input ``image``: float32 3×H×W in [0, 1] (any size). Outputs ``boxes`` (N×4, XYXY pixels of the
input), ``labels`` (N, int64), ``scores`` (N), ``masks`` (N×1×H×W probabilities), ``mask_resolution``
(N, the resolution each mask was predicted at). Class names (and COCO category ids) go into the
file's metadata. The graph is recorded by tracing the model on one example image: every
data-dependent choice is kept as tensor operations (the mask branch records every stage the policy
can reach; the paste samples the whole image), so other images, sizes and numbers of detections
run correctly — :func:`verify_export` checks that against PyTorch.

The deformable FAM exports through its gather-and-GEMM form (``models/deform_conv.py``);
torchvision's ``deform_conv2d`` has no ONNX form.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .errors import DynaMaskError

EXPORT_FORMATS = ("onnx", "torchscript")
OUTPUT_NAMES = ("boxes", "labels", "scores", "masks", "mask_resolution")
#: policies an exported graph can hold (the dynamic one with its switch; the test-time budget dial
#: solves for a price per image by bisection in Python and cannot be traced)
EXPORTABLE_POLICIES = ("fixed-14", "fixed-28", "fixed-56", "fixed-112", "size", "dynamic")
ONNX_OPSET = 17


class ExportableModel(nn.Module):
    """One image in, the fixed output tuple out (``OUTPUT_NAMES``)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: Tensor):
        out = self.model([image])[0]
        return tuple(out[k] for k in OUTPUT_NAMES)


def prepare_for_export(model: nn.Module, policy: str | None = None, budget: float | None = None) -> nn.Module:
    """Set the policy (and refuse what a graph cannot hold), deformable kernel "gather", eval mode."""
    if policy is not None:
        model.policy = policy
    if model.policy not in EXPORTABLE_POLICIES:
        raise DynaMaskError(
            f"export: policy {model.policy!r} cannot be exported; supported: {', '.join(EXPORTABLE_POLICIES)}"
        )
    if budget is not None and float(budget) < 1.0:
        raise DynaMaskError(
            f"export: the test-time budget dial (--budget {budget}) cannot be exported: it solves "
            f"for a price per image in Python; supported: the policies {', '.join(EXPORTABLE_POLICIES)} "
            f"with the budget the model was trained for (--budget 1.0 or none)"
        )
    model.mask_budget = 1.0
    if hasattr(model.mask_branch, "deform_kernel"):
        model.mask_branch.deform_kernel = "gather"
    return model.eval()


def mask_flops_by_resolution(model: nn.Module) -> dict:
    """Per-instance mask FLOPs of stopping at each resolution (the layer table, switch included
    for the dynamic policy), so that a runner of the file reports ``mask_flops`` as the model does."""
    from .models import RESOLUTIONS

    branch = model.mask_branch
    if hasattr(branch, "stage_costs"):
        costs = branch.stage_costs(with_switch=model.policy == "dynamic").tolist()
        return {str(r): float(c) for r, c in zip(RESOLUTIONS, costs)}
    return {"28": float(branch.flops_table()["cumulative"][0])}


def example_image(model: nn.Module, seed: int = 0) -> Tensor:
    """A random image of the model's input size, to trace with."""
    size = model.transform.min_size[-1]
    return torch.rand(3, size, size, generator=torch.Generator().manual_seed(seed))


def export_model(
    model: nn.Module,
    fmt: str,
    out: str,
    class_names: Sequence[str] = (),
    cat_ids: Sequence[int] | None = None,
    example: Tensor | None = None,
) -> str:
    """Write ``model`` (prepared with :func:`prepare_for_export`) to ``out`` as ONNX or TorchScript."""
    if fmt not in EXPORT_FORMATS:
        raise DynaMaskError(f"export: format must be one of {', '.join(EXPORT_FORMATS)}, got {fmt!r}")
    wrapper = ExportableModel(model).eval()
    example = example_image(model) if example is None else example
    meta = {
        "class_names": list(class_names),
        "cat_ids": list(cat_ids) if cat_ids is not None else None,
        "policy": model.policy,
        "mask_geometry": model.mask_geometry,
        "outputs": list(OUTPUT_NAMES),
        "input": "image: float32 3xHxW in [0, 1]",
        "mask_flops_by_resolution": mask_flops_by_resolution(model),
    }
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about Python values: handled by design
        if fmt == "onnx":
            _export_onnx(wrapper, example, out, meta)
        else:
            traced = torch.jit.trace(wrapper, (example,), check_trace=False)
            torch.jit.save(traced, out, _extra_files={"dynamask.json": json.dumps(meta)})
    return out


def _export_onnx(wrapper: nn.Module, example: Tensor, out: str, meta: dict) -> None:
    try:
        import onnx
    except ImportError as exc:
        raise DynaMaskError("export --format onnx needs the onnx package: pip install 'dynamask[export]'") from exc
    dynamic = {
        "image": {1: "height", 2: "width"},
        "boxes": {0: "detections"},
        "labels": {0: "detections"},
        "scores": {0: "detections"},
        "masks": {0: "detections", 2: "height", 3: "width"},
        "mask_resolution": {0: "detections"},
    }
    torch.onnx.export(
        wrapper,
        (example,),
        out,
        input_names=["image"],
        output_names=list(OUTPUT_NAMES),
        dynamic_axes=dynamic,
        opset_version=ONNX_OPSET,
        dynamo=False,
    )
    proto = onnx.load(out)
    entry = proto.metadata_props.add()
    entry.key, entry.value = "dynamask", json.dumps(meta)
    onnx.save(proto, out)


def read_metadata(path: str) -> dict:
    """The metadata an exported file carries (class names, policy, ...)."""
    if path.endswith(".onnx"):
        import onnx

        props = {p.key: p.value for p in onnx.load(path, load_external_data=False).metadata_props}
        return json.loads(props.get("dynamask", "{}"))
    files = {"dynamask.json": ""}
    torch.jit.load(path, _extra_files=files)
    return json.loads(files["dynamask.json"] or "{}")


class ExportedRunner:
    """Runs an exported file (ONNX through onnxruntime, TorchScript through torch.jit) and returns
    the same dict as the PyTorch model: boxes, labels, scores, masks, mask_resolution."""

    def __init__(self, path: str):
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise DynaMaskError(f"{self.path}: exported model not found")
        self.metadata = read_metadata(self.path)
        if self.path.endswith(".onnx"):
            try:
                import onnxruntime as ort
            except ImportError as exc:
                raise DynaMaskError("running an ONNX file needs onnxruntime: pip install 'dynamask[export]'") from exc
            self.session = ort.InferenceSession(self.path, providers=["CPUExecutionProvider"])
            self.module = None
        else:
            self.session = None
            self.module = torch.jit.load(self.path, map_location="cpu")

    def __call__(self, image: Tensor) -> dict:
        image = image.detach().to("cpu", torch.float32).contiguous()
        if self.session is not None:
            outs = [torch.from_numpy(o) for o in self.session.run(None, {"image": image.numpy()})]
        else:
            with torch.no_grad():
                outs = list(self.module(image))
        out = dict(zip(OUTPUT_NAMES, outs))
        table = self.metadata.get("mask_flops_by_resolution") or {}
        if table:
            out["mask_flops"] = torch.tensor(
                [table.get(str(int(r)), float("nan")) for r in out["mask_resolution"]], dtype=torch.float32
            )
        return out


def is_exported_file(path: str) -> bool:
    """An ONNX file (by extension) or a TorchScript archive (a zip with a ``code/`` folder)."""
    import zipfile

    path = os.fspath(path)
    if path.endswith(".onnx"):
        return True
    if not os.path.isfile(path) or not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:  # every name: a full model's tensors come before its code/ folder
        return any("/code/" in name or name.startswith("code/") for name in z.namelist())


def verify_export(
    model: nn.Module, runner: ExportedRunner, images: Sequence[Tensor], box_tol: float = 1e-3, mask_iou: float = 0.99
) -> dict:
    """Compare an exported file with the PyTorch model on ``images``: detections matched by box
    IoU; every match within ``box_tol`` pixels and with mask IoU (at 0.5) ≥ ``mask_iou``, and the
    same number of detections. Returns per-image records and ``ok``."""
    from torchvision.ops import box_iou

    records = []
    model.eval()
    for i, image in enumerate(images):
        with torch.no_grad():
            ref = model([image])[0]
        got = runner(image)
        n_ref, n_got = ref["boxes"].shape[0], got["boxes"].shape[0]
        rec = {
            "image": i,
            "size": list(image.shape[-2:]),
            "detections": n_ref,
            "exported_detections": n_got,
            "max_box_diff": 0.0,
            "min_mask_iou": 1.0,
            "same_labels": True,
            "same_resolution": True,
        }
        if n_ref and n_got:
            iou = box_iou(ref["boxes"], got["boxes"])
            match = iou.argmax(dim=1)
            rec["max_box_diff"] = float((ref["boxes"] - got["boxes"][match]).abs().max())
            a, b = ref["masks"][:, 0] >= 0.5, got["masks"][match][:, 0] >= 0.5
            inter = (a & b).flatten(1).sum(1).float()
            union = (a | b).flatten(1).sum(1).float()
            ious = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
            rec["min_mask_iou"] = float(ious.min())
            rec["same_labels"] = bool(torch.equal(ref["labels"], got["labels"][match]))
            rec["same_resolution"] = bool(torch.equal(ref["mask_resolution"].cpu(), got["mask_resolution"][match]))
        rec["ok"] = (
            n_ref == n_got
            and rec["max_box_diff"] <= box_tol
            and rec["min_mask_iou"] >= mask_iou
            and rec["same_labels"]
            and rec["same_resolution"]
        )
        records.append(rec)
    return {
        "images": records,
        "ok": all(r["ok"] for r in records),
        "detection_counts": sorted({r["detections"] for r in records}),
    }
