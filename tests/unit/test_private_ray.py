"""The auth token of a private local Ray (``cluster.private_auth_token``)."""

import os

from ray_s3ft.run import cluster


def _clear(monkeypatch):
    for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.setenv(k, "")  # recorded, so what the test sets is undone after it
        monkeypatch.delenv(k)
    monkeypatch.setattr(cluster, "_OUR_TOKEN_PATH", {})


def test_each_private_cluster_gets_its_own_token_even_after_an_earlier_one(tmp_path, monkeypatch):
    _clear(monkeypatch)
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir(), second.mkdir()
    cluster.private_auth_token(first)
    assert os.environ["RAY_AUTH_TOKEN_PATH"] == str(first / "auth_token")
    (first / "auth_token").unlink()  # the first cluster's temp dir is gone
    cluster.private_auth_token(second)
    token = second / "auth_token"
    assert os.environ["RAY_AUTH_TOKEN_PATH"] == str(token)
    assert len(token.read_text()) == 64 and token.stat().st_mode & 0o777 == 0o600


def test_auth_the_user_configured_is_left_alone(tmp_path, monkeypatch):
    _clear(monkeypatch)
    mine = tmp_path / "mine"
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(mine))
    cluster.private_auth_token(tmp_path)

    assert os.environ["RAY_AUTH_TOKEN_PATH"] == str(mine)
    assert not (tmp_path / "auth_token").exists()
