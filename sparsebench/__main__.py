"""`python -m sparsebench` is the `sparsebench` command."""

from sparsebench.cli import main

main()
