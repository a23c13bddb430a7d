"""Run the clawvm command line from a checkout: ``python cli.py --help``."""

from clawvm_store.cli import main

if __name__ == "__main__":
    main()
