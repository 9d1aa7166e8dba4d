"""Backbones: the interface (``base``), open_clip towers (``open_clip``, ``timm``), Hugging
Face CLIP / SigLIP (``hf_clip``) and text towers (``hf_text``), model-JSON checks
(``model_json``) and the factory choosing among them (``factory``).
"""
