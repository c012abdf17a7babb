"""Sharded evaluation: :func:`~dynamask.engine.evaluate.evaluate` inside a process group of more than
one process (e.g. under ``torchrun``).

Every process prepares the job, runs the model on its share of the images -- whole batches dealt
out in turn (:func:`~dynamask.engine.distributed.shard_positions`), so every forward pass sees the
images it sees in one process -- and sends its detections to rank 0, which puts them back in the
single-process order (``coco_results.json`` and the metrics are a one-process run's), scores them
once and writes the files. Every process returns rank 0's metrics, and a failure on any process
raises on every process, at the same step, so none waits for the others.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from . import distributed as du
from .eval_job import check_image_sizes, prepare_job
from .eval_pass import measure_and_write, run_job_images

__all__ = ["evaluate_sharded", "merge_runs"]

logger = logging.getLogger("dynamask.evaluate")


def evaluate_sharded(
    cfg, weights, model, out_dir, policy, budget, dataset, max_images, device, progress, batch_size, cat_ids
) -> dict[str, Any]:
    """:func:`~dynamask.engine.evaluate.evaluate` inside a process group: this process runs the
    model on its shard (whole batches dealt out in turn,
    :func:`~dynamask.engine.distributed.shard_positions`), rank 0 gathers the detections, puts
    them in the single-process order, computes the metrics and writes the files, and every process
    returns rank 0's metrics. A failure on any process raises on every process (at the same step,
    so none waits for the others)."""
    rank, world = du.get_rank(), du.get_world_size()
    failure: BaseException | None = None
    job: dict[str, Any] = {}
    mine: list[int] = []
    try:
        job = prepare_job(cfg, weights, model, dataset, max_images, device, batch_size, cat_ids)
        mine = [job["indices"][p] for p in du.shard_positions(len(job["indices"]), rank, world, batch_size)]
        check_image_sizes(job["dataset"], mine)  # every image checked once, by the process that loads it
    except Exception as exc:  # noqa: BLE001 - agreed on below, then raised on every process
        failure = exc
    du.agree_on_failure(failure, "evaluate")

    payload: tuple[str | None, dict | None]
    try:
        run = run_job_images(job, mine, policy, budget, progress and rank == 0)
        payload = (None, run)
    except Exception as exc:  # noqa: BLE001
        failure, payload = exc, (f"{type(exc).__name__}: {exc}", None)
    gathered = du.gather_object(payload)
    del payload
    status: tuple[str, Any, Any] = ("ok", None, None)
    if rank == 0:
        try:
            failed = [(r, text) for r, (text, _) in enumerate(gathered) if text is not None]
            if failed:
                status = ("failed", *failed[0])
            else:
                n = len(job["indices"])
                shards = [du.shard_positions(n, r, world, batch_size) for r in range(world)]
                run = merge_runs([part for _, part in gathered], shards, n)
                del gathered
                metrics = measure_and_write(job, run, out_dir, processes=world, progress=progress)
                logger.info(
                    "evaluated %d image(s) on %d processes (%s image(s) each); images_per_second: all "
                    "images over the slowest process's forward time",
                    n,
                    world,
                    "/".join(str(len(s)) for s in shards),
                )
                status = ("ok", None, metrics)
        except Exception as exc:  # noqa: BLE001
            failure = failure or exc
            status = ("failed", 0, f"{type(exc).__name__}: {exc}")
    return du.settle_on_rank0_status(status, failure, "evaluate")[2]


def merge_runs(runs: Sequence[dict[str, Any]], shards: Sequence[Sequence[int]], n: int) -> dict[str, Any]:
    """The processes' runs as one, images (and their detections) in the single-process order;
    ``forward_s`` is the slowest process's."""
    per_position: list[Any] = [None] * n
    for run, shard in zip(runs, shards):
        k = 0
        for position, image_id, count in zip(shard, run["image_ids"], run["counts"]):
            per_position[position] = (image_id, run["results"][k : k + count])
            k += count
    results = [r for _, rs in per_position for r in rs]
    image_ids = [image_id for image_id, _ in per_position]
    sizes: dict[int, tuple[int, int]] = {}
    for run in runs:
        sizes.update(run["image_sizes"])
    return {
        "results": results,
        "image_ids": image_ids,
        "image_sizes": {i: sizes[i] for i in image_ids},
        "counts": [len(rs) for _, rs in per_position],
        "forward_s": max(run["forward_s"] for run in runs),
        "policy": runs[0]["policy"],
        "budget": runs[0]["budget"],
    }
