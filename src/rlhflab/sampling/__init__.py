"""The hot path: sampling completions (the generation engine) and completion log-probabilities."""
