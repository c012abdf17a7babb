"""The dataset's flat records (issue 26, part 2): the same samples and skip counts as rasterising
every polygon, no per-annotation Python objects kept, and the shortcut that spares most of the
rasterising never wrong."""

import gc
import json

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from dynamask.data import CocoInstanceDataset, DatasetError, generate_shapes_dataset
from dynamask.data import records as R

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _rasterises_nonempty(parts, h, w):
    return any(int(mask_utils.area(r)) > 0 for r in mask_utils.frPyObjects([list(p) for p in parts], h, w))


def _hostile_polygons(rng, n):
    """Tiny polygons around pixel centres and corners, slivers along rows and columns, self-crossing
    stars, polygons half off the image: the cases where a shortcut could be wrong."""
    polys = []
    for i in range(n):
        kind = i % 4
        k = int(rng.integers(3, 9))
        if kind == 0:  # tiny, near a pixel centre or a corner
            c = np.floor(rng.uniform(-2, 14, 2)) + rng.choice([0.0, 0.5]) + rng.uniform(-0.3, 0.3, 2)
            r = rng.uniform(0.05, 1.2)
            a = np.sort(rng.uniform(0, 2 * np.pi, k))
            pts = np.stack([c[0] + r * np.cos(a), c[1] + r * np.sin(a) * rng.uniform(0.2, 1.5)], 1)
        elif kind == 1:  # a sliver along a row or a column
            t = rng.uniform(-2, 14)
            lo, hi = sorted(rng.uniform(-2, 14, 2))
            wdt = rng.uniform(0.01, 1.5)
            off = np.floor(rng.uniform(-1, 12)) + rng.uniform(0, 1)
            pts = np.array([[lo, off], [hi, off], [hi, off + wdt], [lo, off + wdt]])
            if rng.random() < 0.5:
                pts = pts[:, ::-1]
            pts = pts + rng.normal(0, 0.02, pts.shape) * (t > 0)
        elif kind == 2:  # self-crossing
            pts = rng.uniform(-1, 13, (k, 2))
        else:  # larger, partly outside
            c = rng.uniform(-6, 18, 2)
            a = np.sort(rng.uniform(0, 2 * np.pi, k))
            r = rng.uniform(0.5, 6, k)
            pts = np.stack([c[0] + r * np.cos(a), c[1] + r * np.sin(a)], 1)
        polys.append(np.round(pts.reshape(-1), 3).tolist())
    return polys


def test_the_shortcut_never_vouches_for_an_empty_mask():
    """polygons_surely_nonempty may only say True where pycocotools' rasteriser gives a pixel."""
    rng = np.random.default_rng(0)
    builder = R.RecordsBuilder()
    polys = _hostile_polygons(rng, 4000)
    for i, p in enumerate(polys):
        builder.add(0, i, 1, (0, 0, 1, 1), None, polygons=[p])
    records = builder.build()
    h, w = 12, 10
    sure = R.polygons_surely_nonempty(records, np.full(len(records), h), np.full(len(records), w))
    truth = np.array([_rasterises_nonempty([p], h, w) for p in polys])
    assert not (sure & ~truth).any(), np.flatnonzero(sure & ~truth)[:5]
    assert sure.sum() > 0.2 * truth.sum()  # and it vouches for a good share, or it would spare nothing
    # the exact answer (shortcut + rasterising the rest) is the rasteriser's
    exact = R.polygons_rasterise_nonempty(records, np.full(len(records), h), np.full(len(records), w), workers=1)
    np.testing.assert_array_equal(exact, truth)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("records")
    return generate_shapes_dataset(root, num_train=12, num_val=2, image_size=64, seed=3)


def _samples(ds):
    return [ds[i] for i in range(len(ds))]


def test_parallel_check_equals_serial(shapes, monkeypatch, tmp_path):
    """The forked emptiness check gives the same skip counts and samples as the serial one,
    including polygons that rasterise to nothing."""
    data = json.loads(open(shapes["train_json"]).read())
    first = data["images"][0]["id"]
    for k in range(5):  # polygons that cover no pixel centre
        x = 3.1 + 7 * k
        data["annotations"].append(
            {
                "id": 10_000 + k,
                "image_id": first,
                "category_id": data["categories"][0]["id"],
                "bbox": [x, 3.1, 2, 2],
                "segmentation": [[x, 3.1, x + 0.2, 3.1, x + 0.2, 3.3]],
            }
        )
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    serial = CocoInstanceDataset(path, shapes["train_dir"], workers=1)
    monkeypatch.setattr(R, "PARALLEL_MIN_POLYGONS", 0)
    parallel = CocoInstanceDataset(path, shapes["train_dir"], workers=2)
    assert serial.skip_counts == parallel.skip_counts and serial.skip_counts["empty_segmentation"] == 5
    for (ia, ta), (ib, tb) in zip(_samples(serial), _samples(parallel)):
        assert torch.equal(ia, ib)
        for key in ("boxes", "labels", "masks", "area"):
            assert torch.equal(ta[key], tb[key])


def test_no_per_annotation_python_objects_are_kept(shapes, tmp_path):
    """The parsed json is released: the dataset holds a fixed handful of objects, however many
    annotations the file has (what lets forked DataLoader workers share its pages)."""
    data = json.loads(open(shapes["train_json"]).read())
    base = list(data["annotations"])
    data["annotations"] = [dict(a, id=i + 1) for i, a in enumerate(base * 200)]  # thousands of annotations
    path = tmp_path / "many.json"
    path.write_text(json.dumps(data))
    gc.collect()
    before = len(gc.get_objects())
    ds = CocoInstanceDataset(path, shapes["train_dir"])
    gc.collect()
    grown = len(gc.get_objects()) - before
    assert len(data["annotations"]) > 2000 and len(ds.records) == len(data["annotations"])
    assert grown < 200, grown
    assert not hasattr(ds, "_data")


def test_targets_match_rasterising_the_json(shapes):
    """Every target mask equals pycocotools' mask of the json annotation it comes from."""
    ds = CocoInstanceDataset(shapes["train_json"], shapes["train_dir"])
    anns = json.loads(open(shapes["train_json"]).read())["annotations"]
    for i in range(len(ds)):
        _, target = ds[i]
        info = ds.image_info(i)
        idx = ds.annotation_indices(i)
        assert len(idx) == target["masks"].shape[0]
        for m, j in zip(target["masks"], idx.tolist()):
            seg = anns[j]["segmentation"]
            rle = (
                mask_utils.merge(mask_utils.frPyObjects(seg, info["height"], info["width"]))
                if isinstance(seg, list)
                else seg
            )
            assert torch.equal(m, torch.from_numpy(mask_utils.decode(rle)))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 1e12])
def test_non_finite_coordinates_are_named(shapes, tmp_path, bad):
    data = json.loads(open(shapes["train_json"]).read())
    data["annotations"][3]["segmentation"] = [[1, 1, 20, 1, 20, bad, 1, 20]]
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(DatasetError) as e:
        CocoInstanceDataset(path, shapes["train_dir"])
    assert str(path) in str(e.value) and "annotations[3]" in str(e.value) and "'segmentation'" in str(e.value)


def test_use_categories_relabels_the_records(shapes):
    ds = CocoInstanceDataset(shapes["train_json"], shapes["train_dir"])
    before = [ds[i][1]["labels"].tolist() for i in range(3)]
    cats = [(cid + 100, f"x{cid}") for cid in ds.cat_ids] + [(cid, n) for cid, n in zip(ds.cat_ids, ds.class_names)]
    ds.use_categories(cats)
    after = [ds[i][1]["labels"].tolist() for i in range(3)]
    offset = len(ds.cat_ids) // 2
    assert after == [[v + offset for v in row] for row in before]


def test_records_cache_round_trip(shapes, tmp_path, caplog):
    """A second construction with the same file and arguments maps the cached records: the same
    samples, skip counts and labels; another file, or other arguments, miss the cache; a broken
    entry is parsed again."""
    data = json.loads(open(shapes["train_json"]).read())
    data["annotations"][0]["bbox"] = [0, 0, 0.2, 0.2]  # one counted skip
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    cache = tmp_path / "cache"
    first = CocoInstanceDataset(path, shapes["train_dir"], cache_dir=cache)
    assert not first.cache_hit and len(list(cache.glob("records-*"))) == 1
    with caplog.at_level("WARNING", logger="dynamask.data"):
        second = CocoInstanceDataset(path, shapes["train_dir"], cache_dir=cache)
    assert second.cache_hit and "degenerate_box=1" in caplog.text
    assert second.skip_counts == first.skip_counts and second.cat_ids == first.cat_ids
    assert second.class_names == first.class_names and second.ids == first.ids
    for (ia, ta), (ib, tb) in zip(_samples(first), _samples(second)):
        assert torch.equal(ia, ib)
        for key in ("boxes", "labels", "masks", "area"):
            assert torch.equal(ta[key], tb[key])
    assert isinstance(second.records.coords, np.memmap)
    assert not CocoInstanceDataset(path, shapes["train_dir"], cache_dir=cache, min_box_size=2).cache_hit
    data["annotations"][1]["bbox"][2] += 1
    path.write_text(json.dumps(data))
    assert not CocoInstanceDataset(path, shapes["train_dir"], cache_dir=cache).cache_hit
    for entry in cache.glob("records-*"):
        (entry / "labels.npy").write_bytes(b"broken")
    again = CocoInstanceDataset(path, shapes["train_dir"], cache_dir=cache)
    assert not again.cache_hit and again.skip_counts == first.skip_counts
    assert CocoInstanceDataset(path, shapes["train_dir"], cache_dir=cache).cache_hit  # the broken entry replaced
