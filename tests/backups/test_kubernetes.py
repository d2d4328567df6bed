"""Kubernetes resources with the real kubectl against a stand-in API server.

No Kubernetes cluster can run on this machine, so ``tests/backups/kubeapi.py``
serves discovery, lists and server-side apply over HTTP; everything else (the
kubeconfig, ``kubectl get -A -o yaml``, ``kubectl apply --server-side
--dry-run=server`` then for real) is the real tool.
"""

import pytest

from backups.choices import ArtifactFormat, RestoreMode, RestoreStatus, SourceKind, Verification
from tests.backups.helpers import backup_now, make_source, plan_now
from tests.backups.kubeapi import FakeKubeAPI
from tests.backups.restoring import approve_and_run, register

pytestmark = pytest.mark.django_db


def test_resources_are_backed_up_counted_and_restored_into_another_cluster(
    kube_api, tmp_path, operator, approver, admin_user, capture, settings
):
    source = make_source(
        "prod-cluster",
        SourceKind.KUBERNETES,
        kubeconfig=str(kube_api.write_kubeconfig(tmp_path / "prod.kubeconfig")),
    )
    run = backup_now(source, operator, capture)

    assert run.verification == Verification.VERIFIED, (run.error, run.verify_detail)
    artifact = run.artifacts.get()
    assert artifact.format == ArtifactFormat.K8S_YAML
    assert artifact.facts["resources"] == 7
    assert artifact.facts["by_kind"] == {
        "ConfigMap": 1, "Deployment": 1, "Ingress": 1, "PersistentVolumeClaim": 1,
        "ReplicaSet": 1, "Secret": 1, "Service": 1,
    }  # fmt: skip
    listed = {path.split("?")[0] for _, path in kube_api.requests}
    assert "/api/v1/secrets" in listed and "/apis/networking.k8s.io/v1/ingresses" in listed

    other = FakeKubeAPI().start()
    try:
        settings.BACKUP_SECRETS_DIR = tmp_path  # a kubeconfig is a credential file
        kubeconfig = str(other.write_kubeconfig(tmp_path / "dr.kubeconfig", context="dr"))
        register(admin_user, name="dr", kind=SourceKind.KUBERNETES, kubeconfig=kubeconfig,
                 kube_context="dr")  # fmt: skip
        chosen = ["configmap/default/app-config", "deployment/shop", "service", "replicaset"]
        req, plan = plan_now(
            capture, artifact, target={"target": "dr", "resources": chosen}, by=operator
        )
        assert plan["mode"] == RestoreMode.SCRATCH  # nothing of it exists there yet
        assert plan["target_name"] == "dr"
        req = approve_and_run(capture, req, approver)
        assert req.status == RestoreStatus.SUCCEEDED, req.error
        # Owned objects (the ReplicaSet) are left to their controller; the rest is applied.
        assert sorted(other.objects) == [
            ("configmaps", "default", "app-config"),
            ("deployments", "shop", "web"),
            ("services", "shop", "web"),
        ]
        assert req.report["resources_found"] == 3
        patches = [path for method, path in other.requests if method == "PATCH"]
        assert all("dryRun=All" in p for p in patches[:3])  # the server-side dry run came first
        assert not any("dryRun" in p for p in patches[3:6])
        service = other.objects[("services", "shop", "web")]
        assert "clusterIP" not in service["spec"] and "status" not in service
        assert other.objects[("configmaps", "default", "app-config")]["data"]["WORKERS"] == "4"
    finally:
        other.stop()
