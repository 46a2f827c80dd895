"""TensorBoard event files of a run, written with tensorboardX (no TensorFlow): the ``tensorboard``
extra, ``pip install 'jaxcnn[tensorboard]'``; then ``tensorboard --logdir WORKDIR/tensorboard``.

``log_tensorboard(workdir, history)`` rewrites one event file, ``WORKDIR/tensorboard/EVENT_FILE``,
from the whole metric history (as ``report.write_metrics`` rewrites ``metrics.jsonl``), atomically:
a resumed run or a second call never duplicates an event and a kill never leaves half a file.
The bytes depend only on the history and the file's first wall time (kept from the file being
replaced), so each rewrite appends to what a running TensorBoard has already read.
"""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Sequence
from pathlib import Path

from jaxcnn import report

DIRECTORY = "tensorboard"
EVENT_FILE = "events.out.tfevents.jaxcnn"     # TensorBoard reads files named *tfevents*
CONFUSION_TAG = "report/confusion_matrix"


def _writer():
    try:
        from tensorboardX.proto import event_pb2, summary_pb2
        from tensorboardX.record_writer import masked_crc32c
    except ImportError:
        raise ImportError("TensorBoard logging needs tensorboardX: pip install "
                          "'jaxcnn[tensorboard]' (no TensorFlow needed)") from None
    return event_pb2, summary_pb2, masked_crc32c


def check_installed() -> None:
    """``ImportError`` saying how to install the writer, before a run that will need it."""
    _writer()


def _record(data: bytes, masked_crc32c) -> bytes:
    """One TFRecord: length, its masked CRC-32C, the data, its masked CRC-32C."""
    header = struct.pack("<Q", len(data))
    return (header + struct.pack("<I", masked_crc32c(header)) + data
            + struct.pack("<I", masked_crc32c(data)))


def _first_wall_time(path: Path, event_pb2) -> float | None:
    """The wall time of the first event in ``path`` (the file's start), if it reads."""
    try:
        with path.open("rb") as f:
            (length,) = struct.unpack("<Q", f.read(12)[:8])
            return event_pb2.Event.FromString(f.read(length)).wall_time
    except (OSError, struct.error, ValueError):
        return None


def _confusion(workdir: Path) -> tuple[int, bytes] | None:
    """(metrics epoch, PNG) of the run's report, if one was written."""
    folder = workdir / "report"
    try:
        epoch = json.loads((folder / "per_class.json").read_text())["metrics_epoch"]
        return int(epoch), (folder / "confusion.png").read_bytes()
    except (OSError, ValueError, KeyError, TypeError):
        return None


def log_tensorboard(workdir: str | Path, history: Sequence[dict]) -> Path:
    """Write ``WORKDIR/tensorboard/EVENT_FILE``: every numeric metric of every epoch of
    ``history`` as a scalar (tag: the metrics.jsonl name, step: the epoch, wall time: the
    file's start plus the epochs' cumulative seconds), and the report's confusion matrix
    (``WORKDIR/report/confusion.png``) as an image at the epoch the report was written.
    Call it after each epoch and after ``diagnose.write_report``. Returns the file."""
    event_pb2, summary_pb2, masked_crc32c = _writer()
    workdir = Path(workdir)
    directory = workdir / DIRECTORY
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / EVENT_FILE
    start = _first_wall_time(path, event_pb2)
    start = time.time() if start is None else start
    events = [event_pb2.Event(wall_time=start, file_version="brain.Event:2")]
    confusion = _confusion(workdir)
    elapsed = 0.0
    for row in history:
        epoch = int(row["epoch"])
        elapsed += float(row.get("seconds", 0.0))
        values = [summary_pb2.Summary.Value(tag=key, simple_value=float(value))
                  for key, value in row.items() if key != "epoch"
                  and isinstance(value, (int, float)) and not isinstance(value, bool)]
        events.append(event_pb2.Event(wall_time=start + elapsed, step=epoch,
                                      summary=summary_pb2.Summary(value=values)))
        if confusion and confusion[0] == epoch:
            width, height = struct.unpack(">II", confusion[1][16:24])   # the PNG's IHDR
            image = summary_pb2.Summary.Image(height=height, width=width, colorspace=4,
                                              encoded_image_string=confusion[1])
            events.append(event_pb2.Event(wall_time=start + elapsed, step=epoch,
                                          summary=summary_pb2.Summary(value=[
                                              summary_pb2.Summary.Value(tag=CONFUSION_TAG,
                                                                        image=image)])))
    payload = b"".join(_record(e.SerializeToString(), masked_crc32c) for e in events)
    report.atomic_write(path, lambda f: f.write(payload))
    return path
