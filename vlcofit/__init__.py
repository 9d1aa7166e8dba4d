"""vlcofit: co-finetune CLIP video encoders on classification and localisation datasets."""
__version__ = "0.1.0"
