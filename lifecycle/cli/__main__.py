"""``python -m lifecycle.cli``: the console script (the crash supervisor starts commands so)."""

from lifecycle.cli import main

main()
