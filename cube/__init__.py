"""Cube: a small container orchestrator for a LAN of Linux machines and Raspberry Pis, shipped as one file."""

__version__ = "0.1.0"
# The level of the HTTP API between the manager and its workers. A change a peer one level apart cannot follow raises
# it; `cube upgrade` refuses a pyz more than one level from the manager's (cube.ops.upgrade.skew).
API_VERSION = 1
