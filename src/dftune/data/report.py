"""The validation report: per-file counts, every rejected record with its location and reason, and its JSON form.

JSON schema: {"total", "kept", "rejected", "files": {path: {"total", "kept", "rejected", "reasons"}},
"errors": [{"file", "line" (1-based) or "index" (0-based), "reason", "detail"?}],
"lengths": {source: {"over_length", "split", "samples", "tokens_cut", "chars_clipped"}},
"empty_replies": [{"file", "line" or "index", "reason": "empty reply", "detail": "message N"}]} (lengths: what
max_length did to the kept records of each source that had records over it, see `dftune.data.lengths`; absent
when none had. empty_replies: every empty or whitespace-only assistant reply, which trains only the end of turn; the
record is kept; absent when there is none).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dftune.data.readers import Location
from dftune.outputs import write_text

EMPTY_REPLY = "empty reply"
REPORT_FILE = "data_report.json"
"""The data report's name in a run's output_dir (and `dftune data check`'s default --report)."""


@dataclass(frozen=True)
class RecordIssue:
    """One rejected record: where it is, a fixed `reason` category, and optional free-text `detail`."""

    location: Location
    reason: str
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        where = {"line": self.location.line} if self.location.line is not None else {"index": self.location.index}
        out: dict[str, Any] = {"file": self.location.file, **where, "reason": self.reason}
        if self.detail:
            out["detail"] = self.detail
        return out

    def __str__(self) -> str:
        return f"{self.location}: {self.reason}" + (f" ({self.detail})" if self.detail else "")


@dataclass
class ValidationReport:
    """Counts per file (`totals`) and the rejected records; kept = total - rejected, so nothing goes uncounted."""

    totals: dict[str, int] = field(default_factory=dict)
    errors: list[RecordIssue] = field(default_factory=list)
    lengths: dict[str, Counter[str]] = field(default_factory=dict)
    """Per source name: records over max_length, records split into several samples, samples made, tokens cut."""
    empty_replies: list[RecordIssue] = field(default_factory=list)
    """Each empty or whitespace-only assistant reply of a kept-so-far record (it is trained: only its end of turn)."""

    def note_empty_reply(self, location: Location, message: int) -> None:
        self.empty_replies.append(RecordIssue(location, EMPTY_REPLY, f"message {message}"))

    def count_lengths(self, source: str, **counts: int) -> None:
        self.lengths.setdefault(source, Counter()).update(counts)

    def over_length(self) -> dict[str, dict[str, int]]:
        """The length counts of the sources that had records over max_length (what the JSON report lists)."""
        keys = ("over_length", "split", "samples", "tokens_cut", "chars_clipped")
        return {s: {k: c[k] for k in keys} for s, c in self.lengths.items() if c["over_length"]}

    def add_file(self, file: str, total: int) -> None:
        self.totals[file] = self.totals.get(file, 0) + total

    def reject(self, location: Location, reason: str, detail: str = "") -> None:
        self.errors.append(RecordIssue(location, reason, detail))

    def merge(self, other: ValidationReport) -> None:
        for file, total in other.totals.items():
            self.add_file(file, total)
        self.errors.extend(other.errors)
        self.empty_replies.extend(other.empty_replies)
        for source, counts in other.lengths.items():
            self.count_lengths(source, **counts)

    @property
    def total(self) -> int:
        return sum(self.totals.values())

    @property
    def rejected(self) -> int:
        return len(self.errors)

    @property
    def kept(self) -> int:
        return self.total - self.rejected

    def reasons(self, file: str) -> Counter[str]:
        return Counter(issue.reason for issue in self.errors if issue.location.file == file)

    def sorted_errors(self, issues: list[RecordIssue] | None = None) -> list[RecordIssue]:
        """Errors (or `issues`) in file order, then by position (tokenisation rejects are found after structural
        ones)."""
        issues = self.errors if issues is None else issues
        order = {file: i for i, file in enumerate(self.totals)}

        def key(issue: RecordIssue) -> tuple[int, int]:
            loc = issue.location
            return order.get(loc.file, len(order)), loc.line if loc.line is not None else loc.index or 0

        return sorted(issues, key=key)

    def to_dict(self) -> dict[str, Any]:
        files = {}
        for file, total in self.totals.items():
            reasons = self.reasons(file)
            rejected = sum(reasons.values())
            files[file] = {"total": total, "kept": total - rejected, "rejected": rejected, "reasons": dict(reasons)}
        return {
            "total": self.total,
            "kept": self.kept,
            "rejected": self.rejected,
            "files": files,
            "errors": [issue.to_dict() for issue in self.sorted_errors()],
            **({"lengths": self.over_length()} if self.over_length() else {}),
            **({"empty_replies": [i.to_dict() for i in self.sorted_errors(self.empty_replies)]}
               if self.empty_replies else {}),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ValidationReport:
        report = cls({file: counts["total"] for file, counts in data["files"].items()})
        for kind, issues in (("errors", report.errors), ("empty_replies", report.empty_replies)):
            for err in data.get(kind, []):
                location = Location(err["file"], line=err.get("line"), index=err.get("index"))
                issues.append(RecordIssue(location, err["reason"], err.get("detail", "")))
        for source, counts in data.get("lengths", {}).items():
            report.count_lengths(source, **counts)
        return report

    def save(self, path: str | Path) -> Path:
        return write_text(path, json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n")

    def format_table(self) -> str:
        """A markdown table: one row per file with its counts and rejection reasons."""
        rows = ["| file | total | kept | rejected | reasons |", "|---|---:|---:|---:|---|"]
        for file, total in self.totals.items():
            reasons = self.reasons(file)
            rejected = sum(reasons.values())
            why = ", ".join(f"{reason}: {n}" for reason, n in reasons.most_common()) or "-"
            rows.append(f"| {file} | {total} | {total - rejected} | {rejected} | {why} |")
        rows.append(f"| **all** | {self.total} | {self.kept} | {self.rejected} | |")
        return "\n".join(rows)

    def format_lengths(self) -> str:
        """One line per source that had records over max_length: how many, split into how many samples, cut."""
        return "\n".join(
            f"{source}: {c['over_length']} records over max_length, {c['split']} split, {c['samples']} samples, "
            f"{c['tokens_cut']} tokens cut"
            + (f", {c['chars_clipped']} characters clipped" if c["chars_clipped"] else "")
            for source, c in self.lengths.items() if c["over_length"]
        )

    def format_empty_replies(self, limit: int = 5) -> str:
        """One line: how many replies are empty or whitespace only, and where the first `limit` are ("" if none)."""
        issues = self.sorted_errors(self.empty_replies)
        if not issues:
            return ""
        where = ", ".join(f"{i.location} ({i.detail})" for i in issues[:limit])
        more = f" and {len(issues) - limit} more" if len(issues) > limit else ""
        return (f"{len(issues)} empty or whitespace-only assistant replies (each trains only its end of turn; fill "
                f"or drop them): {where}{more}")

    def format_errors(self, limit: int = 20, full_report: str | Path | None = None) -> str:
        """The first `limit` bad records, one per line, then how many more and where the full list is."""
        issues = self.sorted_errors()
        lines = [f"  {issue}" for issue in issues[:limit]]
        if len(issues) > limit:
            lines.append(f"  ... and {len(issues) - limit} more")
        if full_report is not None:
            lines.append(f"full report: {full_report}")
        return "\n".join(lines)
