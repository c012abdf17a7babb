"""dynamask: instance segmentation with dynamic mask resolution (DynaMask, CVPR 2023) on torchvision."""

__version__ = "0.1.0"

__all__ = ["Predictor", "__version__"]


def __getattr__(name):
    # Imported lazily so that `import dynamask` (and the CLI's argument checks) stay fast.
    if name == "Predictor":
        from .predictor import Predictor

        return Predictor
    raise AttributeError(f"module 'dynamask' has no attribute {name!r}")
