"""Inference-time alignment: best-of-n (and its exact distribution and KL) and reward-augmented decoding."""
