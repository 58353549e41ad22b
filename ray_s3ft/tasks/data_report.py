"""What reading a run's data gave, per file (``data_report.json``): rows read, used and bad
with each bad row's problem, and the rules that make a file a ``DataError`` (no rows, no usable
row, more bad rows than ``data.max_bad_fraction``).

The token budgets are rules of a row too: a prompt longer than ``data.max_prompt_tokens`` (chat
formatted) or, in the training split, a gold answer longer than ``data.max_response_tokens``
(with its end-of-sequence token) is a bad row, counted per budget under ``too_long``. A row that
does not fit is never cut to fit: a cut prompt loses its chat header, and the model would train
on a prompt it is never asked."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ray_s3ft.tasks.readers import RowError
from ray_s3ft.tasks.types import DataError

log = logging.getLogger(__name__)


REPORT_NAME = "data_report.json"
MAX_LISTED_PROBLEMS = 1000  # per file in data_report.json; the rest are counted
_QUOTED = 3  # problems quoted in an error message or a warning
TOO_LONG = ("prompt", "gold")  # the parts of a row held to a token budget


class TooLong(RowError):
    """A row whose ``part`` (one of TOO_LONG) is longer than its token budget."""

    def __init__(self, part: str, message: str) -> None:
        super().__init__(message)
        self.part = part


@dataclass
class FileReport:
    """What reading one file gave: rows read, rows used, and each bad row's problem."""

    name: str
    rows: int = 0
    used: int = 0
    complete: bool = True  # False when reading stopped after `limit` usable rows
    problems: list[str] = field(default_factory=list)
    too_long: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TOO_LONG, 0))

    def add_problem(self, where: str, error: RowError) -> None:
        self.problems.append(f"{where}: {error}")
        if isinstance(error, TooLong):
            self.too_long[error.part] += 1

    @property
    def bad(self) -> int:
        return len(self.problems)

    @property
    def bad_fraction(self) -> float:
        return self.bad / self.rows if self.rows else 0.0

    def to_dict(self) -> dict:
        return {
            "rows": self.rows,
            "used": self.used,
            "bad": self.bad,
            "bad_fraction": self.bad_fraction,
            "complete": self.complete,
            "too_long": dict(self.too_long),  # of the bad rows, those over a token budget
            "problems": self.problems[:MAX_LISTED_PROBLEMS],
            "problems_not_listed": max(0, self.bad - MAX_LISTED_PROBLEMS),
        }


@dataclass
class DataReport:
    """The rules a run's rows are held to, and what each file read gave (``data_report.json``).

    ``count_tokens(prompt)`` is the prompt's length as the engines see it (``prompt_token_counter``);
    without it prompt lengths are not checked. ``count_response_tokens(text)`` is a response's
    length in an SFT row (``response_token_counter``); without it gold answers are not checked.
    ``warn`` logs each file's bad rows, for callers that do not write the report themselves.
    """

    max_bad_fraction: float = 1.0
    max_prompt_tokens: int | None = None
    count_tokens: Callable[[str], int] | None = None
    warn: bool = False
    files: dict[str, FileReport] = field(default_factory=dict)
    max_response_tokens: int | None = None
    count_response_tokens: Callable[[str], int] | None = None

    @classmethod
    def for_config(
        cls,
        data,
        count_tokens: Callable[[str], int] | None = None,
        warn: bool = False,
        count_response_tokens: Callable[[str], int] | None = None,
    ) -> DataReport:
        """The rules of a ``DataConfig``."""
        return cls(
            data.max_bad_fraction, data.max_prompt_tokens, count_tokens, warn,
            max_response_tokens=data.max_response_tokens,
            count_response_tokens=count_response_tokens,
        )  # fmt: skip

    def check_prompt(self, prompt: str) -> None:
        if self.count_tokens is None or self.max_prompt_tokens is None:
            return
        n = self.count_tokens(prompt)
        if n > self.max_prompt_tokens:
            raise TooLong(
                "prompt", f"prompt is {n} tokens > data.max_prompt_tokens {self.max_prompt_tokens}"
            )

    def check_gold(self, gold: str) -> None:
        """A gold answer an SFT step would train on must fit ``data.max_response_tokens``."""
        if self.count_response_tokens is None or self.max_response_tokens is None:
            return
        n = self.count_response_tokens(gold)
        if n > self.max_response_tokens:
            raise TooLong(
                "gold",
                f"gold answer is {n} tokens with the end-of-sequence token > "
                f"data.max_response_tokens {self.max_response_tokens}",
            )

    def add(self, file: FileReport, task: str) -> None:
        """Record a file's counts; DataError if it is empty, unusable or too broken."""
        # a file read twice (train and eval) keeps its longer read: both start at its first row
        if file.name not in self.files or file.rows >= self.files[file.name].rows:
            self.files[file.name] = file
        first = "; ".join(file.problems[:_QUOTED])
        more = f"; and {file.bad - _QUOTED:,} more" if file.bad > _QUOTED else ""
        if self.warn and file.bad:
            log.warning(
                "%s: skipped %d bad row(s) of %d: %s%s", file.name, file.bad, file.rows, first, more
            )
        if not file.rows:
            raise DataError(f"{file.name}: empty (no data rows)")
        if not file.used:
            raise DataError(f"{file.name}: no usable {task} rows ({file.bad:,} bad: {first}{more})")
        if file.bad_fraction > self.max_bad_fraction:
            raise DataError(
                f"{file.name}: {file.bad:,} of {file.rows:,} rows are bad "
                f"({file.bad_fraction:.2%} > data.max_bad_fraction {self.max_bad_fraction:g}): "
                f"{first}{more}"
            )

    def to_dict(self) -> dict:
        return {
            "files": {name: f.to_dict() for name, f in self.files.items()},
            "max_bad_fraction": self.max_bad_fraction,
            # null when prompt lengths / gold answers' lengths were not checked
            "max_prompt_tokens": self.max_prompt_tokens if self.count_tokens else None,
            "max_response_tokens": (
                self.max_response_tokens if self.count_response_tokens else None
            ),
        }

    def write(self, run_dir: str | os.PathLike) -> Path:
        """``run_dir/data_report.json`` (atomic); returns its path."""
        path = Path(run_dir) / REPORT_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        os.replace(tmp, path)
        return path

    def summary(self, path: str | os.PathLike) -> list[str]:
        """One console line per file, pointing at the written report where rows were skipped."""
        out = []
        for f in self.files.values():
            line = f"data: {f.name}: {f.rows:,} rows read, {f.used:,} used, "
            long = ", ".join(f"{n:,} {part} too long" for part, n in f.too_long.items() if n)
            bad = f"{f.bad:,} bad skipped ({long + '; ' if long else ''}see {path})"
            out.append(line + (bad if f.bad else "none bad"))
        return out


def rows_too_long(run_dir: str | os.PathLike) -> dict[str, int]:
    """Rows skipped for a token budget, by part, over every file of ``run_dir``'s report
    (the run summary's ``data_too_long``); zeros when there is no report."""
    path = Path(run_dir) / REPORT_NAME
    files = json.loads(path.read_text())["files"] if path.exists() else {}
    return {
        part: sum(f.get("too_long", {}).get(part, 0) for f in files.values()) for part in TOO_LONG
    }


def prompt_token_counter(tokenizer) -> Callable[[str], int]:
    """A prompt's token count as the rollout engines see it: chat-formatted, then tokenized
    (``RolloutWorker.encode_prompts``)."""
    from ray_s3ft.model.encoding import render_prompt

    def count(prompt: str) -> int:
        return len(tokenizer(render_prompt(tokenizer, prompt), add_special_tokens=False).input_ids)

    return count


def response_token_counter(tokenizer) -> Callable[[str], int]:
    """A response's token count in an SFT row (``encode_sft``): its own tokens and the closing
    end-of-sequence token."""

    def count(response: str) -> int:
        return len(tokenizer(response, add_special_tokens=False).input_ids) + 1

    return count
