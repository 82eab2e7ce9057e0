"""Where a process learns the job's shape, and the launchers that give it: env parsing,
launch.local's restarts and signals, the SLURM script (with a stand-in srun) and the
Kubernetes manifest. Nothing here starts JAX's distributed runtime; test_multiprocess.py does.
"""

import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest
import yaml

from launch import local
from llama3_jax.runtime.distributed import Setup, detect

ROOT = pathlib.Path(__file__).resolve().parents[2]


# ---- llama3_jax.runtime.distributed.detect ------------------------------------------------

def test_one_process_needs_nothing():
  assert detect({}) is None
  assert detect({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}) is None   # salloc, no srun


def test_explicit_variables():
  env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4",
         "JAX_PROCESS_ID": "3"}
  assert detect(env) == Setup("env", 4, 3, "10.0.0.1:1234")


SLURM_TASK = {"SLURM_JOB_ID": "4242", "SLURM_STEP_NODELIST": "gpu[017-018]", "SLURM_NTASKS": "16",
              "SLURM_PROCID": "9", "SLURM_LOCALID": "1"}


def test_slurm_task():
  assert detect(SLURM_TASK) == Setup("slurm", 16, 9, None)


@pytest.mark.parametrize("env, message", [
    ({"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"}, "JAX_COORDINATOR_ADDRESS not"),
    ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"},
     "is not host:port"),
    ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2"},
     "must be in 0..1"),
    ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "two", "JAX_PROCESS_ID": "0"},
     "not an integer"),
    ({**SLURM_TASK, "JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "8",
      "JAX_PROCESS_ID": "0"}, "SLURM_NTASKS=16"),
])
def test_inconsistent_variables_fail_in_one_line(env, message):
  with pytest.raises(ValueError, match=message) as error:
    detect(env)
  assert "\n" not in str(error.value)


@pytest.mark.slow
def test_pretrain_reports_bad_variables_in_one_line(tmp_path):
  env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "5",
         "JAX_COORDINATOR_ADDRESS": "127.0.0.1:1"}
  result = subprocess.run([sys.executable, "-m", "experiments.pretrain", f"--workdir={tmp_path}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
  assert result.returncode == 2
  assert result.stderr.startswith("error: ") and "JAX_PROCESS_ID=5 with JAX_NUM_PROCESSES=2" in result.stderr
  assert "Traceback" not in result.stderr


# ---- launch.local --------------------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["--processes", "3", "--devices", "8", "--", "x"], "does not split evenly"),
    (["--processes", "2", "--devices-per-process", "4"], "give the command after --"),
    (["--processes", "0", "--devices-per-process", "4", "--", "x"], "must be at least 1"),
    (["--processes", "2", "--", "x"], "one of --devices-per-process and --devices"),
])
def test_launcher_rejects_bad_arguments(argv, message, capsys):
  with pytest.raises(SystemExit) as exit_:
    local.parse_args(argv)
  assert exit_.value.code == 2
  assert message in capsys.readouterr().err


def test_launcher_environment():
  env = local.process_env({"PATH": "/bin"}, 1, 2, 4, 5555, 3)
  assert env["JAX_COORDINATOR_ADDRESS"] == "127.0.0.1:5555"
  assert (env["JAX_NUM_PROCESSES"], env["JAX_PROCESS_ID"], env["JAX_NUM_CPU_DEVICES"],
          env["LLAMA3_ATTEMPT"]) == ("2", "1", "4", "3")
  assert detect(env) == Setup("env", 2, 1, "127.0.0.1:5555")


# A stand-in job: process 1 dies in attempts 0 and 1 (SIGKILL, then exit 7); attempt 2 works.
FLAKY = """
import os, signal, sys, time
attempt, me = int(os.environ["LLAMA3_ATTEMPT"]), int(os.environ["JAX_PROCESS_ID"])
print(f"attempt {attempt} process {me} of {os.environ['JAX_NUM_PROCESSES']}", flush=True)
if me == 1 and attempt == 0:
  os.kill(os.getpid(), signal.SIGKILL)
if me == 1 and attempt == 1:
  sys.exit(7)
if attempt < 2:
  time.sleep(60)   # a survivor: blocked on its dead peer until the launcher kills it
"""


def launch(*argv, **kwargs):
  return subprocess.run([sys.executable, "-m", "launch.local", *argv], cwd=ROOT,
                        capture_output=True, text=True, timeout=120, **kwargs)


@pytest.mark.slow
def test_launcher_restarts_the_whole_job_until_it_succeeds():
  start = time.monotonic()
  result = launch("--processes", "2", "--devices-per-process", "1", "--restart-delay-s", "0",
                  "--", sys.executable, "-c", FLAKY)
  assert result.returncode == 0, result.stderr
  assert time.monotonic() - start < 30          # the sleeping survivors were killed
  for attempt in range(3):   # (process 0 may be stopped before it prints in attempts 0, 1)
    assert f"[p1] attempt {attempt} process 1 of 2" in result.stdout
  assert "[p0] attempt 2 process 0 of 2" in result.stdout
  assert "process 1 killed by SIGKILL" in result.stderr
  assert "process 1 exited with 7" in result.stderr


@pytest.mark.slow
def test_launcher_gives_up_and_keeps_config_errors():
  failing = launch("--processes", "1", "--devices-per-process", "1", "--max-restarts", "1",
                   "--restart-delay-s", "0", "--", sys.executable, "-c", "import sys; sys.exit(9)")
  assert failing.returncode == 9 and "giving up after 1 restarts" in failing.stderr
  config_error = launch("--processes", "1", "--devices-per-process", "1", "--", sys.executable,
                        "-c", "import sys; sys.exit(2)")
  assert config_error.returncode == 2 and "restart" not in config_error.stderr


@pytest.mark.slow
def test_launcher_forwards_sigterm():
  job = ("import signal, sys, time\n"
         "signal.signal(signal.SIGTERM, lambda *a: (print('saving', flush=True), sys.exit(0)))\n"
         "print('ready', flush=True)\n"
         "time.sleep(60)\n")
  proc = subprocess.Popen([sys.executable, "-m", "launch.local", "--processes", "2",
                           "--devices-per-process", "1", "--", sys.executable, "-c", job],
                          cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  lines = []
  while sum("ready" in line for line in lines) < 2:
    lines.append(proc.stdout.readline())
    assert lines[-1], "the job ended before it was ready"
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=30)
  assert proc.returncode == 0
  assert out.count("saving") == 2


# ---- SLURM and Kubernetes ------------------------------------------------------------------

def fake_srun(tmp_path) -> dict:
  """PATH with an `srun` that records its arguments and environment instead of running."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  srun = bin_dir / "srun"
  srun.write_text(f"#!/usr/bin/env bash\necho \"$@\" > {tmp_path}/args\nenv > {tmp_path}/env\n")
  srun.chmod(0o755)
  return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_SUBMIT_DIR": str(ROOT),
          "SLURM_JOB_ID": "4242", "SLURM_NTASKS": "16", "HOME": os.environ.get("HOME", "/")}


def recorded_env(tmp_path) -> dict:
  lines = (tmp_path / "env").read_text().splitlines()
  return dict(line.split("=", 1) for line in lines if "=" in line)


@pytest.mark.slow
def test_slurm_script_launches_pretrain_with_the_gpu_settings(tmp_path):
  script = ROOT / "launch" / "slurm" / "pretrain.sbatch"
  result = subprocess.run(["bash", str(script), "--workdir", "/shared/run"], capture_output=True,
                          text=True, env={**fake_srun(tmp_path), "SLURM_NTASKS_PER_NODE": "8"},
                          timeout=60)
  assert result.returncode == 0, result.stderr
  args = (tmp_path / "args").read_text().split()
  assert "--kill-on-bad-exit=1" in args
  assert args[-4:] == ["-m", "experiments.pretrain", "--workdir", "/shared/run"]
  env = recorded_env(tmp_path)
  assert env["NCCL_IB_QPS_PER_CONNECTION"] == "16"
  assert "--xla_gpu_enable_latency_hiding_scheduler=true" in env["XLA_FLAGS"]
  assert env["LLAMA3_ATTEMPT"] == "0" and str(ROOT) in env["PYTHONPATH"]
  assert "JAX_LOCAL_DEVICE_IDS" not in env          # one task per GPU: JAX picks SLURM_LOCALID
  # What srun adds per task is what distributed.detect reads.
  assert detect({**env, **SLURM_TASK}) == Setup("slurm", 16, 9, None)
  # This jaxlib knows every flag (XLA aborts on an unknown one).
  check = subprocess.run([sys.executable, "-c", "import jax; jax.devices()"], capture_output=True,
                         text=True, timeout=120,
                         env={**os.environ, "XLA_FLAGS": env["XLA_FLAGS"], "JAX_PLATFORMS": "cpu"})
  assert check.returncode == 0, check.stderr[-2000:]


@pytest.mark.slow
def test_slurm_one_task_per_node_sees_all_gpus(tmp_path):
  script = ROOT / "launch" / "slurm" / "pretrain.sbatch"
  env = {**fake_srun(tmp_path), "SLURM_NTASKS_PER_NODE": "1", "SLURM_GPUS_ON_NODE": "8"}
  subprocess.run(["bash", str(script)], env=env, check=True, timeout=60, capture_output=True)
  assert recorded_env(tmp_path)["JAX_LOCAL_DEVICE_IDS"] == "0,1,2,3,4,5,6,7"


def test_kubernetes_manifest_gives_each_pod_its_place():
  jobset = yaml.safe_load((ROOT / "launch" / "k8s" / "jobset.yaml").read_text())
  job = jobset["spec"]["replicatedJobs"][0]["template"]["spec"]
  container = job["template"]["spec"]["containers"][0]
  env = {e["name"]: e.get("value") for e in container["env"]}
  index_ref = next(e for e in container["env"] if e["name"] == "JAX_PROCESS_ID")
  assert "job-completion-index" in index_ref["valueFrom"]["fieldRef"]["fieldPath"]
  assert job["completionMode"] == "Indexed"
  assert job["parallelism"] == job["completions"] == int(env["JAX_NUM_PROCESSES"])
  name = jobset["metadata"]["name"]
  rjob = jobset["spec"]["replicatedJobs"][0]["name"]
  assert env["JAX_COORDINATOR_ADDRESS"].startswith(f"{name}-{rjob}-0-0.{name}:")
  assert "source launch/gpu_env.sh" in container["args"][0]
  for pod in range(job["parallelism"]):
    assert detect({**env, "JAX_PROCESS_ID": str(pod)}).process_id == pod
