"""Text for one line: an error, a reason, a message from a library, as imgvec prints and stores it."""

LIMIT = 160  # characters of one error in an output's row, a table's cell or a line on the terminal


def one_line(text, limit: int = LIMIT) -> str:
    """`text` (or an exception's message) with its whitespace runs made single spaces, cut to `limit`."""
    return " ".join(str(text).split())[:limit]
