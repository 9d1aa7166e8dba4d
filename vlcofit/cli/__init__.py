"""The ``vlcofit`` command: argument parsing and one function per command (``main``), the
transfer and tool commands, the built-in demos and ``doctor``.
"""
from .main import main

__all__ = ["main"]
