"""pycocotools' mask API, imported on first use.

Why: the models, the in-memory shapes generator and the benchmarks that time them must import
where pycocotools is not installed (the GPU machines this project is checked on have none);
only COCO file I/O, RLE and AP need it, and they say so when it is missing.
"""

from __future__ import annotations


class _MaskAPI:
    """Stands in for ``pycocotools.mask``; the real module is imported at the first attribute."""

    def __getattr__(self, name: str):
        try:
            from pycocotools import mask
        except ImportError as exc:
            raise ImportError(
                f"pycocotools is needed for COCO masks (pycocotools.mask.{name}); "
                f"install it with `pip install pycocotools`"
            ) from exc
        return getattr(mask, name)


mask_utils = _MaskAPI()
