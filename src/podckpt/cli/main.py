"""`kubectl podckpt` (console script `kubectl-podckpt`): see and act on checkpoints.

    kubectl podckpt status [WORKLOAD|POD]      opted in? injected? volume, generations, last
                                               checkpoint and restore, why not checkpointable
    kubectl podckpt checkpoint POD [-c NAME]   checkpoint now (the application runs on)
    kubectl podckpt explain POD                what the webhook did to the pod, and why

Human tables by default, `-o json` for scripts. kubectl's -n/--namespace, --context and
--kubeconfig are honoured (kubectl itself does the talking).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

from podckpt.api import summary

from . import checkpoint, explain, status
from .inspect import Domain, TargetError
from .kubectl import Kubectl, KubectlError


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-n", "--namespace")
    common.add_argument("--context")
    common.add_argument("--kubeconfig")
    common.add_argument("-o", "--output", choices=("table", "json"), default="table")
    common.add_argument(
        "--domain",
        default=os.environ.get("PODCKPT_DOMAIN", summary.DEFAULT_DOMAIN),
        help="podckpt's own annotation domain (the operator's PODCKPT_DOMAIN)",
    )
    parser = argparse.ArgumentParser(
        prog="kubectl podckpt",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        parents=[common],
    )
    sub = parser.add_subparsers(dest="command", required=True)
    st = sub.add_parser("status", parents=[common], help="checkpoints of a workload or pod")
    st.add_argument("target", nargs="?", help="POD, KIND/NAME (deployment/web), or nothing")
    ck = sub.add_parser("checkpoint", parents=[common], help="checkpoint a pod now")
    ck.add_argument("pod")
    ck.add_argument("-c", "--container")
    ck.add_argument("--timeout", type=float, default=600.0)
    ex = sub.add_parser("explain", parents=[common], help="what the webhook did to a pod")
    ex.add_argument("pod")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    kubectl = Kubectl(namespace=args.namespace, context=args.context, kubeconfig=args.kubeconfig)
    domain = Domain(args.domain)
    doc: dict[str, Any]
    human: Callable[[Mapping[str, Any]], str]
    try:
        if args.command == "status":
            doc = status.collect(kubectl, args.target, domain)
            human = status.text
        elif args.command == "explain":
            doc = explain.collect(kubectl, args.pod, domain)
            human = explain.text
        else:
            doc = checkpoint.run(kubectl, args.pod, args.container, domain, args.timeout)

            human = checkpoint.text
    except (KubectlError, TargetError, checkpoint.CheckpointError) as exc:
        print(f"kubectl podckpt: {exc}", file=sys.stderr)
        return 1
    if args.output == "json":
        print(json.dumps(doc, indent=2, sort_keys=True, default=str))
    else:
        print(human(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
