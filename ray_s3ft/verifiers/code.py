"""Reading the program out of a model's response (then run in the sandbox, ``sandbox.py``)."""

from __future__ import annotations

import re

_FENCED = re.compile(r"```(?:python|py)?\s*\n(.*?)```", re.DOTALL)
_BEGIN_DONE = re.compile(r"\[\[BEGIN\]\](.*?)(?:\[\[DONE\]\]|$)", re.DOTALL)


def extract_code(response: str) -> str:
    """The program in a response: between S3FT's MBPP markers ``[[BEGIN]]``/``[[DONE]]``, else
    the first fenced block, else the whole response."""
    for pattern in (_BEGIN_DONE, _FENCED):
        m = pattern.search(response)
        if m:
            return m.group(1).strip("\n")
    return response
