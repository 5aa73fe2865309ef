"""Errors a user can fix: the CLI prints them as one line and exits with code 2."""


class UserError(Exception):
    """Bad input (a config, a name, a file). The message is the whole explanation."""


class ConfigError(UserError):
    """An invalid config field; the message names the field."""

    def __init__(self, where: str, field: str, message: str):
        self.where, self.field, self.detail = where, field, message
        super().__init__(f"invalid {where} config: {field}: {message}")

    def __reduce__(self) -> tuple:  # rebuilt from its three arguments when it crosses a process boundary
        return type(self), (self.where, self.field, self.detail)


def format_warning_line(message: object, category: object = None, filename: str = "", lineno: int = 0,
                        file: object = None, line: object = None) -> None:
    """`warnings.showwarning` for processes sparsebench owns: one line, `warning: ...`, control characters
    made visible (a message may quote a record's or a plugin's text)."""
    import sys

    from sparsebench.printable import visible

    print(f"warning: {visible(message)}", file=sys.stderr)


def one_line_warnings() -> None:
    """Print every warning of this process as one `warning: ...` line (the CLI and its worker processes)."""
    import warnings

    warnings.showwarning = format_warning_line
