"""Issues 11.5 and 16.1 with the real agent and real CRIU: checkpoints at rest (private store,
exact modes and owners of saved files, HMAC with the store key) and a committed checkpoint
that survives a container whose command does not exist."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest
from agent_harness import AgentHarness, counts, phases, stop_and_wait, wait_count
from test_environment import RUNTIME_DEFAULT

from podckpt.agent.capabilities import REQUIRED_CAPABILITIES
from podckpt.agent.exitcodes import AGENT_FAILURE, CHECKPOINTED
from podckpt.agent.manifest import Trust
from podckpt.agent.store import Store
from podckpt.api import contract
from podckpt.devtools.sandbox import Bind, wait_for

pytestmark = pytest.mark.criu

COUNTER = ["python3", "/apps/counter.py"]
KEY_IN_SANDBOX = "/etc/podinfo/store-key"
KEY_IN_BUNDLE = f"/.podckpt-test/{contract.STORE_KEY_IN_BUNDLE}"
#: The agent with the pod's fsGroup (2000) among its supplementary groups, as the runtime
#: gives it; the agent hands its groups on to the application.
FS_GROUP_AGENT = ("setpriv", "--groups", "2000", "python3", "-m", "podckpt.agent")


def _keyed(agent: AgentHarness, key: bytes) -> dict[str, str]:
    (agent.labels_dir / "store-key").write_bytes(key)
    return {contract.Env.STORE_KEY: KEY_IN_SANDBOX}


def test_argv_that_does_not_exist_keeps_the_checkpoint(agent: AgentHarness) -> None:
    first = agent.start(COUNTER)
    wait_count(first, 5)
    assert stop_and_wait(first) == CHECKPOINTED
    committed = agent.latest()
    reached = counts(first)[-1]

    broken = agent.start(["/no/such/program"])
    assert broken.wait(30) == AGENT_FAILURE
    assert "cannot start /no/such/program" in broken.stderr_text()
    assert "Traceback" not in broken.stderr_text()
    assert agent.latest() == committed
    store = Store(agent.app_store, "app")
    store.verify(store.generation(committed or ""))

    fixed = agent.start(COUNTER)  # the command fixed: the checkpoint is still there
    resumed = wait_count(fixed, 3)
    assert phases(fixed, "restore", "ok")[0]["generation"] == committed
    assert resumed[0] > reached - 3
    fixed.destroy()


def test_store_is_private_and_saved_files_keep_mode_and_owner(agent: AgentHarness) -> None:
    make = (
        "import os, time\n"
        "os.makedirs('/srv/app', exist_ok=True)\n"
        "for name, mode in (('key.pem', 0o600), ('tool', 0o4755), ('shared', 0o2750)):\n"
        "    path = '/srv/app/' + name\n"
        "    with open(path, 'w') as f: f.write(name)\n"
        "    os.chown(path, 1000, 1001)\n"
        "    os.chmod(path, mode)\n"
        "n = 0\n"
        "while True:\n"
        "    n += 1; print(f'count {n}', flush=True); time.sleep(0.05)\n"
    )
    argv = ["python3", "-c", make]
    annotations = {"memverge.ai/checkpoint-files": "/srv/app"}
    first = agent.start(argv, annotations=annotations)
    wait_count(first, 5)
    assert stop_and_wait(first) == CHECKPOINTED

    for dirpath, dirnames, filenames in os.walk(agent.app_store):
        for name in dirnames:
            st = os.lstat(Path(dirpath) / name)
            assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o700, 0), Path(dirpath) / name
        for name in filenames:
            st = os.lstat(Path(dirpath) / name)
            assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o600, 0), Path(dirpath) / name
    assert stat.S_IMODE(os.stat(agent.app_store).st_mode) == 0o700

    second = agent.start(argv, annotations=annotations)
    assert wait_for(lambda: phases(second, "restore", "ok"), 20), second.stderr_text()
    done = second.exec(["stat", "-c", "%n %a %u %g", "/srv/app/key.pem", "/srv/app/tool"])
    assert done.stdout.decode().split("\n")[:2] == [
        "/srv/app/key.pem 600 1000 1001",
        "/srv/app/tool 4755 1000 1001",
    ]
    shared = second.exec(["stat", "-c", "%a %u %g", "/srv/app/shared"]).stdout.decode().strip()
    assert shared == "2750 1000 1001"
    second.destroy()


def test_manifests_are_signed_and_a_wrong_key_is_refused(agent: AgentHarness) -> None:
    env = _keyed(agent, b"namespace-key-" * 3)
    first = agent.start(COUNTER, env=env)
    wait_count(first, 5)
    agent.checkpoint(first)
    wait_count(first, len(counts(first)) + 5)
    assert stop_and_wait(first) == CHECKPOINTED
    newest = agent.latest()
    manifest = json.loads((agent.app_store / "generations" / f"{newest}/manifest.json").read_text())
    assert manifest["hmac"]["alg"] == "HMAC-SHA256"
    assert manifest["store"] == "store/app"

    # Another namespace's key (a volume moved or reused): refused, never a crash loop.
    stranger = agent.start(COUNTER, env=_keyed(agent, b"another-namespace" * 2))
    wait_count(stranger, 3)
    assert counts(stranger)[0] == 1
    errors = [f["error"] for f in phases(stranger, "restore", "failed")]
    assert len(errors) == 2
    assert all("HMAC mismatch" in e for e in errors), errors
    assert phases(stranger, "restore", "fallback-fresh")
    stranger.destroy()


def test_forged_generation_is_refused_and_the_signed_one_restores(agent: AgentHarness) -> None:
    """Whoever can write the volume but not read the key cannot make the agent restore
    images of their choosing: recomputed checksums do not help without the HMAC."""
    key = b"namespace-key-" * 3
    env = _keyed(agent, key)
    first = agent.start(COUNTER, env=env)
    wait_count(first, 5)
    good = agent.checkpoint(first)
    wait_count(first, len(counts(first)) + 5)
    assert stop_and_wait(first) == CHECKPOINTED
    forged = agent.latest()
    assert forged is not None
    gen = agent.app_store / "generations" / forged
    path = gen / "manifest.json"
    body = json.loads(path.read_text())
    pages = max((gen / "images").glob("pages-*.img"), key=lambda p: p.stat().st_size)
    data = bytearray(pages.read_bytes())
    data[len(data) // 2] ^= 0xFF
    pages.write_bytes(bytes(data))
    rel = str(pages.relative_to(gen))
    body["checksums"][rel] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    path.write_text(json.dumps(body))
    keyless = Store(agent.app_store, "app", Trust(None))
    keyless.verify(keyless.generation(forged))  # sha256 alone is fooled

    second = agent.start(COUNTER, env=env)
    wait_count(second, 3)
    (failed,) = phases(second, "restore", "failed")
    assert failed["generation"] == forged
    assert "HMAC mismatch" in failed["error"]
    ok = phases(second, "restore", "ok")[0]
    assert (ok["generation"], ok["authenticated"]) == (good, True)
    second.destroy()


def test_setuid_file_planted_on_the_volume_is_refused(agent: AgentHarness) -> None:
    """An agent without a key checks sha256 only; the setuid rule still holds: the agent
    never creates a setuid/setgid file it did not record saving itself."""
    first = agent.start(COUNTER)
    wait_count(first, 5)
    good = agent.checkpoint(first)
    wait_count(first, len(counts(first)) + 5)
    assert stop_and_wait(first) == CHECKPOINTED
    planted = agent.latest()
    gen = agent.app_store / "generations" / str(planted)
    (gen / "files" / "usr/local/bin").mkdir(parents=True)
    (gen / "files" / "usr/local/bin/rootshell").write_bytes(b"#!/bin/sh\n")
    entries = json.loads((gen / "files.json").read_text())
    entries.append(
        {
            "path": "/usr/local/bin/rootshell",
            "kind": "file",
            "mode": 0o4755,
            "uid": 0,
            "gid": 0,
            "mtime_ns": 0,
            "atime_ns": 0,
            "size": 10,
        }
    )
    (gen / "files.json").write_text(json.dumps(entries))
    manifest_path = gen / "manifest.json"
    body = json.loads(manifest_path.read_text())
    for rel in ("files.json", "files/usr/local/bin/rootshell"):
        data = (gen / rel).read_bytes()
        body["checksums"][rel] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    manifest_path.write_text(json.dumps(body))

    second = agent.start(COUNTER)
    wait_count(second, 3)
    (failed,) = phases(second, "restore", "failed")
    assert "setuid/setgid file /usr/local/bin/rootshell" in failed["error"]
    assert phases(second, "restore", "ok")[0]["generation"] == good
    assert second.exec(["test", "-e", "/usr/local/bin/rootshell"]).returncode == 1
    second.destroy()


def test_a_non_root_application_cannot_read_the_store_key_or_the_store(
    agent: AgentHarness, tmp_path: Path
) -> None:
    """The key where the bundle init container puts it (a 0400 file in a 0700 directory,
    root's, `install --key`), group-owned by the pod's fsGroup as the kubelet would make it:
    the agent signs and verifies with it, the application (runAsUser 1000, fsGroup 2000 among
    its groups) can read neither the key nor the store."""
    bundle = tmp_path / "bundle"
    keydir = bundle / contract.STORE_KEY_IN_BUNDLE.rsplit("/", 1)[0]
    keydir.mkdir(parents=True)
    key = bundle / contract.STORE_KEY_IN_BUNDLE
    key.write_bytes(b"namespace-key-" * 3)
    os.chown(keydir, 0, 2000)
    os.chown(key, 0, 2000)
    keydir.chmod(0o700)
    key.chmod(0o400)
    probe = (
        "import os, time\n"
        "def tryread(path):\n"
        "    try:\n"
        "        open(path, 'rb').read(); return 'READ'\n"
        "    except PermissionError:\n"
        "        return 'DENIED'\n"
        "n = 0\n"
        "while True:\n"
        "    n += 1\n"
        f"    print(f'probe key={{tryread({KEY_IN_BUNDLE!r})}}'\n"
        "          f' store={tryread(\"/store/app/store.json\")}'\n"
        "          f' groups={os.getgroups()} uid={os.getuid()}', flush=True)\n"
        "    print(f'count {n}', flush=True)\n"
        "    time.sleep(0.05)\n"
    )
    env = {contract.Env.STORE_KEY: KEY_IN_BUNDLE}
    # What the webhook hands over for runAsUser/runAsGroup 1000 and fsGroup 2000.
    user = ["--user", "1000:1000", "--supplementary-groups", "2000"]
    caps = sorted({*RUNTIME_DEFAULT, *REQUIRED_CAPABILITIES})
    first = agent.start(
        ["python3", "-c", probe],
        env=env,
        capabilities=caps,
        binds=[Bind(bundle, "/.podckpt-test", True)],
        entry=FS_GROUP_AGENT,
        agent_args=user,
    )
    wait_count(first, 3)
    line = first.stdout_text().splitlines()[0]
    assert line == "probe key=DENIED store=DENIED groups=[2000] uid=1000", line
    assert stop_and_wait(first) == CHECKPOINTED
    second = agent.start(
        ["python3", "-c", probe],
        env=env,
        capabilities=caps,
        binds=[Bind(bundle, "/.podckpt-test", True)],
        entry=FS_GROUP_AGENT,
        agent_args=user,
    )
    wait_count(second, 3)
    assert phases(second, "restore", "ok")[0]["authenticated"] is True
    second.destroy()
