"""User-facing errors. The CLI prints each as a single line and exits with status 2."""


class RlhflabError(Exception):
    """An error caused by the user's input or configuration, not by a bug in rlhflab."""


class DataError(RlhflabError):
    """Malformed data: the message names the file, the line (or row) and the field."""

    def __init__(self, source: str, line: int | None, field: str | None, problem: str):
        where = str(source) + (f":{line}" if line is not None else "")
        what = f"field '{field}': " if field else ""
        super().__init__(f"{where}: {what}{problem}")
        self.source, self.line, self.field, self.problem = source, line, field, problem


class ConfigError(RlhflabError):
    """An invalid option, configuration file or path."""


class TrainingError(RlhflabError):
    """A run that cannot continue, e.g. a NaN/inf loss or reward."""
