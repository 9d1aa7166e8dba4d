"""Test setup: no network, no pretrained weights, tiny models only."""
import os

# Must be set before huggingface_hub is imported: otherwise each missing hub file costs ~20 s.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "2")
