"""The authors' configuration as first-class options: ``switch="paper", refinement="dense"`` (their Mask Switch
Module and losses) and ``widths="paper"`` (their stage widths)."""

import pytest
import torch

from dynamask.data.shapes import make_shapes_tensors
from dynamask.models import dynamask_resnet18_fpn
from dynamask.models.dynamask_head import DynaMaskHead, resolve_widths
from dynamask.models.losses import budget_loss
from dynamask.models.mask_switch import CostSwitch, PaperSwitch

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = dict(
    min_size=64,
    max_size=64,
    rpn_pre_nms_top_n_train=100,
    rpn_post_nms_top_n_train=50,
    rpn_pre_nms_top_n_test=100,
    rpn_post_nms_top_n_test=30,
    box_batch_size_per_image=32,
    fam="conv",
    widths=(32, 32, 16, 16),
    reduced_channels=(8, 8, 8),
    fpn_channels=32,
    box_representation_size=64,
)


def shapes_batch(n=2, size=64, seed=0):
    images, targets = make_shapes_tensors(n, image_size=size, seed=seed)
    return images, targets


def mask_branch_inputs(model, n=4, seed=0):
    """FPN features of a few shapes images and their ground truth as RoIs, to train the head alone."""
    images, targets = shapes_batch(n, seed=seed)
    with torch.no_grad():
        batch, targets = model.transform(images, targets)
        features = model.backbone(batch.tensors)
    rois = [t["boxes"] for t in targets]
    return (
        features,
        rois,
        batch.image_sizes,
        [t["masks"] for t in targets],
        [t["labels"] for t in targets],
        [torch.arange(len(r)) for r in rois],
    )


def expected_fraction(head, inputs):
    """Mean over RoIs of Σ_k p_k·F_k/F_max under the switch's softmax: the cost it tends to select."""
    from dynamask.models.mask_switch import SwitchInput
    from dynamask.models.roi_utils import rois_with_batch_index

    features, rois, shapes = inputs[:3]
    x = head.shared(head.roi_pool(features, rois, shapes))
    labels = torch.cat(inputs[4])
    x, m, e = head.predictors[0](x, labels)
    with torch.no_grad():
        logits = head.switch(SwitchInput(features, rois_with_batch_index(rois), shapes, x, m, e))
    return float((logits.softmax(dim=1) * head.cost_fractions()).sum(dim=1).mean())


def test_paper_switch_gets_a_gradient_through_the_gumbel_straight_through_path():
    torch.manual_seed(0)
    model = dynamask_resnet18_fpn(9, switch="paper", refinement="dense", **SMALL).train()
    head = model.mask_branch
    assert isinstance(head.switch, PaperSwitch) and head.budget_weight == 0.3 and head.balance_weight == 0.8
    images, targets = shapes_batch()
    losses = model(images, targets)
    assert {"loss_mask_edge", "loss_mask_budget", "loss_mask_balance"} <= set(losses)
    assert not {"loss_mask_switch", "loss_mask_select"} & set(losses)  # no cost regression on this path
    head.switch.zero_grad()
    losses["loss_mask_edge"].backward()  # the edge loss alone: selection-weighted, so it reaches the switch
    grads = [p.grad for p in head.switch.parameters()]
    assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0


def test_budget_hinge_lowers_the_expected_cost_above_the_target_and_is_zero_below():
    fractions = torch.tensor([0.15, 0.3, 0.55, 1.0])
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(256, 4, generator=g) + torch.tensor([0.0, 0.0, 0.0, 2.0])).requires_grad_()

    def expected(lg):
        return float((lg.softmax(dim=1) * fractions).sum(dim=1).mean())

    torch.manual_seed(1)
    selection = torch.nn.functional.gumbel_softmax(logits, tau=0.5, hard=True)
    loss = budget_loss(selection, fractions, 0.3)
    assert float(loss.detach()) > 0
    loss.backward()
    stepped = logits.detach() - 100.0 * logits.grad  # the loss is a mean over 256 RoIs
    assert expected(stepped) < expected(logits.detach()) - 0.005
    logits.grad = None
    torch.manual_seed(1)
    selection = torch.nn.functional.gumbel_softmax(logits, tau=0.5, hard=True)
    below = budget_loss(selection, fractions, 1.0)  # nothing exceeds the full path
    below.backward()
    assert float(below.detach()) == 0.0 and torch.count_nonzero(logits.grad) == 0


def test_short_training_run_moves_the_selected_cost_down_towards_the_target():
    torch.manual_seed(0)
    model = dynamask_resnet18_fpn(9, switch="paper", refinement="dense", mask_budget_target=0.4, **SMALL)
    model.eval()  # batch norms of the random backbone as they are; only the head trains
    head = model.mask_branch.train()
    with torch.no_grad():
        head.switch.fc2.bias.copy_(torch.tensor([0.0, 0.0, 0.0, 3.0]))  # start above the target: mostly 112
    for name, p in head.named_parameters():
        p.requires_grad_(name.startswith("switch."))
    inputs = mask_branch_inputs(model)
    start = expected_fraction(head, inputs)
    optimizer = torch.optim.Adam([p for p in head.parameters() if p.requires_grad], lr=3e-3)
    for _ in range(25):
        losses = head.forward_train(*inputs)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    end = expected_fraction(head, inputs)
    assert start > 0.75 and end < start - 0.2, (start, end)


def test_dial_meets_the_budget_with_the_paper_switch():
    torch.manual_seed(0)
    model = dynamask_resnet18_fpn(9, switch="paper", refinement="dense", **SMALL).eval()
    head = model.mask_branch
    with torch.no_grad():
        head.switch.fc2.bias.copy_(torch.tensor([0.0, 0.0, 0.0, 3.0]))
    features, rois, shapes, _, labels, _ = mask_branch_inputs(model, n=4)
    full = head.flops_table()["cumulative_with_switch"][-1]
    lowest = head.smallest_budget()
    means = []
    for budget in (1.0, 0.7, 0.5, lowest + 1e-6, lowest):
        model.mask_budget = budget
        with torch.no_grad():
            out = head.forward_infer(features, rois, labels, shapes)
        mean = float(torch.cat([o["mask_flops"] for o in out]).mean())
        if budget < 1.0:
            assert mean <= budget * full * (1 + 1e-6)
        means.append(mean)
    assert means == sorted(means, reverse=True) and means[0] > means[-1]


def test_paper_path_holds_no_price_and_its_cost_is_counted():
    model = dynamask_resnet18_fpn(9, switch="paper", refinement="dense", **SMALL)
    head = model.mask_branch
    assert not any("price" in k or "lambda" in k for k in model.state_dict())
    assert not hasattr(head.switch, "price") and not hasattr(head.switch, "update_price")
    table = head.flops_table()
    assert table["switch"] == head.switch.flops() > 0
    assert table["cumulative_with_switch"][0] == pytest.approx(table["cumulative"][0] + table["switch"])
    # at FPN width 256 the authors' switch costs about as much as stopping at 28 (balanced widths)
    wide = DynaMaskHead(81, switch="paper", refinement="dense")
    ratio = wide.switch.flops() / wide.flops_table()["cumulative"][1]
    assert 0.8 < ratio < 1.25, ratio
    # a paper-switch state dict has no λ and loads untouched (the cost switch's compatibility
    # code that negates old outputs must not touch it)
    fresh = dynamask_resnet18_fpn(9, switch="paper", refinement="dense", **SMALL)
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh.mask_branch.switch.fc2.weight, head.switch.fc2.weight)
    assert isinstance(dynamask_resnet18_fpn(9, **SMALL).mask_branch.switch, CostSwitch)


def test_paper_widths_parameter_count_by_hand():
    classes = 81
    head = DynaMaskHead(
        classes, policy="dynamic", in_channels=256, widths="paper", fam="deform", switch="paper", refinement="dense"
    )
    assert (head.widths, head.reduced_channels) == ((256, 128, 64, 32), (256, 128, 64))
    w, r, c = (256, 128, 64, 32), (256, 128, 64), 256

    def conv(cin, cout, k, bias=True):
        return cin * cout * k * k + (cout if bias else 0)

    expected = conv(c, w[0], 3) + conv(w[0], w[0], 3)  # two 3×3 convs of 256 at 14
    for k in range(4):  # stage predictors: 3×3 refine from stage 28 on; mask (+ edge) logits
        mask_channels = classes if k < 3 else 1
        expected += (conv(w[k], w[k], 3) if k > 0 else 0) + conv(w[k], mask_channels + 1, 1)
    for k in range(3):  # FAMs: reduce (no bias) + its bias, fuse, offsets, deformable 3×3, project
        expected += conv(c, r[k], 1, bias=False) + r[k] + conv(w[k] + r[k] + 2, w[k], 1)
        expected += conv(w[k], 18, 3) + conv(w[k], w[k], 3) + conv(w[k], w[k + 1], 1)
    # the authors' switch: 1×1 256→128 + BN, 3×3 128→16 + BN, FC 16·14·14→512, FC 512→4
    expected += conv(c, 128, 1) + 2 * 128 + conv(128, 16, 3) + 2 * 16 + (3136 * 512 + 512) + (512 * 4 + 4)
    assert sum(p.numel() for p in head.parameters()) == expected


def test_width_presets_and_lists():
    assert resolve_widths() == ((96, 64, 48, 32), (32, 32, 16))
    assert resolve_widths("paper") == ((256, 128, 64, 32), (256, 128, 64))
    assert resolve_widths([8, 8, 8, 8]) == ((8, 8, 8, 8), (32, 32, 16))
    assert resolve_widths("paper", (4, 4, 4)) == ((256, 128, 64, 32), (4, 4, 4))
    with pytest.raises(ValueError, match="widths"):
        resolve_widths("wide")
    with pytest.raises(ValueError, match="4 positive"):
        resolve_widths([8, 8, 8])


def test_config_keys_and_checkpoint_records():
    from dynamask.config import load_config
    from dynamask.errors import ConfigError
    from dynamask.inference import checkpoint_mismatches, hyper_parameters
    from dynamask.models import build_model

    cfg = load_config(
        None,
        {
            "model.backbone": "resnet18",
            "model.switch": "paper",
            "model.refinement": "dense",
            "model.head_widths": "paper",
            "model.fpn_channels": 64,
            "model.box_representation_size": 64,
        },
    )
    model = build_model(cfg, 4)
    assert isinstance(model.mask_branch.switch, PaperSwitch) and model.mask_branch.widths == (256, 128, 64, 32)
    hp = hyper_parameters(cfg, 4)
    assert hp["switch"] == "paper" and hp["head_widths"] == [256, 128, 64, 32]
    assert hp["head_reduced_channels"] == [256, 128, 64]
    # a checkpoint that records neither (older) is a cost switch with the balanced widths
    old = {"hyper_parameters": {**hp, "switch": None, "head_widths": None, "head_reduced_channels": None}}
    assert checkpoint_mismatches(old, {**cfg, "model": {**cfg["model"], "switch": "cost", "head_widths": None}}) == []
    problems = checkpoint_mismatches(old, cfg)
    assert any(p.startswith("switch: checkpoint 'cost', requested 'paper'") for p in problems)
    assert any(p.startswith("head_widths: checkpoint [96, 64, 48, 32]") for p in problems)
    with pytest.raises(ConfigError, match="model.head_widths"):
        load_config(None, {"model.head_widths": "wide"})
    with pytest.raises(ConfigError, match="model.switch"):
        load_config(None, {"model.switch": "gumbel"})


def test_comparable_signal_option_trains_the_paper_switch_on_selection_costs():
    """paper_switch_signal=selection_cost: every stage keeps its edge loss (no selection weighting),
    and the switch's quality term is the selected stage's mask error against one 112×112 target;
    the authors' default is untouched."""
    torch.manual_seed(0)
    model = dynamask_resnet18_fpn(9, switch="paper", refinement="dense", paper_signal="selection_cost", **SMALL).train()
    head = model.mask_branch
    inputs = mask_branch_inputs(model)
    torch.manual_seed(1)
    losses = head.forward_train(*inputs)
    assert {"loss_mask_edge", "loss_mask_select", "loss_mask_budget", "loss_mask_balance"} <= set(losses)
    head.zero_grad()
    losses["loss_mask_select"].backward(retain_graph=True)
    assert head.switch.fc2.weight.grad is not None and head.switch.fc2.weight.grad.abs().sum() > 0
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in head.predictors.parameters())  # costs are detached
    head.zero_grad()
    losses["loss_mask_edge"].backward()
    assert head.switch.fc2.weight.grad is None or head.switch.fc2.weight.grad.abs().sum() == 0
    assert all(
        p.grad is not None and p.grad.abs().sum() > 0 for p in (head.predictors[k].logits.weight for k in range(4))
    )
    with pytest.raises(ValueError, match="paper_signal"):
        DynaMaskHead(9, switch="paper", refinement="dense", paper_signal="edges")
    from dynamask.config import load_config
    from dynamask.models.detector import build_model

    cfg = load_config(
        None,
        [
            "model.switch=paper",
            "model.refinement=dense",
            "model.paper_switch_signal=selection_cost",
            "model.backbone=resnet18",
            "model.fpn_channels=32",
        ],
    )
    assert build_model(cfg, 3).mask_branch.paper_signal == "selection_cost"
    assert (
        build_model(load_config(None, ["model.backbone=resnet18", "model.fpn_channels=32"]), 3).mask_branch.paper_signal
        == "edge"
    )
