"""Training steps under bfloat16 autocast (solver.amp=bf16; the GPU check trains this way)."""

import pytest
import torch

from dynamask.data.shapes import make_shapes_tensors
from dynamask.models import dynamask_resnet18_fpn, maskrcnn_resnet18_fpn

# narrow heads and FPN: bfloat16 matmuls and convolutions run on slow generic kernels on CPUs without
# native bf16 (AVX2: ~10x fp32), and every path is exercised as well at these widths
SMALL = dict(
    min_size=64,
    max_size=64,
    rpn_pre_nms_top_n_train=100,
    rpn_post_nms_top_n_train=50,
    box_batch_size_per_image=32,
    fpn_channels=32,
    box_representation_size=64,
)
HEAD = dict(widths=(32, 32, 16, 16), reduced_channels=(8, 8, 8))


@pytest.mark.parametrize("head", ["dynamask-cost", "dynamask-paper", "dynamask-fixed-112", "maskrcnn"])
def test_bf16_autocast_training_step(head):
    torch.manual_seed(0)
    if head == "maskrcnn":
        model = maskrcnn_resnet18_fpn(9, mask_head_channels=16, **SMALL)
    elif head == "dynamask-fixed-112":
        model = dynamask_resnet18_fpn(9, policy="fixed-112", fam="deform", **HEAD, **SMALL)
    else:
        model = dynamask_resnet18_fpn(
            9,
            policy="dynamic",
            fam="deform",
            switch=head.split("-")[1],
            refinement="dense" if head == "dynamask-paper" else "points",
            **HEAD,
            **SMALL,
        )
    model.train()
    images, targets = make_shapes_tensors(2, (64, 64), seed=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model(images, targets)
    total = sum(losses.values())
    assert torch.isfinite(total), losses
    total.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
