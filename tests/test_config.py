"""Settings: typed values from WAYBILL_* variables and .env, one error line per bad variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from waybill.config import ConfigError, Settings

TRUE_SPELLINGS = ["1", "true", "True", "TRUE", "yes", "Yes", "YES", "on", "On", "ON"]
FALSE_SPELLINGS = ["0", "false", "False", "FALSE", "no", "No", "NO", "off", "Off", "OFF"]


def env_for(tmp_path: Path, **variables: str) -> dict[str, str]:
    return {
        "WAYBILL_INSTANCE_DIR": str(tmp_path / "instance"),
        "WAYBILL_SECRET_KEY": "k",
        **variables,
    }


@pytest.mark.parametrize("spelling", TRUE_SPELLINGS)
def test_run_worker_true_spellings(tmp_path, spelling):
    settings = Settings.from_env(env_for(tmp_path, WAYBILL_RUN_WORKER=spelling))
    assert settings.run_worker is True


@pytest.mark.parametrize("spelling", FALSE_SPELLINGS)
def test_run_worker_false_spellings(tmp_path, spelling):
    settings = Settings.from_env(env_for(tmp_path, WAYBILL_RUN_WORKER=spelling))
    assert settings.run_worker is False


def test_run_worker_defaults_to_true(tmp_path):
    assert Settings.from_env(env_for(tmp_path)).run_worker is True


@pytest.mark.parametrize("spelling", ["maybe", "2", "", "y", "t", "enabled"])
def test_run_worker_other_spellings_are_an_error(tmp_path, spelling):
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env_for(tmp_path, WAYBILL_RUN_WORKER=spelling))
    assert str(caught.value) == (
        f"WAYBILL_RUN_WORKER={spelling!r}: expected 1/0, true/false, yes/no or on/off"
    )


def test_several_bad_variables_give_one_line_each(tmp_path):
    env = env_for(
        tmp_path,
        WAYBILL_RUN_WORKER="sometimes",
        WAYBILL_PROXY_HOPS="two",
        WAYBILL_OUTBOX_LEASE_SECONDS="-5",
        WAYBILL_BLOCKED_LOOP_WARN_MS="1.5",
        WAYBILL_DATABASE_URL="mysql://user:hunter2@db/waybill",
        WAYBILL_BROKER_URL="kafka://x",
        WAYBILL_BASE_URL="http://",
        WAYBILL_SMTP_URL="http://mail",
        WAYBILL_VAPID_SUBJECT="operator@example.com",
        WAYBILL_OIDC_ISSUER="https://id.example.com",
        WAYBILL_PUSH_ENDPOINT_HOSTS="127.0.0.1:*,localhost,example.com:http",
        WAYBILL_RATE_LIMITS="merchant_api_per_key=2/minute,oops",
    )
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    lines = str(caught.value).splitlines()
    by_variable = {line.split("=", 1)[0]: line for line in lines}
    assert len(lines) == len(by_variable) == 12
    assert by_variable["WAYBILL_RUN_WORKER"] == (
        "WAYBILL_RUN_WORKER='sometimes': expected 1/0, true/false, yes/no or on/off"
    )
    for name, value in [
        ("WAYBILL_PROXY_HOPS", "two"),
        ("WAYBILL_OUTBOX_LEASE_SECONDS", "-5"),
        ("WAYBILL_BLOCKED_LOOP_WARN_MS", "1.5"),
    ]:
        assert by_variable[name] == f"{name}={value!r}: expected a whole number such as 0 or 1"
    database = by_variable["WAYBILL_DATABASE_URL"]
    assert "unknown scheme 'mysql'" in database and "postgresql+psycopg" in database
    assert "hunter2" not in str(caught.value)  # a password in a URL is not printed
    assert "unknown scheme 'kafka'" in by_variable["WAYBILL_BROKER_URL"]
    assert "has no host" in by_variable["WAYBILL_BASE_URL"]
    assert "unknown scheme 'http'; expected one of smtp" in by_variable["WAYBILL_SMTP_URL"]
    assert "must start with mailto: or https://" in by_variable["WAYBILL_VAPID_SUBJECT"]
    oidc = by_variable["WAYBILL_OIDC_CLIENT_ID"]
    assert "WAYBILL_OIDC_ISSUER and WAYBILL_OIDC_CLIENT_ID go together" in oidc
    hosts = by_variable["WAYBILL_PUSH_ENDPOINT_HOSTS"]
    assert "'localhost'" in hosts and "'example.com:http'" in hosts and "host:port" in hosts
    assert "'oops' is not name=limit" in by_variable["WAYBILL_RATE_LIMITS"]


def test_one_bad_variable_is_one_line(tmp_path):
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env_for(tmp_path, WAYBILL_PROXY_HOPS="yes"))
    assert str(caught.value) == "WAYBILL_PROXY_HOPS='yes': expected a whole number such as 0 or 1"


def test_values_are_typed(tmp_path):
    settings = Settings.from_env(
        env_for(
            tmp_path,
            WAYBILL_PROXY_HOPS="2",
            WAYBILL_OUTBOX_LEASE_SECONDS=" 30 ",
            WAYBILL_PUSH_ENDPOINT_HOSTS=" 127.0.0.1:*, push.example:8443 ,",
            WAYBILL_RATE_LIMITS="merchant_api_per_key=2/minute, sign_in_email_per_ip=40/hour",
            WAYBILL_BASE_URL="https://track.example.com/",
        )
    )
    assert settings.proxy_hops == 2 and settings.outbox_lease_seconds == 30
    assert settings.blocked_loop_warn_ms == 500
    assert settings.push_endpoint_hosts == ("127.0.0.1:*", "push.example:8443")
    assert settings.rate_limits == (
        ("merchant_api_per_key", "2/minute"),
        ("sign_in_email_per_ip", "40/hour"),
    )
    assert settings.base_url == "https://track.example.com" and settings.secure_cookies
    assert settings.instance_dir == (tmp_path / "instance").resolve()
    assert settings.database_url == f"sqlite:///{settings.instance_dir / 'waybill.db'}"
    assert settings.is_sqlite


def test_secret_key_is_generated_once_into_the_instance_dir(tmp_path):
    env = {"WAYBILL_INSTANCE_DIR": str(tmp_path / "instance")}
    first = Settings.from_env(env)
    secret = tmp_path / "instance" / "secret_key"
    assert first.secret_key and secret.read_text() == first.secret_key
    assert oct(secret.stat().st_mode & 0o777) == "0o600"
    assert Settings.from_env(env).secret_key == first.secret_key
    assert first.secret_key not in repr(first)  # secrets stay out of logs


def test_dotenv_fills_what_the_environment_leaves_unset(tmp_path, monkeypatch):
    for name in ("WAYBILL_RUN_WORKER", "WAYBILL_PROXY_HOPS", "WAYBILL_MAIL_FROM"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text(
        "WAYBILL_RUN_WORKER=off\n"
        "WAYBILL_PROXY_HOPS=3\n"
        "WAYBILL_BASE_URL=https://from-dotenv.example\n"
        "WAYBILL_SECRET_KEY=from-dotenv\n"
        "OTHER_TOOL_SETTING=ignored\n"
    )
    monkeypatch.setenv("WAYBILL_INSTANCE_DIR", str(tmp_path / "instance"))
    monkeypatch.setenv("WAYBILL_BASE_URL", "https://from-environment.example")
    monkeypatch.setenv("WAYBILL_SECRET_KEY", "from-environment")
    settings = Settings.from_env()
    assert settings.run_worker is False and settings.proxy_hops == 3  # from .env
    assert settings.base_url == "https://from-environment.example"  # the environment wins
    assert settings.secret_key == "from-environment"
    assert settings.mail_from == "Waybill <no-reply@waybill.invalid>"  # neither: the default


def test_dotenv_values_are_checked_too(tmp_path, monkeypatch):
    monkeypatch.delenv("WAYBILL_RUN_WORKER", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("WAYBILL_RUN_WORKER=perhaps\n")
    monkeypatch.setenv("WAYBILL_INSTANCE_DIR", str(tmp_path / "instance"))
    monkeypatch.setenv("WAYBILL_SECRET_KEY", "k")
    with pytest.raises(ConfigError, match="WAYBILL_RUN_WORKER='perhaps'"):
        Settings.from_env()


def test_an_explicit_environ_skips_dotenv(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("WAYBILL_PROXY_HOPS=3\n")
    assert Settings.from_env(env_for(tmp_path)).proxy_hops == 0


def test_direct_construction_ignores_the_environment_and_dotenv(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("WAYBILL_BROKER_URL=redis://dotenv:6379/0\n")
    monkeypatch.setenv("WAYBILL_RUN_WORKER", "0")
    monkeypatch.setenv("WAYBILL_PROXY_HOPS", "7")
    monkeypatch.setenv("WAYBILL_BASE_URL", "https://from-environment.example")
    monkeypatch.setenv("WAYBILL_TESTING", "1")
    monkeypatch.setenv("WAYBILL_DATABASE_URL", "mysql://not-read")
    settings = Settings(instance_dir=tmp_path / "instance", secret_key="k").resolved()
    assert settings.run_worker is True and settings.proxy_hops == 0
    assert settings.base_url == "http://127.0.0.1:8000" and settings.broker_url == "memory://"
    assert settings.testing is False
    assert settings.database_url == f"sqlite:///{tmp_path / 'instance' / 'waybill.db'}"


def test_testing_and_extra_are_never_read_from_the_environment(tmp_path):
    settings = Settings.from_env(env_for(tmp_path, WAYBILL_TESTING="1", WAYBILL_EXTRA="{}"))
    assert settings.testing is False and settings.extra == {}


def test_direct_construction_with_typed_values(tmp_path):
    settings = Settings(
        instance_dir=tmp_path,
        database_url=f"sqlite:///{tmp_path / 'waybill.db'}",
        secret_key="test",
        testing=True,
        run_worker=False,
        push_endpoint_hosts=("127.0.0.1:*",),
        smtp_url="smtp://127.0.0.1:2525",
        extra={"rate_limits": {"merchant_api_per_key": "5/minute"}},
        rate_limits=(("sign_in_email_per_ip", "40/hour"),),
    ).resolved()
    assert settings.testing is True and settings.run_worker is False
    assert settings.push_endpoint_hosts == ("127.0.0.1:*",)
    assert settings.extra == {"rate_limits": {"merchant_api_per_key": "5/minute"}}
    assert settings.rate_limits == (("sign_in_email_per_ip", "40/hour"),)
    assert settings.secret_key == "test" and not (tmp_path / "secret_key").exists()


def test_direct_construction_is_checked_as_well():
    with pytest.raises(ConfigError) as caught:
        Settings(base_url="ftp://x", push_endpoint_hosts=("nohost",))
    lines = str(caught.value).splitlines()
    assert [line.split("=", 1)[0] for line in lines] == [
        "WAYBILL_BASE_URL",
        "WAYBILL_PUSH_ENDPOINT_HOSTS",
    ]
    with pytest.raises(TypeError, match="no_such_setting"):
        Settings(no_such_setting=1)


def test_from_env_overrides_win(tmp_path):
    settings = Settings.from_env(
        env_for(tmp_path, WAYBILL_PROXY_HOPS="2", WAYBILL_RUN_WORKER="on"),
        run_worker=False,
        testing=True,
    )
    assert settings.run_worker is False and settings.testing is True
    assert settings.proxy_hops == 2


def test_with_overrides_is_a_checked_copy(tmp_path):
    settings = Settings.from_env(env_for(tmp_path))
    changed = settings.with_overrides(base_url="https://track.example.com", run_worker="off")
    assert changed.base_url == "https://track.example.com" and changed.secure_cookies
    assert changed.run_worker is False
    assert changed.secret_key == settings.secret_key
    assert settings.base_url == "http://127.0.0.1:8000" and settings.run_worker is True
    with pytest.raises(ConfigError, match="WAYBILL_BROKER_URL='kafka://x'"):
        settings.with_overrides(broker_url="kafka://x")
    with pytest.raises(TypeError):
        settings.with_overrides(no_such_setting=1)


def test_settings_are_frozen(tmp_path):
    settings = Settings.from_env(env_for(tmp_path))
    with pytest.raises(ValueError, match="frozen"):
        settings.base_url = "https://elsewhere.example"  # type: ignore[misc]
    assert settings.base_url == "http://127.0.0.1:8000"
