from __future__ import annotations

import importlib
import shutil

import pytest
import yaml

from stages import predict
from stages.cli import main as cli_main
from stages.cli.params import main
from stages.lib.params import ParamsError, compose_params, default_lake, load_params, section
from tests.conftest import ROOT


def test_committed_params_yaml_is_the_composition_of_conf(tmp_path):
    fresh = compose_params(ROOT / "conf", tmp_path / "params.yaml")
    assert (ROOT / "params.yaml").read_bytes() == fresh.read_bytes(), (
        "params.yaml is stale: run `evergreen params` and commit it"
    )


def test_overrides_select_another_model(tmp_path):
    out = compose_params(ROOT / "conf", tmp_path / "p.yaml", ["model=hgb", "seed=11"])
    params = yaml.safe_load(out.read_text())
    assert params["model"]["estimator"] == "hist_gradient_boosting" and params["seed"] == 11


def test_check_flags_a_stale_file(tmp_path, capsys):
    stale = tmp_path / "params.yaml"
    stale.write_text("seed: 1\n")
    assert main(["--conf", str(ROOT / "conf"), "--output", str(stale), "--check"]) == 1
    assert "stale" in capsys.readouterr().out
    assert main(["--conf", str(ROOT / "conf"), "--output", str(stale)]) == 0
    assert main(["--conf", str(ROOT / "conf"), "--output", str(stale), "--check"]) == 0


def test_missing_conf_and_sections_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"config\.yaml"):
        compose_params(tmp_path, tmp_path / "p.yaml")
    with pytest.raises(KeyError, match=r"lake\.path"):
        section({"lake": {}}, "lake.path")


def test_lake_location_cli_wins_over_params(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("lake:\n  path: s3://bucket/shop\n")
    assert default_lake(None, params) == "s3://bucket/shop"
    assert default_lake("/data/lake", params) == "/data/lake"
    assert default_lake(None, tmp_path / "absent.yaml") == "lake"


def test_cli_lists_commands_and_rejects_unknown(capsys):
    assert cli_main(["--help"]) == 0
    assert "lake simulate" in capsys.readouterr().out
    assert cli_main(["frobnicate"]) == 2


HUGE = "1" * 100_000


def one_line(err: str) -> str:
    assert err.count("\n") == 1 and "Traceback" not in err, err[:2000]
    assert len(err) < 600, err[:600]
    return err


def test_yaml_syntax_error_in_conf_is_one_line_naming_file_and_line(tmp_path, capsys):
    conf = shutil.copytree(ROOT / "conf", tmp_path / "conf")
    lines = (conf / "model" / "logreg.yaml").read_text().splitlines()
    lines.insert(2, "oops: [1, 2")
    (conf / "model" / "logreg.yaml").write_text("\n".join(lines) + "\n")
    for check in ([], ["--check"]):
        assert main(["--conf", str(conf), "--output", str(tmp_path / "p.yaml"), *check]) == 2
        err = one_line(capsys.readouterr().err)
        assert err.startswith(f"evergreen params: {conf}/model/logreg.yaml, line ")
        assert "not valid YAML (while parsing a flow sequence from line 3: expected ','" in err
    assert not (tmp_path / "p.yaml").exists()


def test_yaml_syntax_error_in_params_yaml_is_named(tmp_path, capsys):
    params = tmp_path / "params.yaml"
    params.write_text("evaluate:\n  threshold: 0.5\n bad indent: 1\n")
    with pytest.raises(ParamsError, match=r"params\.yaml, line 3: not valid YAML \("):
        load_params(params)
    # a stage reading it says so in one line (predict reads params first)
    missing = [str(tmp_path / name) for name in ("m.onnx", "card", "s", "p", "t", "out")]
    assert predict.main([*missing, "--params", str(params)]) == 2
    err = one_line(capsys.readouterr().err)
    assert err.startswith(f"predict: {params}, line 3: not valid YAML (")
    params.write_text(f"seed: {HUGE}\n")
    with pytest.raises(ParamsError, match=r"params\.yaml: Exceeds the limit \(4300 digits\)"):
        load_params(params)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (f"train.n_trials={HUGE}", "override train.n_trials=1111"),
        ("train.n_trials==2", "override train.n_trials==2: extraneous input '='"),
        # a key not set in conf/ (an optional one, or a typo): what it means and what to do
        (
            "train.no_such_key=2",
            "override train.no_such_key=2: 'train.no_such_key' is not set in conf/ (an optional "
            "key, or a misspelt one): write it in its config file, or add it with "
            "+train.no_such_key=2",
        ),
        ("model=nope", "cannot compose with ['model=nope']: In 'config': Could not find"),
    ],
)
def test_bad_override_is_one_line_naming_it(tmp_path, capsys, override, message):
    out = tmp_path / "p.yaml"
    assert main(["--conf", str(ROOT / "conf"), "--output", str(out), override]) == 2
    err = one_line(capsys.readouterr().err)
    assert err.startswith("evergreen params: ") and message in err
    assert not out.exists()
    if override.endswith(HUGE):
        assert "(100015 characters): Exceeds the limit (4300 digits)" in err


@pytest.mark.parametrize(
    "stage", ["validate", "profiles", "prepare", "features", "split", "drift", "train", "evaluate"]
)
def test_every_stage_names_a_broken_params_file_in_one_line(tmp_path, stage, capsys) -> None:
    bad = tmp_path / "params.yaml"
    bad.write_text("seed: 7\nsplit: [1, 2\n")
    # the stage's own command line from dvc.yaml, its paths moved under tmp_path
    cmd = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][stage]["cmd"].split()[3:]
    argv = [a if a.startswith("--") else str(tmp_path / a) for a in cmd]
    main = importlib.import_module(f"stages.{stage}").main
    with pytest.raises(SystemExit) as exited:
        main([*argv, "--params", str(bad)])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"{stage}: {bad}, line 3: not valid YAML (") and err.count("\n") == 1


# --- a dataset is its config (issue 16) --------------------------------------------------------


@pytest.fixture
def conf(tmp_path):
    conf = shutil.copytree(ROOT / "conf", tmp_path / "conf")
    with (conf / "dataset" / "bank.yaml").open("a") as f:
        f.write(
            "validate:\n  max_missing_fraction: 0.5\n"
            "features:\n  windows: [7, 28, 90]\n"
            "evaluate:\n  threshold: 0.3\n"
            "report:\n  segments: [job]\n"
        )
    return conf


def _compose(conf, tmp_path, *overrides):
    return yaml.safe_load(compose_params(conf, tmp_path / "p.yaml", list(overrides)).read_text())


def test_a_dataset_sets_its_sections_over_conf_and_the_command_line_wins(conf, tmp_path):
    params = _compose(conf, tmp_path, "dataset=bank")
    assert params["validate"]["max_missing_fraction"] == 0.5
    assert params["validate"]["max_quarantine_fraction"] == 0.2  # conf's, merged key by key
    assert params["features"]["windows"] == [7, 28, 90]
    assert params["report"]["segments"] == ["job"]
    assert params["monitor"]["seasonal"] == ["month"]
    # an interpolation of a merged key sees the dataset's value
    assert params["evaluate"]["threshold"] == params["serve"]["threshold"] == 0.3
    # params.yaml holds the effective values only: DVC's per-section param deps stay exact
    assert not set(params["dataset"]) & {"validate", "features", "report", "monitor"}
    over = _compose(conf, tmp_path, "dataset=bank", "features.windows=[7,14]", "split=out_of_time")
    assert (
        over["features"]["windows"] == [7, 14] and over["validate"]["max_missing_fraction"] == 0.5
    )
    mine = _compose(conf, tmp_path, "dataset=bank", "dataset.features.windows=[1,2]")
    assert mine["features"]["windows"] == [1, 2]
    assert _compose(conf, tmp_path)["features"]["windows"] == [7, 14, 28]  # shop: conf's


def test_a_dataset_without_slices_composes_with_none(conf, tmp_path):
    # evaluate.slices is `${oc.select:dataset.slices,[]}`: its default, a list, must resolve
    # (a new user's first config seldom names slices)
    text = (conf / "dataset" / "bank.yaml").read_text()
    (conf / "dataset" / "noslices.yaml").write_text(
        text.replace("name: bank", "name: noslices").replace("slices: [contact, month, job]", "")
    )
    params = _compose(conf, tmp_path, "dataset=noslices")
    assert params["evaluate"]["slices"] == [] and "slices" not in params["dataset"]


def test_an_unknown_key_in_a_dataset_section_is_one_line_naming_file_and_key(conf, tmp_path):
    with (conf / "dataset" / "bank.yaml").open("a") as f:
        f.write("drift:\n  last_dayz: 3\n")
    with pytest.raises(ParamsError) as caught:
        compose_params(conf, tmp_path / "p.yaml", ["dataset=bank"])
    assert str(caught.value).startswith(
        "conf/dataset/bank.yaml: drift.last_dayz: expected a known key (did you mean "
        "'last_days'?), one of last_days, bins"
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("+task.max_periods=8", "override +task.max_periods=8: 'task' is no section of "),
        ("+monitr.min_count=5", "is no section of "),
    ],
)
def test_hydras_plus_for_an_unknown_section_is_refused(tmp_path, capsys, override, message):
    # Hydra's own hint for a key it does not know adds a top-level section nothing reads
    out = tmp_path / "p.yaml"
    assert main(["--conf", str(ROOT / "conf"), "--output", str(out), override]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and not out.exists()
    if "monitr" in override:
        assert err.rstrip().endswith("(did you mean 'monitor'?)")
    else:
        assert "+dataset.task" in err


@pytest.mark.parametrize(
    ("added", "message"),
    [
        # the dataset's own keys are many: the line is abbreviated, so the suggestion is first
        ("entity_feature: {}\n",
         "conf/dataset/typo.yaml: entity_feature: expected a known key (did you mean "
         "'entity_features'?), one of name, "),
        ("drift: {last_days: 7}\nfeatures: {windows: 7}\n",
         "features.windows: expected a list, got 7\n"),
        # columns the stages will look for: a misspelt slice was a traceback at evaluate after
        # the whole training, a misspelt seasonal column silently nothing
        ("drift: {last_days: 7}\n",
         "conf/dataset/typo.yaml: slices: 'jobb' is no column of the test split (did you "
         "mean 'job'?), expected one of row_key, snapshot_date, "),
        ("drift: {last_days: 7}\n",
         "conf/dataset/typo.yaml: monitor.seasonal: 'montth' is no column of the dataset's "
         "tables (did you mean 'month'?)\n"),
        # a misspelt segment failed the prediction run at its last stage: nothing published
        ("report: {segments: [contactt]}\n",
         "report.segments: 'contactt' is no column of the prediction set (did you mean "
         "'contact'?)"),
    ],
)  # fmt: skip
def test_a_dataset_mistake_says_what_was_expected(conf, tmp_path, capsys, added, message):
    text = (ROOT / "conf" / "dataset" / "bank.yaml").read_text().replace("name: bank", "name: typo")
    if "jobb" in message:
        text = text.replace("slices: [contact, month, job]", "slices: [contact, month, jobb]")
    if "montth" in message:
        text = text.replace("seasonal: [month]", "seasonal: [montth]")
    (conf / "dataset" / "typo.yaml").write_text(text + added)
    out = tmp_path / "p.yaml"
    assert main(["--conf", str(conf), "--output", str(out), "dataset=typo"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_params_composed_by_hydra_alone_are_merged_when_read(conf, tmp_path):
    """`dvc exp run -S` composes with DVC's compose_and_dump: the stages read the same values."""
    from dvc.utils.hydra import compose_and_dump

    raw = tmp_path / "dvc.yaml"
    compose_and_dump(raw, str(conf.resolve()), None, "config", str(conf.parent), ["dataset=bank"])
    assert yaml.safe_load(raw.read_text())["dataset"]["features"] == {"windows": [7, 28, 90]}
    params = load_params(raw)
    ours = _compose(conf, tmp_path, "dataset=bank")
    assert params["features"] == ours["features"] and params["dataset"] == ours["dataset"]


def test_evergreen_params_refuses_a_family_that_does_not_fit_the_task(tmp_path, capsys):
    out = tmp_path / "p.yaml"
    for overrides, message in (
        (["model=ridge"], "'ridge' is no estimator for a classification"),
        (["dataset=bikes", "model=mlp"], "'torch_mlp' is no estimator for a regression"),
    ):
        for check in ([], ["--check"]):
            assert main(["--conf", str(ROOT / "conf"), "--output", str(out), *overrides, *check])
            err = one_line(capsys.readouterr().err)
            assert err.startswith(f"evergreen params: override {overrides[-1]}: model.estimator: ")
            assert message in err
        assert not out.exists()
    assert (
        main(["--conf", str(ROOT / "conf"), "--output", str(out), "dataset=bikes", "model=ridge"])
        == 0
    )


def test_evergreen_params_names_the_file_a_bad_value_comes_from(conf, tmp_path, capsys):
    out = tmp_path / "p.yaml"
    text = (conf / "dataset" / "bank.yaml").read_text().replace("0.5\n", "5\n")
    (conf / "dataset" / "bank.yaml").write_text(text)
    assert main(["--conf", str(conf), "--output", str(out), "dataset=bank"]) == 2
    assert one_line(capsys.readouterr().err) == (
        f"evergreen params: {conf}/dataset/bank.yaml: validate.max_missing_fraction: 5 is not a "
        "fraction in [0, 1]\n"
    )
    (conf / "model" / "logreg.yaml").write_text(
        (conf / "model" / "logreg.yaml").read_text().replace("max_iter: 2000", "max_iterz: 2")
    )
    assert main(["--conf", str(conf), "--output", str(out)]) == 2
    err = one_line(capsys.readouterr().err)
    assert err.startswith(f"evergreen params: {conf}/model/logreg.yaml: model.hyperparameters")
    cfg = (conf / "dataset" / "shop.yaml").read_text().replace("horizon_days:", "horizon_dayz:")
    (conf / "dataset" / "shop.yaml").write_text(cfg)
    assert main(["--conf", str(conf), "--output", str(out), "--check"]) == 2
    assert one_line(capsys.readouterr().err).startswith(
        "evergreen params: conf/dataset/shop.yaml: label.horizon_dayz: expected a known key"
    )


def test_train_refuses_a_family_that_does_not_fit_the_task_in_one_line(tmp_path, capsys):
    from stages.contract.feature_schema import FeatureSchema, save_schema
    from stages.train import main as train

    params = compose_params(ROOT / "conf", tmp_path / "p.yaml", ["model=ridge"])
    schema = FeatureSchema(
        entity_key="customer_id",
        time="snapshot_date",
        label="churn",
        numeric=("x",),
        categorical=(),
    )
    path = save_schema(schema, tmp_path / "feature_schema.json")
    args = [str(tmp_path), str(path), str(tmp_path / "m.skops"), str(tmp_path / "t.json")]
    assert train([*args, "--params", str(params)]) == 2
    err = one_line(capsys.readouterr().err)
    assert err.startswith("train: conf/model/ridge.yaml: model.estimator: 'ridge' is no estimator")
    assert not (tmp_path / "m.skops").exists()
