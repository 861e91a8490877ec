"""``python -m lifecycle``: the same command line as the ``lifecycle`` script."""

from lifecycle.cli import main

if __name__ == "__main__":
    main()
