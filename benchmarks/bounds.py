"""Why a case misses a target of issue X item 3, as measured: one line per (case, target), quoted
under the table by run.py after what the table itself shows (the work ratio and TRL's share of the
peak, which bound the speed-up). Every line here names the command that measured it; a case with
nothing measured says so rather than guess."""

from __future__ import annotations

# What the bf16 profile of the SFT step showed on this shared 2-CPU machine (load average ~10, three
# other jobs running), measured by
#   BENCH_MIXED_PRECISION=bf16 nice -n 5 .venv/bin/python benchmarks/profile_step.py sft --rows 30
# and by run.py's contention probe (a (8, 128, 576) cast + product: 80 ms at 2 threads against
# 0.12 ms at 1 thread at the same moment).
NOTE = (
    "† Bounded by CPU contention, not by the framework: in the bf16 SFT profile (profile_step.py sft, load ~10) "
    "the matmuls (aten::mm in the top 30 operators) are 19.5% of self CPU time while elementwise ops on one "
    "(8, 128, 576) activation (autocast casts, residual adds, RMSNorm/rotary products) take 33–48 ms a call, "
    "~300× their single-thread cost measured at the same moment, because each 2-thread OpenMP region waits for "
    "a descheduled thread; a quiet machine is needed to measure this target"
)

# (case label, "speed-up" | "peak", precision label) -> the measured reason; a label ending in "*"
# covers every case label it prefixes, "*" alone every case.
MEASURED: dict[tuple[str, str, str], str] = {
    ("*", "peak", "bf16"): "CPU contention, not the framework †",
    ("*", "speed-up", "bf16"): "The step itself is bound by CPU contention †",
}


def why_not_met(case_label: str, kind: str, precision: str, contended: bool = True) -> str:
    """The measured reason ``case_label`` misses its ``kind`` target under ``precision``. The reasons above
    were measured under contention, so they are quoted only for a run whose own contention probe showed it
    (``contended``); a quiet run's misses are its own, not yet profiled."""
    if not contended:
        return "— (not profiled on an uncontended machine; this run's contention probe showed none)"
    if (case_label, kind, precision) in MEASURED:
        return MEASURED[(case_label, kind, precision)]
    for (label, k, p), reason in MEASURED.items():
        if k == kind and p == precision and label.endswith("*") and case_label.startswith(label[:-1]):
            return reason
    return "— (not profiled in this precision)"
