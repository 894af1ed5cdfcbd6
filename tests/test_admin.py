"""There is always a way to administer a service: the last admin cannot remove itself, and
whoever has the service's store can make an admin again."""

from __future__ import annotations

import json
import stat

from inprocess import admin_token, api
from served import ServedCorral, corral


def test_the_last_admin_cannot_remove_itself(make_service):
    service = make_service()
    admin = api(service, admin_token(service))
    refused = admin.delete("/v1/users/admin")
    assert refused.status_code == 409
    assert "last admin" in refused.json()["message"]
    assert admin.get("/v1/whoami").json()["admin"] is True  # still in

    second = admin.post("/v1/users", json={"name": "bob", "admin": True}).json()
    assert admin.delete("/v1/users/admin").status_code == 204
    bob = api(service, second["token"])
    assert bob.delete("/v1/users/bob").status_code == 409  # now bob is the last
    assert admin.get("/v1/whoami").status_code == 401


def test_the_service_machine_can_make_an_admin_from_the_store(tmp_path):
    data_dir = tmp_path / "service"
    with ServedCorral(data_dir) as served:
        old_token = served.token
        env = served.env()
        added = corral("user", "add", "carol", "--json", env=env)
        assert added.returncode == 0, added.stderr
        (data_dir / "admin.token").unlink()  # every admin token is lost
        recovered = corral(
            "user",
            "recover-admin",
            "--data-dir",
            str(data_dir),
            "--name",
            "carol",
            "--json",
            env=env,
        )
        assert recovered.returncode == 0, recovered.stderr
        assert json.loads(recovered.stdout)["user"] == "carol"
        token_file = data_dir / "admin.token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        carol = served.env(token_file.read_text().strip())
        listed = corral("user", "list", "--json", env=carol)
        assert listed.returncode == 0, listed.stderr
        users = {u["name"]: u["admin"] for u in json.loads(listed.stdout)}
        assert users == {"admin": True, "carol": True}
        assert corral("user", "list", env=served.env(old_token)).returncode == 0


def test_recovering_needs_a_store(tmp_path):
    missing = corral(
        "user", "recover-admin", "--data-dir", str(tmp_path / "nothing"), env={"PATH": "/usr/bin"}
    )
    assert missing.returncode == 4
    assert "no corral store" in missing.stderr
