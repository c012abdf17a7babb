"""The narrow model the training tests run (loop, launch, faults, resumption).

What those tests check is the training machinery, not the network, so they share one small
configuration: ResNet-18 with a 32-channel FPN, the plain-conv FAM, narrow mask stages, few
proposals and detections, no DataLoader workers. Each test adds its data, image size and schedule.
"""

NARROW_MODEL = {
    "data.num_workers": 0,
    "model.backbone": "resnet18",
    "model.fam": "conv",
    "model.fpn_channels": 32,
    "model.box_representation_size": 64,
    "model.head_widths": [16, 16, 8, 8],
    "model.head_reduced_channels": [8, 8, 8],
    "model.rpn_pre_nms_top_n_train": 100,
    "model.rpn_post_nms_top_n_train": 50,
    "model.rpn_pre_nms_top_n_test": 50,
    "model.rpn_post_nms_top_n_test": 20,
    "model.box_batch_size_per_image": 16,
    "model.box_detections_per_img": 10,
}
