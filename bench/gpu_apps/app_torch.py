"""A PyTorch process holding GPU state: a tensor of N MiB and a step counter kept on the GPU.
Prints a tick every 100 ms; on SIGUSR1 it verifies the tensor on the GPU.

The reference measurement's app_torch.py (issue 17, the team's shared/gpu/), unchanged in what
it does; only its layout follows the repository's lint rules."""

import os
import signal
import sys
import time

import torch

mib = int(sys.argv[1]) if len(sys.argv) > 1 else 2048
n = mib * 1024 * 1024 // 4
g = torch.Generator(device="cuda").manual_seed(1234)
x = torch.rand(n, device="cuda", generator=g)
ref = float(x.double().sum())
step = torch.zeros(1, dtype=torch.int64, device="cuda")
asked = []


def on_usr1(*_):
    asked.append(True)


signal.signal(signal.SIGUSR1, on_usr1)
print(f"ready pid={os.getpid()} mib={mib}", flush=True)
while True:
    step += 1
    print(f"tick {int(step.item())}", flush=True)
    if asked:
        asked.clear()
        got = float(x.double().sum())
        print(
            f"verify mismatches={0 if got == ref else 1} sum={got} ref={ref}"
            f" counter={int(step.item())}",
            flush=True,
        )
    time.sleep(0.1)
