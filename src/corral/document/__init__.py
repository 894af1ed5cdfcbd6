"""Cluster documents: the typed model and the YAML and Nimbus cluster.xml readers."""

from .load import (
    Parsed,
    load_document,
    load_with_warnings,
    name_from_file,
    parse_document,
    parse_with_warnings,
    read_document,
)
from .model import ClusterDocument, NodeGroup, Policy, Requirement, validate_document
from .nimbus import convert_cluster_xml, parse_cluster_xml
from .yaml_loader import parse_yaml

__all__ = [
    "ClusterDocument",
    "NodeGroup",
    "Parsed",
    "Policy",
    "Requirement",
    "convert_cluster_xml",
    "load_document",
    "load_with_warnings",
    "name_from_file",
    "parse_cluster_xml",
    "parse_document",
    "parse_with_warnings",
    "parse_yaml",
    "read_document",
    "validate_document",
]
