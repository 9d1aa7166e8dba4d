"""Text: class-name prompt files, templates, label spaces, coarse <-> fine hierarchies and the
prompt-file makers.
"""
