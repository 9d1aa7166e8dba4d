"""What users run on models and runs: evaluate a run, zero-shot, few-shot, predict, sweeps and
comparisons, transfer advice.
"""
