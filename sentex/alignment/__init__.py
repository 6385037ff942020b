"""Stage 4, alignment: preference pairs, DPO losses, the frozen reference, DPO modules, ``sentex align``."""
