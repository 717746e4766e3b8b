"""Reading JSONL files line by line, with errors that name the file and the line.

``iter_jsonl`` is the one walker the JSONL readers share (the tokenizer's corpus reader and the
SFT chat reader); each caller checks the shape of its own records and words its own errors.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def iter_jsonl(path: Path, invalid: str = "invalid JSON") -> Iterator[tuple[int, Any]]:
    """Yield ``(line_number, value)`` for each non-blank line of ``path`` (numbers from 1).

    A line that is not JSON raises ``ValueError("{path}:{line}: {invalid} ({reason})")``.
    """
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: {invalid} ({error.msg})") from error
            yield number, value
