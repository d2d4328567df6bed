"""Sources read inside a pod: the real ``kubectl exec`` against the stand-in API server
(no cluster can run here). The stand-in runs the pod's command on this machine, with
the pod's environment (``exec_env``), so pg_dump and redis-cli are the real tools and
the password really travels on stdin, never in argv."""

import pytest

from backups.choices import RestoreStatus, SourceKind, Transport, Verification
from tests.backups.conftest import pg_snapshot
from tests.backups.helpers import backup_now, dump_of, make_source, plan_now
from tests.backups.restoring import approve_and_run, pg_target

pytestmark = pytest.mark.django_db


@pytest.fixture
def pod_api(kube_api, tmp_path):
    kube_api.add("pods", "data", "postgres-0", spec={"containers": [{"name": "postgres"}]},
                 status={"phase": "Running"})  # fmt: skip
    kube_api.add("pods", "data", "redis-0", spec={"containers": [{"name": "redis"}]},
                 status={"phase": "Running"})  # fmt: skip
    return kube_api, str(kube_api.write_kubeconfig(tmp_path / "kc"))


def test_postgres_in_a_pod_is_dumped_through_kubectl_exec(
    pod_api, pg_cluster, pg_database, operator, approver, admin_user, capture, tmp_path
):
    api, kubeconfig = pod_api
    api.exec_env = {"PGHOST": pg_cluster.host, "PGPORT": str(pg_cluster.port)}
    name = pg_database("inpod")
    before = pg_snapshot(pg_cluster, name)
    (tmp_path / "pgpw").write_text("pod-pg-secret\n")
    source = make_source(
        "pod-db", SourceKind.POSTGRES, transport=Transport.KUBECTL_EXEC, kubeconfig=kubeconfig,
        kube_namespace="data", kube_pod="postgres-0", kube_container="postgres",
        dsn="postgres://postgres@", databases=name, password_file=str(tmp_path / "pgpw"),
    )  # fmt: skip
    run = backup_now(source, operator, capture)
    assert run.verification == Verification.VERIFIED, (run.error, run.stderr, run.verify_detail)
    assert api.execs and all("pod-pg-secret" not in " ".join(argv) for argv in api.execs)
    assert api.execs[0][:3] == ["sh", "-c", 'IFS= read -r PGPASSWORD; export PGPASSWORD; exec "$@"']

    # Restores go over the network, into a registered target (as through kubectl port-forward).
    pg_target(admin_user, pg_cluster, name="pod-db-forward")
    scratch = f"{name}_copy"
    try:
        req, _ = plan_now(
            capture, dump_of(run), by=operator,
            target={"target": "pod-db-forward", "database": scratch},
        )  # fmt: skip
        req = approve_and_run(capture, req, approver)
        assert req.status == RestoreStatus.SUCCEEDED, req.error
        assert pg_snapshot(pg_cluster, scratch) == before
    finally:
        pg_cluster.drop(scratch)


def test_redis_in_a_pod_gets_its_password_on_stdin(
    pod_api, redis_server, operator, capture, monkeypatch
):
    api, kubeconfig = pod_api
    live = redis_server(password="pod-redis-secret")
    for i in range(300):
        live.client().set(f"key:{i}", i)
    monkeypatch.setenv("TEST_POD_REDIS_PW", "pod-redis-secret")
    source = make_source(
        "pod-cache", SourceKind.REDIS, transport=Transport.KUBECTL_EXEC, kubeconfig=kubeconfig,
        kube_namespace="data", kube_pod="redis-0", dsn=live.url,
        password_env="TEST_POD_REDIS_PW",
    )  # fmt: skip
    run = backup_now(source, operator, capture)
    # requirepass is set: the backup only works if the password reached redis-cli.
    assert run.verification == Verification.VERIFIED, (run.error, run.stderr, run.verify_detail)
    assert run.artifacts.get().facts["keys"] == 300
    assert all("pod-redis-secret" not in " ".join(argv) for argv in api.execs)
