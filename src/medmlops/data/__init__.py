"""Data: readers for the public formats, simulators, MONAI preprocessing and caching, DVC versioning."""
