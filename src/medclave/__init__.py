"""Medclave: confidential AI for clinical data."""

__version__ = "0.1.0"
