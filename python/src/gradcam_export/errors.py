"""The one error the exporter raises: its message says what is wrong and what to do."""


class ExportError(Exception):
    """The model, a target layer or an argument cannot be exported as asked."""
