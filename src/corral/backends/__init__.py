"""Backends turn "boot this image with this user-data on this host" into a real machine."""
