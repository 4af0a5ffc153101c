"""Where the API token comes from: environment, file, or a new file made safely."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from vouch.core.errors import AuthError
from vouch.daemon import auth
from vouch.daemon.auth import TokenSource, read_client_token, resolve_token

ENV = "VOUCH_TEST_TOKEN"


@pytest.fixture(autouse=True)
def no_token_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)


def test_the_environment_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    monkeypatch.setenv(ENV, " from-env \n")
    assert resolve_token(token_env=ENV, token_file=token_file) == TokenSource("from-env", "env", None)


def test_an_empty_environment_variable_falls_through_to_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("  from-file \n\n")
    monkeypatch.setenv(ENV, "   ")
    assert resolve_token(token_env=ENV, token_file=token_file) == TokenSource("from-file", "file", token_file)


def test_an_empty_file_is_an_error_not_a_missing_token(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(" \n")
    with pytest.raises(AuthError, match=r"token file .*token is empty"):
        resolve_token(token_env=ENV, token_file=token_file)
    assert token_file.read_text() == " \n"  # never overwritten


def test_an_unreadable_token_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(AuthError, match="cannot read the token file"):
        resolve_token(token_env=ENV, token_file=tmp_path)  # a directory


def test_a_token_that_cannot_go_in_a_header_is_refused(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("two words\n")
    with pytest.raises(AuthError, match="printable ASCII"):
        resolve_token(token_env=ENV, token_file=token_file)


def test_a_missing_file_is_created_private_in_new_directories(tmp_path: Path) -> None:
    token_file = tmp_path / "state" / "vouch" / "token"
    source = resolve_token(token_env=ENV, token_file=token_file)
    assert source.origin == "created"
    assert source.path == token_file
    assert len(source.token) >= 40
    assert token_file.read_text().strip() == source.token
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert [p.name for p in token_file.parent.iterdir()] == ["token"]  # no temporary file left
    again = resolve_token(token_env=ENV, token_file=token_file)
    assert again == TokenSource(source.token, "file", token_file)


def test_two_creators_agree_on_one_token(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    first = auth._create_token_file(token_file)
    second = auth._create_token_file(token_file)  # lost the race: reads the winner's
    assert first == second
    assert [p.name for p in tmp_path.iterdir()] == ["token"]


def test_tokens_are_random(tmp_path: Path) -> None:
    a = resolve_token(token_env=ENV, token_file=tmp_path / "a").token
    b = resolve_token(token_env=ENV, token_file=tmp_path / "b").token
    assert a != b


def test_client_token_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("file-token\n")
    assert read_client_token(token=None, token_file=token_file, token_env=ENV) == "file-token"
    monkeypatch.setenv(ENV, "env-token")
    assert read_client_token(token=None, token_file=token_file, token_env=ENV) == "env-token"
    assert read_client_token(token="flag-token", token_file=token_file, token_env=ENV) == "flag-token"


def test_client_without_a_token_is_told_how_to_give_one(tmp_path: Path) -> None:
    missing = tmp_path / "nothing"
    with pytest.raises(AuthError) as caught:
        read_client_token(token=None, token_file=missing, token_env=ENV)
    message = str(caught.value)
    assert "--token" in message
    assert f"${ENV}" in message
    assert "--token-file" in message
    assert str(missing) in message
    assert not missing.exists()  # the client never creates one


def test_client_with_an_empty_token_file_is_an_error(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("")
    with pytest.raises(AuthError, match="empty"):
        read_client_token(token=None, token_file=token_file, token_env=ENV)
