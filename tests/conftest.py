"""Test setup: no network, no pretrained weights, tiny models only."""
import os
import subprocess
import sys

# Must be set before huggingface_hub is imported: otherwise each missing hub file costs ~20 s.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "2")

import pytest


@pytest.fixture
def launch_two():
    """``launch_two(args, port)`` runs ``args`` (a script path, or ``-m vlcofit ...``) in two
    real CPU processes through ``accelerate launch`` and fails the test with the tail of stderr
    unless both exit 0. (GUIDE: ``--cpu --num_processes 2`` would silently run one process;
    ``--multi_gpu`` with ``ACCELERATE_USE_CPU=1`` runs two on gloo.)

    Test scripts end with ``end_processes()`` and then ``os._exit(0)``: about one run in 15
    under load, a rank still aborted ("terminate called without an active exception") after
    its work, its atexit handlers and the process group's destruction had all finished, i.e. in
    C++ teardown at interpreter exit. The scripts check the work, not that teardown."""
    def run(args, port: int, env: dict | None = None, timeout: int = 300):
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
               "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
               "--dynamo_backend", "no", "--main_process_port", str(port), *map(str, args)]
        # no GPU either on a GPU host: rank 1 would otherwise look for cuda:1
        full_env = dict(os.environ, ACCELERATE_USE_CPU="1", CUDA_VISIBLE_DEVICES="",
                        OMP_NUM_THREADS="1", **(env or {}))
        proc = run_group(cmd, full_env, timeout)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc
    return run


def run_group(cmd, env: dict, timeout: float) -> subprocess.CompletedProcess:
    """``cmd``, killed with every process it started when the test ends early (its time
    limit, a timeout): killing only the launcher would leave its ranks (each in a session of
    its own) running, holding the output pipes open."""
    import psutil  # Accelerate's dependency

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException:
        tree = psutil.Process(proc.pid).children(recursive=True) + [psutil.Process(proc.pid)]
        for p in tree:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        proc.communicate()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
