"""Evaluators and measures on frozen features: classification, localisation (AVA frame-mAP)
and retrieval evaluation, the feature cache, the linear probe and the transferability
measures (LogME, k-NN).
"""
