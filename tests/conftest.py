"""Test setup: no network, no pretrained weights, tiny models only."""
import os
import socket
import subprocess
import sys
from pathlib import Path

# Must be set before huggingface_hub is imported: otherwise each missing hub file costs ~20 s.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "2")

import pytest


@pytest.fixture(scope="session")
def demo_videos(tmp_path_factory):
    """``demo_videos(per_class_train, per_class_val)``: the built-in demo dataset at that size,
    generated once per session and shared by every module that asks for it (8 classes, 64 px,
    16-frame h264 clips). Shared: a test that changes its files copies the folder first."""
    from vlcofit.data.synthetic.demo import make_demo_dataset

    made: dict[tuple[int, int], Path] = {}

    def get(per_class_train: int = 2, per_class_val: int = 1) -> Path:
        key = (per_class_train, per_class_val)
        if key not in made:
            made[key] = make_demo_dataset(tmp_path_factory.mktemp(f"demo_{key[0]}x{key[1]}"),
                                          per_class_train=key[0], per_class_val=key[1])
        return made[key]
    return get


def free_port() -> int:
    """A TCP port nothing listens on now (the OS picks it), for a process group's rendezvous:
    fixed ports collide when two suites run on one machine."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def launch_two():
    """``launch_two(args)`` runs ``args`` (a script path, or ``-m vlcofit ...``) in two
    real CPU processes through ``accelerate launch`` and fails the test with the tail of stderr
    unless both exit 0. (GUIDE: ``--cpu --num_processes 2`` would silently run one process;
    ``--multi_gpu`` with ``ACCELERATE_USE_CPU=1`` runs two on gloo.)

    Test scripts end with ``end_processes()`` and then ``os._exit(0)``: about one run in 15
    under load, a rank still aborted ("terminate called without an active exception") after
    its work, its atexit handlers and the process group's destruction had all finished, i.e. in
    C++ teardown at interpreter exit. The scripts check the work, not that teardown."""
    def run(args, env: dict | None = None, timeout: int = 300):
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
               "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
               "--dynamo_backend", "no", "--main_process_port", str(free_port()),
               *map(str, args)]
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


# Fixtures and calls that make a test multiprocess / slow (pyproject.toml's markers): read from
# each test's own source once at collection, so no test has to remember its marker.
_MULTIPROCESS = ("launch_two", "run_group(", "accelerate.commands.launch", "subprocess.run(")
_TRAINS = ("train(", '["train"', '["demo"', '["sweep"', '["compare"', '["few-shot"', "few_shot(",
           "sweep(", "advise(", '["advise"', '"vlcofit", "train"')


def pytest_collection_modifyitems(items):
    import inspect

    for item in items:
        try:
            source = inspect.getsource(item.function)
        except (OSError, TypeError):
            continue
        fixtures = getattr(item, "fixturenames", ())
        multiprocess = "launch_two" in fixtures or any(m in source for m in _MULTIPROCESS)
        if multiprocess:
            item.add_marker(pytest.mark.multiprocess)
        if multiprocess or any(t in source for t in _TRAINS):
            item.add_marker(pytest.mark.slow)
