"""Tests for dynamask.config (fast, no torch needed)."""

from __future__ import annotations

import glob
import os
import sys

import pytest
import yaml

try:
    import dynamask.config  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src"))

from dynamask import config as C
from dynamask.errors import ConfigError, DynaMaskError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(REPO, "configs")
SHIPPED = sorted(glob.glob(os.path.join(CONFIG_DIR, "*.yaml")))

SPEC_KEYS = [
    "data.train_json",
    "data.train_images",
    "data.val_json",
    "data.val_images",
    "model.policy",
    "model.backbone",
    "model.mask_budget_target",
    "solver.max_iter",
    "solver.ims_per_batch",
    "solver.base_lr",
    "solver.checkpoint_period",
    "input.min_size",
    "input.max_size",
    "seed",
]


def write(path, text):
    path = str(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


# ---------------------------------------------------------------- defaults


def test_defaults_load_and_have_spec_keys():
    cfg = C.load_config()
    assert cfg == C.DEFAULTS
    assert cfg is not C.DEFAULTS
    flat = C.flatten(cfg)
    for key in SPEC_KEYS:
        assert key in flat, key
    assert set(flat) == set(C.valid_keys())
    assert cfg["model"]["policy"] in C.POLICIES
    assert cfg["model"]["stage_loss_weights"] == [0.25, 0.5, 0.75, 1.0]
    assert cfg["solver"]["reference_batch"] == 16
    # the defaults themselves pass validation
    assert C.validate(cfg) == cfg


def test_defaults_not_mutated_by_load():
    cfg = C.load_config()
    cfg["solver"]["steps"].append(1)
    cfg["model"]["policy"] = "size"
    assert C.load_config()["solver"]["steps"] == [60000, 80000]
    assert C.DEFAULTS["model"]["policy"] == "dynamic"


def test_error_hierarchy():
    assert issubclass(ConfigError, DynaMaskError)
    assert issubclass(DynaMaskError, Exception)


# ---------------------------------------------------------------- shipped configs


def test_expected_configs_are_shipped():
    names = {os.path.basename(p) for p in SHIPPED}
    expected = {
        "shapes_dynamask_r18.yaml",
        "shapes_fixed14_r18.yaml",
        "shapes_fixed28_r18.yaml",
        "shapes_fixed56_r18.yaml",
        "shapes_fixed112_r18.yaml",
        "shapes_size_r18.yaml",
        "shapes_maskrcnn_r18.yaml",
        "coco_dynamask_r50_1x.yaml",
        "coco_maskrcnn_r50_1x.yaml",
        "coco_dynamask_r50_1x_paper.yaml",
        "cityscapes_dynamask_r50.yaml",
    }
    assert expected <= names


@pytest.mark.parametrize("path", SHIPPED, ids=[os.path.basename(p) for p in SHIPPED])
def test_shipped_config_loads(path):
    cfg = C.load_config(path)
    assert C.validate(cfg) == cfg
    for key in ("data.train_json", "data.train_images", "data.val_json", "data.val_images"):
        value = C.get(cfg, key)
        assert value is not None and os.path.isabs(value), (key, value)


def test_shapes_configs():
    base = C.load_config(os.path.join(CONFIG_DIR, "shapes_dynamask_r18.yaml"))
    assert base["model"]["policy"] == "dynamic"
    assert base["model"]["backbone"] == "resnet18"
    assert base["model"]["mask_budget_target"] == 0.6
    assert base["model"]["refinement"] == "points"  # the default: not named in the file
    assert base["input"]["min_size"] == 128 and base["input"]["max_size"] == 128
    assert base["solver"]["checkpoint_period"] == 500
    # data paths point at <repo>/runs/shapes (what `dynamask shapes --out runs/shapes` writes)
    assert base["data"]["train_json"] == os.path.join(REPO, "runs", "shapes", "train.json")
    assert base["data"]["val_json"] == os.path.join(REPO, "runs", "shapes", "val.json")

    variants = {
        "shapes_fixed14_r18.yaml": ("dynamask", "fixed-14"),
        "shapes_fixed28_r18.yaml": ("dynamask", "fixed-28"),
        "shapes_fixed56_r18.yaml": ("dynamask", "fixed-56"),
        "shapes_fixed112_r18.yaml": ("dynamask", "fixed-112"),
        "shapes_size_r18.yaml": ("dynamask", "size"),
        "shapes_maskrcnn_r18.yaml": ("maskrcnn", "dynamic"),
    }
    outs = {base["output_dir"]}
    for name, (head, policy) in variants.items():
        cfg = C.load_config(os.path.join(CONFIG_DIR, name))
        assert cfg["model"]["head"] == head
        assert cfg["model"]["policy"] == policy
        # everything except the head/policy (and the run folder) is inherited
        for key, value in C.flatten(base).items():
            if key not in ("model.head", "model.policy", "output_dir"):
                assert C.get(cfg, key) == value, (name, key)
        outs.add(cfg["output_dir"])
    assert len(outs) == len(variants) + 1  # each config has its own run folder


def test_coco_recipe():
    for name, head in (("coco_dynamask_r50_1x.yaml", "dynamask"), ("coco_maskrcnn_r50_1x.yaml", "maskrcnn")):
        cfg = C.load_config(os.path.join(CONFIG_DIR, name))
        s = cfg["solver"]
        assert cfg["model"]["head"] == head
        assert cfg["model"]["backbone"] == "resnet50"
        assert s["optimizer"] == "sgd"
        assert (s["base_lr"], s["reference_batch"], s["ims_per_batch"]) == (0.02, 16, 16)
        assert (s["momentum"], s["weight_decay"], s["warmup_iters"]) == (0.9, 1e-4, 500)
        assert (s["max_iter"], s["steps"]) == (90000, [60000, 80000])
        assert (cfg["input"]["min_size"], cfg["input"]["max_size"], cfg["input"]["flip_prob"]) == (800, 1333, 0.5)
        assert cfg["data"]["train_json"].endswith(os.path.join("coco", "annotations", "instances_train2017.json"))
        assert C.effective_lr(cfg) == pytest.approx(0.02)
    half = C.load_config(os.path.join(CONFIG_DIR, "coco_dynamask_r50_1x.yaml"), ["solver.ims_per_batch=8"])
    assert C.effective_lr(half) == pytest.approx(0.01)


def test_cityscapes_config():
    cfg = C.load_config(os.path.join(CONFIG_DIR, "cityscapes_dynamask_r50.yaml"))
    assert cfg["model"]["num_classes"] == 8
    assert cfg["input"]["min_size"][0] == 800 and cfg["input"]["min_size"][-1] == 1024
    assert cfg["input"]["max_size"] == 2048
    assert (cfg["solver"]["max_iter"], cfg["solver"]["ims_per_batch"], cfg["solver"]["steps"]) == (24000, 8, [18000])
    assert C.effective_lr(cfg) == pytest.approx(0.01)


# ---------------------------------------------------------------- _base_


def test_base_inheritance(tmp_path):
    write(
        tmp_path / "base.yaml",
        "model:\n  policy: fixed-28\n  backbone: resnet18\nsolver:\n  max_iter: 100\n  steps: [50, 80]\n",
    )
    write(tmp_path / "sub" / "mid.yaml", "_base_: ../base.yaml\nsolver:\n  max_iter: 200\n")
    child = write(tmp_path / "sub" / "child.yaml", "_base_: mid.yaml\nmodel:\n  policy: size\n")
    cfg = C.load_config(child)
    assert cfg["model"]["policy"] == "size"  # child wins
    assert cfg["model"]["backbone"] == "resnet18"  # from the grand-parent
    assert cfg["solver"]["max_iter"] == 200  # from the parent
    assert cfg["solver"]["steps"] == [50, 80]
    assert cfg["solver"]["base_lr"] == C.DEFAULTS["solver"]["base_lr"]  # untouched default


def test_base_list_and_errors(tmp_path):
    write(tmp_path / "a.yaml", "seed: 1\nsolver:\n  max_iter: 10\n")
    write(tmp_path / "b.yaml", "seed: 2\n")
    cfg = C.load_config(write(tmp_path / "c.yaml", "_base_: [a.yaml, b.yaml]\n"))
    assert cfg["seed"] == 2 and cfg["solver"]["max_iter"] == 10

    missing = write(tmp_path / "m.yaml", "_base_: nothere.yaml\n")
    with pytest.raises(ConfigError, match="nothere.yaml"):
        C.load_config(missing)

    write(tmp_path / "x.yaml", "_base_: y.yaml\n")
    write(tmp_path / "y.yaml", "_base_: x.yaml\n")
    with pytest.raises(ConfigError, match="circular"):
        C.load_config(tmp_path / "x.yaml")


def test_base_relative_data_paths_resolve_per_file(tmp_path):
    write(tmp_path / "common" / "base.yaml", "data:\n  train_json: ann/train.json\n")
    child = write(tmp_path / "exp" / "child.yaml", "_base_: ../common/base.yaml\ndata:\n  val_json: v.json\n")
    cfg = C.load_config(child)
    assert cfg["data"]["train_json"] == str(tmp_path / "common" / "ann" / "train.json")
    assert cfg["data"]["val_json"] == str(tmp_path / "exp" / "v.json")


# ---------------------------------------------------------------- overrides


def test_overrides_parse_types():
    cfg = C.load_config(
        None,
        [
            "solver.max_iter=200",
            "solver.steps=[100,200]",
            "model.weights_backbone=null",
            "solver.base_lr=1e-3",
            "solver.weight_decay=0",
            "solver.clip_grad_norm=5",
            "data.keep_empty=true",
            "model.policy=fixed-56",
            "model.stage_loss_weights=[1, 1, 1, 1]",
            "input.min_size=[96, 128]",
            "output_dir=2024",
            "model.num_classes=3",
        ],
    )
    assert cfg["solver"]["max_iter"] == 200 and type(cfg["solver"]["max_iter"]) is int
    assert cfg["solver"]["steps"] == [100, 200]
    assert cfg["model"]["weights_backbone"] is None
    assert cfg["solver"]["base_lr"] == pytest.approx(1e-3) and isinstance(cfg["solver"]["base_lr"], float)
    assert cfg["solver"]["weight_decay"] == 0.0 and isinstance(cfg["solver"]["weight_decay"], float)
    assert cfg["solver"]["clip_grad_norm"] == 5.0
    assert cfg["data"]["keep_empty"] is True
    assert cfg["model"]["policy"] == "fixed-56"
    assert cfg["model"]["stage_loss_weights"] == [1.0, 1.0, 1.0, 1.0]
    assert cfg["input"]["min_size"] == [96, 128]
    assert cfg["output_dir"] == "2024"  # string key keeps the text
    assert cfg["model"]["num_classes"] == 3


def test_overrides_win_over_file(tmp_path):
    path = write(tmp_path / "c.yaml", "solver:\n  max_iter: 10\n  ims_per_batch: 2\n")
    cfg = C.load_config(path, ["solver.max_iter=20"])
    assert cfg["solver"]["max_iter"] == 20 and cfg["solver"]["ims_per_batch"] == 2
    cfg = C.load_config(path, {"solver.max_iter": 30})
    assert cfg["solver"]["max_iter"] == 30


def test_override_relative_path_is_relative_to_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = C.load_config(None, ["data.train_json=ann/t.json", "output_dir=out/run1"])
    assert cfg["data"]["train_json"] == str(tmp_path / "ann" / "t.json")
    assert cfg["output_dir"] == "out/run1"


def test_malformed_override():
    with pytest.raises(ConfigError, match="key=value"):
        C.load_config(None, ["solver.max_iter"])


# ---------------------------------------------------------------- errors


def test_unknown_key_in_file(tmp_path):
    path = write(tmp_path / "bad.yaml", "solver:\n  max_iters: 100\n")
    with pytest.raises(ConfigError) as ei:
        C.load_config(path)
    msg = str(ei.value)
    assert "solver.max_iters" in msg
    assert "bad.yaml" in msg
    assert "solver.max_iter'" in msg and "did you mean" in msg


def test_unknown_section_and_misplaced_key_in_file(tmp_path):
    path = write(tmp_path / "bad.yaml", "solvr:\n  max_iter: 100\n")
    with pytest.raises(ConfigError, match=r"solvr\.max_iter.*did you mean 'solver\.max_iter'"):
        C.load_config(path)
    path = write(tmp_path / "bad2.yaml", "model:\n  base_lr: 0.1\n")
    with pytest.raises(ConfigError, match=r"model\.base_lr.*did you mean 'solver\.base_lr'"):
        C.load_config(path)


def test_unknown_key_on_command_line():
    with pytest.raises(ConfigError) as ei:
        C.load_config(None, ["model.polciy=dynamic"])
    msg = str(ei.value)
    assert "model.polciy" in msg
    assert "command line" in msg
    assert "model.policy" in msg


def test_wrong_type_in_file(tmp_path):
    path = write(tmp_path / "t.yaml", "solver:\n  max_iter: lots\n")
    with pytest.raises(ConfigError) as ei:
        C.load_config(path)
    assert "solver.max_iter" in str(ei.value) and "t.yaml" in str(ei.value)

    for text in (
        "solver:\n  base_lr: fast\n",
        "data:\n  keep_empty: 1\n",
        "solver:\n  steps: 100\n",
        "solver:\n  max_iter: 10.5\n",
        "solver:\n  ims_per_batch: true\n",
        "model:\n  policy: 14\n",
        "seed: null\n",
        "model: resnet\n",
        "- 1\n- 2\n",
    ):
        with pytest.raises(ConfigError, match="t2.yaml"):
            C.load_config(write(tmp_path / "t2.yaml", text))


def test_int_accepted_for_float_and_null_for_nullable(tmp_path):
    path = write(tmp_path / "ok.yaml", "solver:\n  base_lr: 1\n  clip_grad_norm: null\nmodel:\n  num_classes: null\n")
    cfg = C.load_config(path)
    assert cfg["solver"]["base_lr"] == 1.0 and isinstance(cfg["solver"]["base_lr"], float)
    assert cfg["solver"]["clip_grad_norm"] is None and cfg["model"]["num_classes"] is None


def test_wrong_type_on_command_line():
    with pytest.raises(ConfigError, match=r"command line.*solver\.ims_per_batch"):
        C.load_config(None, ["solver.ims_per_batch=four"])


@pytest.mark.parametrize(
    "override",
    [
        "model.policy=fixed-32",
        "model.policy=random",
        "model.head=unet",
        "model.backbone=vgg16",
        "solver.amp=fp8",
        "solver.optimizer=adam",
        "model.mask_budget_target=0",
        "model.mask_budget_target=1.5",
        "model.mask_budget=0",
        "model.mask_budget=-0.5",
        "solver.ims_per_batch=0",
        "solver.steps=[200,100]",
        "input.flip_prob=2",
        "input.max_size=100",
        "model.stage_loss_weights=[1,1]",
        "data.train_json=''",
    ],
)
def test_bad_values(override):
    with pytest.raises(ConfigError, match=override.split("=")[0].replace(".", r"\.")):
        C.load_config(None, [override])


def test_bad_policy_in_file_suggests(tmp_path):
    path = write(tmp_path / "p.yaml", "model:\n  policy: fixed14\n")
    with pytest.raises(ConfigError) as ei:
        C.load_config(path)
    msg = str(ei.value)
    assert "model.policy" in msg and "p.yaml" in msg and "fixed-14" in msg


def test_budget_boundaries():
    cfg = C.load_config(None, ["model.mask_budget_target=1", "model.mask_budget=0.25"])
    assert cfg["model"]["mask_budget_target"] == 1.0 and cfg["model"]["mask_budget"] == 0.25


def test_malformed_yaml(tmp_path):
    path = write(tmp_path / "broken.yaml", "model:\n  policy: [dynamic\nsolver:\n  max_iter: 3\n")
    with pytest.raises(ConfigError) as ei:
        C.load_config(path)
    msg = str(ei.value)
    assert "broken.yaml" in msg and "line" in msg


def test_duplicate_key_is_an_error(tmp_path):
    path = write(tmp_path / "dup.yaml", "solver:\n  max_iter: 3\nsolver:\n  base_lr: 0.1\n")
    with pytest.raises(ConfigError, match=r"dup\.yaml.*line 3.*duplicate key 'solver'"):
        C.load_config(path)


def test_missing_file(tmp_path):
    path = str(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="nope.yaml"):
        C.load_config(path)


def test_empty_file_gives_defaults(tmp_path):
    assert C.load_config(write(tmp_path / "empty.yaml", "# nothing\n")) == C.DEFAULTS


# ---------------------------------------------------------------- paths


def test_relative_data_paths_resolved_against_yaml_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # unrelated working directory
    path = write(
        tmp_path / "cfgs" / "exp.yaml",
        "data:\n"
        "  train_json: ../data/train.json\n"
        "  train_images: images\n"
        "  val_json: /abs/val.json\n"
        "model:\n"
        "  weights_backbone: w/r18.pth\n"
        "output_dir: runs/exp\n",
    )
    cfg = C.load_config(path)
    assert cfg["data"]["train_json"] == str(tmp_path / "data" / "train.json")
    assert cfg["data"]["train_images"] == str(tmp_path / "cfgs" / "images")
    assert cfg["data"]["val_json"] == os.path.normpath("/abs/val.json")
    assert cfg["data"]["val_images"] is None
    assert cfg["model"]["weights_backbone"] == str(tmp_path / "cfgs" / "w" / "r18.pth")
    assert cfg["output_dir"] == "runs/exp"  # kept as given


# ---------------------------------------------------------------- saving


def test_save_config_round_trip(tmp_path):
    src = os.path.join(CONFIG_DIR, "cityscapes_dynamask_r50.yaml")
    cfg = C.load_config(src, ["solver.max_iter=123", "solver.clip_grad_norm=1e-3", "model.num_classes=8"])
    out = tmp_path / "run" / "config.yaml"
    C.save_config(cfg, out)
    assert out.exists()
    assert [p for p in os.listdir(out.parent) if p != "config.yaml"] == []  # no temp files left
    again = C.load_config(out)
    assert again == cfg
    assert yaml.safe_load(out.read_text()) == cfg
    # overwriting works (atomic replace)
    cfg["seed"] = 7
    C.save_config(cfg, str(out))
    assert C.load_config(out)["seed"] == 7


def test_config_to_yaml_is_plain_yaml():
    cfg = C.load_config()
    text = C.config_to_yaml(cfg)
    assert yaml.safe_load(text) == cfg
    assert "steps: [60000, 80000]" in text


# ---------------------------------------------------------------- helpers


def test_dotted_helpers():
    cfg = C.default_config()
    assert C.get(cfg, "solver.base_lr") == 0.02
    assert C.get(cfg, "solver.nope", None) is None
    with pytest.raises(KeyError):
        C.get(cfg, "solver.nope")
    C.set_(cfg, "solver.base_lr", 0.5)
    C.set_(cfg, "extra.deep.key", 1)
    assert cfg["solver"]["base_lr"] == 0.5 and cfg["extra"]["deep"]["key"] == 1


def test_validate_rejects_bad_dicts():
    cfg = C.default_config()
    cfg["model"]["policy"] = "bogus"
    with pytest.raises(ConfigError, match="model.policy"):
        C.validate(cfg)
    cfg = C.default_config()
    cfg["solver"]["lr"] = 0.1
    with pytest.raises(ConfigError, match=r"solver\.lr.*solver\.base_lr"):
        C.validate(cfg)
    cfg = C.default_config()
    del cfg["seed"]
    with pytest.raises(ConfigError, match="seed"):
        C.validate(cfg)


# ---------------------------------------------------------------- schema and `dynamask config`


@pytest.fixture
def cli_main(capsys):
    """cli.main(argv) -> (status, stdout, stderr), the 'dynamask' logger put back afterwards."""
    import logging

    from dynamask import cli

    log = logging.getLogger("dynamask")
    saved = (list(log.handlers), log.level, log.propagate)

    def run(*argv):
        try:
            rc = cli.main(list(argv))
        except SystemExit as e:  # --help
            rc = e.code
        out = capsys.readouterr()
        return rc, out.out, out.err

    yield run
    log.handlers[:] = saved[0]
    log.setLevel(saved[1])
    log.propagate = saved[2]


def test_every_key_has_a_one_line_doc():
    docs = C.key_docs()
    assert list(docs) == C.valid_keys()
    for key, text in docs.items():
        assert text.strip() and "\n" not in text, key


def test_defaults_come_from_the_schema():
    from dynamask.config.schema import Config

    assert Config().model_dump() == C.DEFAULTS
    assert list(C.DEFAULTS) == ["data", "model", "input", "solver", "test", "seed", "output_dir"]


def test_head_widths_takes_a_preset_name_or_a_list():
    assert C.load_config(None, ["model.head_widths=paper"])["model"]["head_widths"] == "paper"
    assert C.load_config(None, ["model.head_widths=[64,43,32,21]"])["model"]["head_widths"] == [64, 43, 32, 21]
    with pytest.raises(ConfigError, match=r"^command line: 'model\.head_widths' must be 'balanced' or 'paper' or 4"):
        C.load_config(None, ["model.head_widths=wide"])
    with pytest.raises(ConfigError, match=r"'model\.head_widths' must be a name or a list of integers or null, got 5"):
        C.load_config(None, {"model.head_widths": 5})


def test_bad_value_message_is_one_line_from_the_schema(tmp_path):
    path = write(tmp_path / "b.yaml", "solver:\n  momentum: 1\n  steps: [3, 1]\n")
    with pytest.raises(ConfigError) as ei:
        C.load_config(path)
    assert str(ei.value) == f"{path}: 'solver.momentum' must be in [0, 1); got 1.0"
    with pytest.raises(ConfigError) as ei:
        C.load_config(None, ["input.min_size=[800, 1400]"])
    assert str(ei.value) == "command line: 'input.max_size' (1333) must be >= 'input.min_size' ([800, 1400])"
    # a file may raise min_size when an override raises max_size: the check is on the final config
    assert C.load_config(write(tmp_path / "m.yaml", "input:\n  min_size: 2000\n"), ["input.max_size=3000"])


def test_config_command_help(cli_main):
    rc, out, _ = cli_main("config", "--help")
    assert rc == 0
    assert "--config FILE" in out and "KEY=VALUE" in out and "description" in out
    rc, out, _ = cli_main("--help")
    assert rc == 0 and "config" in out


def test_config_command_prints_documented_resolved_config(cli_main):
    path = os.path.join(CONFIG_DIR, "shapes_dynamask_r18.yaml")
    rc, out, err = cli_main("config", "--config", path, "solver.max_iter=100", "model.head_widths=paper")
    assert rc == 0, err
    assert yaml.safe_load(out) == C.load_config(path, ["solver.max_iter=100", "model.head_widths=paper"])
    assert f"  max_iter: 100  # {C.key_docs()['solver.max_iter']}\n" in out
    assert "  head_widths: paper  # " in out
    docs = C.key_docs()
    for key in C.valid_keys():  # every key appears once, with its doc as a comment
        leaf = key.rsplit(".", 1)[-1]
        indent = "  " if "." in key else ""
        lines = [line for line in out.splitlines() if line.startswith(f"{indent}{leaf}: ")]
        assert len(lines) == 1 and lines[0].endswith(f"  # {docs[key]}"), key
    rc, out, _ = cli_main("config")
    assert rc == 0 and yaml.safe_load(out) == C.DEFAULTS


def test_config_command_bad_key_is_one_line_error(cli_main, tmp_path):
    rc, out, err = cli_main("config", "solver.max_iters=100")
    assert rc == 2 and out == ""
    assert err.strip().splitlines() == [
        "error: command line: unknown config key 'solver.max_iters' (did you mean 'solver.max_iter'?)"
    ]
    path = write(tmp_path / "bad.yaml", "model:\n  polcy: size\n")
    rc, _, err = cli_main("config", "--config", path)
    assert rc == 2 and err.strip().splitlines() == [
        f"error: {path}: unknown config key 'model.polcy' (did you mean 'model.policy'?)"
    ]
