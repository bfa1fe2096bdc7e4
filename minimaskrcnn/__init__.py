"""minimaskrcnn: Mask R-CNN from scratch in PyTorch, built stage by stage in notebooks/."""
from minimaskrcnn.utils import seed_everything

__version__ = "0.1.0"
__all__ = ["seed_everything", "__version__"]
