"""corral: one-click virtual clusters with leases and secure contextualization."""

__version__ = "0.7.0"
