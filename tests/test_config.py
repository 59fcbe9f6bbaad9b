"""Settings: precedence, parsing and the one-line errors (unit tests, no server)."""

from __future__ import annotations

import pytest

from agora import config


def test_defaults():
    cfg = config.load({}, environ={})
    assert cfg.bind == "127.0.0.1"
    assert cfg.http.port == 8080 and cfg.https.port == 8443
    assert cfg.data_dir == "./agora-data"
    assert cfg.database.url == ""
    assert cfg.web.enabled is True


def test_precedence_defaults_file_env_flags(tmp_path):
    toml = tmp_path / "agora.toml"
    toml.write_text('log_level = "debug"\n[http]\nport = 1111\n[https]\nport = 2222\n'
                    '[identity]\nlogin_free_failures = 3\n')
    env = {"AGORA_HTTPS_PORT": "3333", "AGORA_IDENTITY_LOGIN_FREE_FAILURES": "4"}
    cfg = config.load({"identity.login_free_failures": "7"}, environ=env, config_file=toml)
    assert cfg.http.port == 1111  # file beats default
    assert cfg.https.port == 3333  # env beats file
    assert cfg.identity.login_free_failures == 7  # flag beats env
    assert cfg.log_level == "debug"
    assert cfg.sources["http.port"].startswith("file")
    assert cfg.sources["https.port"] == "env AGORA_HTTPS_PORT"
    assert cfg.sources["identity.login_free_failures"] == "flag --identity-login-free-failures"


def test_toml_in_data_dir_is_found(tmp_path):
    (tmp_path / "agora.toml").write_text("[http]\nport = 4444\n")
    cfg = config.load({"data_dir": str(tmp_path)}, environ={})
    assert cfg.http.port == 4444
    cfg = config.load({}, environ={"AGORA_DATA_DIR": str(tmp_path)})
    assert cfg.http.port == 4444


@pytest.mark.parametrize("key,raw,message", [
    ("http.port", "eighty", "http.port"),
    ("http.port", "70000", "http.port"),
    ("bind", "not-an-address", "bind"),
    ("log_format", "xml", "log_format"),
    ("http.max_json_body", "12 parsecs", "http.max_json_body"),
    ("shutdown_timeout", "-3", "shutdown_timeout"),
    ("web.enabled", "perhaps", "web.enabled"),
    ("database.url", "mysql://x/y", "database.url"),
    ("http.trusted_proxies", "10.0.0.0/8,nonsense", "http.trusted_proxies"),
])
def test_bad_values_name_the_key(key, raw, message):
    with pytest.raises(config.ConfigError) as error:
        config.load({key: raw}, environ={})
    assert str(error.value).startswith(message)
    assert "\n" not in str(error.value)


def test_bad_env_value_names_the_variable():
    with pytest.raises(config.ConfigError, match="AGORA_HTTP_PORT"):
        config.load({}, environ={"AGORA_HTTP_PORT": "x"})


def test_unknown_key_in_file(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text("[http]\nprot = 1\n")
    with pytest.raises(config.ConfigError, match=r"^http\.prot .*unknown setting"):
        config.load({}, environ={}, config_file=toml)


def test_broken_toml_and_missing_file(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text("[http\n")
    with pytest.raises(config.ConfigError, match="config file"):
        config.load({}, environ={}, config_file=toml)
    with pytest.raises(config.ConfigError, match="config file"):
        config.load({}, environ={}, config_file=tmp_path / "missing.toml")


def test_value_forms():
    cfg = config.load({"http.port": "off", "https.port": "0", "http.max_json_body": "2M",
                       "shutdown_timeout": "500ms", "tls.hostnames": '["a.example", "b.example"]',
                       "http.trusted_proxies": "10.0.0.1, 192.168.0.0/16"}, environ={})
    assert cfg.http.port is None and cfg.https.port == 0
    assert cfg.http.max_json_body == 2 * 1024 * 1024
    assert cfg.shutdown_timeout == 0.5
    assert cfg.tls.hostnames == ["a.example", "b.example"]
    assert cfg.http.trusted_proxies == ["10.0.0.1", "192.168.0.0/16"]


def test_tls_cert_needs_key(tmp_path):
    with pytest.raises(config.ConfigError, match="tls.cert"):
        config.load({"tls.cert": str(tmp_path / "c.pem")}, environ={})


def test_unknown_env_is_reported_not_fatal():
    env = {"AGORA_HTP_PORT": "1", "AGORA_URL": "x", "AGORA_TEST_DATABASE_URL": "y", "AGORA_HTTP_PORT": "1"}
    assert config.unknown_env(env) == ["AGORA_HTP_PORT"]
    assert config.load({}, environ=env).http.port == 1


def test_names_follow_the_contract():
    for setting in config.SETTINGS:
        assert setting.env == "AGORA_" + setting.key.replace(".", "_").upper()
        assert setting.flag == "--" + setting.key.replace(".", "-").replace("_", "-")
    assert config.BY_KEY["data_dir"].env == "AGORA_DATA_DIR"
    assert config.BY_KEY["database.url"].env == "AGORA_DATABASE_URL"
    assert config.BY_KEY["admin.password"].env == "AGORA_ADMIN_PASSWORD"
    assert config.BY_KEY["http.port"].flag == "--http-port"
    assert len(config.BY_ENV) == len(config.SETTINGS)  # no two settings share a variable
