"""GPU checkpoint/restore under the agent on a real NVIDIA GPU; writes the "GPU" section of
docs/benchmarks.md (only that section).

    sudo python3 bench/gpu.py [--criu PATH] [--cuda-mib 8192] [--torch-mib 4096] [--work DIR]
    sudo python3 bench/gpu.py --standin   # no GPU: the same plumbing, stand-in driver, no doc

Per program (the CUDA C program bench/gpu_apps/app.cu, built with nvcc, and the PyTorch
program bench/gpu_apps/app_torch.py, both from the reference measurement of issue 17):
1. `podckpt-agent run` (this checkout's `src/`) starts it as PID 1 of a new PID + mount
   namespace with a checkpointed pod's capabilities (a runtime's default set plus
   CHECKPOINT_RESTORE, no SYS_ADMIN: CRIU runs --unprivileged), as the reference's
   run-caps.sh ran it; the store is on disk under --work;
2. SIGTERM to the agent: lock → GPU checkpoint → CRIU dump → commit → exit 202 (the
   "container" is gone: its namespace dies with the agent);
3. a new agent in a new namespace restores it: CRIU restore → GPU restore → unlock; the tick
   counter (kept on the GPU) must continue, and SIGUSR1 makes the program verify its whole
   GPU buffer (`mismatches=0`).
The raw sequence (the driver API and CRIU without the agent, the reference's cr.py, ported to
`raw` below) runs side by side on the CUDA C program for the ratios the issue targets.

Needs: root, an NVIDIA GPU with driver >= 570, nvcc, util-linux `unshare` and `setpriv`, CRIU
>= 4.2 (`--criu`, else $PODCKPT_CRIU, else `criu` on PATH; the agent bundle's `criu/criu` runs
anywhere), Python >= 3.11 (this one runs the agent), and for the PyTorch program a python3 with
torch (`--torch-python`, default: this interpreter; skipped with a note when torch is missing).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import report

from podckpt.api.contract import ExitCode

ROOT = Path(__file__).resolve().parent.parent
APPS = Path(__file__).resolve().parent / "gpu_apps"
STANDIN_APP = ROOT / "tests" / "agent" / "apps" / "gpu_app.py"
#: A runtime's default capabilities plus CHECKPOINT_RESTORE (the reference's run-caps.sh).
CAPS = (
    "-all,+chown,+dac_override,+fowner,+fsetid,+kill,+setgid,+setuid,+setpcap,+net_bind_service,"
    "+net_raw,+sys_chroot,+mknod,+audit_write,+setfcap,+checkpoint_restore"
)
TICK = re.compile(r"^(?:tick|count) (\d+)$", re.MULTILINE)
#: The raw sequence of the issue's 8 GiB row (reference measurement, H200, driver 580.159).
REFERENCE = {"checkpoint_s": 3.91, "dump_s": 4.70, "restore_s": 4.28, "gpu_restore_s": 1.38}


def namespaced(argv: list[str]) -> list[str]:
    return [
        "unshare", "--pid", "--mount", "--fork", "--mount-proc", "--kill-child",
        "setpriv", "--bounding-set", CAPS, "--inh-caps", CAPS, *argv,
    ]  # fmt: skip


class Proc:
    """A process whose stdout and stderr are drained into memory (as a container runtime's
    shim does: the agent's stdout is a pipe, so the restore can hand the new one over)."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.popen = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
        )
        self._out: list[bytes] = []
        self._err: list[bytes] = []
        for pipe, sink in ((self.popen.stdout, self._out), (self.popen.stderr, self._err)):
            threading.Thread(target=self._drain, args=(pipe, sink), daemon=True).start()

    @staticmethod
    def _drain(pipe: Any, sink: list[bytes]) -> None:
        while chunk := os.read(pipe.fileno(), 65536):
            sink.append(chunk)

    def out(self) -> str:
        return b"".join(self._out).decode(errors="replace")

    def err(self) -> str:
        return b"".join(self._err).decode(errors="replace")

    def records(self, phase: str, outcome: str = "ok") -> list[dict[str, Any]]:
        found = []
        for line in self.err().splitlines():
            if line.startswith("{"):
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if record.get("phase") == phase and record.get("outcome") == outcome:
                    found.append(record)
        return found

    def ticks(self) -> list[int]:
        return [int(t) for t in TICK.findall(self.out())]

    def ns_init(self) -> int:
        """Host PID of PID 1 of the namespace (unshare's only child: the agent)."""
        children = Path(f"/proc/{self.popen.pid}/task/{self.popen.pid}/children")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            text = children.read_text().split() if children.exists() else []
            if text:
                return int(text[0])
            time.sleep(0.01)
        raise RuntimeError("the namespace's PID 1 did not appear")

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(30)


def wait_until(pred: Any, secs: float, what: str, proc: Proc | None = None) -> Any:
    deadline = time.monotonic() + secs
    while time.monotonic() < deadline:
        got = pred()
        if got:
            return got
        if proc is not None and proc.popen.poll() is not None:
            break
        time.sleep(0.05)
    got = pred()
    if got:
        return got
    tail = (
        f"\n--- stdout ---\n{proc.out()[-2000:]}\n--- stderr ---\n{proc.err()[-4000:]}"
        if proc
        else ""
    )
    raise RuntimeError(f"timed out waiting for {what}{tail}")


# -- the raw sequence (the reference's cr.py, run inside the namespace) ------------------------


def raw(criu: str, work: Path, name: str, argv: list[str]) -> dict[str, Any]:
    """Lock → checkpoint → criu dump → criu restore → restore → unlock, as cr.py measured it
    (same calls, same CRIU options plus --unprivileged as in run-caps.sh)."""
    cuda = ctypes.CDLL("libcuda.so.1")
    result: dict[str, Any] = {"name": name, "cuInit": cuda.cuInit(0)}
    out_path, img = work / f"{name}.out", work / f"{name}.img"

    def call(fn: str, pid: int) -> None:
        t = time.monotonic()
        rc = getattr(cuda, fn)(ctypes.c_int(pid), None)
        result[fn] = {"rc": rc, "s": round(time.monotonic() - t, 3)}
        if rc:
            raise RuntimeError(f"{fn} -> CUresult {rc}")

    def ticks() -> list[int]:
        return [int(t) for t in TICK.findall(out_path.read_text())]

    def run_criu(*args: str) -> float:
        t = time.monotonic()
        done = subprocess.run([criu, *args, "--unprivileged"], capture_output=True, check=False)
        secs = round(time.monotonic() - t, 3)
        result[args[0]] = {"rc": done.returncode, "s": secs}
        if done.returncode:
            log = img / ("dump.log" if args[0] == "dump" else "restore.log")
            raise RuntimeError(f"criu {args[0]} failed: {log.read_text()[-2000:]}")
        return secs

    def wait(pred: Any, secs: float, what: str) -> Any:
        deadline = time.monotonic() + secs
        while time.monotonic() < deadline:
            got = pred()
            if got:
                return got
            time.sleep(0.1)
        raise RuntimeError("timed out waiting for " + what)

    with out_path.open("w") as out:
        app = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    pid = app.pid
    try:
        wait(lambda: "ready" in out_path.read_text(), 300, "ready")
        wait(lambda: len(ticks()) >= 5, 60, "5 ticks")
        call("cuCheckpointProcessLock", pid)
        call("cuCheckpointProcessCheckpoint", pid)
        before = ticks()[-1]
        shutil.rmtree(img, ignore_errors=True)
        img.mkdir()
        common = ("--ext-unix-sk", "--file-locks", "-v4")
        run_criu("dump", "-t", str(pid), "-D", str(img), "-o", "dump.log", *common)
        app.wait(timeout=30)
        result["image_mib"] = round(sum(f.stat().st_size for f in img.iterdir()) / 2**20, 1)
        run_criu("restore", "-d", "-D", str(img), "-o", "restore.log", *common)
        call("cuCheckpointProcessRestore", pid)
        call("cuCheckpointProcessUnlock", pid)
        wait(lambda: ticks()[-1] >= before + 5, 60, "5 ticks after restore")
        after = ticks()
        result["ticks_continue"] = after[after.index(before) + 1] == before + 1
        os.kill(pid, signal.SIGUSR1)
        verify = wait(
            lambda: next(
                (ln for ln in out_path.read_text().splitlines() if ln.startswith("verify")), None
            ),
            120,
            "verify",
        )
        result["verify"] = verify
        result["ok"] = result["ticks_continue"] and " mismatches=0 " in f"{verify} "
    except Exception as exc:
        result["error"] = repr(exc)
        result["ok"] = False
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(img, ignore_errors=True)
    return result


def run_raw(
    criu: str, work: Path, name: str, argv: list[str], env: dict[str, str]
) -> dict[str, Any]:
    cmd = namespaced([sys.executable, __file__, "_raw", criu, str(work), name, "--", *argv])
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900, check=False)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError(f"raw sequence printed nothing: {done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


# -- the agent -----------------------------------------------------------------------------


def agent_argv(store: Path, app: list[str]) -> list[str]:
    return namespaced(
        [sys.executable, "-m", "podckpt.agent", "run", "--store", str(store), "--container", "app",
         "--", *app]
    )  # fmt: skip


def agent_run(
    name: str, app: list[str], env: dict[str, str], work: Path, gpu_env: Any
) -> dict[str, Any]:
    """One checkpoint (SIGTERM) and one restore in a new namespace; `gpu_env(n)` gives the
    environment of the n-th "container" (a new stand-in GPU each time, or nothing)."""
    store = work / f"store-{name}"
    shutil.rmtree(store, ignore_errors=True)
    store.mkdir(parents=True)
    first = Proc(agent_argv(store / "app", app), {**env, **gpu_env(1)})
    try:
        wait_until(lambda: len(first.ticks()) >= 5, 600, f"{name}: 5 ticks", first)
        agent = first.ns_init()
        t0 = time.monotonic()
        os.kill(agent, signal.SIGTERM)
        code = first.popen.wait(900)
        sigterm_to_exit = time.monotonic() - t0
        if code != ExitCode.CHECKPOINTED:
            raise RuntimeError(
                f"{name}: agent exited {code}, not {int(ExitCode.CHECKPOINTED)}\n"
                f"{first.err()[-4000:]}"
            )
        dump, commit = first.records("dump")[0], first.records("commit")[0]
        last = first.ticks()[-1]
    finally:
        first.kill()
    second = Proc(agent_argv(store / "app", app), {**env, **gpu_env(2)})
    try:
        restore = wait_until(lambda: second.records("restore"), 900, f"{name}: restore", second)[0]
        wait_until(lambda: len(second.ticks()) >= 5, 120, f"{name}: ticks after restore", second)
        agent = second.ns_init()
        os.kill(agent, signal.SIGUSR1)  # forwarded to the application
        verify = wait_until(
            lambda: re.findall(r"^verify .*$", second.out(), re.MULTILINE),
            300,
            f"{name}: verify",
            second,
        )[0]
        first_after = second.ticks()[0]
    finally:
        second.kill()
    shutil.rmtree(store, ignore_errors=True)
    gpu_dump, gpu_restore = dump.get("gpu") or {}, restore.get("gpu") or {}
    return {
        "name": name,
        "lock_s": gpu_dump.get("lock_s"),
        "gpu_checkpoint_s": gpu_dump.get("checkpoint_s"),
        "criu_dump_s": dump["duration_s"],
        "commit_s": commit["duration_s"],
        "image_bytes": commit["bytes"],
        "sigterm_to_exit_s": round(sigterm_to_exit, 3),
        "restore_total_s": restore["duration_s"],
        "criu_restore_s": restore["criu_s"],
        "gpu_restore_s": gpu_restore.get("restore_s"),
        "unlock_s": gpu_restore.get("unlock_s"),
        "continued": first_after == last + 1,
        "first_after": first_after,
        "last_before": last,
        "verify": verify,
        "ok": first_after == last + 1 and "mismatches=0" in verify,
    }


# -- the machine ---------------------------------------------------------------------------


def find_criu(explicit: str | None) -> str:
    criu = explicit or os.environ.get("PODCKPT_CRIU") or shutil.which("criu")
    if not criu or not os.access(criu, os.X_OK):
        sys.exit("bench/gpu.py: no CRIU: pass --criu PATH (the agent bundle's criu/criu works)")
    return os.path.abspath(criu)


def gpu_facts() -> str:
    smi = shutil.which("nvidia-smi")
    if smi:
        done = subprocess.run(
            [smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if done.returncode == 0 and done.stdout.strip():
            return "; ".join(done.stdout.strip().splitlines())
    return "GPU: nvidia-smi unavailable"


def has_torch(python: str) -> bool:
    done = subprocess.run(
        [python, "-c", "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"],
        capture_output=True, check=False,
    )  # fmt: skip
    return done.returncode == 0


def build_cuda_app(work: Path) -> Path:
    nvcc = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
    binary = work / "app"
    done = subprocess.run(
        [nvcc, "-O2", "-o", str(binary), str(APPS / "app.cu")], capture_output=True, text=True,
        check=False,
    )  # fmt: skip
    if done.returncode != 0:
        sys.exit(f"bench/gpu.py: nvcc failed: {done.stderr[-2000:]}")
    return binary


# -- report --------------------------------------------------------------------------------


def ratio(agent: float | None, raw_s: float | None) -> str:
    return f"{agent / raw_s:.2f}x" if agent is not None and raw_s else "n/a"


def section(args: argparse.Namespace, facts: dict[str, str], raw_result: dict[str, Any] | None,
            runs: list[dict[str, Any]], notes: list[str]) -> str:  # fmt: skip
    out = [
        "## GPU",
        "",
        f"Machine: {facts['machine']}; {facts['gpu']}. CRIU {facts['criu']}. Load average"
        f" {facts['load_before']} before, {facts['load_after']} after. Command: `sudo python3"
        f" bench/gpu.py --cuda-mib {args.cuda_mib} --torch-mib {args.torch_mib}`. The agent"
        " (this checkout's `src/`) as PID 1 of a new PID + mount namespace with a pod's"
        " capabilities (CRIU --unprivileged), store on disk; one run per program. Seconds.",
        "",
        "| program | lock | GPU → host | CRIU dump | commit | image | SIGTERM → exit |"
        " agent restore (all) | CRIU restore | host → GPU (+ unlock) | continued, verified |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        out.append(
            f"| {r['name']} | {r['lock_s']} | {r['gpu_checkpoint_s']} | {r['criu_dump_s']}"
            f" | {r['commit_s']} | {r['image_bytes'] / 2**20:,.0f} MiB | {r['sigterm_to_exit_s']}"
            f" | {r['restore_total_s']} | {r['criu_restore_s']} | {r['gpu_restore_s']}"
            f" (+ {r['unlock_s']}) | {'yes' if r['continued'] else 'NO'},"
            f" {'yes' if 'mismatches=0' in r['verify'] else 'NO'} |"
        )
    cuda_run = runs[0] if runs else None  # the raw sequence ran the same program
    if raw_result and raw_result.get("ok") and cuda_run:
        raw_ckpt = raw_result["cuCheckpointProcessCheckpoint"]["s"] + raw_result["dump"]["s"]
        raw_rest = raw_result["restore"]["s"] + raw_result["cuCheckpointProcessRestore"]["s"]
        agent_ckpt = cuda_run["gpu_checkpoint_s"] + cuda_run["criu_dump_s"]
        agent_rest = cuda_run["criu_restore_s"] + cuda_run["gpu_restore_s"]
        out += [
            "",
            f"Side by side on the {cuda_run['name']} program, raw sequence (driver API"
            f" + CRIU, no agent) measured in the same run: checkpoint + dump {raw_ckpt:.2f} s,"
            f" CRIU restore + GPU restore {raw_rest:.2f} s (the issue's reference: 3.91 + 4.70,"
            " 4.28 + 1.38).",
            "",
            "| ratio to the raw sequence (target <= 1.15x) | checkpoint | restore |",
            "|---|---|---|",
            f"| the agent's GPU + CRIU steps | {ratio(agent_ckpt, raw_ckpt)}"
            f" | {ratio(agent_rest, raw_rest)} |",
            f"| the agent end to end (SIGTERM → exit incl. commit; restore incl. checksums)"
            f" | {ratio(cuda_run['sigterm_to_exit_s'], raw_ckpt)}"
            f" | {ratio(cuda_run['restore_total_s'], raw_rest)} |",
        ]
    elif raw_result and not raw_result.get("ok"):
        notes.append(f"raw sequence failed: {raw_result.get('error')}")
    if notes:
        out += ["", *(f"- {n}" for n in notes)]
    return "\n".join(out)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_raw":
        criu, work, name = sys.argv[2], Path(sys.argv[3]), sys.argv[4]
        argv = sys.argv[sys.argv.index("--") + 1 :]
        print(json.dumps(raw(criu, work, name, argv)), flush=True)
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--criu")
    parser.add_argument("--cuda-mib", type=int, default=8192)
    parser.add_argument("--torch-mib", type=int, default=4096)
    parser.add_argument("--torch-python", default=sys.executable)
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/podckpt-gpu-bench"))
    parser.add_argument("--no-raw", action="store_true", help="skip the raw sequence")
    parser.add_argument("--no-doc", action="store_true", help="print, do not write the doc")
    parser.add_argument("--standin", action="store_true", help="no GPU: stand-in driver")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/gpu.py: run as root (CRIU, namespaces)")
    if sys.version_info < (3, 11):  # noqa: UP036 - run by a GPU machine's python3, any version
        sys.exit("bench/gpu.py: the agent needs Python >= 3.11: run this script with one")
    for tool in ("unshare", "setpriv"):
        if shutil.which(tool) is None:
            sys.exit(f"bench/gpu.py: {tool} (util-linux) not found")
    criu = find_criu(args.criu)
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "PODCKPT_CRIU": criu}
    notes: list[str] = []
    programs: list[tuple[str, list[str]]] = []
    if args.standin:
        sys.path.insert(0, str(ROOT / "src"))
        from podckpt.devtools.cuda_standin import H200, StandinGpu, build_library  # noqa: PLC0415

        libdir = build_library(work / "standin-lib")
        env["LD_LIBRARY_PATH"] = str(libdir)
        gpus = work / "standin-gpus"
        shutil.rmtree(gpus, ignore_errors=True)
        counter = iter(range(1, 1000))
        link = work / "standin-gpu"

        def gpu_env(_: int) -> dict[str, str]:
            """A new GPU for each "container", always at the same path: a restored process
            keeps the environment it was dumped with, as it keeps /dev/nvidia* paths."""
            path = gpus / f"gpu{next(counter)}"
            StandinGpu(path, [(H200, 1)])
            tmp = link.with_name(link.name + ".new")
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(path)
            tmp.replace(link)
            return {"STANDIN_GPU_DIR": str(link)}

        app = [sys.executable, str(STANDIN_APP), "--mib", str(args.cuda_mib)]
        programs.append((f"stand-in ({args.cuda_mib} MiB)", app))
        raw_env = {**env, **gpu_env(0)}
    else:

        def gpu_env(_: int) -> dict[str, str]:
            return {}

        app = [str(build_cuda_app(work)), str(args.cuda_mib)]
        programs.append((f"CUDA C ({args.cuda_mib} MiB)", app))
        if has_torch(args.torch_python):
            torch_app = [args.torch_python, str(APPS / "app_torch.py"), str(args.torch_mib)]
            programs.append((f"PyTorch ({args.torch_mib} MiB tensor)", torch_app))
        else:
            notes.append(f"PyTorch program skipped: no torch with CUDA in {args.torch_python}")
        raw_env = env
    facts = {
        "machine": report.machine(),
        "gpu": gpu_facts(),
        "criu": subprocess.run([criu, "--version"], capture_output=True, text=True, check=False)
        .stdout.split("\n")[0]
        .removeprefix("Version: "),
        "load_before": f"{os.getloadavg()[0]:.1f}",
    }
    print(facts, flush=True)
    raw_result = None
    if not args.no_raw:
        try:
            raw_result = run_raw(criu, work, "raw", app, raw_env)
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            raw_result = {"ok": False, "error": str(exc)}
        print(json.dumps(raw_result), flush=True)
    runs, failed = [], []
    for name, argv in programs:
        try:  # one program failing must not cost the other's figures
            result = agent_run(name, argv, env, work, gpu_env)
        except (RuntimeError, OSError, subprocess.SubprocessError, KeyError, IndexError) as exc:
            print(f"{name}: FAILED: {exc}", flush=True)
            notes.append(f"{name}: failed: {str(exc).splitlines()[0]}")
            failed.append(name)
            continue
        print(json.dumps(result), flush=True)
        runs.append(result)
    facts["load_after"] = f"{os.getloadavg()[0]:.1f}"
    text = section(args, facts, raw_result, runs, notes)
    print(text)
    failed += [r["name"] for r in runs if not r["ok"]]
    if raw_result is not None and not raw_result.get("ok"):
        failed.append("raw sequence")
    if args.standin or args.no_doc:
        print("stand-in self-test: " + ("FAILED " + ", ".join(failed) if failed else "ok"))
    elif not failed:
        report.write_section("gpu", text)
    if failed:
        sys.exit(f"bench/gpu.py: failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
