"""Helpers below everything else: files written atomically and read with clear errors,
statistics, shipped resources, progress lines, process-group helpers.
"""
