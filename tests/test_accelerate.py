"""Data-parallel training with Accelerate: two CPU processes (gloo) make the same update as one
process on the same global batch."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mechunlearn.edit import train
from test_edit import golf_split, quick, sharp_tiny

pytestmark = pytest.mark.usefixtures("one_thread")

TESTS = Path(__file__).parent
COMPONENTS = "blocks.1.mlp,blocks.2.attn.q.h1,blocks.0.mlp.out.n3"
CONFIG = {"steps": 4, "maintain_batch_size": 6, "general_batch_size": 2, "grad_accum": 2}

WORKER = """
import json, sys
import torch
torch.set_num_threads(1)
sys.path.insert(0, {tests!r})
from accelerate import Accelerator
from safetensors.torch import save_file
from test_edit import golf_split, quick, sharp_tiny
from mechunlearn.edit import train

accelerator = Accelerator(cpu=True)
lm = sharp_tiny()
result = train(lm, {components!r}, golf_split(), quick(**{config!r}), progress=False, accelerator=accelerator)
if accelerator.is_main_process:
    params = dict(lm.model.named_parameters())
    save_file({{s.param: params[s.param].detach().contiguous() for s in result.slices}}, sys.argv[1] + "/weights.safetensors")
    with open(sys.argv[1] + "/result.json", "w") as f:
        json.dump({{"world": result.world_size, "history": result.history}}, f)
accelerator.wait_for_everyone()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_cpu_processes_match_one(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(tests=str(TESTS), components=COMPONENTS, config=CONFIG))
    # torchrun starts the processes (``accelerate launch --cpu`` wants mpirun for several CPU
    # processes); Accelerator(cpu=True) in each joins the gloo process group
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(script), str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    record = json.loads((tmp_path / "result.json").read_text())
    assert record["world"] == 2
    distributed = load_file(tmp_path / "weights.safetensors")

    lm = sharp_tiny()
    before = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
    single = train(lm, COMPONENTS, golf_split(), quick(**CONFIG), progress=False)
    assert single.world_size == 1
    for one, two in zip(single.history, record["history"], strict=True):
        for key in ("forget", "maintain", "general", "grad_norm"):
            assert two[key] == pytest.approx(one[key], rel=1e-4), key
    params = dict(lm.model.named_parameters())
    assert set(distributed) == {s.param for s in single.slices}
    for name, tensor in distributed.items():
        assert not torch.equal(tensor, before[name])  # it trained
        torch.testing.assert_close(tensor, params[name].detach(), atol=1e-4, rtol=0)
