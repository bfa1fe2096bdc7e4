"""minimaskrcnn: Mask R-CNN from scratch in PyTorch, built stage by stage in notebooks/."""
from minimaskrcnn.model import PRESETS, MaskRCNN, MaskRCNNConfig, build_model
from minimaskrcnn.utils import seed_everything

__version__ = "0.1.0"
__all__ = ["MaskRCNN", "MaskRCNNConfig", "PRESETS", "build_model", "seed_everything", "__version__"]
