"""dialsum: fine-tune, generate, score and compare Korean dialogue summarizers."""

from dialsum.errors import ConfigError, DataError, DialsumError, RunDirError

__version__ = "0.1.0"
__all__ = ["ConfigError", "DataError", "DialsumError", "RunDirError", "__version__"]
