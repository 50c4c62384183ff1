"""Who the application runs as: the user it would have run as without podckpt.

The webhook runs the agent as root (CRIU needs it) and tells it who the application is, in
one of two ways (`podckpt.api.contract.RunCommand`):

- `--user UID[:GID]`: the container's `runAsUser`/`runAsGroup`. The rest is resolved here as
  the container runtime resolves it (containerd's `WithUserID` and `WithAdditionalGIDs`, runc's
  HOME), from the container's own /etc/passwd and /etc/group, which are the files the runtime
  reads: the gid is the uid's passwd group, else 0; the supplementary groups are the pod's
  (`--supplementary-groups`: supplementalGroups and fsGroup) plus, unless
  `--strict-groups`, the groups that list the user's name in /etc/group; HOME is the user's
  passwd home, else `/`;
- `--user-probe FILE`: the container set no `runAsUser`, so the image's `USER` decides, which
  may be a name that only the image's /etc/passwd knows. The webhook cannot read that file
  (it would have to download the image's layers); the runtime can. So an init container with
  the application's image and securityContext, the *user probe*, ran `podckpt-agent whoami`
  and wrote down what the runtime gave it: uid, gid, groups and HOME. The agent uses exactly
  that. The probe's file is on a volume that this container mounts read-only.

`--non-root` (the pod's `runAsNonRoot: true`): the application never runs as uid 0; a
user that resolves to 0 is an error at start, naming the field.

Standard library only (the agent).
"""

from __future__ import annotations

import dataclasses
import json
import os
import stat
from pathlib import Path

from .errors import AgentError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from podckpt.api.contract import RunCommand

_MAX_FILE = 1 << 20


class UserError(AgentError):
    """The application's user cannot be determined or is not allowed."""


@dataclasses.dataclass(frozen=True)
class AppUser:
    uid: int
    gid: int
    groups: tuple[int, ...] = ()
    #: HOME as the runtime would have set it for this user (None: leave the environment).
    home: str | None = None

    @property
    def is_root(self) -> bool:
        return self.uid == 0

    def as_workload(self) -> list[int]:
        """What a checkpoint records of it: restoring under another user is refused."""
        return [self.uid, self.gid]


@dataclasses.dataclass(frozen=True)
class PasswdEntry:
    name: str
    uid: int
    gid: int
    home: str


def parse_passwd(text: str) -> list[PasswdEntry]:
    entries = []
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) < 7 or line.startswith("#"):
            continue
        try:
            entries.append(PasswdEntry(fields[0], int(fields[2]), int(fields[3]), fields[5]))
        except ValueError:
            continue
    return entries


def parse_group(text: str) -> list[tuple[str, int, tuple[str, ...]]]:
    """(name, gid, members) of each /etc/group line."""
    groups = []
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) < 4 or line.startswith("#"):
            continue
        try:
            gid = int(fields[2])
        except ValueError:
            continue
        members = tuple(m for m in fields[3].split(",") if m)
        groups.append((fields[0], gid, members))
    return groups


def _read_small(path: Path) -> str:
    try:
        with path.open("rb") as f:
            return f.read(_MAX_FILE).decode(errors="replace")
    except OSError:
        return ""


def _parse_user(text: str) -> tuple[int, int | None]:
    uid_text, _, gid_text = text.partition(":")
    try:
        return int(uid_text), (int(gid_text) if gid_text else None)
    except ValueError:
        raise UserError(f"--user {text!r}: not UID[:GID] with numeric ids") from None


def from_ids(
    user: str,
    groups: Iterable[int] = (),
    *,
    strict_groups: bool = False,
    etc: Path = Path("/etc"),
) -> AppUser:
    """`--user UID[:GID]` resolved as the container runtime does."""
    uid, gid = _parse_user(user)
    entry = next((e for e in parse_passwd(_read_small(etc / "passwd")) if e.uid == uid), None)
    if gid is None:
        gid = entry.gid if entry else 0
    extra = list(groups)
    if entry is not None and not strict_groups:
        for _name, group_id, members in parse_group(_read_small(etc / "group")):
            if entry.name in members:
                extra.append(group_id)
    unique = tuple(dict.fromkeys(g for g in extra if g != gid))
    return AppUser(uid, gid, unique, entry.home if entry and entry.home else "/")


def from_probe(path: Path) -> AppUser:
    """What the user probe wrote (see `write_probe`)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise UserError(
            f"user probe file {path}: {exc.strerror}; the podckpt-user init container of this"
            " pod writes it (was the pod changed after admission?)"
        ) from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise UserError(f"user probe file {path}: not a regular file")
        raw = f.read(_MAX_FILE)
    try:
        data = json.loads(raw)
        uid, gid = data["uid"], data["gid"]
        groups = data.get("groups") or []
        home = data.get("home")
        valid = all(isinstance(v, int) and v >= 0 for v in (uid, gid, *groups)) and (
            home is None or isinstance(home, str)
        )
    except (ValueError, KeyError, TypeError, RecursionError):
        valid = False
    if not valid:
        raise UserError(f"user probe file {path}: malformed")
    if st.st_uid != uid:
        raise UserError(
            f"user probe file {path}: owned by uid {st.st_uid}, says uid {uid}; not written by"
            " the user probe"
        )
    return AppUser(uid, gid, tuple(g for g in groups if g != gid), home)


def write_probe(out: Path, environ: Mapping[str, str]) -> None:
    """`podckpt-agent whoami --out FILE`: this process's credentials, as the runtime set them.

    Written to a new file renamed into place, so the agent never reads half of it."""
    data = {
        "uid": os.getuid(),
        "gid": os.getgid(),
        "groups": sorted(set(os.getgroups())),
        "home": environ.get("HOME"),
    }
    tmp = out.with_name(f".{out.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
    tmp.replace(out)


def resolve(command: RunCommand, *, etc: Path = Path("/etc")) -> AppUser | None:
    """The application's user from the agent's command line; None: as the agent (root).

    Raises UserError (exit 200 at start) for what cannot be honoured."""
    user: AppUser | None = None
    if command.user_probe:
        user = from_probe(Path(command.user_probe))
    elif command.user:
        user = from_ids(command.user, command.groups, strict_groups=command.strict_groups, etc=etc)
    if command.non_root and (user is None or user.is_root):
        raise UserError(
            "runAsNonRoot is true, but the application would run as root (uid 0): set"
            " securityContext.runAsUser to a non-zero uid, or use an image whose USER is a"
            " non-root uid"
        )
    return user


def application_home(user: AppUser | None, environ: Mapping[str, str], etc: Path) -> str | None:
    """The HOME to give the application, or None to keep the environment's.

    The runtime set HOME for the agent (root) from /etc/passwd unless the pod's env set it;
    the application gets its own user's home instead, unless HOME was set otherwise."""
    if user is None or user.is_root or user.home is None:
        return None
    root = next((e for e in parse_passwd(_read_small(etc / "passwd")) if e.uid == 0), None)
    runtime_default = (root.home if root and root.home else None) or "/"
    current = environ.get("HOME")
    if current is None or current in (runtime_default, "/root"):
        return user.home
    return None
