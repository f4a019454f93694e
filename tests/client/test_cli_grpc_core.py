"""client/dualdistill/cli/grpc_core.py: the `dualdistill` command picks grpc's I/O path before grpc is
imported, and leaves an operator's own choice alone."""

from __future__ import annotations

import subprocess
import sys

from dualdistill.cli.grpc_core import GRPC_EXPERIMENTS, choose_grpc_experiments
from tests.deploy.support import ROOT


def test_set_only_when_unset_and_before_grpc_is_imported(monkeypatch) -> None:
    monkeypatch.delitem(sys.modules, "grpc", raising=False)
    environ: dict[str, str] = {}
    assert choose_grpc_experiments(environ) and environ == {"GRPC_EXPERIMENTS": GRPC_EXPERIMENTS}
    mine = {"GRPC_EXPERIMENTS": "event_engine_client"}
    assert not choose_grpc_experiments(mine) and mine == {"GRPC_EXPERIMENTS": "event_engine_client"}
    monkeypatch.setitem(sys.modules, "grpc", object())  # imported already: grpc has read the variable
    late: dict[str, str] = {}
    assert not choose_grpc_experiments(late) and late == {}


# A command run through the real entry point sees the variable set, and grpc, imported after it, reads it:
# an experiment name grpc does not know is reported by grpc itself at import.
PROBE = r"""
import os, sys
import dualdistill.cli.grpc_core as core
core.GRPC_EXPERIMENTS += ",no_such_experiment_probe"
from dualdistill.cli import main as cli
def probe(args):
    print("seen:", os.environ.get("GRPC_EXPERIMENTS"), "grpc imported before:", "grpc" in sys.modules, flush=True)
    import grpc  # noqa: F401
    return 0
class Parser:
    def parse_args(self, argv):
        import argparse
        return argparse.Namespace(func=probe, command="probe")
cli.build_parser = Parser
sys.exit(cli.main([]))
"""


def test_the_command_sets_it_before_grpc_reads_it() -> None:
    env = {"PYTHONPATH": f"{ROOT}/client:{ROOT}/server:{ROOT}", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"seen: {GRPC_EXPERIMENTS},no_such_experiment_probe grpc imported before: False" in done.stdout
    assert "Unknown experiment: no_such_experiment_probe" in done.stderr  # grpc read our value
