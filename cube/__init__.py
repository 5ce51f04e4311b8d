"""Cube: a small container orchestrator for a LAN of Linux machines and Raspberry Pis, shipped as one file."""

__version__ = "0.1.0"
