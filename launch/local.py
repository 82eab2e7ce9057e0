"""Runs one multi-process JAX job on this machine, restarting it when a process dies.

python -m launch.local --processes 2 --devices-per-process 4 -- \
    python -m experiments.pretrain --workdir /tmp/run
python -m launch.local --processes 2 --devices-per-process 4 -- \
    python -m experiments.evaluate --checkpoint /tmp/run --tasks arith    # any launcher
python -m launch.local --processes 4 --devices 8 --max-restarts 5 -- python my_job.py

Each process gets the variables llama3_jax/runtime/distributed.py reads (a coordinator on
127.0.0.1, JAX_NUM_PROCESSES, JAX_PROCESS_ID), K fake CPU devices (JAX_NUM_CPU_DEVICES) and the
attempt number (LLAMA3_ATTEMPT, 0 first); every launcher in experiments/ joins the job from
them (llama3_jax/runtime/job.py). Output lines are prefixed with the process id.
When a process dies (a crash, SIGKILL, the hang watchdog's exit 75) the others are killed too:
they cannot finish a collective without it; the whole job then restarts, up to --max-restarts
times, and resumes from its latest checkpoint. Exit codes 2 (bad config) and 3 (diverged) are
not retried. SIGTERM or SIGINT to the launcher is passed on as SIGTERM (the job checkpoints and
exits) and ends it. The launcher exits with the job's code.
"""

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time

NO_RESTART = {2, 3}   # a bad config or a diverged run fails again the same way


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def parse_args(argv):
  parser = argparse.ArgumentParser(prog="python -m launch.local", description=__doc__.split(
      "\n")[0], usage="%(prog)s --processes N (--devices-per-process K | --devices D) "
      "[--max-restarts R] -- COMMAND ...")
  parser.add_argument("--processes", type=int, required=True)
  parser.add_argument("--devices-per-process", type=int)
  parser.add_argument("--devices", type=int, help="total devices, split evenly over processes")
  parser.add_argument("--max-restarts", type=int, default=3)
  parser.add_argument("--port", type=int, default=0, help="coordinator port (0: a free one)")
  parser.add_argument("--restart-delay-s", type=float, default=1.0)
  if "--" not in argv:
    parser.error("give the command after --, e.g. -- python -m experiments.pretrain")
  split = argv.index("--")
  args = parser.parse_args(argv[:split])
  args.command = argv[split + 1:]
  if not args.command:
    parser.error("the command after -- is empty")
  if args.processes < 1:
    parser.error(f"--processes={args.processes} must be at least 1")
  if (args.devices_per_process is None) == (args.devices is None):
    parser.error("give one of --devices-per-process and --devices")
  if args.devices is not None:
    if args.devices < 1 or args.devices % args.processes:
      parser.error(f"--devices={args.devices} does not split evenly over --processes="
                   f"{args.processes}; use a multiple of {args.processes}")
    args.devices_per_process = args.devices // args.processes
  if args.devices_per_process < 1:
    parser.error(f"--devices-per-process={args.devices_per_process} must be at least 1")
  if args.max_restarts < 0:
    parser.error(f"--max-restarts={args.max_restarts} must be >= 0")
  return args


def process_env(base: dict, process: int, processes: int, devices: int, port: int,
                attempt: int) -> dict:
  """The environment of one process of the job."""
  return {**base, "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
          "JAX_NUM_PROCESSES": str(processes), "JAX_PROCESS_ID": str(process),
          "JAX_NUM_CPU_DEVICES": str(devices), "JAX_PLATFORMS": base.get("JAX_PLATFORMS", "cpu"),
          "LLAMA3_ATTEMPT": str(attempt)}


def _pump(stream, prefix: str, out) -> None:
  for line in stream:
    out.write(prefix + line)
    out.flush()


def exit_reason(code: int) -> str:
  return (f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with {code}")


class Job:
  """One attempt: N processes; `wait` returns the job's exit code."""

  def __init__(self, args, attempt: int):
    port = args.port or free_port()
    self.procs, self.pumps = [], []
    for i in range(args.processes):
      env = process_env(dict(os.environ), i, args.processes, args.devices_per_process, port,
                        attempt)
      # Own session: a terminal's Ctrl-C reaches the launcher only, which decides.
      proc = subprocess.Popen(args.command, env=env, start_new_session=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              bufsize=1)
      prefix = f"[p{i}] " if args.processes > 1 else ""
      pump = threading.Thread(target=_pump, args=(proc.stdout, prefix, sys.stdout), daemon=True)
      pump.start()
      self.procs.append(proc)
      self.pumps.append(pump)

  def signal_all(self, sig) -> None:
    for proc in self.procs:
      if proc.poll() is None:
        try:
          os.killpg(proc.pid, sig)   # the process and anything it started
        except ProcessLookupError:
          pass

  def wait(self, stopping) -> int:
    """The exit code of the first process that failed (the cause), else 0."""
    cause = None
    while True:
      codes = [proc.poll() for proc in self.procs]
      failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
      if failed and cause is None:
        i, cause = failed[0]
        if not stopping():
          print(f"launch.local: process {i} {exit_reason(cause)}; stopping the others",
                file=sys.stderr, flush=True)
          self.signal_all(signal.SIGKILL)   # they would wait forever for the dead one
      if all(c is not None for c in codes):
        for pump in self.pumps:
          pump.join()
        return cause or 0
      time.sleep(0.05)


def main(argv) -> int:
  args = parse_args(argv)
  stop = []
  job = None

  def forward(signum, frame):
    stop.append(signum)
    if job:
      job.signal_all(signal.SIGTERM if len(stop) == 1 else signal.SIGKILL)

  signal.signal(signal.SIGTERM, forward)
  signal.signal(signal.SIGINT, forward)
  for attempt in range(args.max_restarts + 1):
    job = Job(args, attempt)
    code = job.wait(stopping=lambda: bool(stop))
    if code == 0 or stop or code in NO_RESTART:
      return code if code >= 0 else 128 - code
    if attempt < args.max_restarts:
      print(f"launch.local: job failed ({exit_reason(code)}); restart {attempt + 1} of "
            f"{args.max_restarts}", file=sys.stderr, flush=True)
      time.sleep(args.restart_delay_s)
  print(f"launch.local: giving up after {args.max_restarts} restarts", file=sys.stderr)
  return code if code >= 0 else 128 - code


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
