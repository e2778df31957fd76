"""medmlops: from paper to production for three medical-imaging methods."""

__version__ = "0.1.0"
