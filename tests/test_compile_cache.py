"""jaxcnn.compile_cache: the command line's persistent compilation cache, per machine, off with
JAXCNN_COMPILATION_CACHE=0, never over a cache the user chose."""

from __future__ import annotations

import os

from processes import run, run_together

from jaxcnn import compile_cache

TRAIN = ["-m", "jaxcnn", "train", "lenet", "--epochs", "1", "--train-examples", "256",
         "--test-examples", "256", "--checkpoint-every", "0"]


def _entries(directory):
    return sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []


def test_a_repeated_run_compiles_nothing_new_and_zero_turns_the_cache_off(tmp_path):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("JAX_COMPILATION_CACHE", "JAX_PERSISTENT_CACHE"))}
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    directory = compile_cache.default_directory(env)
    assert directory.parent == tmp_path / "cache" / "jaxcnn" / "xla"

    run([*TRAIN, "--workdir", str(tmp_path / "a")], env)
    first = _entries(directory)
    assert any(name.startswith("jit_train_step") for name in first), first
    # The same programs again, and beside it a run with the cache off.
    off = {**env, "XDG_CACHE_HOME": str(tmp_path / "off"), compile_cache.ENV_OFF: "0"}
    run_together([([*TRAIN, "--workdir", str(tmp_path / "b")], env),
                  ([*TRAIN, "--workdir", str(tmp_path / "c")], off)])
    assert _entries(directory) == first                        # every compile was a cache hit
    assert not (tmp_path / "off" / "jaxcnn").exists()      # (matplotlib keeps its own there)


def test_the_users_own_cache_choice_stands(tmp_path):
    env = {"JAX_COMPILATION_CACHE_DIR": str(tmp_path / "mine"), "XDG_CACHE_HOME": str(tmp_path)}
    assert compile_cache.enable(env) is None
    assert env == {"JAX_COMPILATION_CACHE_DIR": str(tmp_path / "mine"),
                   "XDG_CACHE_HOME": str(tmp_path)}
    env = {"XDG_CACHE_HOME": str(tmp_path)}
    assert compile_cache.enable(env) == compile_cache.default_directory(env)
    assert env["JAX_COMPILATION_CACHE_DIR"] == str(compile_cache.default_directory(env))
    assert env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] == "0"
    assert compile_cache.enable({compile_cache.ENV_OFF: "0"}) is None


def test_the_machine_signature_names_the_cpu():
    signature = compile_cache.machine_signature()
    assert len(signature) == 12 and int(signature, 16) >= 0
    assert signature == compile_cache.machine_signature()
