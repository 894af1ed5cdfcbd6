"""The context broker: per-cluster blackboard that turns identical nodes into a cluster."""
