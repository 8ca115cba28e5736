"""`mimo serve`'s settings: each option declared once (field, flag, MIMO_ variable); secrets from a file or
the environment, never only a flag; model control."""

from __future__ import annotations

import builtins
import dataclasses
import os
from pathlib import Path

import pytest

from mimo.serving import settings as settings_module
from mimo.serving.settings import ServerSettings, build_parser, options, parse_settings

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


# --- settings declared once: each field is a flag and a MIMO_ variable ---------------------------

# A value for each option's variable, unlike its default, and what it parses to.
SAMPLE = {int: ("9123", 9123), float: ("2.5", 2.5), str: ("text", "text")}


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No MIMO_ variable but the repository: what a test sets is all there is."""
    for name in list(os.environ):
        if name.startswith("MIMO_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("MIMO_MODEL_REPOSITORY", str(tmp_path))
    return monkeypatch


def _sample(f, tmp_path):
    kind = settings_module.kind(f)
    if kind is bool:
        return ("0", False) if f.default else ("1", True)
    if kind is Path:
        return str(tmp_path / f.name), tmp_path / f.name
    if f.metadata["choices"]:
        other = next(c for c in f.metadata["choices"] if c != f.default)
        return other, other
    return SAMPLE[kind]


def test_every_field_is_a_flag_and_a_variable_that_agree():
    parser = settings_module.build_parser()
    actions = {a.dest: a for a in parser._actions}
    declared = {f.name for f in options()}
    # Only the two values resolved at construction are not options.
    assert {f.name for f in dataclasses.fields(ServerSettings)} - declared == {"uses_uvloop", "native_frontend"}
    for f in options():
        name = f.name.replace("_", "-")
        expected_flag = f"--no-{name}" if f.default is True else f"--{name}"
        expected_variable = "MIMO_" + f.name.upper()
        assert settings_module.flag(f) == expected_flag and settings_module.variable(f) == expected_variable
        action = actions[f.name]
        assert action.option_strings == [expected_flag], f.name
        assert expected_variable in action.help, f.name  # generated, so it cannot drift
        assert f.metadata["choices"] is None or tuple(action.choices) == f.metadata["choices"]
        if f.name != "model_repository":
            assert action.default == f.default, f.name  # the dataclass default is the parser's
    assert ServerSettings(model_repository=Path("m")) == settings_module.parse_settings(["--model-repository", "m"])


def test_every_variable_sets_its_option(clean_env, tmp_path):
    tls = {"tls_cert", "tls_key", "tls_client_ca"}  # they go together: set all three, once
    for f in options():
        if f.name in ("model_repository", "token", "admin_token", *tls):
            continue
        text, value = _sample(f, tmp_path)
        clean_env.setenv(settings_module.variable(f), text)
        # Each alone, so the cross-checks (explicit mode vs polling, ports) do not get in the way.
        assert getattr(settings_module.parse_settings([]), f.name) == value, f.name
        clean_env.delenv(settings_module.variable(f))
    for name in tls:
        clean_env.setenv("MIMO_" + name.upper(), str(tmp_path / name))
    parsed = settings_module.parse_settings([])
    assert (parsed.tls_cert, parsed.tls_key, parsed.tls_client_ca) == tuple(tmp_path / n for n in
                                                                             ("tls_cert", "tls_key", "tls_client_ca"))
    assert isinstance(parsed.tls_cert, Path) and parsed.model_repository == tmp_path


@pytest.mark.parametrize("variable,text,attribute,value", [
    ("MIMO_MAX_QUEUE_SIZE", "7", "max_queue_size", 7),
    ("MIMO_GRACE_SECONDS", "1.5", "grace_seconds", 1.5),
    ("MIMO_BATCHING", "false", "batching", False),
    ("MIMO_BATCHING", "1", "batching", True),
    ("MIMO_STRICT_READINESS", "TRUE", "strict_readiness", True),
    ("MIMO_BACKEND", "tensorflow", "backend", "tensorflow"),
    ("MIMO_EXECUTION", "thread", "execution", "thread"),
])
def test_a_variable_sets_its_type(clean_env, variable, text, attribute, value):
    clean_env.setenv(variable, text)
    parsed = settings_module.parse_settings([])
    assert getattr(parsed, attribute) == value and type(getattr(parsed, attribute)) is type(value)


def test_path_options_are_paths_or_none(clean_env, tmp_path):
    parsed = settings_module.parse_settings([])
    assert isinstance(parsed.model_repository, Path)
    assert (parsed.tls_cert, parsed.tls_key, parsed.tls_client_ca) == (None, None, None)
    clean_env.setenv("MIMO_TLS_CERT", str(tmp_path / "cert.pem"))
    parsed = settings_module.parse_settings(["--tls-key", str(tmp_path / "key.pem")])
    assert (parsed.tls_cert, parsed.tls_key) == (tmp_path / "cert.pem", tmp_path / "key.pem")
    clean_env.setenv("MIMO_TLS_CERT", "")  # empty: unset, not the current folder
    assert settings_module.parse_settings([]).tls_cert is None


def test_flags_beat_variables_and_bool_flags_keep_their_names(clean_env):
    clean_env.setenv("MIMO_PORT", "9000")
    parsed = settings_module.parse_settings(["--port", "9001", "--no-batching", "--strict-readiness"])
    assert (parsed.port, parsed.batching, parsed.strict_readiness) == (9001, False, True)
    assert (settings_module.parse_settings([]).batching, settings_module.parse_settings([]).strict_readiness) == \
        (True, False)


@pytest.mark.parametrize("variable,text,message", [
    ("MIMO_PORT", "eighty", "MIMO_PORT='eighty': not an int"),
    ("MIMO_GRACE_SECONDS", "soon", "MIMO_GRACE_SECONDS='soon': not a float"),
    ("MIMO_BATCHING", "maybe", "MIMO_BATCHING='maybe': not a boolean"),
    ("MIMO_BACKEND", "torch", "MIMO_BACKEND='torch': choose from onnxruntime, tensorflow"),
])
def test_a_bad_variable_is_refused_by_name(clean_env, capsys, variable, text, message):
    clean_env.setenv(variable, text)
    with pytest.raises(SystemExit):
        settings_module.parse_settings([])
    assert message in capsys.readouterr().err


def test_http_port_defaults_to_8501_0_is_off_and_it_must_differ_from_the_grpc_port(clean_env, capsys):
    assert settings_module.parse_settings([]).http_port == 8501
    assert ServerSettings(model_repository=Path("m")).http_port == 8501
    assert settings_module.parse_settings(["--http-port", "0"]).http_port == 0
    assert settings_module.parse_settings(["--http-port", "0", "--port", "0"]).http_port == 0  # off twice: fine
    # With several workers, 0 is "off" for HTTP, not "any port": no fixed-port complaint.
    assert settings_module.parse_settings(["--workers", "2", "--http-port", "0"]).workers == 2
    clean_env.setenv("MIMO_HTTP_PORT", "9100")
    assert settings_module.parse_settings([]).http_port == 9100
    with pytest.raises(SystemExit):
        settings_module.parse_settings(["--http-port", "9000", "--port", "9000"])
    assert "--http-port and --port must differ" in capsys.readouterr().err
    text = " ".join(settings_module.build_parser().format_help().split())
    assert "HTTP port for KServe v2 REST and TensorFlow Serving REST (default 8501; 0 turns HTTP off)" in text
    assert "gRPC and HTTP" in text and "MIMO_<FLAG>" in text


def test_resolved_values_import_nothing_when_read(clean_env, monkeypatch):
    parsed = settings_module.parse_settings([])
    built = ServerSettings(model_repository=Path("m"), frontend="python", event_loop="asyncio")

    def no_import(*args, **kwargs):
        raise AssertionError(f"imported {args[0]} on read")

    monkeypatch.setattr(builtins, "__import__", no_import)
    for s in (parsed, built):
        assert isinstance(s.uses_uvloop, bool) and isinstance(s.native_frontend, bool)
        assert s.max_message_bytes == 64 << 20 and s.executions_per_model >= 1
    monkeypatch.undo()
    assert (built.uses_uvloop, built.native_frontend) == (False, False)
    again = dataclasses.replace(built, frontend="native", event_loop="uvloop")  # resolved again
    assert (again.uses_uvloop, again.native_frontend) == (True, True)


def test_native_frontend_is_resolved_when_the_settings_are_made(clean_env, monkeypatch):
    from mimo.serving.transports import native

    monkeypatch.setattr(native, "native", None)
    assert settings_module.parse_settings([]).native_frontend is False
    assert ServerSettings(model_repository=Path("m")).native_frontend is False
    monkeypatch.setattr(native, "native", object())  # "built"
    assert settings_module.parse_settings([]).native_frontend is True
    assert settings_module.parse_settings(["--frontend", "python"]).native_frontend is False


def test_repr_hides_both_tokens():
    text = repr(ServerSettings(model_repository=Path("m"), token="s3cret-a", admin_token="s3cret-b"))
    assert "s3cret" not in text and "token" not in text and "http_port=8501" in text
