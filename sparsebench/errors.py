"""Errors a user can fix: the CLI prints them as one line and exits with code 2."""


class UserError(Exception):
    """Bad input (a config, a name, a file). The message is the whole explanation."""


class ConfigError(UserError):
    """An invalid config field; the message names the field."""

    def __init__(self, where: str, field: str, message: str):
        self.where, self.field = where, field
        super().__init__(f"invalid {where} config: {field}: {message}")
