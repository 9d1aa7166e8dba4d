"""Run folders: checkpoints, the resume rules, the records (run.json, metrics.jsonl, curves) and
a finished run's model rebuilt.
"""
