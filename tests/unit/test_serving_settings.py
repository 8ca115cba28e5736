"""Secrets and model control in `mimo serve`'s settings: from a file or the environment, never only a flag."""

from __future__ import annotations

import pytest

from mimo.serving.settings import build_parser, parse_settings

SECRET_VARIABLES = ("MIMO_TOKEN", "MIMO_TOKEN_FILE", "MIMO_ADMIN_TOKEN", "MIMO_ADMIN_TOKEN_FILE",
                    "MIMO_MODEL_CONTROL_MODE", "MIMO_POLL_SECONDS")


@pytest.fixture
def env(monkeypatch, tmp_path):
    for name in SECRET_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MIMO_MODEL_REPOSITORY", str(tmp_path))
    return monkeypatch


def test_tokens_come_from_files_or_the_environment(env, tmp_path):
    (tmp_path / "token").write_text("infer-secret\n")
    (tmp_path / "admin").write_text("  admin-secret\n")
    settings = parse_settings(["--token-file", str(tmp_path / "token"), "--model-control-mode", "explicit",
                               "--admin-token-file", str(tmp_path / "admin")])
    assert (settings.token, settings.admin_token, settings.model_control_mode) == \
        ("infer-secret", "admin-secret", "explicit")
    assert "secret" not in repr(settings)
    env.setenv("MIMO_TOKEN", "from-env")
    env.setenv("MIMO_MODEL_CONTROL_MODE", "explicit")
    env.setenv("MIMO_ADMIN_TOKEN_FILE", str(tmp_path / "admin"))
    settings = parse_settings([])
    assert (settings.token, settings.admin_token) == ("from-env", "admin-secret")


def test_model_control_is_off_unless_asked_for(env):
    assert parse_settings([]).model_control_mode == "none"


@pytest.mark.parametrize("argv,message", [
    (["--token", "a", "--token-file", "f"], "give --token or --token-file, not both"),
    (["--admin-token", "a"], "--admin-token guards RepositoryModelLoad/Unload: it needs --model-control-mode explicit"),
    (["--model-control-mode", "explicit", "--poll-seconds", "5"], "exclude each other"),
    (["--model-control-mode", "explicit", "--workers", "2", "--port", "9000"], "needs --workers 1"),
    (["--token-file", "/nonexistent/token"], "--token-file: cannot read /nonexistent/token"),
])
def test_refused_combinations_say_why(env, capsys, argv, message):
    with pytest.raises(SystemExit):
        parse_settings(argv)
    assert message in capsys.readouterr().err


def test_empty_token_file_is_refused(env, tmp_path, capsys):
    (tmp_path / "token").write_text("\n")
    with pytest.raises(SystemExit):
        parse_settings(["--token-file", str(tmp_path / "token")])
    assert "is empty" in capsys.readouterr().err


def test_help_warns_that_a_token_flag_is_visible_to_local_users():
    text = " ".join(build_parser().format_help().split())
    assert "visible to every local user (ps, /proc/PID/cmdline): prefer --token-file or the MIMO_TOKEN" in text
    assert "--admin-token-file" in text and "--model-control-mode" in text
