"""Shim for tools that still call setup.py; the package is described in pyproject.toml."""

import setuptools

setuptools.setup()
