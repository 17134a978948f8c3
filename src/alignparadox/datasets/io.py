"""Strict reading of the published files: every way a file can be wrong is one clear UserError."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path

from rich.console import Console
from rich.progress import track

from alignparadox.errors import UserError

LARGE_FILE_CHARS = 20_000_000  # show progress while parsing files this large

# The in-the-wild jailbreak prompts reach 55k characters; csv's default cap is 131072.
csv.field_size_limit(max(csv.field_size_limit(), 1 << 24))


def read_text(path: Path) -> str:
    """The file's text, strictly UTF-8 (a byte-order mark is allowed and dropped)."""
    if not path.is_file():
        raise UserError(f"{path} does not exist or is not a file.")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise UserError(
            f"{path} is not valid UTF-8 (byte 0x{data[error.start]:02x} at offset {error.start})."
        ) from None
    if not text.strip():
        raise UserError(f"{path} is empty.")
    return text


def read_table(
    path: Path, required: Iterable[str], *, delimiter: str = ",", non_empty: Iterable[str] = ()
) -> list[dict[str, str]]:
    """Rows of a CSV/TSV file as dicts keyed by lower-cased, stripped column names.

    `required` columns must be in the header (compared case-insensitively, since copies of the
    same set differ in case); `non_empty` columns must have a value in every row.
    """
    text = read_text(path)
    kind = "TSV" if delimiter == "\t" else "CSV"
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = [column.strip().lower() for column in next(reader)]
        lines: Iterable[list[str]] = reader
        if len(text) > LARGE_FILE_CHARS:  # e.g. WildJailbreak train, 262k rows
            lines = track(
                reader, f"reading {path.name}", console=Console(stderr=True), transient=True
            )
        rows = []
        for row in lines:
            if not any(cell.strip() for cell in row):
                continue
            if any(cell.strip() for cell in row[len(header):]):
                # Mostly an unquoted delimiter inside a text: dropping the rest would cut it.
                raise UserError(
                    f"{path} data row {len(rows) + 1} (line {reader.line_num}) has "
                    f"{len(row)} fields but the header has {len(header)}; quote any text "
                    f"that holds a {'tab' if kind == 'TSV' else 'comma'}.")
            rows.append(row)
    except csv.Error as error:
        raise UserError(f"{path} is not a valid {kind} file ({error}).") from None
    missing = [column for column in required if column not in header]
    if missing:
        raise UserError(
            f"{path} is missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
            f"(its header is: {', '.join(header) or 'empty'})."
        )
    if not rows:
        raise UserError(f"{path} has a header but no rows.")
    records = []
    for number, row in enumerate(rows, start=1):
        record = dict(zip(header, row + [""] * (len(header) - len(row)), strict=False))
        for column in non_empty:
            if not record[column].strip():
                raise UserError(f"{path} has no {column!r} value in data row {number}.")
        records.append(record)
    return records


def read_jsonl(path: Path, required: Iterable[str]) -> list[dict[str, object]]:
    """Objects of a JSON-lines file, each with the `required` keys."""
    text = read_text(path)
    required = list(required)
    records = []
    # "\n" only: str.splitlines would also split at a raw U+2028 inside a JSON string.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise UserError(f"{path} line {number} is not valid JSON ({error.msg}).") from None
        if not isinstance(record, dict):
            raise UserError(f"{path} line {number} is not a JSON object.")
        missing = [key for key in required if key not in record]
        if missing:
            raise UserError(f"{path} line {number} is missing {', '.join(missing)}.")
        records.append(record)
    return records


def is_url(location: str | os.PathLike[str]) -> bool:
    return isinstance(location, str) and location.startswith(("https://", "http://"))


class Unreachable(UserError):
    """The download server could not be reached at all (offline, DNS, refused connection)."""


def cache_root() -> Path:
    """The toolkit's cache: $ALIGNPARADOX_CACHE, else ~/.cache/alignparadox."""
    cache = os.environ.get("ALIGNPARADOX_CACHE") or Path.home() / ".cache" / "alignparadox"
    return Path(cache).expanduser()


def cache_dir() -> Path:
    """Where downloads of URLs are kept."""
    return cache_root() / "datasets"


def download(url: str, target: Path, *, timeout: float = 60.0,
             check: Callable[[Path], None] | None = None, hint: str = "") -> Path:
    """Stream `url` to `target` through a temporary file that must be non-empty and pass
    `check` (e.g. parse with its loader) before it is renamed into place, so a failed or
    interrupted download leaves nothing behind. A Hugging Face token in HF_TOKEN is sent to
    huggingface.co (WildJailbreak is gated there). `hint` ends the sentence of an HTTP error."""
    request = urllib.request.Request(url, headers={"User-Agent": "alignparadox"})
    token = os.environ.get("HF_TOKEN")
    if token and urllib.parse.urlparse(url).netloc.endswith("huggingface.co"):
        request.add_header("Authorization", f"Bearer {token}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.",
                                             suffix=".part")
    except OSError as error:
        raise UserError(f"cannot write {target}: {error.strerror or error}.") from None
    try:
        with os.fdopen(handle, "wb") as file, urllib.request.urlopen(
                request, timeout=timeout) as response:
            shutil.copyfileobj(response, file, 1 << 20)
        if os.path.getsize(temporary) == 0:
            raise UserError(f"{url} sent an empty file.")
        if check is not None:
            check(Path(temporary))
        os.replace(temporary, target)
    except urllib.error.HTTPError as error:
        raise UserError(f"could not download {url}: HTTP {error.code} {error.reason}"
                        f"{hint}.") from None
    except (urllib.error.URLError, TimeoutError, ConnectionError) as error:
        reason = getattr(error, "reason", error)
        raise Unreachable(f"could not reach {urllib.parse.urlparse(url).netloc} to download "
                          f"{url} ({reason}); downloading needs internet.") from None
    except OSError as error:
        raise UserError(f"cannot write {target}: {error.strerror or error}.") from None
    finally:
        Path(temporary).unlink(missing_ok=True)
    return target


def fetch(url: str, *, timeout: float = 60.0) -> Path:
    """Download `url` once into `cache_dir()` and return the cached file.

    Only for machines with internet; nothing in the package calls it unless asked."""
    parsed = urllib.parse.urlparse(url)
    cached = cache_dir() / parsed.netloc / parsed.path.lstrip("/")
    if cached.is_file():
        return cached
    return download(url, cached, timeout=timeout)


def _nearest_folder(path: Path, what: str) -> Path:
    """The closest existing ancestor of `path`, which must be a writable folder."""
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UserError(f"cannot write {what} {path}: {ancestor} is a file, not a folder.")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {what} {path}: folder {ancestor} is not writable.")
    return ancestor


def check_output_file(path: Path, what: str = "output") -> None:
    """Refuse, before any work is done, an output file that cannot be written (a folder, a
    path under a file, a read-only folder): one sentence instead of a traceback at the end."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"cannot write {what} {path}: it is a folder; give a file name.")
    if path.exists() and not os.access(path, os.W_OK):
        raise UserError(f"cannot write {what} {path}: the file is read-only.")
    _nearest_folder(path, what)


def check_output_folder(path: Path, what: str = "output folder") -> None:
    """Like `check_output_file`, for a folder that is created or written into."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"cannot write {what} {path}: it is a file, not a folder.")
    if path.is_dir() and not os.access(path, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {what} {path}: the folder is not writable.")
    if not path.exists():
        _nearest_folder(path, what)


def write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder and a rename, so a
    failed write leaves nothing behind; an OSError (disk full, read-only) is one sentence."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                                             suffix=".tmp")
    except OSError as error:
        raise UserError(f"cannot write {path}: {error.strerror or error}.") from None
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        os.replace(temporary, path)
    except BaseException as error:
        Path(temporary).unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise UserError(f"cannot write {path}: {error.strerror or error}.") from None
        raise
