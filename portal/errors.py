"""The error every actions layer raises when it refuses a request."""


class RequestRefused(Exception):
    """A refused request: ``code`` for programs (APIs map it to a status), message for people."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
