"""Training of the bundled default model (weights/default); not part of the installed package.

Run from a clone: `python -m training --out runs/default` (see training/README.md).
"""
