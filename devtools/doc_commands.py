"""The shell commands a reader finds in the docs, so a test can run each one (or say why not).

Pure text in, commands out: no files are run here. What counts as a command:

- Every command line of a fenced code block whose info string's first word is `sh`, `bash`,
  `shell` or `console`. A line ending in `\\` continues on the next (joined with one space); a
  whole-line `# comment` is skipped and a trailing ` # comment` (a `#` that starts a word outside
  quotes) is dropped, keeping the command. In `console` blocks only lines starting with `$ ` are
  commands (the `$ ` removed); the other lines are output.
- Every inline code span outside fenced blocks and HTML comments whose text is a command line:
  its first word that is not a `NAME=value` assignment is one of `PROGRAMS` and at least one
  word follows it (`make demo`, `nats pub`, but not `docker-compose` alone), or its first word
  starts with one of `PATH_PREFIXES` (`scripts/docker/images.sh`). A span may run over a line
  break; the break reads as one space. Spans that name an option or a subcommand alone
  (`status --watch`, `dev up`) are prose, not commands.

Marks, HTML comments in the doc (a mark that applies to no command is an error, so a misplaced
one cannot silently fall away):

- `<!-- doc-test: skip: REASON -->`: the commands are not run, for REASON (required).
- `<!-- doc-test: exit N -->`: the commands run and must exit with N.

A mark on lines of its own directly above a fence (no blank line between) applies to every
command of that block. Any other mark applies to the inline commands of the paragraph that holds
it, the mark on the paragraph's last line or on a line of its own right after it. A paragraph is
a run of non-blank lines; a heading, a list item's first line or a fence starts a new one, so a
list item is a paragraph of its own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

__all__ = [
    "DOC_FILES",
    "PATH_PREFIXES",
    "PROGRAMS",
    "SHELL_TAGS",
    "DocCommand",
    "DocMarkError",
    "Mark",
    "doc_commands",
    "extract",
    "is_command_line",
    "parse_mark",
    "strip_comment",
]

DOC_FILES = ("README.md", "docs/operator-guide.md", "docs/events.md")
SHELL_TAGS = frozenset({"sh", "bash", "shell", "console"})
PROGRAMS = frozenset(
    {
        "mlnode-upgrade",
        "make",
        "nats",
        "curl",
        "docker",
        "docker-compose",
        "kubectl",
        "grpcurl",
        "inferenced",
        "python",
        "python3",
        "export",
    }
)
PATH_PREFIXES = ("scripts/", ".venv/bin/", "./")

_FENCE = re.compile(r"^\s*(`{3,}|~{3,})\s*([^\s`]*)")
_MARK = re.compile(r"<!--\s*doc-test\b(.*?)-->")
_COMMENT_OPEN = "<!--"
_COMMENT_CLOSE = "-->"
_NEW_PARAGRAPH = re.compile(r"^\s*(#{1,6}\s|[-*+]\s|\d+[.)]\s)")
_HEADING = re.compile(r"^\s*#{1,6}\s")
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


class DocMarkError(ValueError):
    """A `doc-test` comment that cannot be read, or that applies to no command."""


@dataclass(frozen=True)
class Mark:
    """What a doc says about its commands: not run (`skip` holds why), or run expecting `exit_code`."""

    skip: str | None = None
    exit_code: int = 0


@dataclass(frozen=True)
class DocCommand:
    file: str
    line: int  # 1-based, the line the command (or its span) starts on
    text: str
    source: Literal["block", "inline"]
    mark: Mark | None = None

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


def parse_mark(body: str, where: str) -> Mark:
    """The text after `doc-test` in a mark comment: `: skip: REASON` or `: exit N`."""
    text = body.strip()
    if not text.startswith(":"):
        raise DocMarkError(f"{where}: a doc-test mark reads `doc-test: skip: REASON` or `doc-test: exit N`")
    text = text[1:].strip()
    if text.startswith("skip"):
        reason = text.removeprefix("skip").lstrip().removeprefix(":").strip()
        if not reason:
            raise DocMarkError(f"{where}: `doc-test: skip` needs a reason after `skip:`")
        return Mark(skip=reason)
    exit_code = re.fullmatch(r"exit\s+(\d{1,3})", text)
    if exit_code:
        return Mark(exit_code=int(exit_code.group(1)))
    raise DocMarkError(f"{where}: unknown doc-test mark {text!r} (skip: REASON, or exit N)")


def strip_comment(line: str) -> str:
    """`line` without a trailing shell comment: a `#` starting a word, outside quotes."""
    quote: str | None = None
    escaped = False
    for i, char in enumerate(line):
        if escaped:
            escaped = False
        elif char == "\\" and quote != "'":
            escaped = True
        elif quote:
            if char == quote:
                quote = None
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def is_command_line(text: str) -> bool:
    """Whether an inline span's text is a command line (the module docstring's rule)."""
    words = text.split()
    while words and _ASSIGNMENT.match(words[0]):
        words = words[1:]
    if not words:
        return False
    if words[0].startswith(PATH_PREFIXES):
        return True
    return words[0] in PROGRAMS and len(words) > 1


def _block_commands(lines: list[tuple[int, str]], console: bool) -> list[tuple[int, str]]:
    """(line, command) of one fenced block's body."""
    found: list[tuple[int, str]] = []
    start = 0
    parts: list[str] = []
    for number, raw in lines:
        text = raw.strip()
        if not parts:
            if console:
                if not text.startswith("$ "):
                    continue  # output
                text = text[2:].strip()
            if not text or text.startswith("#"):
                continue
            start = number
        text = strip_comment(text)
        if text.endswith("\\"):
            parts.append(text[:-1].strip())
            continue
        parts.append(text)
        command = " ".join(p for p in parts if p)
        if command:
            found.append((start, command))
        parts = []
    if parts:  # a continuation at the block's end
        found.append((start, " ".join(p for p in parts if p)))
    return found


def _mask_comments(lines: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """The lines with HTML comments blanked (kept as spaces, so offsets hold), across lines."""
    masked: list[tuple[int, str]] = []
    inside = False
    for number, line in lines:
        out: list[str] = []
        i = 0
        while i < len(line):
            if inside:
                end = line.find(_COMMENT_CLOSE, i)
                stop = len(line) if end < 0 else end + len(_COMMENT_CLOSE)
                out.append(" " * (stop - i))
                inside = end < 0
                i = stop
            else:
                begin = line.find(_COMMENT_OPEN, i)
                if begin < 0:
                    out.append(line[i:])
                    break
                out.append(line[i:begin])
                inside = True
                i = begin
        masked.append((number, "".join(out)))
    return masked


def _code_spans(lines: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """(line, text) of the inline code spans of one paragraph, as CommonMark delimits them."""
    joined = "\n".join(text for _, text in lines)
    starts = [0]
    for _, text in lines[:-1]:
        starts.append(starts[-1] + len(text) + 1)
    spans: list[tuple[int, str]] = []
    i = 0
    while i < len(joined):
        if joined[i] != "`":
            i += 1
            continue
        run = len(joined[i:]) - len(joined[i:].lstrip("`"))
        closing = re.compile(rf"(?<!`)`{{{run}}}(?!`)")
        end = closing.search(joined, i + run)
        if end is None:
            i += run  # an unmatched run is literal text
            continue
        content = re.sub(r"\n\s*", " ", joined[i + run : end.start()])
        if len(content) > 2 and content.startswith(" ") and content.endswith(" "):
            content = content[1:-1]
        line_index = max(k for k, s in enumerate(starts) if s <= i)
        spans.append((lines[line_index][0], content))
        i = end.end()
    return spans


def _marks_in(lines: list[tuple[int, str]], file: str) -> list[tuple[int, Mark]]:
    return [
        (number, parse_mark(found.group(1), f"{file}:{number}"))
        for number, line in lines
        for found in _MARK.finditer(line)
    ]


def _only_mark(marks: list[tuple[int, Mark]], file: str) -> Mark | None:
    if len(marks) > 1:
        lines = ", ".join(str(n) for n, _ in marks)
        raise DocMarkError(f"{file}: several doc-test marks for the same commands (lines {lines})")
    return marks[0][1] if marks else None


def _standalone_mark(line: str) -> bool:
    return bool(_MARK.fullmatch(line.strip()))


def extract(markdown: str, file: str) -> list[DocCommand]:
    """Every command of one Markdown document, in order, each with its mark if it has one."""
    lines = list(enumerate(markdown.splitlines(), start=1))
    commands: list[DocCommand] = []
    paragraph: list[tuple[int, str]] = []

    def close_paragraph() -> None:
        if not paragraph:
            return
        found = [
            DocCommand(file, number, text, "inline")
            for number, text in _code_spans(_mask_comments(paragraph))
            if is_command_line(text)
        ]
        mark = _only_mark(_marks_in(paragraph, file), file)
        if mark is not None and not found:
            raise DocMarkError(f"{file}:{paragraph[0][0]}: a doc-test mark in a paragraph with no command")
        commands.extend(replace(c, mark=mark) for c in found)
        paragraph.clear()

    i = 0
    while i < len(lines):
        number, line = lines[i]
        fence = _FENCE.match(line)
        if fence:
            block_marks: list[tuple[int, str]] = []
            while paragraph and _standalone_mark(paragraph[-1][1]):
                block_marks.insert(0, paragraph.pop())
            close_paragraph()
            marker, tag = fence.group(1), fence.group(2).lower()
            body: list[tuple[int, str]] = []
            i += 1
            while i < len(lines):
                closing = lines[i][1].strip()
                if closing.startswith(marker[0] * len(marker)) and not closing.lstrip(marker[0]):
                    break
                body.append(lines[i])
                i += 1
            i += 1  # past the closing fence
            mark = _only_mark(_marks_in(block_marks, file), file)
            found = _block_commands(body, console=tag == "console") if tag in SHELL_TAGS else []
            if mark is not None and not found:
                raise DocMarkError(f"{file}:{number}: a doc-test mark above a block with no command")
            commands.extend(DocCommand(file, n, text, "block", mark) for n, text in found)
            continue
        if not line.strip():
            close_paragraph()
        else:
            if _NEW_PARAGRAPH.match(line):
                close_paragraph()
            paragraph.append((number, line))
            if _HEADING.match(line):
                close_paragraph()  # a heading is a paragraph of one line
        i += 1
    close_paragraph()
    return commands


def doc_commands(root: Path, files: tuple[str, ...] = DOC_FILES) -> list[DocCommand]:
    """The commands of `files` (relative to `root`), file by file in the given order."""
    return [command for rel in files for command in extract((root / rel).read_text(), rel)]
