"""Evaluation: generation with middle truncation, needle-in-a-haystack, learning curves, judges and benchmarks.

Submodules are imported explicitly (``from longalign.eval import generate``) so that importing the
package stays cheap and one broken optional module never blocks the others.
"""
