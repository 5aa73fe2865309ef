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
