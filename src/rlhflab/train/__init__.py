"""Training: one loop (loop.py) and small per-method adapters."""
