"""The output folder of an anonymization run: what is released, what stays private, and how a run resumes.

    OUT/images/<pseudonym>.png    released images only (PNG 8- or 16-bit, no metadata, fixed mtime), or
    OUT/images/<pseudonym>.dcm    DICOM with a de-identified header (``gmia.data.adapters.dicom_deid``)
    OUT/labels.csv                pseudonym + findings of the released images (sorted by pseudonym)
    OUT/manifest.jsonl            one row per input: pseudonym, status released/withheld/error, cos_id, utility,
                                  steps, seconds, reason/error (sorted by pseudonym; no source names)
    OUT/run.json                  config, versions, checkpoint sha256s, seed, summary
    OUT/private/                  NEVER release: resume.key (the secret behind the pseudonyms), journal-*.jsonl
                                  (progress, in processing order), errors.jsonl (which source file failed and why),
                                  linkage.csv (source key → pseudonym, only with --write-linkage),
                                  lock-<i>-of-<n> (held by the process writing that shard, says who it is)

Pseudonyms are HMAC-SHA256(resume.key, source key): random-looking to anyone without the key, yet the same
on every resume and every shard, which is what makes ``--resume`` and ``--shard`` exact without storing the
source name anywhere public. Row order and file times are normalised (sorted by pseudonym, one fixed mtime):
processing order follows the source order, which groups a patient's studies together.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import json
import math
import os
import secrets
import socket
import time
from pathlib import Path

from ..errors import ConfigError
from ..fileio import append_jsonl, atomic_write, atomic_write_json

__all__ = ["RunFolder", "RELEASE_MTIME"]

RELEASE_MTIME = 946684800  # 2000-01-01T00:00:00Z: released files carry no processing time
PSEUDONYM_HEX = 20         # 80 bits


class RunFolder:
    """Owns OUT/: creation or resume, pseudonyms, the journal, and the final public tables."""

    def __init__(self, out: str | Path, run_record: dict, result_config: dict, resume: bool, shard: tuple[int, int],
                 defaults: dict | None = None):
        """defaults: each result setting's value before it existed; a run made before a setting was added is
        resumed when the new value is that one (the images it made are the same)."""
        self.root = Path(out)
        self.images = self.root / "images"
        self.private = self.root / "private"
        # saved here, checked by the gate, then moved to images/; one folder per shard, removed when the shard ends
        self.staging = self.private / f"staging-{shard[0]}-of-{shard[1]}"
        self.shard = shard
        run_json = self.root / "run.json"
        if run_json.exists():
            previous = json.loads(run_json.read_text())
            if not resume:
                raise ConfigError(f"{self.root} already holds an anonymization run; pass --resume to finish it, or "
                                  "choose a new --out (nothing is overwritten)")
            before = previous.get("result_config", {})
            defaults = defaults or {}
            changed = sorted(k for k in {*before, *result_config}
                             if before.get(k, defaults.get(k)) != result_config.get(k))
            if changed:
                raise ConfigError(f"{run_json}: --resume with different settings ({', '.join(changed)}); "
                                  "rerun with the original settings or choose a new --out")
        elif self.root.exists() and not _fresh(self.root):
            raise ConfigError(f"{self.root} exists and is not an anonymization run; choose a new --out")
        self.private.mkdir(parents=True, exist_ok=True)
        self.private.chmod(0o700)
        self._lock = _RunLock(self.private / f"lock-{shard[0]}-of-{shard[1]}", self.root, shard)
        try:
            self._key = self._secret()
            for d in (self.images, self.staging):
                d.mkdir(parents=True, exist_ok=True)
            if not run_json.exists():
                atomic_write_json(run_json, {**run_record, "result_config": result_config})
        except BaseException:
            self.close()
            raise
        self.journal_path = self.private / f"journal-{shard[0]}-of-{shard[1]}.jsonl"
        self.done = {row["pseudonym"] for row in self.read_journal()}

    def close(self) -> None:
        """Remove this shard's staging folder if it is empty, and release the lock (the OS releases it too when
        the process dies). A file left in staging by a kill is redone on --resume."""
        try:
            self.staging.rmdir()
        except OSError:  # not empty (a killed write), or never made
            pass
        self._lock.release()

    # ---- identity of a record -----------------------------------------------------------------------------
    def _secret(self) -> bytes:
        """The run's key: created once, complete or not at all, then only ever read."""
        path = self.private / "resume.key"
        if not path.exists():
            # Written whole to a temporary file, then linked into place: a full disk or a kill leaves either no
            # key (the next start creates one) or a complete one, never an empty file; link() refuses to
            # replace, so of several shards starting together exactly one key wins.
            tmp = self.private / f"resume.key.tmp{os.getpid()}"
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "w") as f:
                    f.write(secrets.token_hex(32))
                    f.flush()
                    os.fsync(f.fileno())
                os.link(tmp, path)
            except FileExistsError:
                pass
            finally:
                tmp.unlink(missing_ok=True)
        text = path.read_text().strip()
        if len(text) != 64:
            raise ConfigError(f"{path}: damaged resume key; a run can only resume with its own key")
        return bytes.fromhex(text)

    def pseudonym(self, key: str) -> str:
        return hmac.new(self._key, key.encode(), hashlib.sha256).hexdigest()[:PSEUDONYM_HEX]

    def subkey(self, purpose: str) -> bytes:
        """A secret derived from the run's key for one purpose (keyed patient ids, DICOM UIDs and dates): the
        same on every resume and shard, and the run's key itself never leaves this object."""
        return hmac.new(self._key, b"subkey:" + purpose.encode(), hashlib.sha256).digest()

    def image_path(self, pseudonym: str, suffix: str = ".png") -> Path:
        return self.images / f"{pseudonym}{suffix}"

    def staging_path(self, pseudonym: str, suffix: str = ".png") -> Path:
        return self.staging / f"{pseudonym}{suffix}"

    # ---- progress ---------------------------------------------------------------------------------------
    def read_journal(self, all_shards: bool = False) -> list[dict]:
        """Rows of this shard's journal (or of every shard's), torn last lines (a kill mid-write) skipped."""
        paths = sorted(self.private.glob("journal-*.jsonl")) if all_shards else [self.journal_path]
        rows, seen = [], set()
        for path in paths:
            if not path.exists():
                continue
            for line in path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                if row.get("pseudonym") not in seen:
                    seen.add(row["pseudonym"])
                    rows.append(row)
        return rows

    def record(self, row: dict, source_key: str | None = None, error: str | None = None) -> None:
        """Append one finished record. The released image (if any) is already in place; this line is what
        marks the record done, so a kill before it means the record is redone (same name, same pixels)."""
        if error is not None:
            append_jsonl(self.private / "errors.jsonl", {"source": source_key, "error": error})
        append_jsonl(self.journal_path, row)
        self.done.add(row["pseudonym"])

    # ---- public tables ----------------------------------------------------------------------------------
    def finalize(self, findings: list[str], summary: dict, linkage_keys: list[str] | None = None) -> dict:
        """Write manifest.jsonl, labels.csv and, given the source keys, private/linkage.csv, from every shard's
        journal, and ``summary`` (this call's counts and speed under "this_call") into run.json. The linkage is
        recomputed from the key (pseudonym = HMAC), so it can be asked for at any time."""
        rows = sorted(self.read_journal(all_shards=True), key=lambda r: r["pseudonym"])
        public = [{k: v for k, v in r.items() if k != "labels"} for r in rows]
        atomic_write(self.root / "manifest.jsonl", "".join(json.dumps(r) + "\n" for r in public))
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["image", *findings])
        for r in rows:
            if r["status"] == "released":
                writer.writerow([r.get("image", f"images/{r['pseudonym']}.png"),
                                 *("" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:g}"
                                   for v in r.get("labels", []))])
        atomic_write(self.root / "labels.csv", buf.getvalue())
        if linkage_keys is not None:
            recorded = {r["pseudonym"] for r in rows}
            links = sorted((k, p) for k in linkage_keys if (p := self.pseudonym(k)) in recorded)
            buf = io.StringIO()  # CRLF rows: a source name holding a newline or a CR is quoted, not split
            writer = csv.writer(buf, lineterminator="\r\n")
            writer.writerow(["source", "pseudonym"])
            writer.writerows(links)
            atomic_write(self.private / "linkage.csv", buf.getvalue())
        counts = {s: sum(r["status"] == s for r in rows) for s in ("released", "withheld", "error")}
        run = json.loads((self.root / "run.json").read_text())
        # every call's own counts and speed, oldest first: a resumed call processes only what was left, and its
        # images per second must not replace the first call's
        before = run.get("summary", {})
        calls = before.get("calls", [before["this_call"]] if "this_call" in before else [])
        run["summary"] = {**summary, **counts, "records": len(rows), "calls": [*calls, summary["this_call"]]}
        atomic_write_json(self.root / "run.json", run)
        return run["summary"]


def _fresh(root: Path) -> bool:
    """True if ``root`` holds nothing but what a run that failed before its first record leaves: an empty
    images/ folder and private/ (its lock, possibly its key). Such a folder may start the run again."""
    for entry in root.iterdir():
        if entry.name == "images" and entry.is_dir() and not any(entry.iterdir()):
            continue
        if entry.name != "private":
            return False
    return True


class _RunLock:
    """An exclusive lock on one shard of a run folder while a process writes it (``flock``: the OS drops it
    when the process dies, so a killed run never leaves a stale lock). The file says who holds it."""

    def __init__(self, path: Path, root: Path, shard: tuple[int, int]):
        import fcntl

        self._file = open(path, "a+")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._file.seek(0)
            holder = self._file.read().strip() or "another process"
            self._file.close()
            self._file = None
            raise ConfigError(f"{root} (shard {shard[0]}/{shard[1]}) is being written by {holder}; wait for it to "
                              "finish, or stop it and rerun with --resume") from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"gmia process {os.getpid()} on {socket.gethostname()} since "
                         f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        self._file.flush()

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing the descriptor drops the flock
            self._file = None

