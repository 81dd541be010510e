"""The ``pyramidflow`` command line.

Each subcommand lives in its own module under :mod:`pyramidflow.commands` (the web app's in
:mod:`pyramidflow.app.command`, since nothing below the command line imports the app) and exposes
``register(subparsers)``; it adds a parser and sets ``func`` to a handler ``func(args) -> int``.
Handlers import heavy modules lazily so that ``pyramidflow --help`` stays fast, and so that
:func:`thread_defaults` runs before anything loads torch.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
import warnings

from pyramidflow import __version__

# One entry per subcommand module, in the order they are listed in --help.
COMMAND_MODULES: tuple[str, ...] = (
    "pyramidflow.commands.schedule",
    "pyramidflow.commands.flops",
    "pyramidflow.commands.calibrate",
    "pyramidflow.commands.train_vae",
    "pyramidflow.commands.cache_latents",
    "pyramidflow.commands.data",
    "pyramidflow.commands.eval",
    "pyramidflow.commands.train",
    "pyramidflow.commands.distill",
    "pyramidflow.commands.sample",
    "pyramidflow.commands.demo",
    "pyramidflow.app.command",
)

# Exceptions that mean "bad input": printed as one line, exit status 2.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, KeyError)
INTERRUPTED = 130  # 128 + SIGINT, the shell's convention


def _format_warning(message, category, filename, lineno, line=None) -> str:
    """The project's warnings as one line each (others keep Python's format)."""
    if category.__module__.startswith("pyramidflow"):
        return f"pyramidflow: warning: {message}\n"
    return _python_format(message, category, filename, lineno, line)


_python_format = warnings.formatwarning

# How idle OpenMP threads wait (docs/BENCHMARKS.md, "CPU threads"). Any of WAIT_POLICY_KEYS set by
# the user means the user chose, and the command line sets none of them.
WAIT_POLICY_KEYS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
PASSIVE = {"OMP_WAIT_POLICY": "PASSIVE"}
OPT_OUT = "PYRAMIDFLOW_THREAD_DEFAULTS"  # "0": set nothing (PyTorch's own behaviour)
LONG_COMMANDS = ("train", "train-vae", "cache-latents")  # the machine's load may change while they run
BUSY_CORES = 0.5  # other processes using this many cores' worth of CPU time or more share the machine
BUSY_LOAD = 0.5  # the same threshold on the 1-minute load average, where /proc/stat cannot be read


def busy_cores(interval: float = 0.1) -> float:
    """Cores' worth of CPU time used by all processes during ``interval`` seconds, from two readings
    of ``/proc/stat`` (Linux): (busy jiffies / all jiffies) x CPUs. Called before this process does
    any work, so it measures the others. Raises OSError where /proc/stat is missing."""
    import time

    def read() -> tuple[int, int]:
        with open("/proc/stat") as f:
            # user nice system idle iowait irq softirq steal (guest time is counted in user)
            fields = [int(v) for v in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return sum(fields[:8]) - idle, sum(fields[:8])

    busy0, total0 = read()
    time.sleep(interval)
    busy1, total1 = read()
    if total1 <= total0:
        return 0.0
    return (busy1 - busy0) / (total1 - total0) * (os.cpu_count() or 1)


def machine_is_shared(interval: float = 0.1) -> bool:
    """Whether other processes compete for the CPUs now: :func:`busy_cores` of ``BUSY_CORES`` or more
    over ``interval`` seconds. The CPU time is read rather than the load average because the average
    lags by a minute: right after another command (``make demo``'s own set-up step) it still reads
    busy on an idle machine. Where /proc/stat is missing (macOS), a 1-minute load average of
    ``BUSY_LOAD`` or more; True where neither can be read (the safe choice)."""
    try:
        return busy_cores(interval) >= BUSY_CORES
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.getloadavg()[0] >= BUSY_LOAD
    except (OSError, AttributeError):
        return True


def thread_defaults(command: str | None = None, environ=None, shared: bool | None = None) -> dict[str, str]:
    """Choose how PyTorch's idle OpenMP threads wait, before torch loads; returns the variables set.

    PyTorch's CPU build keeps its idle OpenMP threads spinning for a while before they sleep: the
    fastest choice on an idle machine, and many times slower when other processes compete for the
    cores (the spinning threads hold the cores the working ones need). So ``OMP_WAIT_POLICY=PASSIVE``
    (idle threads sleep at once) is set when the machine is shared at start-up
    (:func:`machine_is_shared`) and always for ``LONG_COMMANDS`` (the load may change while they run);
    on an idle machine short commands keep PyTorch's behaviour. Nothing is set when the user set any of
    ``WAIT_POLICY_KEYS``, when ``PYRAMIDFLOW_THREAD_DEFAULTS=0``, or when torch is already loaded
    (OpenMP reads these variables once, when torch loads). The number of threads is left to PyTorch
    (on a busy machine one thread was not faster than two passive ones). ``environ``: default
    ``os.environ``; ``shared``: default :func:`machine_is_shared` (asked only when needed).
    """
    env = os.environ if environ is None else environ
    if "torch" in sys.modules or env.get(OPT_OUT, "1") == "0" or any(k in env for k in WAIT_POLICY_KEYS):
        return {}
    if command not in LONG_COMMANDS and not (machine_is_shared() if shared is None else shared):
        return {}
    env.update(PASSIVE)
    return dict(PASSIVE)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyramidflow",
        description="Pyramidal flow matching for video generation.",
    )
    parser.add_argument("--version", action="version", version=f"pyramidflow {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    words = [a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("-")]
    thread_defaults(words[0] if words else None)
    parser = build_parser()
    args = parser.parse_args(argv)
    warnings.formatwarning = _format_warning
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"pyramidflow {args.command}: error: {message}", file=sys.stderr)
        return 2
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        where = f": {err.filename}" if err.filename else ""
        print(f"pyramidflow {args.command}: error: no space left on the disk{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"pyramidflow {args.command}: interrupted", file=sys.stderr)
        return INTERRUPTED
    finally:
        warnings.formatwarning = _python_format


if __name__ == "__main__":
    sys.exit(main())
