"""The agent's user accounts: the same entries, home and keys on every node, and refusals
of what would make nodes disagree about who owns shared files."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from corral.agent import (
    Account,
    ViewError,
    accounts_of,
    add_account_entries,
    prepare_home,
)

PASSWD = "root:x:0:0:root:/root:/bin/bash\nslurm:x:64030:64030::/nonexistent:/usr/sbin/nologin\n"
GROUP = "root:x:0:\nshadow:x:42:\n"
SHADOW = "root:*:19000:0:99999:7:::\n"


@pytest.fixture
def node(tmp_path: Path) -> Path:
    etc = tmp_path / "etc"
    (etc / "skel").mkdir(parents=True)
    (etc / "passwd").write_text(PASSWD)
    (etc / "group").write_text(GROUP)
    (etc / "shadow").write_text(SHADOW.rstrip("\n"))  # no final newline: must not merge lines
    os.chmod(etc / "shadow", 0o640)
    (etc / "skel" / ".bashrc").write_text("# bashrc\n")
    return tmp_path


ALICE = Account("alice", 2000, ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIALICE alice@laptop",))
BOB = Account("bob", 2001, ())


def test_accounts_are_added_once_with_the_same_ids_and_files_keep_their_mode(node: Path):
    assert add_account_entries(str(node), [ALICE, BOB]) == ["alice", "bob"]
    before = {name: (node / "etc" / name).read_bytes() for name in ("passwd", "group", "shadow")}
    assert add_account_entries(str(node), [ALICE, BOB]) == []
    after = {name: (node / "etc" / name).read_bytes() for name in ("passwd", "group", "shadow")}
    assert after == before
    passwd = before["passwd"].decode().splitlines()
    assert "alice:x:2000:2000::/home/alice:/bin/bash" in passwd
    assert "bob:x:2001:2001::/home/bob:/bin/bash" in passwd
    assert before["group"].decode().splitlines()[-2:] == ["alice:x:2000:", "bob:x:2001:"]
    assert before["shadow"].decode().splitlines() == [
        "root:*:19000:0:99999:7:::",
        "alice:*:::::::",
        "bob:*:::::::",
    ]
    assert (node / "etc" / "shadow").stat().st_mode & 0o777 == 0o640


def test_an_account_that_exists_with_another_uid_is_refused(node: Path):
    with pytest.raises(ViewError, match="account slurm exists in /etc/passwd with id 64030"):
        add_account_entries(str(node), [Account("slurm", 2000, ())])


def test_a_uid_that_is_another_accounts_is_refused(node: Path):
    (node / "etc" / "passwd").write_text(PASSWD + "carol:x:2000:2000::/home/carol:/bin/sh\n")
    with pytest.raises(ViewError, match="id 2000 of alice is carol's"):
        add_account_entries(str(node), [ALICE])


@pytest.mark.parametrize(
    "user, complaint",
    [
        ({"name": "../etc", "uid": 2000, "gid": 2000}, "bad user name"),
        ({"name": "a:b", "uid": 2000, "gid": 2000}, "bad user name"),
        ({"name": "alice", "uid": 0, "gid": 0}, "bad UID"),
        ({"name": "alice", "uid": 2000, "gid": 2001}, "bad UID"),
        ({"name": "alice", "uid": True, "gid": True}, "bad UID"),
        ({"name": "alice", "uid": 2000, "gid": 2000, "ssh_keys": ["a\nb"]}, "bad SSH keys"),
    ],
)
def test_a_view_with_a_bad_user_is_refused(user: dict, complaint: str):
    with pytest.raises(ViewError, match=complaint):
        accounts_of({"users": [user]})


def test_a_home_gets_the_skeleton_a_key_pair_and_the_documents_keys(node: Path):
    prepare_home(str(node), ALICE, owner_root=False)
    home = node / "home" / "alice"
    assert home.stat().st_mode & 0o777 == 0o700
    assert (home / ".bashrc").read_text() == "# bashrc\n"
    public = (home / ".ssh" / "id_ed25519.pub").read_text().strip()
    assert public.startswith("ssh-ed25519 ") and public.endswith(" alice@corral")
    assert (home / ".ssh" / "id_ed25519").read_text().startswith("-----BEGIN OPENSSH PRIVATE")
    authorized = (home / ".ssh" / "authorized_keys").read_text().splitlines()
    assert ALICE.ssh_keys[0] in authorized and public in authorized
    snapshot = {p: p.read_bytes() for p in home.rglob("*") if p.is_file()}
    prepare_home(str(node), ALICE, owner_root=False)  # again: nothing changes
    assert {p: p.read_bytes() for p in home.rglob("*") if p.is_file()} == snapshot


def test_nodes_sharing_a_home_keep_one_key_pair(node: Path):
    """Several nodes prepare one shared home at once: one key pair survives, whole, and
    every authorized_keys line is its public key; no temporary file is left."""
    errors = []

    def one_node() -> None:
        try:
            prepare_home(str(node), BOB, owner_root=False)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one_node) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    ssh = node / "home" / "bob" / ".ssh"
    assert sorted(p.name for p in ssh.iterdir()) == [
        "authorized_keys",
        "id_ed25519",
        "id_ed25519.pub",
    ]
    public = (ssh / "id_ed25519.pub").read_text().strip()
    authorized = (ssh / "authorized_keys").read_text().splitlines()
    assert public in authorized
    derived = os.popen(f"ssh-keygen -y -f {ssh / 'id_ed25519'}").read().split()[:2]
    assert derived == public.split()[:2]
