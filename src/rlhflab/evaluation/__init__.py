"""Measuring a policy: J under R*, Ĵ under R_phi, KL to the reference, seen vs unseen contexts;
the reward-model report; plots, tables and the self-contained HTML report."""
