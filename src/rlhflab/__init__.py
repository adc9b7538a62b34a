"""rlhflab: the RLHF workflow of "RLHF Deciphered" (Chaudhari et al.), measured against an oracle.

Equation numbers in docstrings refer to that paper (``shared/seeds/000_ea104b0708417c68.txt``).
"""

__version__ = "0.1.0"

from rlhflab.errors import ConfigError, DataError, RlhflabError, TrainingError

__all__ = ["ConfigError", "DataError", "RlhflabError", "TrainingError", "__version__"]
