"""Command-line name → experiment module, in the order ``rlhflab toy report`` runs them."""

from rlhflab.toy.experiments import (
    annotators,
    beta,
    coverage,
    dense,
    ensemble,
    iterated,
    overopt,
    sft_vs_pg,
    trainers,
)

EXPERIMENTS = {
    "coverage": coverage,
    "beta": beta,
    "overopt": overopt,
    "sft-vs-pg": sft_vs_pg,
    "annotators": annotators,
    "iterated": iterated,
    "trainers": trainers,
    "ensemble": ensemble,
    "dense": dense,
}
