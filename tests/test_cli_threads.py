"""The command line's OpenMP defaults: chosen before torch loads, never over the user's own choice."""

import json
import os
import subprocess
import sys
import time

import pytest

from pyramidflow import cli

# Runs the command line in a fresh interpreter (the machine's load decided by the test), then reports
# the environment torch was loaded with.
CODE = """
import json, os, sys
from pyramidflow import cli
assert "torch" not in sys.modules, "importing the command line loaded torch"
cli.machine_is_shared = lambda: {shared}
try:
    cli.main({argv})
except SystemExit:
    pass
import torch
print(json.dumps({{k: os.environ.get(k) for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")}}))
"""
KEYS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", cli.OPT_OUT)
SHORT = ["schedule", "--stages", "2", "--steps", "1,1", "--json"]
LONG = ["train", "--help"]


def _seen(argv, shared: bool, **user) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in KEYS}
    env.update(user)
    code = CODE.format(shared=shared, argv=argv)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    return {k: v for k, v in json.loads(run.stdout.strip().splitlines()[-1]).items() if v is not None}


@pytest.mark.parametrize("argv, shared, expected", [
    (SHORT, False, {}),  # an idle machine: PyTorch's own behaviour
    (SHORT, True, cli.PASSIVE),  # other processes use the cores
    (LONG, False, cli.PASSIVE),  # a long run: the machine may not stay idle
])
def test_defaults_are_chosen_before_torch_loads(argv, shared, expected):
    assert _seen(argv, shared) == expected


@pytest.mark.parametrize("user", [{"OMP_WAIT_POLICY": "ACTIVE"}, {"GOMP_SPINCOUNT": "5"},
                                  {"KMP_BLOCKTIME": "0"}])
def test_a_user_choice_is_kept_and_nothing_is_added(user):
    assert _seen(LONG, True, **user) == user


def test_opting_out_sets_nothing():
    assert _seen(LONG, True, **{cli.OPT_OUT: "0"}) == {}


def test_nothing_is_set_once_torch_is_loaded():
    import torch  # noqa: F401  (loaded by the test session anyway)

    env: dict = {}
    assert cli.thread_defaults("train", env, shared=True) == {} and env == {}


def test_a_busy_or_unknown_machine_means_shared(monkeypatch):
    monkeypatch.setattr(cli, "busy_cores", lambda interval=0.1: 0.8)
    assert cli.machine_is_shared() is True
    monkeypatch.setattr(cli, "busy_cores", lambda interval=0.1: 0.1)
    monkeypatch.setattr(os, "getloadavg", lambda: (3.0, 3.0, 3.0))  # a lagging average is not asked
    assert cli.machine_is_shared() is False

    def missing(interval=0.1):
        raise OSError("no /proc/stat here")

    monkeypatch.setattr(cli, "busy_cores", missing)  # e.g. macOS: the load average decides
    assert cli.machine_is_shared() is True
    monkeypatch.setattr(os, "getloadavg", lambda: (0.1, 0.1, 0.1))
    assert cli.machine_is_shared() is False

    def unknown():
        raise OSError("no load average here")

    monkeypatch.setattr(os, "getloadavg", unknown)
    assert cli.machine_is_shared() is True


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="reads Linux's /proc/stat")
def test_busy_cores_sees_a_process_that_keeps_a_core_busy():
    spin = "import time\nt = time.time()\nwhile time.time() - t < 5: pass"
    spinner = subprocess.Popen([sys.executable, "-c", spin])
    try:
        time.sleep(0.3)  # let it start
        assert cli.busy_cores(0.5) >= 0.5
    finally:
        spinner.kill()
        spinner.wait()
