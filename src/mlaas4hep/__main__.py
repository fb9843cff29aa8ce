"""``python -m mlaas4hep`` (also what ``torchrun --module mlaas4hep train ...`` runs)."""

from mlaas4hep.cli import main

main()
