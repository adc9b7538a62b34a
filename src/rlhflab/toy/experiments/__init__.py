"""The paper's analysis (Sections 5, 6.2, 6.3, 7.5–7.7) run as exact experiments on the toy MDP.

One module per experiment. Each has ``run(run_dir, seed=0, ...)``, which writes ``<name>.json`` and
``<name>.png`` into ``run_dir`` and returns the JSON payload, and ``headline(result)``, the line of
numbers ``rlhflab toy`` prints and ``summary.md`` lists. ``registry.EXPERIMENTS`` maps each
command-line name to its module, in the order ``rlhflab toy report`` runs them (:mod:`.report`). What the
experiments share (the lab instance, simulated feedback, fitted reward models) is in :mod:`.common`.
"""
