"""The real controller, killed at one point of its work: the operator fault suite's entry point.

    python fault_controller.py            (instead of python -m podckpt.operator.controller)

$CONTROLLER_FAULT chooses the point, `<point>:<n>`: the process SIGKILLs itself at the n-th
time it reaches <point> (nothing else differs from the controller a cluster runs):

    seen      before the GET of a pod's PVC: the controller has seen the pod, done nothing
    checked   after that GET answered (the PVC is missing: the next step creates it)
    create    before the POST that creates the PVC
    created   after the POST answered: the PVC exists; the controller has neither recorded
              it nor posted its VolumeProvisioned event

A line `{"fault": "kill", ...}` on stderr says where it died.
"""

import json
import os
import re
import signal
import sys

from podckpt.operator.controller.__main__ import main
from podckpt.operator.kube import api

POINTS = ("seen", "checked", "create", "created")


def _install(point: str, n: int) -> None:
    counts = dict.fromkeys(POINTS, 0)
    get, post = api.KubeAPI.get, api.KubeAPI.post

    def reached(where: str, path: str) -> None:
        counts[where] += 1
        if where == point and counts[where] == n:
            print(json.dumps({"fault": "kill", "point": point, "n": n, "path": path}), flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

    async def faulty_get(self, path, **params):  # type: ignore[no-untyped-def]
        if re.search(r"/persistentvolumeclaims/[^/?]+$", path):  # one claim, by name
            reached("seen", path)
            try:
                return await get(self, path, **params)
            finally:
                reached("checked", path)
        return await get(self, path, **params)

    async def faulty_post(self, path, body):  # type: ignore[no-untyped-def]
        if path.endswith("/persistentvolumeclaims"):
            reached("create", path)
            result = await post(self, path, body)
            reached("created", path)
            return result
        return await post(self, path, body)

    api.KubeAPI.get = faulty_get  # type: ignore[method-assign]
    api.KubeAPI.post = faulty_post  # type: ignore[method-assign]


if __name__ == "__main__":
    fault = os.environ.get("CONTROLLER_FAULT", "")
    if fault:
        where, _, count = fault.partition(":")
        if where not in POINTS or not count.isdigit():
            raise SystemExit(f"fault_controller: bad CONTROLLER_FAULT {fault!r}")
        _install(where, int(count))
    sys.exit(main())
