"""A fuzz of the CLI: hypothesis-generated argument lists for ``train``, ``eval``, ``summary`` and
``bench``, run in-process through ``cli.main``, end in exit 0, or in exit 2 with one
``jaxcnn CMD: error: ...`` line; never in a traceback. Below them, one named regression test per
crash the fuzz found.

The options come from ``cli.build_parser()``, so a new flag is fuzzed too (with generic values
until it gets its own below). Every value is tagged valid (True), invalid (False) or either
(None: it depends on what else is given); the expected exit code follows from the tags alone,
so a CLI that refused good input would fail here as surely as one that crashed on bad input.

Bounded by construction: every run keeps ``--epochs 1 --train-examples 256 --test-examples 256``
(train) or ``--steps 1 --repeats 1`` (bench) unless one of them is replaced by a value that is
refused; models are LeNet and the BN-LeNets; values that would start unbounded work (a huge
``--epochs``, ``--steps`` or ``--repeats``, a diverging ``--lr``, a multi-process run that waits
for its peers) are not generated. Each example runs in a fresh directory of its own.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from jaxcnn import cli

DATA = os.environ.get("JAXCNN_FASHION_MNIST")
MODELS = ["lenet", "bn_lenet", "bn_lenet_scratch"]
BAD_MODELS = ["", "LeNet", "resnet9", "lenet ", "../lenet"]
NOT_INTS = ["x", "", "1.5", "1e3", "0x10"]
FLAG = object()            # the flag alone, no value (store_true, or --json's optional value)

# (value, tag) per flag. Tags: True valid, False refused, None either.
ok = lambda *values: [(v, True) for v in values]            # noqa: E731
bad = lambda *values: [(v, False) for v in values]          # noqa: E731
either = lambda *values: [(v, None) for v in values]        # noqa: E731

PATHS_BAD = bad("", "a_file", "a_file/sub", "/proc/jaxcnn-fuzz/run")
DATA_DIRS = (ok(DATA) if DATA else []) + bad("", "a_file", "missing") + either("empty_dir")
POOLS: dict[tuple[str, str], list] = {
    ("train", "--recipe"): ok("book", "improved") + bad("", "fast"),
    ("train", "--epochs"): ok("1") + bad("0", "-1", *NOT_INTS),
    ("train", "--batch-size"): ok("32", "128") + bad("0", "-5", "300", str(10**12), *NOT_INTS),
    ("train", "--lr"): ok("0.05", "0.1") + bad("0", "-0.1", "nan", "inf", "1e400", "x", ""),
    ("train", "--optimizer"): ok("sgd", "momentum", "adam", "adamw") + bad("", "SGD", "lbfgs"),
    ("train", "--image-size"): ok("16", "28") + bad("0", "-28", "11", "20000", str(10**30),
                                                   *NOT_INTS),
    ("train", "--seed"): ok("0", "7", str(2**32 - 1)) + bad("-1", str(2**32), str(2**64),
                                                             *NOT_INTS),
    ("train", "--dtype"): ok("float32", "bfloat16") + bad("", "float16"),
    ("train", "--workdir"): ok("run", "nested/dir/run", "empty_dir", "rün dir") + PATHS_BAD
    + bad("/dev/null"),
    ("train", "--data-dir"): DATA_DIRS,
    ("train", "--checkpoint-every"): ok("0", "1", str(10**12)) + bad("-1", *NOT_INTS),
    ("train", "--train-examples"): ok("256", "128") + bad("0", "-1", str(10**12), *NOT_INTS),
    ("train", "--test-examples"): ok("256", "100") + bad("0", "-1", str(10**12), *NOT_INTS),
    ("train", "--val-examples"): ok("0", "64") + bad("-1", str(10**12), *NOT_INTS),
    ("train", "--devices"): ok("1") + bad("0", "-1", str(10**6), *NOT_INTS),
    # Multi-process flags only in forms that are refused: a described run would start
    # jax.distributed in this process (and wait for its peers).
    ("train", "--coordinator"): bad("", "nohost", "host:0", "host:99999", ":1", "host:port"),
    ("train", "--num-processes"): bad("0", "-5", *NOT_INTS),
    ("train", "--process-id"): bad("-1", *NOT_INTS),
    ("eval", "--which"): ok("best", "latest") + bad("", "worst"),
    ("eval", "--data-dir"): DATA_DIRS,
    ("summary", "--input-shape"): ok("1,28,28,1", "2,16,16,3", "100000,28,28,1",
                                     "1,20000,20000,1")
    + bad("", "1,28,28", "0,28,28,1", "1,-28,28,1", "a,b,c,d", "1,28,30,1", "1,8,8,1",
          "1,28,28,0", "1,28,28,1,1", "1.0,28,28,1"),
    ("bench", "--batch-size"): ok("8") + bad("0", "-1", "70000", *NOT_INTS),
    ("bench", "--steps"): ok("1") + bad("0", "-2", *NOT_INTS),
    ("bench", "--repeats"): ok("1") + bad("0", "-2", *NOT_INTS),
    ("bench", "--image-size"): ok("16") + bad("0", "-1", "8", "20000", *NOT_INTS),
    ("bench", "--dtype"): ok("float32", "bfloat16") + bad("", "float16"),
    ("bench", "--json"): ok(FLAG, "out.json") + bad("", "a_file/x.json", "empty_dir",
                                                    "/proc/jaxcnn-fuzz.json"),
}
PINNED = {"train": {"--epochs": "1", "--train-examples": "256", "--test-examples": "256"},
          "bench": {"--steps": "1", "--repeats": "1"}}
POSITIONAL = {
    "train": ok(*MODELS) + bad(*BAD_MODELS),
    "summary": ok(*MODELS) + bad(*BAD_MODELS),
    "eval": ok("finished") + bad("", "missing", "a_file", "empty_dir", "garbage", "a_file/sub"),
    "bench": [([m], True) for m in MODELS[:2]] + [([m], False) for m in ("resnet9", "")]
    + [(["lenet", "LeNet"], False)],
}
UNFUZZED = {"--debug", "--help", "--compare-torch"}   # tracebacks by design; PyTorch's start-up


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return action.choices


def multihost_flags(parser: argparse.ArgumentParser) -> set[str]:
    return {flag for group in parser._action_groups if group.title == "multi-host"
            for action in group._group_actions for flag in action.option_strings}


def generic_pool(action: argparse.Action) -> list:
    """Values for a flag without a pool of its own, tagged by what is certain of them."""
    if action.nargs == 0:
        return ok(FLAG)
    if action.choices:
        return ok(*action.choices) + bad("", "none-of-these")
    if action.type is int:
        return either("0", "-1", "1", "2") + bad("x", "", "1.5")
    if action.type is float:
        return either("0", "-1", "0.5") + bad("x", "", "nan")
    return either("", "x", "a_file", "new_dir")


def option_pools(command: str) -> dict[str, list]:
    """The flags of ``command`` in ``cli.build_parser()`` with their values."""
    parser = subcommands()[command]
    hosts = multihost_flags(parser)
    pools = {}
    for action in parser._actions:
        if not action.option_strings or UNFUZZED & set(action.option_strings):
            continue
        flag = max(action.option_strings, key=len)
        if (command, flag) in POOLS:
            pools[flag] = POOLS[command, flag]
        elif flag not in hosts:                     # a new multi-process flag: not in-process
            pools[flag] = generic_pool(action)
    return pools


def argvs(command: str) -> st.SearchStrategy:
    """``(argv, expected exit codes)``: the command, its positional argument, a few flags.
    The parser is read here, once, not while hypothesis draws."""
    return _argvs(command, option_pools(command))


def pick(draw, pool: list, good_share: tuple[int, int]) -> tuple:
    """A ``(value, tag)`` of ``pool``: one that is not refused ``good_share[0]`` times in
    ``good_share[1]`` (where the pool has both kinds), so that about one run in five is valid
    and trains, the others exercise the refusals."""
    good = [entry for entry in pool if entry[1] is not False]
    refused = [entry for entry in pool if entry[1] is False]
    if good and refused:
        shares = [True] * good_share[0] + [False] * (good_share[1] - good_share[0])
        pool = good if draw(st.sampled_from(shares)) else refused
    return draw(st.sampled_from(pool))


@st.composite
def _argvs(draw, command: str, pools: dict[str, list]):
    positional, tag = pick(draw, POSITIONAL[command], (2, 3))
    tags = [tag]
    argv = [command] + (positional if isinstance(positional, list) else [positional])
    chosen = draw(st.lists(st.sampled_from(sorted(pools)), max_size=3, unique=True))
    values = dict(PINNED.get(command, {}))
    for flag in chosen:
        value, tag = pick(draw, pools[flag], (1, 2))
        values[flag] = value
        tags.append(tag)
    for flag, value in values.items():
        argv += [flag] if value is FLAG else [flag, value]
    if False in tags:
        return argv, {2}
    return argv, {0, 2} if None in tags else {0}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished one-epoch LeNet run, for ``eval``."""
    workdir = tmp_path_factory.mktemp("fuzz") / "finished"
    code, err, raised = run_cli(["train", "lenet", "--epochs", "1", "--train-examples", "256",
                                 "--test-examples", "256", "--workdir", str(workdir)])
    assert code == 0 and raised is None, err + (raised or "")
    return workdir


@contextlib.contextmanager
def example_dir(finished: Path | None = None):
    """A fresh working directory holding what the path values name: a file, an empty
    directory, a directory whose config.json is garbage, and a copy of a finished run."""
    root = Path(tempfile.mkdtemp(prefix="jaxcnn-fuzz-"))
    (root / "a_file").write_text("not a directory\n")
    (root / "empty_dir").mkdir()
    (root / "garbage").mkdir()
    (root / "garbage" / "config.json").write_text("{")
    if finished is not None:
        shutil.copytree(finished, root / "finished")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        yield root
    finally:
        os.chdir(cwd)
        shutil.rmtree(root, ignore_errors=True)


def run_cli(argv: list[str]) -> tuple[int, str, str | None]:
    """``cli.main(argv)`` in this process: its exit code, its stderr, and the traceback of an
    exception that escaped it (None if none did)."""
    err = io.StringIO()
    raised = None
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = cli.main(argv)
        except SystemExit as exit:                  # argparse: usage and one error line
            code = exit.code
        except Exception:                           # noqa: BLE001 (the crash to report)
            code, raised = None, traceback.format_exc()
    return code, err.getvalue(), raised


def check(argv: list[str], expected: set[int]) -> None:
    """The fuzz's property: no traceback; exit 0 with no error line, or exit 2 with exactly one
    ``jaxcnn CMD: error:`` line; and the exit code the tags expect."""
    code, err, raised = run_cli(argv)
    assert raised is None, f"jaxcnn {' '.join(map(repr, argv))} raised:\n{raised}"
    assert "Traceback" not in err, f"{argv}: a traceback on stderr:\n{err}"
    errors = [line for line in err.splitlines() if ": error:" in line]
    assert code in (0, 2), f"{argv}: exit {code}\n{err}"
    if code == 2:
        assert len(errors) == 1 and errors[0].startswith(f"jaxcnn {argv[0]}: error: "), (
            f"{argv}: exit 2 without one error line:\n{err}")
    else:
        assert not errors, f"{argv}: exit 0 with an error line:\n{err}"
    assert code in expected, f"{argv}: exit {code}, expected {sorted(expected)}:\n{err}"


FUZZ = settings(max_examples=25, deadline=None, phases=(Phase.explicit, Phase.reuse,
                                                        Phase.generate),
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])


@FUZZ
@given(case=argvs("train"))
def test_fuzz_train(case):
    with example_dir():
        check(*case)


@FUZZ
@given(case=argvs("eval"))
def test_fuzz_eval(finished_run, case):
    with example_dir(finished_run):
        check(*case)


@FUZZ
@given(case=argvs("summary"))
def test_fuzz_summary(case):
    with example_dir():
        check(*case)


@FUZZ
@given(case=argvs("bench"))
def test_fuzz_bench(case):
    with example_dir():
        check(*case)


def test_every_flag_of_the_parser_is_fuzzed():
    """A flag added to the CLI is fuzzed, with a pool of its own or a generic one; a pool here
    names a flag that still exists."""
    for command in ("train", "eval", "summary", "bench"):
        parser = subcommands()[command]
        flags = {max(a.option_strings, key=len) for a in parser._actions if a.option_strings}
        fuzzed = set(option_pools(command))
        assert flags - fuzzed <= UNFUZZED | multihost_flags(parser), command
        assert {flag for cmd, flag in POOLS if cmd == command} <= flags, command


# ----------------------------------------------------------------------------------------------
# Regression tests: one per crash (or silent acceptance) the fuzz found
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["train", "lenet", "--workdir", ""], "argument --workdir: expected a path, got an empty "
                                          "string"),
    (["train", "lenet", "--data-dir", ""], "argument --data-dir: expected a path, got an empty "
                                           "string"),
    (["eval", ""], "argument workdir: expected a path, got an empty string"),
    (["eval", "finished", "--data-dir", ""], "argument --data-dir: expected a path"),
    (["train", "lenet", "--coordinator", ""], "argument --coordinator: expected HOST:PORT, got "
                                              "an empty string"),
], ids=["train-workdir", "train-data-dir", "eval-workdir", "eval-data-dir", "coordinator"])
def test_regression_an_empty_path_is_refused_not_read_as_not_given(argv, message):
    # Before: train --workdir '' trained into runs/lenet-book, --data-dir '' and --coordinator
    # '' were ignored, and eval '' evaluated the current directory.
    with example_dir():
        code, err, raised = run_cli(argv)
    assert (code, raised) == (2, None)
    assert f"jaxcnn {argv[0]}: error: {message}" in err


@pytest.mark.parametrize("command", ["train", "eval"])
def test_regression_a_data_dir_that_is_a_file_is_called_a_file(command):
    # Before: "the data directory a_file does not exist", of a file that does.
    argv = ["train", "lenet"] if command == "train" else ["eval", "finished"]
    with example_dir():
        code, err, raised = run_cli(argv + ["--data-dir", "a_file"])
    assert (code, raised) == (2, None)
    assert ("argument --data-dir: expected the directory of the Fashion-MNIST .gz files; "
            "'a_file' is a file, not a directory") in err


def test_regression_summary_of_a_huge_image_needs_no_parameter_memory():
    # Before: summary built the real model, and LeNet at 20000 px has 48 billion parameters
    # (192 GB): an out-of-memory traceback. The table needs shapes only.
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["summary", "lenet", "--input-shape", "1,20000,20000,1"]) == 0
    assert "47,961,621,386" in out.getvalue()


def run_limited(argv: list[str], memory_bytes: int = 4 * 2**30) -> subprocess.CompletedProcess:
    """``jaxcnn ARGV`` in a child that caps its own address space first, so that a run that
    would take the machine's memory fails alone instead."""
    code = (f"import resource, runpy, sys; resource.setrlimit(resource.RLIMIT_AS, "
            f"({memory_bytes}, {memory_bytes})); sys.argv = ['jaxcnn', *{argv!r}]; "
            f"runpy.run_module('jaxcnn', run_name='__main__')")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)


def one_line_error(result: subprocess.CompletedProcess, command: str) -> bool:
    errors = [line for line in result.stderr.splitlines() if ": error:" in line]
    return (result.returncode == 2 and "Traceback" not in result.stderr and len(errors) == 1
            and errors[0].startswith(f"jaxcnn {command}: error: "))


def test_regression_bench_batch_beyond_the_training_set():
    # Before: a 70,000 batch was taken as 60,000 and ended in an out-of-memory traceback.
    result = run_limited(["bench", "lenet", "--steps", "1", "--repeats", "1",
                          "--batch-size", "70000"])
    assert one_line_error(result, "bench"), result.stderr[-2000:]
    assert "exceeds the 60,000 training images" in result.stderr


def test_regression_bench_image_too_big_for_memory():
    # Before: --image-size 20000 ended in a JaxRuntimeError traceback (192 GB); now sizes above
    # 4096 are refused, and a step too big for the memory is refused before it runs.
    for size, message in (("20000", "must be at most 4096"), ("4096", "needs at least")):
        result = run_limited(["bench", "lenet", "--steps", "1", "--repeats", "1",
                              "--image-size", size])
        assert one_line_error(result, "bench") and message in result.stderr, \
            result.stderr[-2000:]


def test_regression_bench_empty_json_path():
    # Before: --json '' was read as no --json, and the results were not written.
    with example_dir():
        code, err, raised = run_cli(["bench", "lenet", "--steps", "1", "--repeats", "1",
                                     "--json", ""])
    assert (code, raised) == (2, None), err
