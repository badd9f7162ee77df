"""emae: masked image modeling (MAE, EMAE, UM-MAE) for vision transformers."""

__version__ = "0.1.0"

from .config import Config, load_config  # noqa: E402
from .models import MaskedAutoencoder, build_model  # noqa: E402
from .eval.restore import load  # noqa: E402
from .interop.load import read_checkpoint  # noqa: E402

__all__ = ["Config", "MaskedAutoencoder", "__version__", "build_model", "load", "load_config", "read_checkpoint"]
