"""Training: the Accelerate loop (``loop``), accelerator and strategy set-up (``accelerator``),
the optimizer's parameter groups and transfer knobs (``optim``), trackers and the
unreadable-video bookkeeping.
"""
