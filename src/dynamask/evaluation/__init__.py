"""Evaluation: COCO box, mask and boundary AP of a result set, and the results it reads.

* :mod:`.results` -- detections as flat arrays (:class:`~.results.ResultSet`);
* :mod:`.results_file` -- a COCO results file read and checked into one, entry by entry;
* :mod:`.ground_truth` -- the ground truth as flat arrays, read once for all IoU types;
* :mod:`.coco_eval` -- the APs (:func:`~.coco_eval.compute_coco_metrics`), exact to pycocotools;
* :mod:`.image_ious`, :mod:`.boundary`, :mod:`.rle` -- the per-image IoUs, boundary bands, RLE reading.

Nothing here imports torch: scoring a results file (``dynamask evaluate --results``) does not
need it. The model loop that produces results stays in :mod:`dynamask.engine.evaluate`.
"""
