"""The real agent, with a fault trigger: the fault-injection suite's entry point.

    python3 /apps/fault_agent.py run ...        (instead of python3 -m podckpt.agent run ...)

$AGENT_FAULT chooses one fault (nothing else differs from the agent a pod runs):

    kill:<phase>:<n>[@<k>]   SIGKILL at the n-th system call the agent makes inside the k-th
                             (default 1st) run of <phase>: the agent stops there and the suite
                             sends SIGKILL (PID 1 cannot kill itself). The agent is PID 1 of the
                             sandbox: the whole container dies, as at the end of a grace period.
    killafter:<phase>:<s>[@<k>]
                             SIGKILL s seconds after the k-th run of <phase> began: a point
                             inside CRIU's own work, where the agent itself makes no call.
    fill:<phase>[@<k>]       fill the checkpoint store's file system (ENOSPC from then on) as
                             the k-th run of <phase> begins.

A "system call" is a call into the `posix` module (os.open, os.write, os.fsync, os.replace,
os.read, waitpid, ...): every point where the agent changes or reads the store is one. Phases
are functions of the agent: dump (checkpoint.dump, without the commit inside it), commit
(Store.commit), restore (restore.restore_latest), save (files.save), criu (criu.run),
latest (fsio.write_atomic of LATEST). When a phase returns, one line on stderr says how many
calls it made (`{"fault": "calls", ...}`): the suite draws its kill points from those counts.
"""

import json
import os
import sys
import threading
import time

PHASES = {
    "dump": ("dump", "/agent/checkpoint.py"),
    "commit": ("commit", "/agent/store.py"),
    "restore": ("restore_latest", "/agent/restore.py"),
    "save": ("save", "/agent/files.py"),
    "criu": ("run", "/agent/criu.py"),
    "latest": ("write_atomic", "/agent/fsio.py"),
}
_BY_CODE = {code: phase for phase, code in PHASES.items()}


def _parse(spec):
    action, _, rest = spec.partition(":")
    rest, _, occurrence = rest.partition("@")
    phase, _, value = rest.partition(":")
    if phase not in PHASES:
        raise SystemExit(f"fault_agent: unknown phase {phase!r}")
    return action, phase, value, int(occurrence or 1)


def _store_volume():
    args = sys.argv[1:]
    for index, arg in enumerate(args):
        if arg == "--store" and index + 1 < len(args):
            return os.path.dirname(args[index + 1].rstrip("/"))
    return "/store"


def _fill(volume):
    fd = os.open(os.path.join(volume, "filler"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for size in (1 << 20, 4096, 512, 1):
            chunk = b"\0" * size
            try:
                while True:
                    os.write(fd, chunk)
            except OSError:
                continue
    finally:
        os.close(fd)
    print(json.dumps({"fault": "filled", "volume": volume}), file=sys.stderr, flush=True)


def _kill():
    """Stop here and ask to be killed: the agent is PID 1 of its PID namespace, which cannot
    SIGKILL itself (the kernel drops it), so the suite sends the SIGKILL from outside, as the
    kubelet would, as soon as it reads this line. The calling thread never goes on."""
    print(json.dumps({"fault": "kill-me"}), file=sys.stderr, flush=True)
    while True:
        time.sleep(3600)


def install(spec):
    action, target, value, occurrence = _parse(spec)
    state = {"depth": dict.fromkeys(PHASES, 0), "runs": dict.fromkeys(PHASES, 0), "calls": {}}
    depth, runs, calls = state["depth"], state["runs"], state["calls"]

    def active(phase):
        return depth[phase] > 0 and (phase != "dump" or depth["commit"] == 0)

    def on_call(phase, frame):
        if phase == "latest" and not str(frame.f_locals.get("path", "")).endswith("/LATEST"):
            return False
        depth[phase] += 1
        if depth[phase] == 1:
            runs[phase] += 1
            calls[phase] = 0
            if phase == target and runs[phase] == occurrence:
                if action == "fill":
                    _fill(_store_volume())
                elif action == "killafter":
                    timer = threading.Timer(float(value), _kill)
                    timer.daemon = True
                    timer.start()
        return True

    entered = {}
    phases_of = {}  # code object -> phase or None: the lookup runs on every Python call

    def profile(frame, event, arg):
        if event == "call":
            code = frame.f_code
            phase = phases_of.get(code, "?")
            if phase == "?":
                phase = phases_of[code] = _BY_CODE.get((code.co_name, _suffix(code.co_filename)))
            if phase is not None and on_call(phase, frame):
                entered[id(frame)] = phase
        elif event == "return":
            phase = entered.pop(id(frame), None)
            if phase is not None:
                depth[phase] -= 1
                if depth[phase] == 0:
                    line = {"fault": "calls", "phase": phase, "run": runs[phase]}
                    line["calls"] = calls[phase]
                    print(json.dumps(line), file=sys.stderr, flush=True)
        elif event == "c_call" and getattr(arg, "__module__", None) == "posix":
            for phase in PHASES:
                if active(phase):
                    calls[phase] += 1
                    if (
                        action == "kill"
                        and phase == target
                        and runs[phase] == occurrence
                        and calls[phase] == int(value)
                    ):
                        _kill()

    sys.setprofile(profile)
    threading.setprofile(profile)


def _suffix(filename):
    for _, suffix in PHASES.values():
        if filename.endswith(suffix):
            return suffix
    return None


if __name__ == "__main__":
    spec = os.environ.pop("AGENT_FAULT", "")
    if spec:
        install(spec)
    sys.path.insert(0, os.environ.get("PODCKPT_SRC", "/opt/podckpt"))
    from podckpt.agent.cli import main

    main(sys.argv[1:])
