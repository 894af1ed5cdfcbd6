"""The CLI over a real service whose fake machines run real agents."""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path

from cryptography import x509
from served import ServedCorral, corral
from test_contextualization import CLUSTER, make_image


def serve_with_agents(tmp_path: Path, **image_options) -> ServedCorral:
    image = make_image(tmp_path / "image", **image_options)
    return ServedCorral(tmp_path / "svc", "--backend-option", f"agent_image={image}")


def test_run_names_the_node_whose_role_script_failed(tmp_path):
    (tmp_path / "ctx.yaml").write_text(CLUSTER)
    with serve_with_agents(tmp_path, fail_node="worker-1") as served:
        result = corral("run", "--cluster", str(tmp_path / "ctx.yaml"), env=served.env())
        assert result.returncode == 7, result.stderr
        assert "worker-1: failed in phase configure" in result.stderr
        assert "cannot reach the controller" in result.stderr
        listed = json.loads(corral("list", "--json", env=served.env()).stdout)
        (cluster,) = listed
        assert cluster["state"] == "failed"  # kept until destroyed, its nodes gone
        view = json.loads(corral("status", cluster["id"], "--json", env=served.env()).stdout)
        assert {n["state"] for n in view["nodes"]} == {"terminated"}  # nothing left running
        logs = corral("logs", cluster["id"], "worker-1", env=served.env())
        assert logs.returncode == 0
        assert "configure worker: failed (exit 1)" in logs.stdout
        assert "slurmd: fatal: cannot reach the controller" in logs.stdout


def test_credentials_give_the_user_the_clusters_trust_anchors(tmp_path):
    (tmp_path / "ctx.yaml").write_text(CLUSTER)
    with serve_with_agents(tmp_path) as served:
        run = corral("run", "--cluster", str(tmp_path / "ctx.yaml"), "--json", env=served.env())
        assert run.returncode == 0, run.stderr
        cluster = json.loads(run.stdout)
        out = tmp_path / "creds"
        result = corral("credentials", cluster["id"], "-o", str(out), env=served.env())
        assert result.returncode == 0, result.stderr
        assert stat.S_IMODE(out.stat().st_mode) == 0o700
        assert stat.S_IMODE((out / "user.key").stat().st_mode) == 0o600
        assert stat.S_IMODE((out / "id_ed25519").stat().st_mode) == 0o600
        ca = x509.load_pem_x509_certificate((out / "ca.crt").read_bytes())
        user = x509.load_pem_x509_certificate((out / "user.crt").read_bytes())
        user.verify_directly_issued_by(ca)
        (common_name,) = user.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        assert common_name.value == "admin"
        line = (out / "known_hosts").read_text()
        addresses = sorted(n["address"] for n in cluster["nodes"])
        assert line.startswith(f"@cert-authority {','.join(addresses)} ssh-ed25519 ")
        # the nodes' host certificates are signed by exactly that CA
        ca_key = line.split()[2:4]
        node_files = list((served.data_dir / "fake-roots").glob("*/etc/ssh/ssh_known_hosts"))
        assert len(node_files) == 4
        assert all(" ".join(ca_key) in p.read_text() for p in node_files)
        assert corral("destroy", cluster["id"], env=served.env()).returncode == 0


def test_a_killed_service_restarted_while_nodes_configure_gets_the_cluster_ready(tmp_path):
    (tmp_path / "ctx.yaml").write_text(CLUSTER)
    with serve_with_agents(tmp_path, configure_seconds=4) as served:
        run = corral(
            "run",
            "--cluster",
            str(tmp_path / "ctx.yaml"),
            "--no-wait",
            "--json",
            env=served.env(),
        )
        cluster_id = json.loads(run.stdout)["id"]

        def configuring() -> bool:
            view = json.loads(corral("status", cluster_id, "--json", env=served.env()).stdout)
            return any(n["state"] == "configuring" for n in view["nodes"])

        deadline = time.monotonic() + 60
        while not configuring():
            assert time.monotonic() < deadline, "no node started configuring"
            time.sleep(0.2)
        served.kill()  # SIGKILL: no cleanup, agents go on and retry
        time.sleep(2)
        served.start()
        deadline = time.monotonic() + 90
        while True:
            view = json.loads(corral("status", cluster_id, "--json", env=served.env()).stdout)
            if view["state"] != "launching" or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert view["state"] == "ready", view
        assert [n["state"] for n in view["nodes"]] == ["ready"] * 4
