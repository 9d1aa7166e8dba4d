"""The built-in generated datasets (no download): motion clips (``clips``), their captions
(``words``), the demo splits (``demo``), AVA-style boxes (``ava``), the transfer target
(``target``) and the compositional split (``compositional``).
"""
