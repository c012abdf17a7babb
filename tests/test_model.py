"""DynaMask model: losses, policies, dynamic inference, FLOPs accounting, odd inputs."""

import pytest
import torch

from dynamask.models import RESOLUTIONS, dynamask_resnet18_fpn, maskrcnn_resnet18_fpn
from dynamask.models.flops import count_flops
from dynamask.models.losses import budget_loss
from dynamask.models.policy import choose_under_budget, size_rule

SIZE = 96
SMALL = dict(
    min_size=SIZE,
    max_size=SIZE,
    rpn_pre_nms_top_n_train=200,
    rpn_post_nms_top_n_train=100,
    rpn_pre_nms_top_n_test=100,
    rpn_post_nms_top_n_test=50,
    box_batch_size_per_image=32,
)


def make_batch(n=2, size=SIZE, seed=0):
    g = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for _ in range(n):
        masks = torch.zeros(2, size, size, dtype=torch.uint8)
        masks[0, 8:50, 10:70] = 1
        masks[1, 55:90, 20:60] = 1
        boxes = torch.tensor([[10, 8, 70, 50], [20, 55, 60, 90]], dtype=torch.float32)
        images.append(torch.rand(3, size, size, generator=g))
        targets.append({"boxes": boxes, "labels": torch.tensor([1, 2]), "masks": masks})
    return images, targets


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = dynamask_resnet18_fpn(3, fam="deform", refinement="dense", **SMALL)  # point heads: test_point_refine.py
    make_switch_mixed(m.mask_branch.switch)
    return m.eval()


def make_switch_mixed(switch):
    """Hand-set the (untrained) switch so that its choice depends on box size: every
    resolution occurs among random boxes, through the real switch code path."""
    with torch.no_grad():
        for p in switch.parameters():
            p.zero_()
        switch.fc1.weight[0, -1] = -1.0  # hidden = relu(-(log2 side - 6))
        switch.fc2.weight[:, 0] = torch.tensor([3.0, 2.0, 1.0, 0.0])
        switch.fc2.bias.copy_(torch.tensor([-7.5, -4.0, -1.5, 0.0]))


def mask_inputs(model, n_boxes=24, seed=1):
    """Backbone features and random boxes, to drive the mask branch directly."""
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(1, 3, SIZE, SIZE, generator=g)
    with torch.no_grad():
        features = model.backbone(image)
    xy = torch.rand(n_boxes, 2, generator=g) * (SIZE * 0.6)
    wh = 4 + torch.rand(n_boxes, 2, generator=g) * (SIZE * 0.4)
    boxes = torch.cat([xy, xy + wh], 1)
    labels = torch.randint(1, 3, (n_boxes,), generator=g)
    return features, [boxes], [labels], [(SIZE, SIZE)]


def test_train_step_losses_and_switch_gradients():
    torch.manual_seed(0)
    m = dynamask_resnet18_fpn(3, fam="deform", **SMALL).train()
    images, targets = make_batch()
    losses = m(images, targets)
    for r in RESOLUTIONS:
        assert f"loss_mask_{r}" in losses
    assert any("budget" in k for k in losses) and any("edge" in k for k in losses)
    assert any("select" in k for k in losses)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    grads = [p.grad for p in m.mask_branch.switch.parameters()]
    assert all(g is not None for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0
    # Every stage receives gradient (deep supervision on every positive RoI).
    for predictor in m.mask_branch.predictors:
        assert float(predictor.logits.weight.grad.abs().sum()) > 0


def test_budget_loss_is_positive_above_target_and_zero_below():
    torch.manual_seed(0)
    m = dynamask_resnet18_fpn(3, fam="conv", budget_weight=1.0, **SMALL).train()
    images, targets = make_batch()
    head = m.mask_branch
    head.budget_target = head.smallest_budget()  # only "every RoI at 14" meets it
    torch.manual_seed(1)
    above = m(images, targets)["loss_mask_budget"]
    head.budget_target = 1.0  # nothing can cost more than the full path
    torch.manual_seed(1)
    below = m(images, targets)["loss_mask_budget"]
    assert float(above.detach()) > 0
    assert float(below.detach()) == 0.0
    # And the function itself.
    fractions = torch.tensor([0.1, 0.25, 0.5, 1.0])
    one_hot = torch.eye(4)[[3, 3, 2]]
    assert float(budget_loss(one_hot, fractions, 0.5)) == pytest.approx(5 / 6 - 0.5)
    assert float(budget_loss(torch.eye(4)[[0, 0, 1]], fractions, 0.5)) == 0.0


def test_budget_loss_is_in_total_and_trains_switch_towards_target():
    torch.manual_seed(0)
    m = dynamask_resnet18_fpn(3, fam="conv", budget_weight=1.0, **SMALL).train()
    head = m.mask_branch
    head.budget_target = head.smallest_budget()
    images, targets = make_batch()
    losses = m(images, targets)
    head.switch.zero_grad()
    losses["loss_mask_budget"].backward()
    # The budget loss alone moves the switch: it is part of the graph, not a logged number.
    assert sum(float(p.grad.abs().sum()) for p in head.switch.parameters() if p.grad is not None) > 0


@pytest.mark.parametrize("policy", ["fixed-14", "fixed-28", "fixed-56", "fixed-112", "size", "dynamic"])
def test_eval_policies_give_masks_and_resolutions(model, policy):
    model.policy = policy
    model.roi_heads.score_thresh = 0.0
    images, _ = make_batch(1)
    with torch.no_grad():
        out = model(images)[0]
    model.policy = "dynamic"
    n = out["boxes"].shape[0]
    assert n > 0
    assert out["masks"].shape == (n, 1, SIZE, SIZE)
    assert out["masks"].min() >= 0 and out["masks"].max() <= 1
    assert out["mask_resolution"].dtype == torch.int64 and out["mask_resolution"].shape == (n,)
    assert out["mask_flops"].shape == (n,) and bool((out["mask_flops"] > 0).all())
    res = out["mask_resolution"]
    if policy.startswith("fixed-"):
        assert bool((res == int(policy.split("-")[1])).all())
    elif policy == "size":
        expected = torch.tensor(RESOLUTIONS)[size_rule(out["boxes"])]  # input size == original size here
        assert torch.equal(res, expected)
    else:
        assert set(res.tolist()) <= set(RESOLUTIONS)


def test_measured_flops_increase_with_resolution_and_match_table(model):
    features, boxes, labels, shapes = mask_inputs(model)
    head = model.mask_branch
    measured = {}
    table = head.flops_table()
    for k, r in enumerate(RESOLUTIONS):
        head.policy = f"fixed-{r}"
        flops, out = count_flops(head.forward_infer, features, boxes, labels, shapes)
        measured[r] = flops
        reported = float(out[0]["mask_flops"].sum())
        assert reported == pytest.approx(flops, rel=0.01)
        assert reported == pytest.approx(table["cumulative"][k] * boxes[0].shape[0], rel=1e-6)
    head.policy = "dynamic"
    assert measured[14] < measured[28] < measured[56] < measured[112]


def test_dynamic_flops_match_per_instance_sum(model):
    features, boxes, labels, shapes = mask_inputs(model)
    head = model.mask_branch
    head.policy = "dynamic"
    flops, out = count_flops(head.forward_infer, features, boxes, labels, shapes)
    chosen = out[0]["mask_resolution"]
    assert len(set(chosen.tolist())) >= 2, "the test needs a mix of choices"
    assert float(out[0]["mask_flops"].sum()) == pytest.approx(flops, rel=0.05)
    full = head.flops_table()["cumulative_with_switch"][-1] * boxes[0].shape[0]
    if bool((chosen < 112).any()):
        assert flops < full  # skipped stages were really not computed


def test_dynamic_mask_equals_fixed_k_for_its_choice(model):
    features, boxes, labels, shapes = mask_inputs(model)
    head = model.mask_branch
    head.policy = "dynamic"
    with torch.no_grad():
        dyn = head.forward_infer(features, boxes, labels, shapes)[0]
    by_index = {}
    for idx, masks in dyn["mask_groups"]:
        for i, m in zip(idx.tolist(), masks):
            by_index[i] = m
    checked = 0
    for _k, r in enumerate(RESOLUTIONS):
        head.policy = f"fixed-{r}"
        with torch.no_grad():
            fixed = head.forward_infer(features, boxes, labels, shapes)[0]
        ((idx, masks),) = fixed["mask_groups"]
        for i, m in zip(idx.tolist(), masks):
            if int(dyn["mask_resolution"][i]) == r:
                assert by_index[i].shape == m.shape == (1, r, r)
                torch.testing.assert_close(by_index[i], m, atol=1e-5, rtol=1e-4)
                checked += 1
    head.policy = "dynamic"
    assert checked == boxes[0].shape[0]


def test_mask_budget_dial_meets_budget(model):
    features, boxes, labels, shapes = mask_inputs(model, n_boxes=40)
    head = model.mask_branch
    full = head.flops_table()["cumulative_with_switch"][-1]
    means = []
    for budget in (1.0, 0.6, 0.35, 0.2):
        model.mask_budget = budget
        with torch.no_grad():
            out = head.forward_infer(features, boxes, labels, shapes)[0]
        mean = float(out["mask_flops"].mean())
        if budget < 1.0:
            assert mean <= budget * full * (1 + 1e-6)
        means.append(mean)
    model.mask_budget = 1.0
    assert means == sorted(means, reverse=True)
    with pytest.raises(ValueError):
        model.mask_budget = 0.0


def test_choose_under_budget_prefers_switch_order():
    costs = torch.tensor([1.0, 2.0, 4.0, 8.0], dtype=torch.float64)
    log_probs = torch.log_softmax(torch.tensor([[0.0, 0.0, 0.0, 5.0], [0.0, 0.0, 0.0, 1.0]]), dim=1)
    choice = choose_under_budget(log_probs, costs, budget=(8 + 1) / 2 / 8)
    # Only one RoI can keep 112: the one the switch is surest about.
    assert choice.tolist() == [3, 0]
    assert choose_under_budget(log_probs, costs, budget=0.01).tolist() == [0, 0]


def test_zero_detections_and_odd_image_sizes(model):
    model.roi_heads.score_thresh = 1.1  # nothing passes
    with torch.no_grad():
        out = model([torch.rand(3, 70, 50)])[0]
    assert out["masks"].shape == (0, 1, 70, 50)
    assert out["mask_resolution"].shape == (0,) and out["mask_flops"].shape == (0,)
    model.roi_heads.score_thresh = 0.0
    with torch.no_grad():
        outs = model([torch.rand(3, 80, 120), torch.rand(3, 100, 64)])
        tiny = model([torch.rand(3, 12, 9)])[0]
    assert outs[0]["masks"].shape[-2:] == (80, 120)
    assert outs[1]["masks"].shape[-2:] == (100, 64)
    assert tiny["masks"].shape[-2:] == (12, 9)
    model.roi_heads.score_thresh = 0.05


def test_train_step_without_positives():
    torch.manual_seed(0)
    m = dynamask_resnet18_fpn(3, fam="conv", **SMALL).train()
    images = [torch.rand(3, SIZE, SIZE)]
    targets = [
        {
            "boxes": torch.zeros(0, 4),
            "labels": torch.zeros(0, dtype=torch.int64),
            "masks": torch.zeros(0, SIZE, SIZE, dtype=torch.uint8),
        }
    ]
    losses = m(images, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()


def test_policy_validation():
    m = dynamask_resnet18_fpn(3, policy="fixed-28", fam="conv", **SMALL)
    assert m.mask_branch.switch is None
    assert len(m.mask_branch.predictors) == 2
    m.policy = "fixed-14"
    with pytest.raises(ValueError):
        m.policy = "fixed-56"
    with pytest.raises(ValueError):
        m.policy = "dynamic"
    with pytest.raises(ValueError):
        dynamask_resnet18_fpn(3, policy="fixed-30")


def test_maskrcnn_baseline_same_interface():
    torch.manual_seed(0)
    m = maskrcnn_resnet18_fpn(3, **SMALL).train()
    images, targets = make_batch()
    losses = m(images, targets)
    assert torch.isfinite(losses["loss_mask"])
    m.eval()
    m.roi_heads.score_thresh = 0.0
    with torch.no_grad():
        out = m(images[:1])[0]
    n = out["boxes"].shape[0]
    assert out["masks"].shape == (n, 1, SIZE, SIZE)
    assert bool((out["mask_resolution"] == 28).all())
    features, boxes, labels, shapes = mask_inputs(m)
    flops, res = count_flops(m.mask_branch.forward_infer, features, boxes, labels, shapes)
    assert float(res[0]["mask_flops"].sum()) == pytest.approx(flops, rel=0.01)


def test_local_backbone_weights(tmp_path):
    import torchvision

    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    m = dynamask_resnet18_fpn(3, weights_backbone=str(path), fam="conv", **SMALL)
    ref = torch.load(path, weights_only=True)
    torch.testing.assert_close(m.backbone.body.conv1.weight, ref["conv1.weight"])
    with pytest.raises(FileNotFoundError):
        dynamask_resnet18_fpn(3, weights_backbone=str(tmp_path / "missing.pth"))


def test_reduce_then_pool_equals_pool_then_reduce(model):
    """Training reduces the FPN map before RoIAlign, inference after: the same numbers."""
    features, boxes, labels, shapes = mask_inputs(model)
    head = model.mask_branch
    from dynamask.models.roi_utils import rois_with_batch_index

    rois = rois_with_batch_index(boxes)
    for k in range(head.num_stages - 1):
        fam = head.aggregators[k]
        with torch.no_grad():
            late = fam.reduce_image_feature(head._pool_image_feature(features, k, rois, shapes))
            early = head._pool_image_feature(features, k, rois, shapes, reduce_first=True)
        torch.testing.assert_close(early, late, atol=1e-4, rtol=1e-4)


def test_selection_costs_rank_sharp_fine_masks_above_blurry_coarse_ones():
    from dynamask.models.losses import selection_costs

    # a star-like target at 112: a 14×14 logit map cannot draw its spikes, a 112 map can
    yy, xx = torch.meshgrid(torch.arange(112.0), torch.arange(112.0), indexing="ij")
    angle = torch.atan2(yy - 56, xx - 56)
    radius = ((yy - 56) ** 2 + (xx - 56) ** 2).sqrt()
    target = (radius < 30 + 15 * torch.cos(7 * angle)).float()[None]
    coarse = torch.nn.functional.interpolate(target[None], size=(14, 14), mode="area") * 8 - 4
    fine = target[None] * 8 - 4
    costs = selection_costs([coarse, fine], target)
    assert costs.shape == (1, 2)
    assert costs[0, 1] < 0.05 < costs[0, 0]  # perfect fine mask ≈ 0; the coarse one pays
    empty = selection_costs([torch.full((1, 1, 14, 14), -5.0)], torch.zeros(1, 112, 112))
    assert float(empty) == 0.0  # nothing predicted for nothing: perfect


def test_selection_multiplier_prices_compute_to_meet_the_target():
    from dynamask.models.losses import selection_multiplier

    fractions = torch.tensor([0.1, 0.25, 0.5, 1.0])
    costs = torch.tensor(
        [
            [0.9, 0.5, 0.3, 0.1],  # gains a lot from fine stages
            [0.2, 0.19, 0.18, 0.17],  # barely gains
            [0.5, 0.2, 0.19, 0.18],
        ]
    )  # 28 is enough
    assert selection_multiplier(costs, fractions, 1.0) == 0.0  # no budget pressure: free compute
    lam = selection_multiplier(costs, fractions, 0.45)
    chosen = torch.argmin(costs + lam * fractions, dim=1)
    assert float(fractions[chosen].mean()) <= 0.45
    assert chosen[0] == chosen.max() and chosen[1] == 0  # the budget goes where it helps most
    # below the cheapest stage's share: priced so that every RoI stops there, never free compute
    lam = selection_multiplier(costs, fractions, 0.01)
    assert lam > 0 and torch.argmin(costs + lam * fractions, dim=1).tolist() == [0, 0, 0]


def test_a_lower_budget_never_gives_a_costlier_mix():
    from dynamask.models.losses import selection_multiplier

    g = torch.Generator().manual_seed(0)
    fractions = torch.tensor([0.12, 0.3, 0.55, 1.0])
    costs = torch.rand(64, 4, generator=g)
    means = []
    for target in (1.0, 0.8, 0.6, 0.4, 0.3, 0.2, 0.13, 0.12, 0.1, 0.05, 0.001):
        lam = selection_multiplier(costs, fractions, target)
        means.append(float(fractions[torch.argmin(costs + lam * fractions, dim=1)].mean()))
        scores = torch.log_softmax(-costs * 5, dim=1)
        assert float(fractions[choose_under_budget(scores, fractions, target)].mean()) <= max(target, 0.12) + 1e-6
    assert means == sorted(means, reverse=True) and means[-1] == pytest.approx(0.12)


def test_unreachable_budgets_are_clamped_with_one_warning_naming_the_key():
    m = dynamask_resnet18_fpn(3, fam="conv", refinement="dense", **SMALL)
    lowest = m.mask_branch.smallest_budget()
    assert 0 < lowest < 0.2
    with pytest.warns(UserWarning, match=rf"model\.mask_budget_target=0\.01 .* clamped to {lowest:.4f}"):
        built = dynamask_resnet18_fpn(3, fam="conv", refinement="dense", mask_budget_target=0.01, **SMALL)
    assert built.mask_branch.budget_target == pytest.approx(lowest)
    with pytest.warns(UserWarning, match=r"model\.mask_budget=0\.05 .* smallest reachable value"):
        m.mask_budget = 0.05
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m.mask_budget = 0.5  # reachable: silent
        m.mask_branch.budget_target = 0.5


def test_switch_learns_lambda_and_old_checkpoints_keep_their_choices():
    torch.manual_seed(0)
    m = dynamask_resnet18_fpn(3, min_size=64, max_size=64)
    switch = m.mask_branch.switch
    assert float(switch.price) == 0.0
    switch.update_price(2.0)
    switch.update_price(4.0)
    assert float(switch.price) == pytest.approx(2.04) and int(switch.price_updates) == 2
    prefix = "roi_heads.mask_branch."
    state = m.state_dict()
    # a checkpoint that kept λ in the head (before it moved into the cost switch) loads it there
    moved = {k: v for k, v in state.items() if ".switch.price" not in k}
    moved[prefix + "switch_lambda"] = torch.tensor(3.0)
    moved[prefix + "switch_lambda_updates"] = torch.tensor(7)
    fresh = dynamask_resnet18_fpn(3, min_size=64, max_size=64)
    fresh.load_state_dict(moved)
    assert float(fresh.mask_branch.switch.price) == 3.0 and int(fresh.mask_branch.switch.price_updates) == 7
    assert torch.equal(fresh.mask_branch.switch.fc2.weight, switch.fc2.weight)
    # a state dict without any λ (switch outputs were logits): loads with negated outputs
    oldest = {k: v for k, v in state.items() if ".switch.price" not in k}
    fresh = dynamask_resnet18_fpn(3, min_size=64, max_size=64)
    fresh.load_state_dict(oldest)
    assert torch.equal(fresh.mask_branch.switch.fc2.weight, -switch.fc2.weight)
    assert float(fresh.mask_branch.switch.price) == 0.0
    # heads without a switch: old checkpoints carried λ buffers, new ones do not
    fixed = dynamask_resnet18_fpn(3, policy="fixed-112", min_size=64, max_size=64)
    assert not any("price" in k or "lambda" in k for k in fixed.state_dict())
    fixed.load_state_dict(
        {
            **fixed.state_dict(),
            prefix + "switch_lambda": torch.zeros(()),
            prefix + "switch_lambda_updates": torch.zeros((), dtype=torch.int64),
        }
    )
