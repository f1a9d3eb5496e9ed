"""Cluster specs (cluster/*.yaml, --cluster): validation, loopback-only defaults, SLURM, Kubernetes manifests.

SLURM and Kubernetes cannot run here; what can be checked without them is: the SLURM
spec builds dask-jobqueue's SLURMCluster and its job script carries the resources and
the worker command; the manifests parse, use one image, and run `edlae-dask` commands
that our CLI accepts with the files they mount.
"""

import dataclasses
import re
import shutil
import subprocess
from pathlib import Path

import psutil
import pytest
import yaml
from click.testing import CliRunner
from dask.utils import parse_bytes

from edlae_dask.cli import cli
from edlae_dask.cluster import connect, load_cluster_spec, make_cluster, parse_cluster
from edlae_dask.errors import ParameterError
from edlae_dask.io.interactions import write_interactions

from conftest import clustered_interactions

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "cluster" / "k8s"


def _spec(tmp_path, body, name="cluster.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(body))
    return path


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("cluster/tls/make-certs.sh needs openssl")
    out = tmp_path_factory.mktemp("certs") / "certs"
    subprocess.run(["bash", str(REPO / "cluster" / "tls" / "make-certs.sh"), str(out)], check=True, capture_output=True)
    return out


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize("value, kind", [("local", "local"), ("threads", "threads"), (None, "local"),
                                         ("tcp://10.0.0.1:8786", "address"), ("tls://sched:8786", "address")])
def test_keywords_and_addresses_need_no_file(value, kind):
    assert parse_cluster(value).kind == kind


def test_the_shipped_cluster_specs_are_valid(tmp_path, certs):
    for name in ("local", "scheduler", "slurm"):
        assert load_cluster_spec(REPO / "cluster" / f"{name}.yaml").kind == name.replace("scheduler", "address")
    # tls.yaml names ../certs/: put it where make-certs.sh's output is beside it
    (tmp_path / "cluster").mkdir()
    shutil.copy(REPO / "cluster" / "tls.yaml", tmp_path / "cluster")
    shutil.copytree(certs, tmp_path / "certs")
    spec = load_cluster_spec(tmp_path / "cluster" / "tls.yaml")
    assert spec.tls.cert == str(tmp_path / "certs" / "client.pem")


@pytest.mark.parametrize("body, message", [
    ({"kind": "local", "n_workers": 2}, r"unknown key 'n_workers'; did you mean 'n-workers'\?"),
    ({"kind": "local", "n-workers": "two"}, r"'n-workers' must be an integer, not 'two'"),
    ({"kind": "local", "n-workers": True}, r"'n-workers' must be an integer"),
    ({"n-workers": 2}, r"the key 'kind' is missing"),
    ({"kind": "kubernetes"}, r"kind 'kubernetes' is not one of"),
    ({"kind": "address"}, r"kind address needs the key 'address'"),
    ({"kind": "address", "address": "10.0.0.1:8786"}, r"must start with tcp:// or tls://"),
    ({"kind": "address", "address": "tls://s:1", "tls": {"ca-file": "ca.pem", "cert": "c.pem"}}, r"tls needs 'key'"),
    ({"kind": "address", "address": "tls://s:1", "tls": {"ca-file": "ca.pem", "cert": "c.pem", "key": "k.pem"}},
     r"tls.ca-file .*ca.pem' does not exist"),
    ({"kind": "slurm", "cores": 8, "memory": "32GiB"}, r"set 'interface'"),
    ({"kind": "slurm", "cores": 8, "interface": "ib0"}, r"kind slurm needs the key 'memory'"),
    ({"kind": "slurm", "cores": 8, "memory": "32GiB", "interface": "ib0", "job-extra-directives": "--exclusive"},
     r"'job-extra-directives' must be a list of strings"),
])
def test_an_invalid_cluster_spec_is_an_error_naming_the_key_and_the_file(tmp_path, body, message):
    path = _spec(tmp_path, body)
    with pytest.raises(ParameterError, match=message) as info:
        parse_cluster(str(path))
    assert str(path) in str(info.value)


def test_an_unknown_cluster_word_names_the_choices():
    with pytest.raises(ParameterError, match="'local' .*'threads'.*tcp://.*cluster spec file"):
        parse_cluster("lokal")


def test_an_address_names_environment_variables_which_must_be_set(tmp_path, monkeypatch):
    path = _spec(tmp_path, {"kind": "address", "address": "tcp://${EDLAE_TEST_SCHEDULER}", "timeout": "1s"})
    monkeypatch.delenv("EDLAE_TEST_SCHEDULER", raising=False)
    with pytest.raises(ParameterError, match=r"names \$\{EDLAE_TEST_SCHEDULER\}, which is not set"):
        with connect(str(path)):
            pass
    monkeypatch.setenv("EDLAE_TEST_SCHEDULER", "127.0.0.1:1")  # nothing listens on port 1
    with pytest.raises(ParameterError, match="could not reach the Dask scheduler at tcp://127.0.0.1:1"):
        with connect(str(path)):
            pass


# --------------------------------------------------------------------------- loopback only


def _listening(procs) -> list:
    return [c.laddr for p in procs for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]


@pytest.mark.parametrize("how", ["default", "spec"])
def test_the_local_cluster_listens_on_loopback_only(tmp_path, how):
    cluster = "local" if how == "default" else str(_spec(tmp_path, {"kind": "local", "memory-limit": "1GiB"}))
    with connect(cluster, n_workers=1) as client:
        me = psutil.Process()
        sockets = _listening([me, *me.children(recursive=True)])
        scheduler_port = int(client.scheduler.address.rsplit(":", 1)[1])
        dashboard = client.dashboard_link
    assert scheduler_port in {s.port for s in sockets}  # the check sees the cluster's sockets
    assert len(sockets) >= 3  # scheduler, worker, nanny (and the dashboard)
    assert {s.ip for s in sockets} <= {"127.0.0.1", "::1"}, sockets
    assert dashboard is None or dashboard.startswith("http://127.0.0.1:")


# --------------------------------------------------------------------------- SLURM (dask-jobqueue)


def _slurm_spec():
    import dask_jobqueue  # noqa: F401  (the `test` extra installs it: a missing one must fail, not skip)
    spec = load_cluster_spec(REPO / "cluster" / "slurm.yaml")
    # the spec names the compute network (ib0); this machine has loopback only
    return dataclasses.replace(spec, options={**spec.options, "interface": "lo"})


def test_the_slurm_spec_generates_a_job_script_with_its_resources_and_worker_command(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # dask-jobqueue makes the spec's log-directory
    raw = yaml.safe_load((REPO / "cluster" / "slurm.yaml").read_text())
    with make_cluster(_slurm_spec()) as cluster:
        script = cluster.job_script()
        scheduler = cluster.scheduler.address
        dashboard = cluster.dashboard_link
    lines = script.splitlines()
    for directive in (f"-p {raw['queue']}", f"-A {raw['account']}", f"--cpus-per-task={raw['cores']}",
                      f"--mem={parse_bytes(raw['memory']) // 2**30}G", f"-t {raw['walltime']}",
                      f"-J {raw['job-name']}", *raw["job-extra-directives"]):
        assert f"#SBATCH {directive}" in lines, directive
    worker = next(line for line in lines if "distributed.cli.dask_worker" in line)
    assert worker.startswith(f"{raw['python']} -m distributed.cli.dask_worker {scheduler} ")
    per_worker = parse_bytes(raw["memory"]) / raw["processes"] / 2**30
    for arg in (f"--nworkers {raw['processes']}", "--nthreads 1", f"--memory-limit {per_worker:.2f}GiB",
                f"--local-directory {raw['local-directory']}"):
        assert f" {arg}" in worker, arg
    # the prologue (the environment) runs before the workers
    assert [lines.index(p) for p in raw["job-script-prologue"]] == sorted(
        lines.index(p) for p in raw["job-script-prologue"])
    assert lines.index(raw["job-script-prologue"][-1]) < lines.index(worker)
    assert scheduler.startswith("tcp://127.0.0.1:") and dashboard.startswith("http://127.0.0.1:")


def test_a_slurm_spec_with_tls_gives_the_workers_their_certificates(tmp_path, monkeypatch, certs):
    import dask_jobqueue  # noqa: F401  (the `test` extra installs it: a missing one must fail, not skip)
    monkeypatch.chdir(tmp_path)
    path = _spec(tmp_path, {"kind": "slurm", "cores": 4, "memory": "8GiB", "interface": "lo",
                            "tls": {"ca-file": str(certs / "ca.pem"), "cert": str(certs / "node.pem"),
                                    "key": str(certs / "node-key.pem")}})
    spec = load_cluster_spec(path)
    with make_cluster(spec) as cluster:
        script = cluster.job_script()
        scheduler = cluster.scheduler.address
    worker = next(line for line in script.splitlines() if "distributed.cli.dask_worker" in line)
    assert scheduler.startswith("tls://127.0.0.1:") and f" {scheduler} " in worker
    for flag, name in (("--tls-ca-file", "ca.pem"), ("--tls-cert", "node.pem"), ("--tls-key", "node-key.pem")):
        assert re.search(rf"{flag} \S*{name}\b", worker), flag
    assert " --nworkers 4 " in worker and " --nthreads 1 " in worker


# --------------------------------------------------------------------------- Kubernetes (Dask operator)


def _documents(name):
    return list(yaml.safe_load_all((K8S / name).read_text()))


def _pod_specs(doc):
    """The pod specs of a manifest: (role, PodSpec)."""
    if doc["kind"] == "DaskCluster":
        spec = doc["spec"]
    elif doc["kind"] == "DaskJob":
        yield "job", doc["spec"]["job"]["spec"]
        spec = doc["spec"]["cluster"]["spec"]
    elif doc["kind"] == "CronJob":
        yield "job", doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        return
    else:
        return
    yield "scheduler", spec["scheduler"]["spec"]
    yield "worker", spec["worker"]["spec"]


MANIFESTS = {"daskcluster.yaml": [("kubernetes.dask.org/v1", "DaskCluster")],
             "daskjob-train.yaml": [("v1", "ConfigMap"), ("kubernetes.dask.org/v1", "DaskJob")],
             "cronjob-score.yaml": [("v1", "ConfigMap"), ("batch/v1", "CronJob")]}


@pytest.mark.parametrize("name", MANIFESTS)
def test_the_manifests_parse_and_have_the_right_kinds(name):
    assert [(d["apiVersion"], d["kind"]) for d in _documents(name)] == MANIFESTS[name]


def test_every_pod_runs_the_one_edlae_dask_image():
    images = {c["image"] for name in MANIFESTS for doc in _documents(name) for _, pod in _pod_specs(doc)
              for c in pod["containers"]}
    assert len(images) == 1 and "edlae-dask" in images.pop()


def test_workers_and_jobs_mount_the_same_store_volume():
    mounts = set()
    for name in MANIFESTS:
        for doc in _documents(name):
            for role, pod in _pod_specs(doc):
                if role == "scheduler":
                    continue
                claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod.get("volumes", [])
                          if "persistentVolumeClaim" in v}
                mounts |= {(claims[m["name"]], m["mountPath"]) for c in pod["containers"]
                           for m in c.get("volumeMounts", []) if m["name"] in claims}
    assert mounts == {("edlae-data", "/data")}


@pytest.mark.parametrize("name, job", [("daskjob-train.yaml", "train"), ("cronjob-score.yaml", "score")])
def test_the_job_pods_run_edlae_dask_commands_that_our_cli_accepts(tmp_path, name, job):
    config, workload = _documents(name)
    (role, pod), = [(r, p) for r, p in _pod_specs(workload) if r == "job"]
    args = pod["containers"][0].get("command", []) + pod["containers"][0]["args"]
    assert args[:2] == ["edlae-dask", job]
    # lay out what the pod would see: the ConfigMap's files where they are mounted, the stores on /data
    mount = next(m["mountPath"] for m in pod["containers"][0]["volumeMounts"] if m["name"] == "spec")
    assert any(v["name"] == "spec" and v["configMap"]["name"] == config["metadata"]["name"] for v in pod["volumes"])
    root = tmp_path / "pod"
    (root / mount.lstrip("/")).mkdir(parents=True)
    for key, text in config["data"].items():
        (root / mount.lstrip("/") / key).write_text(text.replace("/data/", f"{root}/data/"))
    # more items than the specs' k (200): --check refuses a rank the store cannot have, as the run would
    write_interactions(root / "data" / "interactions.zarr", clustered_interactions(n_users=60, n_items=240, seed=2))
    (root / "data" / "factors").mkdir()
    files = [a for a in args if a.startswith(mount + "/")]
    assert {Path(f).name for f in files} == set(config["data"])  # --spec and --cluster name mounted files
    local_args = [str(root / a.lstrip("/")) if a in files else a for a in args[1:]]
    r = CliRunner(env={"DASK_SCHEDULER_ADDRESS": "tcp://scheduler.example:8786"}).invoke(cli, [*local_args, "--check"])
    assert r.exit_code == 0, r.output
    assert yaml.safe_load(r.output)["job"] == job


def test_the_scheduled_scoring_reaches_the_long_lived_cluster_scheduler():
    (cluster,) = _documents("daskcluster.yaml")
    config, _ = _documents("cronjob-score.yaml")
    address = yaml.safe_load(config["data"]["cluster.yaml"])["address"]
    # the Dask operator names the scheduler Service <cluster name>-scheduler
    assert address == f"tcp://{cluster['metadata']['name']}-scheduler:8786"
    assert cluster["spec"]["scheduler"]["service"]["type"] == "ClusterIP"


def test_the_daskjob_waits_for_the_scheduler_the_operator_makes_for_it():
    config, daskjob = _documents("daskjob-train.yaml")
    cluster_spec = yaml.safe_load(config["data"]["cluster.yaml"])
    # the operator injects DASK_SCHEDULER_ADDRESS into the job pod, and makes the job's workers
    assert cluster_spec["address"] == "${DASK_SCHEDULER_ADDRESS}"
    assert cluster_spec["wait-for-workers"] == daskjob["spec"]["cluster"]["spec"]["worker"]["replicas"]
    assert daskjob["spec"]["cluster"]["spec"]["scheduler"]["service"]["selector"]["dask.org/cluster-name"] == \
        daskjob["metadata"]["name"]


def test_a_failed_train_fails_the_daskjob_and_a_scheduled_run_is_retried_by_its_job():
    """A runner pod that restarts in place never reaches Failed, so the operator would never fail the DaskJob."""
    _, daskjob = _documents("daskjob-train.yaml")
    assert daskjob["spec"]["job"]["spec"]["restartPolicy"] == "Never"
    _, cronjob = _documents("cronjob-score.yaml")
    job = cronjob["spec"]["jobTemplate"]["spec"]
    assert job["backoffLimit"] >= 1 and cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    readme = (K8S.parent / "README.md").read_text()
    assert "restartPolicy: Never" in readme and "backoffLimit" in readme


def test_a_scheduler_file_value_names_a_file_resolved_where_it_is_given(tmp_path):
    spec = parse_cluster("scheduler-file:sched.json", base_dir=tmp_path)
    assert (spec.kind, spec.options) == ("scheduler-file", {"scheduler_file": str(tmp_path / "sched.json")})
    with pytest.raises(ParameterError, match="names no file"):
        parse_cluster("scheduler-file:")
    with pytest.raises(ParameterError, match="is a directory"):
        parse_cluster(f"scheduler-file:{tmp_path}")


def test_a_scheduler_file_that_never_appears_is_a_clear_error(tmp_path):
    from edlae_dask.cluster import _read_scheduler_file

    with pytest.raises(ParameterError, match=r"does not exist after waiting 0.2s; start the scheduler with `dask "
                                             r"scheduler --scheduler-file"):
        _read_scheduler_file(str(tmp_path / "sched.json"), "0.2s")
    (tmp_path / "junk.json").write_text("{}")
    with pytest.raises(ParameterError, match="holds no scheduler address"):
        _read_scheduler_file(str(tmp_path / "junk.json"), "0.2s")
    (tmp_path / "ok.json").write_text('{"address": "tcp://127.0.0.1:8786"}')
    assert _read_scheduler_file(str(tmp_path / "ok.json"), "0.2s") == "tcp://127.0.0.1:8786"
