"""An Orbax checkpoint item for the data loader's per-stream state.

Modelled on Grain's `grain.checkpoint.CheckpointHandler`, which writes one file per process
named by the process count (`process_0-of-2.json`), so a run saved on 2 processes could not
resume on 1. Here every process writes the streams it owns, `stream_00003.json`, and reads back
the streams it owns now, however many processes there are.
"""

import dataclasses
import json
from typing import Any

import orbax.checkpoint as ocp
from etils import epath


class DataStateHandler(ocp.CheckpointHandler):

  def save(self, directory: epath.Path, args: "DataStateSave") -> None:
    for stream, state in args.streams.items():
      (directory / f"stream_{int(stream):05d}.json").write_text(json.dumps(state))

  def restore(self, directory: epath.Path, args: "DataStateRestore") -> dict[int, Any]:
    """The states of `args.streams`; a missing one makes the checkpoint incomplete (restarting
    that stream from its first document would not be an exact resume)."""
    states = {}
    for stream in args.streams:
      path = directory / f"stream_{stream:05d}.json"
      if not path.exists():
        raise FileNotFoundError(f"{path} is missing: the data iterator's state of stream "
                                f"{stream} was not saved")
      states[stream] = json.loads(path.read_text())
    return states

  def metadata(self, directory):
    return None

  def finalize(self, directory):
    pass

  def close(self):
    pass


@ocp.args.register_with_handler(DataStateHandler, for_save=True)
@dataclasses.dataclass
class DataStateSave(ocp.args.CheckpointArgs):
  streams: dict   # stream index -> JSON-serialisable state


@ocp.args.register_with_handler(DataStateHandler, for_restore=True)
@dataclasses.dataclass
class DataStateRestore(ocp.args.CheckpointArgs):
  streams: list   # the stream indices to read
