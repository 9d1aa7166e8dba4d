"""Distributed strategies through Accelerate (configs/accelerate/): every shipped launch config
parses as Accelerate's own and opens with the command that uses it; DDP from its file trains on
two real CPU processes; FSDP asked for on a CPU is refused with the reason (Accelerate would
fall back to unsharded DDP); the DeepSpeed config is validated against the training config."""
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import free_port
import yaml
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DistributedType

from vlcofit.config.schema import TrainConfig
from vlcofit.data.synthetic.demo import make_demo_dataset
from vlcofit.errors import InputError
from vlcofit.train.accelerator import _check_deepspeed

ROOT = Path(__file__).parents[1]
CONFIGS = sorted((ROOT / "configs" / "accelerate").glob("*.yaml"))


def test_launch_configs_parse_and_state_their_command():
    assert {p.stem for p in CONFIGS} == {"ddp", "fsdp", "deepspeed_zero2"}
    for path in CONFIGS:
        config = load_config_from_file(str(path))  # unknown keys are an error there
        first = path.read_text().splitlines()[0]
        assert first.startswith(f"# accelerate launch --config_file configs/accelerate/{path.name} "
                                f"-m vlcofit train"), first
        raw = yaml.safe_load(path.read_text())
        assert config.distributed_type == raw["distributed_type"]
    fsdp = load_config_from_file(str(ROOT / "configs/accelerate/fsdp.yaml")).fsdp_config
    assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    ds = load_config_from_file(str(ROOT / "configs/accelerate/deepspeed_zero2.yaml"))
    assert ds.deepspeed_config["zero_stage"] == 2


def _deepspeed(**config):
    return SimpleNamespace(state=SimpleNamespace(
        deepspeed_plugin=SimpleNamespace(deepspeed_config=config)),
        distributed_type=DistributedType.DEEPSPEED)


def test_deepspeed_config_must_agree_with_the_training_config():
    shipped = yaml.safe_load((ROOT / "configs/accelerate/deepspeed_zero2.yaml").read_text())
    ds = shipped["deepspeed_config"]
    _check_deepspeed(_deepspeed(gradient_accumulation_steps=ds["gradient_accumulation_steps"],
                                gradient_clipping=ds["gradient_clipping"]), TrainConfig())
    _check_deepspeed(_deepspeed(gradient_accumulation_steps="auto"), TrainConfig(grad_accum=4))
    with pytest.raises(InputError, match="gradient_accumulation_steps=1 differs from "
                                         "train.grad_accum=2"):
        _check_deepspeed(_deepspeed(gradient_accumulation_steps=1), TrainConfig(grad_accum=2))
    with pytest.raises(InputError, match="gradient_clipping=1.0 differs from train.clip_grad=0.5"):
        _check_deepspeed(_deepspeed(gradient_clipping=1.0), TrainConfig(clip_grad=0.5))
    with pytest.raises(InputError, match="train.l2sp=0.01: L2-SP moves weights outside"):
        _check_deepspeed(_deepspeed(), TrainConfig(l2sp=0.01))


def _launch(config: str, tmp_path: Path) -> subprocess.CompletedProcess:
    data = make_demo_dataset(tmp_path / "data", per_class_train=1, per_class_val=1)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(ROOT / "configs" / "accelerate" / config), "--num_processes", "2",
           "--mixed_precision", "no", "--main_process_port", str(free_port()), "-m", "vlcofit", "train",
           "demo", "--set", f"datasets.demo.root={data}", "--set", f"output_dir={tmp_path / 'run'}",
           "--set", "train.steps=2", "--set", "train.batch_size=2", "--set", "train.num_workers=0",
           "--set", "train.save_every=2", "--set", "train.eval_every=0",
           "--set", "eval.batch_size=8"]
    env = dict(os.environ, ACCELERATE_USE_CPU="1", CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)


def test_ddp_config_trains_on_two_cpu_processes(tmp_path):
    proc = _launch("ddp.yaml", tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["world_size"] == 2 and run["end_time"]
    ckpt = tmp_path / "run" / "checkpoints" / "step_000002"
    assert {"model.safetensors", "optimizer.bin", "scheduler.pt", "random_states_0.pkl",
            "random_states_1.pkl", "state.json"} <= {p.name for p in ckpt.iterdir()}


def test_fsdp_on_cpu_is_refused_saying_why(tmp_path):
    proc = _launch("fsdp.yaml", tmp_path)
    assert proc.returncode != 0
    assert ("vlcofit: error: accelerate launch asked for FSDP (ACCELERATE_USE_FSDP=true) but "
            "Accelerate set up MULTI_CPU on cpu: FSDP runs on GPUs") in proc.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before training
