"""The parameter declarations of edlae_dask.config: one default per parameter, the CLI and job specs made from them."""

import dataclasses

import click
import pytest
import yaml
from click.testing import CliRunner

from edlae_dask.cli import cli
from edlae_dask.config import (
    INGEST_FORMATS,
    JOB_OPTIONS,
    DemoOptions,
    InfoOptions,
    TrainParams,
    build,
    option,
    options_of,
)
from edlae_dask.errors import ParameterError
from edlae_dask.jobspec import load_job_spec
from edlae_dask.model import EDLAE

COMMANDS = {**JOB_OPTIONS, "demo": DemoOptions, "info": InfoOptions}
SPEC_OPTIONS = {"spec_file", "check", "verbose", "quiet"}  # what SpecCommand and every command add


def test_train_defaults_are_train_params_and_the_estimators():
    field_of = {o.name: o.field for o in options_of(TrainParams)}  # click's names: train_path is the field path
    from_cli = {field_of[p.name]: p.default for p in cli.commands["train"].params if p.name in field_of}
    assert from_cli == dataclasses.asdict(TrainParams()) == EDLAE().get_params()
    assert set(from_cli) == {f.name for f in dataclasses.fields(TrainParams)}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_each_command_takes_the_options_declared_for_it_in_their_order(command):
    params = [p for p in cli.commands[command].params if p.name not in SPEC_OPTIONS]
    declared = options_of(COMMANDS[command])
    assert [p.name for p in params] == [o.name for o in declared]
    ctx = click.Context(cli.commands[command])
    for p, o in zip(params, declared):
        assert p.required == o.required and p.multiple == (o.many and o.flag is not None), o.name
        if o.flag is not None:
            assert p.opts[0] == o.flag and p.help == o.help
            assert o.required or o.many or p.get_default(ctx) == o.default, o.name  # many: click keeps none


def test_demo_and_train_share_the_model_options_but_not_their_click_objects():
    def model_params(command):
        return [p for p in cli.commands[command].params if p.name in {o.name for o in options_of(TrainParams)}]

    train, demo = model_params("train"), model_params("demo")
    assert [p.name for p in train] == [p.name for p in demo] and len(train) == len(dataclasses.fields(TrainParams))
    assert not {id(p) for p in train} & {id(p) for p in demo}


def test_the_evaluate_grid_defaults_are_the_models():
    r = CliRunner().invoke(cli, ["evaluate", "--help"])
    assert f"[default: {TrainParams.lam:g}]" in r.output and f"[default: {TrainParams.p:g}]" in r.output


def test_ingest_formats_are_the_readers():
    from edlae_dask.ingestion import FORMATS

    assert INGEST_FORMATS == ("auto", *FORMATS)


def test_build_maps_command_names_to_fields():
    assert build(TrainParams, {"train_path": "dense", "k": 7}) == TrainParams(k=7, path="dense")
    built = build(JOB_OPTIONS["train"], {"interactions": "x.zarr", "neighbors": 8, "cluster": "threads"})
    assert built.interactions == "x.zarr" and built.fit.params.neighbors == 8 and built.fit.where.cluster == "threads"
    with pytest.raises(TypeError, match="path"):
        build(TrainParams, {"path": "dense"})  # the field's name is not the command's


def test_a_declaration_of_an_unsupported_type_is_refused():
    @dataclasses.dataclass(frozen=True)
    class Bad:
        items: list = option(None)

    with pytest.raises(TypeError, match="Bad.items"):
        options_of(Bad)


def _spec(tmp_path, body):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def test_a_complete_spec_has_every_required_key(tmp_path):
    (tmp_path / "x.zarr").mkdir()
    spec = _spec(tmp_path, {"job": "score", "factors": "x.zarr", "interactions": "x.zarr"})
    assert "out" not in load_job_spec(spec).values  # a flag may still give it
    with pytest.raises(ParameterError, match=r"the required key 'out' is missing; set it in the spec or give --out"):
        load_job_spec(spec, complete=True)
    ingest = _spec(tmp_path, {"job": "ingest", "out": "x.zarr"})
    with pytest.raises(ParameterError, match=r"the required key 'source' is missing; .* give SOURCE"):
        load_job_spec(ingest, complete=True)


@pytest.mark.parametrize("body, message", [
    ({"cluster": 5}, r"'cluster' must be a string, not 5"),
    ({"checkpoint-dir": ["a", "b"]}, r"'checkpoint-dir' must be a string"),
    ({"path": "sideways"}, r"'path' must be one of auto, dense, scalable"),
    ({"storage-options": "[1]"}, r"'storage-options': storage options must be a JSON object"),
])
def test_spec_values_are_checked_against_the_declarations(tmp_path, body, message):
    spec = _spec(tmp_path, {"job": "train", "interactions": "x.zarr", "out": "f", **body})
    with pytest.raises(ParameterError, match=message):
        load_job_spec(spec)


def test_a_spec_of_no_known_job_is_an_error(tmp_path):
    spec = _spec(tmp_path, {"out": "f"})
    with pytest.raises(ParameterError, match="'demo' is not a job"):
        load_job_spec(spec, "demo")


def test_the_eigensolver_rule_defaults_are_the_solvers_cap_and_reach_cli_and_estimator():
    from edlae_dask.config import DEFAULT_EIG_TOL, DEFAULT_MAX_POWER_ITER
    from edlae_dask.linalg import eigen

    assert DEFAULT_MAX_POWER_ITER == eigen.DEFAULT_MAX_POWER_ITER
    assert (TrainParams().eig_tol, TrainParams().max_power_iter) == (DEFAULT_EIG_TOL, DEFAULT_MAX_POWER_ITER)
    assert DEFAULT_MAX_POWER_ITER >= eigen.KRYLOV_N_POWER_ITER >= eigen.DEFAULT_N_POWER_ITER  # the least fits the cap
    flags = {p.opts[0]: p.default for p in cli.commands["train"].params}
    assert flags["--eig-tol"] == DEFAULT_EIG_TOL and flags["--max-power-iters"] == DEFAULT_MAX_POWER_ITER
    assert EDLAE(eig_tol=0.0, max_power_iter=5).get_params()["max_power_iter"] == 5


@pytest.mark.parametrize("kw, message", [
    (dict(eig_tol=-0.1), "'eig_tol' parameter of EDLAE must be a float in [0, 1)"),
    (dict(eig_tol=1.0), "'eig_tol' parameter"),
    (dict(eig_tol=float("nan")), "'eig_tol' parameter"),
    (dict(eig_tol="1e-3"), "'eig_tol' parameter"),
    (dict(max_power_iter=-1), "'max_power_iter' parameter of EDLAE must be an int in [0, 100]"),
    (dict(max_power_iter=101), "'max_power_iter' parameter"),
    (dict(max_power_iter=True), "'max_power_iter' parameter"),
    (dict(n_power_iter=9, max_power_iter=8), "'n_power_iter' parameter of EDLAE must be at most max_power_iter = 8"),
])
def test_the_eigensolver_rule_parameters_are_checked(kw, message):
    with pytest.raises(ParameterError) as err:
        TrainParams(**kw).validate()
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_fixed_pass_count_may_exceed_the_cap():
    TrainParams(n_power_iter=30, max_power_iter=8, eig_tol=0.0).validate()  # no rule: the cap is not used


def test_the_rule_flags_reach_the_spec_and_the_cli(tmp_path):
    spec = _spec(tmp_path, {"job": "train", "interactions": "x.zarr", "out": "f", "eig-tol": 0.01,
                            "max-power-iters": 7})
    values = load_job_spec(spec).values
    assert values["eig_tol"] == 0.01 and values["max_power_iter"] == 7
    r = CliRunner().invoke(cli, ["train", "--interactions", "nowhere.zarr", "--out", "f", "--eig-tol", "2"])
    assert r.exit_code != 0 and "eig_tol" in r.output
