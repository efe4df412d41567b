"""Settings in [tool.elbolab] (pyproject.toml) or elbolab.toml (elbolab.model.config): found as pytest
finds its configuration, checked key by key, overridden by the environment and by flags, and shown
with their sources by `elbolab config`."""

from __future__ import annotations

import json

import pytest

from elbolab.cli import main
from elbolab.model.config import KEYS, load_config
from elbolab.model.errors import UsageError
from elbolab.store.results import save
from tests.builders import make_run, ok
from tests.test_compare import ELBO, GRAD


def write(path, text: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_found_from_the_working_directory_upwards(tmp_path):
    write(
        tmp_path / "pyproject.toml", "[tool.elbolab]\nthreshold = 0.2\n[tool.elbolab.run]\nbatch = [1, 128]\n"
    )
    deep = tmp_path / "a" / "b"
    deep.mkdir(parents=True)
    config = load_config(deep, environ={})
    assert config.file == tmp_path / "pyproject.toml"
    assert config.get("threshold") == 0.2 and config.get("run.batch") == (1, 128)
    assert config.sources["threshold"] == f"{tmp_path / 'pyproject.toml'} [tool.elbolab]"
    assert config.get("noise-band") is None and "noise-band" not in config.sources


def test_a_pyproject_without_the_table_is_passed_over_and_elbolab_toml_comes_first(tmp_path):
    write(tmp_path / "elbolab.toml", 'noise-band = 0.05\n[report]\nbaseline = "rust"\n')
    write(tmp_path / "sub" / "pyproject.toml", '[project]\nname = "x"\n')  # no [tool.elbolab]: keep looking
    config = load_config(tmp_path / "sub", environ={})
    assert config.file == tmp_path / "elbolab.toml"
    assert config.get("noise-band") == 0.05 and config.get("report.baseline") == "rust"
    # in one folder, elbolab.toml wins over pyproject.toml's table
    write(tmp_path / "pyproject.toml", "[tool.elbolab]\nnoise-band = 0.01\n")
    assert load_config(tmp_path, environ={}).get("noise-band") == 0.05


def test_nothing_found_is_the_built_in_defaults(tmp_path):
    config = load_config(tmp_path, environ={})
    assert config.file is None and config.values == {}
    assert config.pick(None, "threshold", 0.1) == 0.1 and config.pick(0.3, "threshold", 0.1) == 0.3


def test_the_environment_overrides_the_file_for_the_store(tmp_path):
    write(tmp_path / "elbolab.toml", 'store = "sqlite:///from-file.sqlite"\n')
    config = load_config(tmp_path, environ={"ELBOLAB_STORE": "sqlite:///from-env.sqlite"})
    assert config.get("store") == "sqlite:///from-env.sqlite"
    assert config.sources["store"] == "environment ELBOLAB_STORE"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("treshold = 0.1\n", "unknown key 'treshold'"),
        ("[run]\nbackends = ['numpy']\n", "unknown key 'run.backends'"),
        ("threshold = 'ten percent'\n", "threshold must be a number"),
        ("threshold = true\n", "threshold must be a number"),
        ("[run]\nbatch = [0, 128]\n", "run.batch must be a list of positive integers"),
        ("[run]\nbackend = 'numpy'\n", "run.backend must be a list of names"),
        ("run = 3\n", "run must be a table"),
        ("threshold-for = { vae_step = 'x' }\n", "threshold-for.vae_step must be a number"),
        ("threshold = \n", "not valid TOML"),
    ],
)
def test_a_bad_setting_is_one_line_naming_the_file(tmp_path, text, says):
    write(tmp_path / "elbolab.toml", text)
    with pytest.raises(UsageError) as err:
        load_config(tmp_path, environ={})
    assert says in str(err.value) and str(tmp_path / "elbolab.toml") in str(err.value)


def test_every_key_is_documented_with_the_flag_it_stands_for():
    assert all(key.help and "(" in key.help for key in KEYS.values())


# ------------------------------------------------------------------------------- on the CLI


def test_elbolab_config_prints_each_setting_and_where_it_came_from(tmp_path, monkeypatch, capsys):
    write(tmp_path / "pyproject.toml", '[tool.elbolab]\nthreshold = 0.2\n[tool.elbolab.run]\nk = "numpy"\n')
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ELBOLAB_STORE", "sqlite:///env.sqlite")
    assert main(["config", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    rows = {s["key"]: (s["value"], s["source"]) for s in doc["settings"]}
    assert set(rows) == set(KEYS)
    assert rows["threshold"] == (0.2, f"{tmp_path / 'pyproject.toml'} [tool.elbolab]")
    assert rows["run.k"][0] == "numpy"
    assert rows["store"] == ("sqlite:///env.sqlite", "environment ELBOLAB_STORE")
    assert rows["noise-band"] == (0.03, "built-in") and rows["ab-threshold"] == (0.05, "built-in")
    assert main(["config"]) == 0
    assert "threshold" in capsys.readouterr().out


def test_an_unknown_key_stops_a_command_with_exit_2(tmp_path, monkeypatch, capsys):
    write(tmp_path / "elbolab.toml", "[report]\nbaselin = 'numpy'\n")
    monkeypatch.chdir(tmp_path)
    assert main(["config"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown key 'report.baselin'" in err


def _runs(tmp_path, slowdown: float):
    base = make_run([ok(ELBO, [100_000.0] * 15), ok(GRAD, [200_000.0] * 15)], run_id="base")
    head = make_run([ok(ELBO, [100_000.0 * slowdown] * 15), ok(GRAD, [200_000.0] * 15)], run_id="head")
    save(tmp_path / "base.json", base)
    save(tmp_path / "head.json", head)
    return str(tmp_path / "base.json"), str(tmp_path / "head.json")


def test_the_gate_reads_its_threshold_from_the_file_and_a_flag_overrides_it(tmp_path, monkeypatch, capsys):
    base, head = _runs(tmp_path, 1.15)  # elbo 15% slower, exactly repeated samples: a confident change
    monkeypatch.chdir(tmp_path)
    assert main(["gate", base, head]) == 1  # built-in 10%: a regression
    write(tmp_path / "pyproject.toml", "[tool.elbolab]\nthreshold = 0.2\n")
    assert main(["gate", base, head]) == 0  # 20% from the file: slower, not a regression
    assert main(["gate", base, head, "--threshold", "0.1"]) == 1  # the flag wins
    write(tmp_path / "pyproject.toml", "[tool.elbolab]\nthreshold = 0.2\nthreshold-for = { elbo = 0.1 }\n")
    assert main(["gate", base, head]) == 1  # the per-workload setting
    assert main(["gate", base, head, "--threshold-for", "elbo=0.3"]) == 0  # a flag overrides that workload
    capsys.readouterr()


def test_compare_between_files_uses_the_two_run_threshold(tmp_path, monkeypatch, capsys):
    """compare of two files judges by 10% (as gate FILES does), not the A/B gate's 5%."""
    base, head = _runs(tmp_path, 1.07)
    monkeypatch.chdir(tmp_path)
    assert main(["compare", base, head, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["rule"]["threshold"] == 0.1
    assert not any(c["regression"] for c in doc["comparisons"])


def test_a_pyproject_that_does_not_name_the_table_is_not_read(tmp_path):
    write(tmp_path / "pyproject.toml", "this is not toml [")  # another tool's (broken) file
    assert load_config(tmp_path, environ={}).file is None
    write(tmp_path / "pyproject.toml", "[tool.elbolab\nthreshold = 1\n")  # ours, broken: said
    with pytest.raises(UsageError, match="not valid TOML"):
        load_config(tmp_path, environ={})
