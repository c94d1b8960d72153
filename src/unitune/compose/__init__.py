"""Module arithmetic: expressions over runs (``expr``), the rules that combine their weights
(``arithmetic``), and ``unitune compose`` with parameter sweeps (``compose``).

The names of the combination rules live here so the command line can offer them without
importing torch."""

COMBINES = ("paper", "exact", "ties", "dare_linear", "dare_ties", "magnitude_prune")
PRUNING = COMBINES[2:]  # PEFT's rules, which take a density
