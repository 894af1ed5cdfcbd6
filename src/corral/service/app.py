"""Moved to corral/service/process.py (the module that wires one service process).

Only `corral serve` (cli/serve.py) still imports Service from here; its next change
imports it from corral.service.process, and this module goes.
"""

from corral.service.process import Service

__all__ = ["Service"]
