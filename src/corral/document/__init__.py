"""Cluster documents: the typed model and the YAML and Nimbus cluster.xml readers."""

from .load import load_document, parse_document, read_document
from .model import ClusterDocument, NodeGroup, Policy, Requirement, validate_document
from .nimbus import parse_cluster_xml
from .yaml_loader import parse_yaml

__all__ = [
    "ClusterDocument",
    "NodeGroup",
    "Policy",
    "Requirement",
    "load_document",
    "parse_cluster_xml",
    "parse_document",
    "parse_yaml",
    "read_document",
    "validate_document",
]
