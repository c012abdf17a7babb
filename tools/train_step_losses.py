"""Loss values of two fixed-seed training steps of DynaMask (R18-FPN, deformable FAM, dynamic policy).

The reference for the training-speed work (issue 12): ``tests/data/train_step_losses.json`` was
written by this script from the commit before any speed change (the deformable conv then ran on
torchvision's kernel, ``deform_kernel="torchvision"`` today), and ``tests/test_train_step.py``
checks that today's code gives the same numbers within 1e-5. Only public API is used, so the
script runs on old commits too:

    PYTHONPATH=src python tools/train_step_losses.py [--out FILE]
"""

from __future__ import annotations

import argparse
import json

import torch


def train_step_losses(size: int = 160, batch: int = 2, steps: int = 2, **model_kwargs) -> list[dict]:
    """Per step: loss values and the gradient norm of each top-level part (floats), ``steps``
    SGD steps from a fixed seed. From the second step on, a last-bit difference in a gradient can
    move a proposal and change the sampled RoIs, so only the first step is comparable across
    kernels; later steps show that a code path is bit for bit the old one."""
    from dynamask.data.shapes import make_shapes_tensors
    from dynamask.models import dynamask_resnet18_fpn

    torch.manual_seed(0)
    model_kwargs.setdefault("refinement", "dense")  # the recorded step is the dense head's
    model = dynamask_resnet18_fpn(9, policy="dynamic", fam="deform", min_size=size, max_size=size, **model_kwargs)
    model.train()
    images, targets = make_shapes_tensors(batch, (size, size), seed=0)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
    torch.manual_seed(1)
    out = []
    for _ in range(steps):
        losses = model(images, targets)
        record = {k: float(v.detach()) for k, v in sorted(losses.items())}
        opt.zero_grad()
        sum(losses.values()).backward()
        for name, part in model.named_children():
            grads = [p.grad.detach().flatten() for p in part.parameters() if p.grad is not None]
            if grads:
                record[f"grad_norm_{name}"] = float(torch.cat(grads).norm())
        out.append(record)
        opt.step()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=None, help="write the JSON here (default: print)")
    args = p.parse_args()
    torch.set_num_threads(1)
    text = json.dumps({"torch": torch.__version__, "steps": train_step_losses()}, indent=1)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
