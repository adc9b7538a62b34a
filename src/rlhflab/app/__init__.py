"""The feedback web app: people label samples (pairs, rankings, ratings, critiques) for rlhflab's records."""
