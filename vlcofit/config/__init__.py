"""Configs: the schema (dataclasses, each choice a ``Literal``, defaults), the checks (ranges,
choices, cross-field rules) and loading (YAML, ``--set``, which file or flag set each value).
"""
