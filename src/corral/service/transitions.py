"""Moved to corral/transitions.py, below the broker and the service both.

Only the engine still imports these from here; its next change imports them from
corral.transitions, and this module goes.
"""

from corral.transitions import move_cluster, move_node, record

__all__ = ["move_cluster", "move_node", "record"]
