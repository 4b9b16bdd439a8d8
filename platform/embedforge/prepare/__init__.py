"""The prepare stage: raw sources -> unified samples (Parquet) + rejected rows + stats."""

from .config import PrepareConfig
from .stage import run_prepare

__all__ = ["PrepareConfig", "run_prepare"]
