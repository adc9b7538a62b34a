"""The entry layer: one entry function per ``rlhflab`` command, each taking its config dataclass.

An entry reads what its config names (policy, prompts, data files, reward sources), hands it to the
library below (``train``, ``decoding``, ``evaluation``, ...) and writes the outputs. ``rlhflab.cli``
imports this package; nothing else in ``rlhflab`` does (``tests/test_architecture.py``), as
torchtune's recipes sit over a library that never imports them.
"""
