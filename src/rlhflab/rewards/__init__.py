"""Reward sources: one interface, ``(contexts, outputs) -> Tensor (B,)``, over a trained reward model
R_phi, an oracle R*, a user's function, a judge, an ensemble, reward heads and weighted composites.
``registry.load_reward_source(spec)`` turns a ``--reward`` / ``--oracle`` spec into one."""
