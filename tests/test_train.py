"""train.py's command line: preset choices in --help, a clear error for an unknown preset, --store."""
from __future__ import annotations

import json
import re

import pytest

import train
from core.cnn.recipes import PRESETS
from core.data.synthetic import write_abid_collection, write_manifest_collection
from tests.builders import settle_folders

RECHECK_COMMANDS = ("prepare", "classical", "suite", "cnn", "lr-find")  # those that load through the index
STORE_COMMANDS = ("prepare", "classical", "suite", "count", "evaluate", "reconcile", "cnn", "lr-find")


@pytest.mark.parametrize("command", ["cnn", "lr-find"])
def test_help_lists_every_preset_with_its_notes(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        train.main([command, "--help"])
    assert exit_.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    for name, recipe in PRESETS.items():
        assert any(line.split() and line.split()[0] == name and recipe.notes in line for line in lines), name


def test_help_groups_every_command_by_job_in_the_readme_order(capsys):
    with pytest.raises(SystemExit) as exit_:
        train.main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    lines = text[text.index("commands, by job:"):].splitlines()[1:]
    headings = [line.strip().rstrip(":") for line in lines if line.startswith("  ") and not line.startswith("    ")]
    assert headings == ["data", "training", "counting and reconciliation", "recounts", "store"]
    listed = [line.split()[0] for line in lines if line.startswith("    ")]
    assert sorted(listed) == sorted(train.build_parser()._subparsers._group_actions[0].choices)  # each once
    with pytest.raises(ValueError, match="differ"):
        train.grouped_commands({"download": "fetch photos"})


def test_classical_help_names_every_suite_feature_and_model(capsys):
    from core.classical.features import EXTRACTORS
    from core.classical.models import MODELS
    from core.classical.suites import SUITES

    with pytest.raises(SystemExit):
        train.main(["classical", "--help"])
    words = set(re.findall(r"[\w-]+", capsys.readouterr().out))
    assert set(SUITES) | set(EXTRACTORS) | set(MODELS) <= words


def test_unknown_preset_is_a_one_line_error_not_a_traceback(capsys):
    with pytest.raises(SystemExit) as exit_:
        train.main(["cnn", "--preset", "resnet99"])
    assert exit_.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and "invalid choice: 'resnet99'" in errors[0] and "quick" in errors[0]


@pytest.mark.parametrize("command", STORE_COMMANDS)
def test_every_store_command_takes_store(command, tmp_path):
    extra = ["photo.jpg"] if command == "count" else []
    args = train.build_parser().parse_args([command, *extra, "--store", str(tmp_path / "s")])
    assert args.store == tmp_path / "s"


def test_prepare_writes_its_cache_into_the_given_store(tmp_path, store_root, capsys):
    data = write_manifest_collection(tmp_path / "data", per_class=2)
    train.main(["prepare", "--data", str(data), "--size", "32", "--store", str(tmp_path / "elsewhere")])
    assert list((tmp_path / "elsewhere" / "datasets").iterdir())
    assert not store_root.exists()  # the default store (BINSIGHT_STORE) was left alone


def test_evaluate_reads_the_given_store(tmp_path, store_root):
    data = write_manifest_collection(tmp_path / "data", per_class=1)
    with pytest.raises(SystemExit) as exit_:
        train.main(["evaluate", "--data", str(data), "--store", str(tmp_path / "empty")])
    assert "python train.py suite" in str(exit_.value.code)  # no finished experiment in that store
    assert (tmp_path / "empty" / "experiments.sqlite").is_file()
    assert not store_root.exists()


@pytest.mark.parametrize("command", RECHECK_COMMANDS)
def test_every_indexed_command_takes_recheck(command):
    assert train.build_parser().parse_args([command, "--recheck"]).recheck
    assert not train.build_parser().parse_args([command]).recheck


def test_prepare_recheck_sees_a_label_edited_in_place(tmp_path, store_root, capsys):
    data = write_abid_collection(tmp_path / "data", [1, 2])
    settle_folders(data / "bin-images", data / "metadata")

    def counts(*flags: str) -> dict:
        capsys.readouterr()
        train.main(["prepare", "--data", str(data), "--size", "32", *flags])
        return json.loads(capsys.readouterr().out)["counts"]

    assert counts() == {"1": 1, "2": 1}
    with open(data / "metadata" / "2.json", "w") as fh:  # rewritten in place: its folder does not change
        json.dump({"EXPECTED_QUANTITY": 1}, fh)
    assert counts() == {"1": 1, "2": 1}
    assert counts("--recheck") == {"1": 2}


@pytest.mark.parametrize("words", [["recount", "export", "--batch", "B"], ["recount", "import", "f.csv"],
                                   ["store", "backup", "copy.sqlite"]])
def test_the_recount_and_store_commands_take_store(words, tmp_path):
    args = train.build_parser().parse_args([*words, "--store", str(tmp_path / "s")])
    assert args.store == tmp_path / "s"
