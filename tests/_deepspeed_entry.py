"""Subprocess entry for the DeepSpeed tests: ``python tests/_deepspeed_entry.py KINDS RUN_DIR [field=value ...]``.

The runs of ``tests/_distributed_entry.py``, except that each process's RUN_DIR/KIND/rank-R.json
holds the bytes of the trained parameters it keeps *after* ``accelerator.prepare`` (DeepSpeed
partitions the weights inside ``prepare``, not before the optimiser is built): its ZeRO-3
partition (``ds_tensor``), else the whole tensor.
"""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests import _distributed_entry  # noqa: E402  (sets the test environment and one thread)


def kept_bytes(module) -> int:
    total = 0
    for p in module.parameters():
        local = getattr(p, "ds_tensor", p)  # ZeRO-3: this process's partition; p itself is empty
        total += local.numel() * local.element_size()
    return total


def record_prepared_bytes(run_dir: str) -> None:
    """Note the run directory when the loop builds its optimiser, and this process's parameter
    bytes when ``accelerator.prepare`` returns the engine."""
    import accelerate
    from torch import nn

    from rlhflab.train import loop

    current = {"dir": Path(run_dir)}
    make_optimizer, prepare = loop.make_optimizer, accelerate.Accelerator.prepare

    def noting_make_optimizer(config, modules, total_steps):
        current["dir"] = Path(config.output_dir or run_dir)
        return make_optimizer(config, modules, total_steps)

    def measuring_prepare(self, *args, **kwargs):
        prepared = prepare(self, *args, **kwargs)
        outputs = prepared if isinstance(prepared, (list, tuple)) else [prepared]
        models = [getattr(m, "module", m) for m in outputs if isinstance(m, nn.Module)]
        if models:
            rank = int(os.environ.get("RANK", "0"))
            path = current["dir"] / f"rank-{rank}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"parameter_bytes": sum(kept_bytes(m) for m in models)}))
        return prepared

    loop.make_optimizer = noting_make_optimizer
    accelerate.Accelerator.prepare = measuring_prepare


if __name__ == "__main__":
    _distributed_entry.record_parameter_bytes = record_prepared_bytes
    _distributed_entry.main(sys.argv[1:])
