"""`python -m sparsebench` is the `sparsebench` command."""

from sparsebench import interrupts

interrupts.install()  # before the CLI's imports: a Ctrl-C from the first moment is recorded (sparsebench.interrupts)

from sparsebench.cli import main  # noqa: E402

main()
