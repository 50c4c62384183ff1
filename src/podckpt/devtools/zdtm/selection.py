"""Which zdtm static tests the conformance suite runs, and why each other one is left out.

Every test of CRIU's `test/zdtm/static` (at the pinned version) gets exactly one entry: run
(with the arguments its Makefile gives it and the CRIU options or IPC namespace its `.desc`
asks for), or left out with a reason. The reasons come from the test's `.desc` first (zdtm's
own metadata: flavor, flags, opts, feature) and then from the explicit lists below. CI runs
`CI_TESTS`, a subset chosen to cover each kind of process state in a few minutes;
`PODCKPT_ZDTM=all` runs every runnable test (docs/conformance.md has both lists).
"""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path

from podckpt.api.criuopts import ALLOWED

from .runner import Case

#: zdtm tests of the 'ns' flavor whose only need is an IPC namespace of their own: the agent
#: gives it with `checkpoint-ipc-namespace: private`, raw CRIU gets the same from rawinit.
IPC_NS_TESTS = frozenset({"sem", "msgque", "shm", "shm-unaligned"})

#: Left out although zdtm runs them on a host, with the reason (checked against the .desc
#: rules: an entry here is only for what those do not already say).
LEFT_OUT: dict[str, str] = {
    # The container is not the host: no cgroup, mount, or host-device management inside it.
    **{
        t: "manages cgroups (--manage-cgroups/--cgroup-root): the agent leaves cgroups to the"
        " runtime (--manage-cgroups=ignore)"
        for t in (
            "cgroup00",
            "cgroup01",
            "cgroup02",
            "cgroup03",
            "cgroup04",
            "cgroup_ifpriomap",
            "cgroup_ignore",
            "cgroup_stray",
            "cgroup_threads",
            "cgroup_yard",
            "cgroupns",
            "cgroupv2_00",
            "cgroupv2_01",
        )
    },
    **{
        t: "needs iptables/netfilter state of the host or a network namespace of its own"
        for t in (
            "net_lock_socket_iptables",
            "net_lock_socket_iptables6",
            "net_lock_socket_nftables",
            "net_lock_socket_nftables6",
            "netns_lock_iptables",
            "netns_lock_nftables",
            "socket-tcp-ipt-nfconntrack",
            "socket-tcp-nft-nfconntrack",
        )
    },
    **{
        t: "LSM (AppArmor/SELinux) not enabled in this kernel"
        for t in (
            "apparmor",
            "apparmor_stacking",
            "selinux00",
            "selinux01",
            "selinux02",
        )
    },
    **{
        t: "another architecture"
        for t in (
            "arm-neon00",
            "s390x_mmap_high",
            "vsx",
            "pthread00-pac",
        )
    },
    "aio00": "links libaio, which the test root filesystem does not have",
    "bpf_array": "links libbpf and needs CAP_BPF, which containers do not get",
    "bpf_hash": "links libbpf and needs CAP_BPF, which containers do not get",
    "console": "needs the host's /dev/console",
    "vt": "needs a virtual terminal device (/dev/tty1) of the host",
    "rtc": "needs the host's /dev/rtc and the criu-rtc plugin (protobuf-c)",
    "tty00": "needs a host tty device node",
    "deleted_dev": "creates a device node (mknod of a host device)",
    "packet_sock": "AF_PACKET needs CAP_NET_RAW on an interface the sandbox has not",
    "packet_sock_mmap": "AF_PACKET needs CAP_NET_RAW on an interface the sandbox has not",
    "packet_sock_spkt": "AF_PACKET needs CAP_NET_RAW on an interface the sandbox has not",
    "sk-netlink": "netlink sockets of the host's network configuration",
    "socket-raw": "raw sockets need CAP_NET_RAW on the host's interfaces",
    "loginuid": "changes the audit loginuid (CAP_AUDIT_CONTROL, host audit)",
    "thread_different_uid_gid": "links libcap (not in the test root filesystem)",
    "different_creds": "links libcap (not in the test root filesystem)",
    "uffd-events": "userfaultfd from unprivileged processes is off on this host (sysctl)",
    "memfd02-hugetlb": "needs huge pages reserved on the host",
    "shm-hugetlb": "needs huge pages reserved on the host",
    "fanotify00": "fanotify needs CAP_SYS_ADMIN on the host's mounts",
    "inotify_system": "watches host-wide paths; zdtm runs it as a host test only",
    "inotify_system_nodel": "watches host-wide paths; zdtm runs it as a host test only",
    "mlock_setuid": "mlock under setuid needs CAP_IPC_LOCK beyond the runtime's defaults",
    "oom_score_adj": "lowering oom_score_adj needs CAP_SYS_RESOURCE, which this machine lacks",
    "rlimits00": "raising hard rlimits needs CAP_SYS_RESOURCE, which this machine lacks",
    "sched_policy00": "real-time scheduling policy needs CAP_SYS_NICE",
    "sched_prio00": "negative nice values need CAP_SYS_NICE",
    "time": "needs a time namespace of its own (privileged CRIU only)",
    "timens_for_kids": "needs a time namespace of its own (privileged CRIU only)",
    "timens_nested": "needs a time namespace of its own (privileged CRIU only)",
    "uptime_grow": "checks CLOCK_MONOTONIC does not jump: needs a time namespace (privileged"
    " CRIU only; --unprivileged restores without one, docs/agent.md)",
    "socket_udplite": "UDP-Lite is not built into this kernel",
    "child_opened_proc": "opens /proc of the host PID namespace",
    "chroot": "chroot(2) into a directory of the test tree (CAP_SYS_CHROOT is the runtime's,"
    " fine) but restores the root through the host's mount ids",
    "chroot-file": "same as chroot",
    "seccomp_strict": "strict seccomp mode cannot be suspended for the dump from a container",
}

#: Measured in the sandbox (kernel 6.18, CRIU 4.2.1, the runtime's default capabilities plus
#: the agent's required set): these fail under raw CRIU too, with every option the agent can
#: take, for a reason of the environment or of the test. `python -m podckpt.devtools.zdtm
#: --all` still runs them (as it runs every runnable test); CI does not.
FAILS_UNDER_RAW_CRIU: dict[str, str] = {
    "dumpable02": "does not start in the sandbox (no output within 20 s)",
    "fifo_upon_unix_socket01": "CRIU: `Unable to resolve unix socket name with obsolete"
    " method` for a socket bound to a FIFO's path",
    "file_fown": "CRIU: `Unseizable non-zombie` (a task changed its uid without exec: seizing"
    " it needs CAP_SYS_PTRACE, docs/agent.md)",
    "pid00": "CRIU: `Unseizable non-zombie` (a task changed its uid without exec); the agent"
    " refuses the tree of several users in one line first",
    "file_lease02": "`Ghost signal` after the restore: the lease-break signal of the test",
    "file_lease03": "`Ghost signal` after the restore: the lease-break signal of the test",
    "file_lease04": "`Ghost signal` after the restore: the lease-break signal of the test",
    "inotify04": "CRIU: `fsnotify: Can't dump that handle` (a watch on a path it cannot open"
    " by handle in the container)",
    "maps09": "mmap of shared huge pages: ENOMEM (no huge pages reserved on this host)",
    "maps10": "mmap of shared huge pages: ENOMEM (no huge pages reserved on this host)",
    "seccomp_filter": "installs a seccomp filter without no_new_privs: needs CAP_SYS_ADMIN,"
    " not in the runtime's defaults (prctl EACCES)",
    "seccomp_filter_inheritance": "installs a seccomp filter without no_new_privs: needs"
    " CAP_SYS_ADMIN, not in the runtime's defaults (prctl EACCES)",
    "seccomp_filter_threads": "installs a seccomp filter without no_new_privs: needs"
    " CAP_SYS_ADMIN, not in the runtime's defaults (prctl EACCES)",
    "seccomp_filter_tsync": "installs a seccomp filter without no_new_privs: needs"
    " CAP_SYS_ADMIN, not in the runtime's defaults (prctl EACCES)",
    "socket-ext": "restore of an external unix socket fails (`300 exited, status=1`): its peer"
    " was in the first sandbox",
    "socket-tcp-reseted": "runs iptables, which the test root filesystem does not have",
    "socket-tcp-syn-sent": "runs iptables, which the test root filesystem does not have",
    "socket-tcpbuf": "restore with tcp-established fails or the test reads EAGAIN, in raw CRIU"
    " as under the agent (timing of the full send buffer)",
    "socket-tcpbuf6": "same as socket-tcpbuf",
    "socket-tcpbuf6-local": "same as socket-tcpbuf",
    "socket_icmp": "writes the sysctl net.ipv4.ping_group_range (/proc/sys is read-only in a"
    " container)",
    "socket6_icmp": "writes the sysctl net.ipv4.ping_group_range (/proc/sys is read-only in a"
    " container)",
}

#: The CI subset (~150 tests, ~5 min with both sides on 2 cores): every kind of process
#: state zdtm covers, one or two tests per family (the rest of each family: `--all`).
CI_TESTS: tuple[str, ...] = (
    # processes, sessions, signals, stopped tasks, credentials
    "caps00", "child_subreaper", "child_subreaper_existing_child", "clone_fs", "cmdlinenv00",
    "dumpable01", "env00", "groups", "pdeath_sig", "pid_file", "proc-self", "pstree",
    "pthread00", "pthread01", "pthread_timers", "rseq00", "selfexe00", "sigaltstack",
    "signalfd00", "sigpending", "sigtrap01", "stopped", "stopped01", "stopped02", "stopped03",
    "stopped04", "stopped12", "umask00", "wait00", "xids00", "zombie00", "futex", "sse00",
    "vdso00", "membarrier", "seccomp_no_new_privs",
    # memory
    "cow00", "cow01", "maps00", "maps01", "maps02", "maps_file_prot", "mprotect00", "memfd00",
    "memfd01", "shmemfd", "thp_disable",
    # files and descriptors
    "cwd00", "fd", "fd_offset", "fdt_shared", "fifo", "fifo-ghost", "fifo-rowo-pair",
    "file_append", "file_attr", "file_cloexec", "file_lease00", "file_locks00",
    "file_locks01", "file_shared", "ghost_holes00", "ghost_multi_hole01", "inotify00",
    "opath_file", "rmdir_open", "symlink", "unlink_fifo", "unlink_fstat00", "unlink_fstat01",
    "unlink_fstat03", "unlink_largefile", "unlink_mmap00", "unhashed_proc", "write_read00",
    "epoll", "eventfs00", "poll", "timerfd", "timers", "posix_timers", "pidfd_child",
    "pidfd_kill", "pidfd_self", "pipe00", "pipe01",
    # unix and inet sockets
    "sockets00", "sockets01", "sockets_dgram", "sockets_spair", "sk-unix01", "sk-unix-rel",
    "sk-unix-unconn", "sk-unix-listen01", "sk-unix-dgram-ghost", "del_standalone_un",
    "deleted_unix_sock", "scm00", "scm02", "socket_queues", "socket_close_data",
    "socket_dgram_data", "socket_udp", "socket_udp_shutdown", "socket6_udp", "socket_listen",
    "socket_listen6", "sock_opts00", "sock_tcp_opts00", "unbound_sock", "socket-tcp",
    "socket-tcp-local", "socket-tcp-listen", "socket-tcp-close-wait", "socket-tcp-fin-wait1",
    "socket-tcp-last-ack", "socket-tcp-closing", "socket-tcp-close0", "socket-dump-tcp-close",
    "socket-tcp-unconn", "socket-tcp-skip-in-flight", "socket_aio", "socket-linger",
    # terminals and System V IPC
    "pty00", "pty01", "pty04", "tty02", "sem", "msgque", "shm", "shm-unaligned",
)  # fmt: skip

_LISTS = ("TST_NOFILE", "TST_FILE", "TST_DIR", "TST_DIR_FILE", "TST")
_SPECIAL_ARGS = {
    "cmdlinenv00": ("--arg1=arg1", "--arg2=arg2", "--arg3=arg3"),
    "shm-unaligned": ("--shmem_size=5000",),
    "shm-hugetlb": ("--shmem_size=4194304",),
    "env00": ("--envname=ENV_00_TEST",),
    "umask00": ("--mask=0345",),
}


@dataclasses.dataclass(frozen=True)
class Entry:
    name: str
    case: Case | None
    reason: str = ""


def _makefile_lists(static: Path) -> dict[str, list[str]]:
    text = (static / "Makefile").read_text().replace("\\\n", " ")
    lists: dict[str, list[str]] = {}
    for match in re.finditer(r"^(\w+)\s*\+?:?=\s*(.*)$", text, re.MULTILINE):
        if match[1] in _LISTS:
            # As make reads it: a `#` comments out the rest of the logical line (the
            # continuation lines after it too: `#  jobctl00 \` ends TST_NOFILE).
            body = match[2].partition("#")[0]
            lists.setdefault(match[1], []).extend(w for w in body.split() if not w.startswith("$"))
    return lists


def read_desc(static: Path, name: str) -> dict[str, str]:
    """A test's .desc (a Python literal; the few computed ones count as ns-only)."""
    path = static / f"{name}.desc"
    if not path.exists():
        return {}
    try:
        value = ast.literal_eval(path.read_text())
    except (ValueError, SyntaxError):
        return {"flavor": "ns", "flags": "noauto"}
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {}


def _args(name: str, lists: dict[str, list[str]]) -> tuple[str, ...]:
    if name in _SPECIAL_ARGS:
        return _SPECIAL_ARGS[name]
    if name == "fifo-rowo-pair":
        return (f"--name_master={name}.master.test", f"--name_slave={name}.slave.test")
    if name in lists.get("TST_FILE", ()):
        return (f"--filename={name}.test",)
    if name in lists.get("TST_DIR", ()):
        return (f"--dirname={name}.test",)
    if name in lists.get("TST_DIR_FILE", ()):
        return (f"--dirname={name}.dir.test", f"--filename={name}.test")
    return ()


def _parse_opts(words: list[str]) -> tuple[tuple[str, ...], str]:
    options: list[str] = []
    index = 0
    while index < len(words):
        word = words[index].removeprefix("--")
        index += 1
        name, eq, value = word.partition("=")
        if name not in ALLOWED:
            return (), f"needs CRIU option --{name}, which is not allowed in a container"
        if ALLOWED[name].value is not None and not eq:
            value = words[index] if index < len(words) else ""
            index += 1
        option = f"{name}={value}" if ALLOWED[name].value is not None else name
        if option not in options:
            options.append(option)
    return tuple(options), ""


def _options(desc: dict[str, str]) -> tuple[tuple[str, ...], tuple[str, ...], str]:
    """The .desc's CRIU options for the dump (opts + dopts) and the restore (opts + ropts),
    as canonical allowed options, or the reason they are not allowed."""
    common = desc.get("opts", "").split()
    dump, refused = _parse_opts(common + desc.get("dopts", "").split())
    restore, refused_too = _parse_opts(common + desc.get("ropts", "").split())
    return dump, restore, refused or refused_too


def entries(static: Path) -> list[Entry]:
    """One entry per test of the pinned zdtm static suite, sorted by name."""
    lists = _makefile_lists(static)
    names = sorted({n for items in lists.values() for n in items})
    result = []
    for name in names:
        desc = read_desc(static, name)
        flavors = desc.get("flavor", "h ns uns").split()
        flags = desc.get("flags", "").split()
        dump_options, restore_options, refused = _options(desc)
        private_ipc = name in IPC_NS_TESTS
        reason = ""
        if "h" not in flavors and not private_ipc:
            reason = (
                "zdtm runs it only as the init of its own PID/mount/network namespaces (ns"
                " flavor); a container's application is not"
            )
        elif "noauto" in flags:
            reason = "not run by CRIU's own CI either (noauto)"
        elif "crfail" in flags:
            reason = "CRIU is expected to refuse it (crfail)"
        elif "pre-dump-notify" in desc.get("flags", "") or name.startswith("pre_dump"):
            reason = "needs pre-dump, which this kernel cannot do (no soft-dirty tracking)"
        elif refused:
            reason = refused
        elif name in LEFT_OUT:
            reason = LEFT_OUT[name]
        elif desc.get("arch") and desc["arch"] != "x86_64":
            reason = "another architecture"
        if reason:
            result.append(Entry(name, None, reason))
        else:
            case = Case(name, _args(name, lists), dump_options, restore_options, private_ipc)
            result.append(Entry(name, case))
    return result


def chosen(static: Path, which: str = "ci") -> list[Case]:
    """The cases to run: `ci` (CI_TESTS) or `all` (every runnable test)."""
    runnable = {e.name: e.case for e in entries(static) if e.case is not None}
    if which == "all":
        return list(runnable.values())
    missing = [n for n in CI_TESTS if n not in runnable]
    if missing:
        raise ValueError(f"CI_TESTS names tests that are not runnable: {', '.join(missing)}")
    return [case for n in CI_TESTS if (case := runnable[n]) is not None]


def listing(static: Path) -> str:
    """The table docs/conformance.md holds: every test, what is run and why not."""
    ci = set(CI_TESTS)
    rows = ["| test | run | options / reason |", "|---|---|---|"]
    for entry in entries(static):
        case = entry.case
        if case is None:
            rows.append(f"| {entry.name} | no | {entry.reason} |")
            continue
        asked = [
            *case.dump_options,
            *(o for o in case.restore_options if o not in case.dump_options),
        ]
        if case.private_ipc:
            asked.append("checkpoint-ipc-namespace: private")
        note = ", ".join(asked)
        if entry.name in ci:
            where = "CI"
        elif entry.name in FAILS_UNDER_RAW_CRIU:
            where = "`--all`"
            note = "; ".join(
                filter(
                    None, [note, "fails under raw CRIU too: " + FAILS_UNDER_RAW_CRIU[entry.name]]
                )
            )
        else:
            where = "`--all`"
        rows.append(f"| {entry.name} | {where} | {note} |")
    return "\n".join(rows) + "\n"
