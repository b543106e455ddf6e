"""TensorBoard summaries of a run's curves: `tensorboard --logdir WORKDIR/summaries`.

The engine's `WriteSummaries` hook writes through `TensorBoardWriter` (tensorboardX's event
files: the TensorBoard format without TensorFlow); `read_scalars` reads them back, for tests and
for scripts that want the curves without TensorBoard.
"""

from __future__ import annotations

import os
import pathlib
import struct
import sys
from typing import Mapping


def _import_tensorboardx():
    """tensorboardX's writer imports PyTorch whenever it is installed (to accept its tensors, which
    nothing here passes), which slows the start of every binary (docs/performance.md "Summaries"). PyTorch is
    kept out while tensorboardX is imported (an `import torch` then fails, which it handles) and
    is importable again after."""
    blocked = "torch" not in sys.modules
    if blocked:
        sys.modules["torch"] = None  # type: ignore[assignment]
    try:
        import tensorboardX  # pylint: disable=import-outside-toplevel
        from tensorboardX.proto import event_pb2, summary_pb2  # pylint: disable=import-outside-toplevel
    finally:
        if blocked:
            del sys.modules["torch"]
    return tensorboardX, event_pb2, summary_pb2


tensorboardX, event_pb2, summary_pb2 = _import_tensorboardx()

START = event_pb2.SessionLog.START

SUMMARIES_DIR = "summaries"


class TensorBoardWriter:
    """A `MetricWriter` that appends scalars to an event file under `logdir`.

    One call is one event holding every scalar of that step: the cost is per event, not per
    scalar (docs/performance.md, "Performance").
    """

    def __init__(self, logdir: str | os.PathLike, *, purge_step: int | None = None):
        """`purge_step`: a resumed run's first step; what an interrupted run wrote from there on
        is superseded (TensorBoard drops it; so does `read_scalars`)."""
        self.logdir = pathlib.Path(logdir)
        self._writer = tensorboardX.SummaryWriter(str(self.logdir), flush_secs=30,
                                                  purge_step=purge_step)
        self._events = self._writer._get_file_writer()  # pylint: disable=protected-access

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        summary = summary_pb2.Summary(value=[
            summary_pb2.Summary.Value(tag=tag, simple_value=float(value))
            for tag, value in scalars.items()])
        self._events.add_summary(summary, int(step))

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


def read_scalars(logdir: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the event files under `logdir`: `{tag: [(step, value), ...]}`, in the
    order written (files by name, so a resumed run's curves continue its first run's)."""
    curves: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(pathlib.Path(logdir).rglob("events.out.tfevents.*")):
        data = path.read_bytes()
        offset = 0
        while offset + 12 <= len(data):
            (length,) = struct.unpack("<Q", data[offset:offset + 8])
            record = data[offset + 12:offset + 12 + length]
            offset += 12 + length + 4  # length, its CRC, the record, its CRC
            if len(record) < length:
                break  # a record cut by a kill
            event = event_pb2.Event.FromString(record)
            if event.HasField("session_log") and event.session_log.status == START:
                # A resumed run restarts at this step: what an earlier run wrote from it is stale.
                curves = {tag: [(s, v) for s, v in points if s < event.step]
                          for tag, points in curves.items()}
            for value in event.summary.value:
                curves.setdefault(value.tag, []).append((event.step, value.simple_value))
    return curves
