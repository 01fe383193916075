"""Synthetic chest CT phantom families beyond family A (``pipeline.phantom``).

Family B (``make_phantom_b``) is built independently of family A, with its own anatomy,
texture, lesion and scanner models, so that a model trained on one family can be
tested on the other (see ``family_b.py`` for how it is built).
"""

from .family_b import TruthB, build_phantom_b, make_phantom_b, phantom_b_grid

__all__ = ["make_phantom_b", "build_phantom_b", "phantom_b_grid", "TruthB"]
