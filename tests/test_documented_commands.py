"""The `dask scheduler` / `dask worker` commands the docs tell people to run are safe as written.

The commands are read from cluster/README.md (so the doc and the test cannot drift), run as real
processes with only their ports and certificate paths substituted, and every socket they listen on
must be on 127.0.0.1. Every `dask` command in the Kubernetes manifests, which must listen on the
pod's network, says so on the line above it.
"""

import re
import shlex
import shutil
import socket
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from cluster_procs import dask_cmd, spawn, stop

REPO = Path(__file__).resolve().parents[1]
README = REPO / "cluster" / "README.md"
DOCS = [REPO / "README.md", REPO / "jobs" / "README.md", README]
MANIFESTS = sorted((REPO / "cluster").glob("*.yaml")) + sorted((REPO / "cluster" / "k8s").glob("*.yaml"))


def documented_commands(path: Path) -> list[list[list[str]]]:
    """The `dask scheduler` / `dask worker` commands of each ```bash block of ``path``, as argument lists."""
    blocks = re.findall(r"```bash\n(.*?)```", path.read_text(), flags=re.S)
    out = []
    for block in blocks:
        lines = block.replace("\\\n", " ").splitlines()  # continuation lines joined
        cmds = []
        for line in lines:
            line = line.split(" #", 1)[0].strip().removesuffix("&").strip()
            if re.match(r"dask\s+(scheduler|worker)\b", line):
                cmds.append(shlex.split(line))
        if cmds:
            out.append(cmds)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _substituted(args: list[str], ports: dict[str, int], certs: Path | None) -> list[str]:
    out = []
    for arg in args:
        for old, new in ports.items():
            arg = re.sub(rf"(?<=:){old}\b", str(new), arg)
            arg = str(new) if arg == old else arg
        if certs is not None and arg.startswith("certs/"):
            arg = str(certs / arg.removeprefix("certs/"))
        out.append(arg)
    return out


def _listening(pids) -> list:
    found = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            procs = [proc, *proc.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for p in procs:
            try:
                found += [(p.pid, c.laddr) for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
            except psutil.NoSuchProcess:
                continue
    return found


def _n_workers(args: list[str]) -> int:
    return int(args[args.index("--nworkers") + 1]) if "--nworkers" in args else 1


def test_the_readme_documents_a_plain_and_a_tls_scheduler_with_their_workers():
    blocks = documented_commands(README)
    kinds = [[" ".join(c[:2]) for c in cmds] for cmds in blocks]
    assert kinds == [["dask scheduler", "dask worker"], ["dask scheduler", "dask worker"]], kinds
    assert "tls" in blocks[1][0]  # the second block is the TLS one


def test_no_other_doc_tells_people_to_start_dask_processes():
    # a `dask scheduler` / `dask worker` command in another doc would escape the test below
    for path in DOCS:
        if path != README:
            assert documented_commands(path) == [], path


def test_every_dask_command_of_the_manifests_says_why_it_listens_on_the_pod_network():
    seen = 0
    for path in MANIFESTS:
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            if re.search(r"\[\s*dask\s*,\s*(scheduler|worker)\b", line):
                seen += 1
                above = lines[i - 1].strip()
                assert above.startswith("#") and "pod's network" in above, f"{path.name}:{i + 1}: {line.strip()}"
    assert seen == 4  # a scheduler and a worker in each of the two Dask manifests


@pytest.mark.cluster
@pytest.mark.parametrize("block", [0, 1], ids=["tcp", "tls"])
def test_the_documented_scheduler_and_workers_listen_on_loopback_only(tmp_path, block):
    from distributed import Client
    from distributed.security import Security

    scheduler_args, worker_args = documented_commands(README)[block]
    certs, security = None, None
    if block == 1:
        if shutil.which("openssl") is None:
            pytest.skip("cluster/tls/make-certs.sh needs openssl")
        certs = tmp_path / "certs"
        subprocess.run(["bash", str(REPO / "cluster" / "tls" / "make-certs.sh"), str(certs)], check=True,
                       capture_output=True)
        security = Security(tls_ca_file=str(certs / "ca.pem"), tls_client_cert=str(certs / "client.pem"),
                            tls_client_key=str(certs / "client-key.pem"), require_encryption=True)
    ports = {"8786": _free_port(), "8787": _free_port()}
    scheduler_args = _substituted(scheduler_args, ports, certs)
    worker_args = _substituted(worker_args, ports, certs)
    assert scheduler_args[:2] == ["dask", "scheduler"] and worker_args[:2] == ["dask", "worker"]
    address = worker_args[2]
    assert address.endswith(f"127.0.0.1:{ports['8786']}"), worker_args
    procs = [spawn(dask_cmd(*scheduler_args[1:]), cwd=tmp_path)]
    try:
        deadline = time.time() + 60
        while not any(a.port == ports["8786"] for _, a in _listening([procs[0].pid])) and time.time() < deadline:
            time.sleep(0.2)
        procs.append(spawn(dask_cmd(*worker_args[1:]), cwd=tmp_path))
        with Client(address, security=security, timeout="30s") as c:
            c.wait_for_workers(_n_workers(worker_args), timeout=60)
            info = c.scheduler_info()
        time.sleep(1)  # a worker's own dashboard may start just after it registers
        sockets = _listening(p.pid for p in procs)
    finally:
        stop(procs)
    workers = info["workers"]
    assert all(w.startswith(address.split("://")[0] + "://127.0.0.1:") for w in workers), workers
    # the scheduler, each worker and its nanny, and the dashboards the command starts
    assert len(sockets) >= 1 + 2 * len(workers), sockets
    assert {a.ip for _, a in sockets} == {"127.0.0.1"}, sockets
