"""``python -m gmia ...`` runs the same CLI as the ``gmia`` command (useful where the package is on PYTHONPATH
but not installed, e.g. a bare GPU machine)."""
from gmia.cli import main

if __name__ == "__main__":
    main()
