"""Send every file under a folder to a running listener, one MLLP frame per
file, and check each answer.

    python -m hl7_alerts.tools.corpus_check /path/to/archived/hl7 --port 2575

Each file goes as one frame after LF/CRLF are turned into CR (what an
interface engine replaying a file does). A file passes when its answer is a
well-formed ACK (MSH first, an MSA with a known code) whose MSA-2 echoes the
file's MSH-10 whenever that MSH is readable; a batch (FHS/BHS, or several
MSH in one file) passes when its answer is a batch acknowledgment with one
such ACK per message, in order. Prints one line per file (path, MSA-1,
MSA-2 check, MSA-3), a count per code over files and one over messages;
exits 1 if any file fails.
"""

from __future__ import annotations

import argparse
import collections
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from hl7_alerts.batches import read_batch
from hl7_alerts.framer import NEED_DATA, Frame, Framer, Oversize, frame
from hl7_alerts.messages import salvage_header
from hl7_alerts.mllp import MllpClient
from hl7_alerts.segments import MessageError, read_segments
from hl7_alerts.timeutil import UTC_ZONE

ACK_CODES = frozenset({"AA", "AE", "AR", "CA", "CE", "CR"})
SKIPPED_NAMES = frozenset({"SOURCES.md", "index.tsv", "README.md", "LICENSE"})


@dataclass(frozen=True, slots=True, kw_only=True)
class Result:
    """One file's answer. ``codes``: MSA-1 of each message answered (one for
    a single message; one per message for a batch acknowledgment); ``code``
    the file's: the first that is not AA/CA, else the first."""

    path: Path
    code: str
    echoed: bool
    text: str
    problem: str = ""
    codes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problem


def as_frame(data: bytes) -> bytes:
    """A file's bytes as one message: CR segment ends, nothing else changed."""
    return data.replace(b"\r\n", b"\r").replace(b"\n", b"\r")


def frames_in(message: bytes) -> int:
    """How many frames the listener sees when ``message`` is sent framed."""
    framer = Framer()
    framer.feed(frame(message))
    count = 0
    while (event := framer.next_event()) is not NEED_DATA:
        count += isinstance(event, Frame | Oversize)
    return max(count, 1)


def corpus_files(root: Path) -> Iterator[Path]:
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.name not in SKIPPED_NAMES and not path.name.startswith("."):
            yield path


def check_answer(path: Path, message: bytes, answer: bytes) -> Result:
    """Judge one answer against the message (or batch) it answers."""
    if read_batch(answer) is not None:
        return _check_batch_answer(path, message, answer)
    header = salvage_header(message, UTC_ZONE)
    expected = header.control_id if header is not None else None
    try:
        _, segments = read_segments(answer.decode("utf-8", errors="replace"))
    except MessageError as exc:
        return Result(path=path, code="??", echoed=False, text="", problem=f"unreadable ACK: {exc.reason}")
    msa = next((s for s in segments if s.name == "MSA"), None)
    if msa is None:
        return Result(path=path, code="??", echoed=False, text="", problem="ACK has no MSA segment")
    code, echoed_id, text = msa.get(1), msa.get(2), msa.get(3)
    echoed = expected is None or echoed_id == expected
    problem = ""
    if code not in ACK_CODES:
        problem = f"MSA-1 {code!r} is not an ACK code"
    elif not echoed:
        problem = f"MSA-2 {echoed_id!r} does not echo MSH-10 {expected!r}"
    return Result(path=path, code=code, echoed=echoed, text=text, problem=problem, codes=(code,))


def _check_batch_answer(path: Path, message: bytes, answer: bytes) -> Result:
    """A batch acknowledgment: one ACK per message of the batch, in order,
    each well formed and echoing its message's MSH-10."""
    sent = read_batch(message)
    acks = read_batch(answer)
    if acks is None or sent is None:
        return Result(path=path, code="??", echoed=False, text="", problem="batch answer to a single message")
    results = [check_answer(path, m, a) for m, a in zip(sent.messages, acks.messages, strict=False)]
    codes = tuple(r.code for r in results)
    problem = next((r.problem for r in results if r.problem), "")
    if len(acks.messages) != len(sent.messages):
        problem = f"{len(acks.messages)} ACKs for {len(sent.messages)} messages"
    code = next((c for c in codes if c not in ("AA", "CA")), codes[0] if codes else "??")
    text = ", ".join(f"{c} {r.text}".strip() for c, r in zip(codes, results, strict=True))
    return Result(
        path=path, code=code, echoed=all(r.echoed for r in results), text=text, problem=problem, codes=codes
    )


def check(files: Iterable[Path], host: str, port: int, timeout: float = 30.0) -> list[Result]:
    """Send each file as one frame on one connection (reconnecting if the
    listener closes it) and judge every answer."""
    results: list[Result] = []
    client: MllpClient | None = None
    try:
        for path in files:
            message = as_frame(path.read_bytes())
            try:
                if client is None:
                    client = MllpClient(host, port, timeout=timeout)
                # A file with FS bytes in it is more than one frame on the
                # wire: read every answer it earns, judge the last.
                answer = client.send(message)
                for _ in range(frames_in(message) - 1):
                    answer = client.receive()
            except OSError as exc:
                if client is not None:
                    client.close()
                client = None
                results.append(
                    Result(path=path, code="--", echoed=False, text="", problem=f"no answer: {exc}")
                )
                continue
            results.append(check_answer(path, message, answer))
    finally:
        if client is not None:
            client.close()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hl7_alerts.tools.corpus_check", description=__doc__)
    parser.add_argument("folder", type=Path, help="folder of HL7 files (searched recursively)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=2575)
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for each answer")
    args = parser.parse_args(argv)
    if not args.folder.is_dir():
        parser.error(f"{args.folder} is not a folder")
    results = check(corpus_files(args.folder), args.host, args.port, args.timeout)
    for r in results:
        mark = "ok" if r.ok else "FAIL"
        detail = r.problem or r.text
        print(f"{mark}\t{r.code}\t{r.path.relative_to(args.folder)}\t{detail}")
    counts = collections.Counter(r.code for r in results)
    per_message = collections.Counter(c for r in results for c in (r.codes or (r.code,)))
    failures = sum(not r.ok for r in results)
    summary = ", ".join(f"{code} {n}" for code, n in sorted(counts.items()))
    messages = ", ".join(f"{code} {n}" for code, n in sorted(per_message.items()))
    print(f"{len(results)} files: {summary}; {failures} failed")
    print(f"{per_message.total()} messages answered (a batch's messages each): {messages}")
    return 1 if failures or not results else 0


if __name__ == "__main__":
    sys.exit(main())
