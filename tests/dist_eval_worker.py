"""Run by ``torchrun`` in test_distributed_eval.py: `vitquant` commands, one after the other.

One job for the three commands (``eval``, ``analyze``, ``sensitivity``) pays the start of the
interpreters and of the process group once; each command runs exactly as ``torchrun -m vitquant``
runs it. argv[1] is a JSON list of argument lists.
"""

from __future__ import annotations

import json
import sys

import torch.distributed as dist

from vitquant.cli import app


def main(commands: list[list[str]]) -> None:
    for args in commands:
        app(args, standalone_mode=False)
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
