"""Subprocess entry for the scale-out tests: ``python tests/_distributed_entry.py KINDS RUN_DIR [field=value ...]``.

Runs the trainer tests' runs (``tests/_train_entry.py``: ``sft``, ``reward``, ``ppo``) and ``dpo``
(the same tiny policy on the 'more a's' pairs), one after another into RUN_DIR/KIND, under
``accelerate launch`` or alone. Each process writes RUN_DIR/KIND/rank-R.json with the bytes of
the trained parameters it holds (its shard under FSDP, everything otherwise), measured when the
optimiser is built, i.e. after sharding.
"""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests import _train_entry  # noqa: E402  (sets the test environment and one thread)


def local_bytes(modules) -> int:
    from torch.distributed.tensor import DTensor

    total = 0
    for module in modules.values():
        for p in module.parameters():
            local = p.to_local() if isinstance(p, DTensor) else p
            total += local.numel() * local.element_size()
    return total


def record_parameter_bytes(run_dir: str) -> None:
    """Wrap the loop's optimiser construction to note this process's parameter bytes."""
    from rlhflab.train import loop

    original = loop.make_optimizer

    def make_optimizer(config, modules, total_steps):
        rank = int(os.environ.get("RANK", "0"))
        path = Path(config.output_dir or run_dir) / f"rank-{rank}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"parameter_bytes": local_bytes(modules)}))
        return original(config, modules, total_steps)

    loop.make_optimizer = make_optimizer


def run_dpo(run_dir: str, overrides: dict) -> None:
    from rlhflab.models import load_policy
    from rlhflab.train.loop import train
    from rlhflab.train.preference import PreferenceAlgorithm, PreferenceConfig, tokenize_pairs

    config = _train_entry._apply(
        PreferenceConfig(
            output_dir=run_dir,
            batch_size=8,
            max_steps=4,
            learning_rate=3e-3,
            progress=False,
            use_chat_template=False,
            kl_coef=0.1,
        ),
        overrides,
    )
    config.validate()
    policy, tokenizer = load_policy("tiny-policy")
    pairs = tokenize_pairs(_train_entry.a_preferences(32), tokenizer, config, use_chat_template=False)
    train(config, PreferenceAlgorithm(config, policy, tokenizer, pairs))


def main(argv) -> None:
    kinds, run_dir, *rest = argv
    record_parameter_bytes(run_dir)
    for kind in kinds.split(","):
        overrides = dict(a.split("=", 1) for a in rest)
        overrides = {k.split(".", 1)[-1]: v for k, v in overrides.items() if "." not in k or k.startswith(kind + ".")}
        target = os.path.join(run_dir, kind)
        if kind == "dpo":
            run_dpo(target, overrides)
        else:
            _train_entry.run(kind, target, overrides)
    import torch

    if torch.distributed.is_initialized():  # leave together: no process exits while its peer still talks to it
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
