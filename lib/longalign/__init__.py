"""LongAlign reproduction library: data construction, packing + loss weighting, batching, training, evaluation.

Notebooks in ``notebooks/`` are thin; the logic lives here and is tested in ``tests/``.
"""

__version__ = "0.1.0"
