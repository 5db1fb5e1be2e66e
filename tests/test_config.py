"""Configuration: validated fields, a TOML file, flags over file, one-line errors with exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from eagleeye.common.cli import ConfigError
from eagleeye.detector import config

BIN = Path(sys.executable).parent


def test_defaults_are_valid() -> None:
    cfg = config.load(None, {})
    assert cfg.max_batch == 8 and cfg.health.canary_deadline_s == 2.0 and cfg.torch_threads >= 1


def test_file_then_flags(tmp_path: Path) -> None:
    f = tmp_path / "w.toml"
    f.write_text('max_batch = 4\nlisten = "127.0.0.1:7000"\n[health]\ncanary_deadline_s = 1\nrequire_gpu = true\n')
    cfg = config.load(f, {"max_batch": 2, "listen": None})
    assert cfg.max_batch == 2 and cfg.listen == "127.0.0.1:7000"
    assert cfg.health.canary_deadline_s == 1.0 and cfg.health.require_gpu


@pytest.mark.parametrize(("toml", "overrides", "message"), [
    ("", {"max_batch": 0}, "max_batch=0: must be in [1, 64]"),
    ("", {"device": "gpu0"}, "device='gpu0': must be auto, cpu or cuda:N"),
    ("", {"listen": "nohost"}, "listen='nohost': must be HOST:PORT"),
    ("", {"model": Path("/nonexistent.pt2")}, "no such file"),
    ("max_queue = 'many'", {}, "max_queue='many': must be a int"),
    ("colour = 1", {}, "colour: unknown setting"),
    ("[health]\ncanary_hang_s = 1", {}, "health.canary_hang_s=1.0: must exceed"),
    ("[health]\nbacklog_fraction = 2", {}, "health.backlog_fraction=2.0: must be in [0, 1]"),
    ("[health]\ntemperature_recover_c = 90", {}, "health.temperature_recover_c=90.0: must be below"),
    ("backend = 'tensorflow'", {}, "backend='tensorflow': must be one of auto, torch, onnxruntime"),
    ("backend = 'torch'", {"model": Path(__file__).parent.parent / "detector/defaultmodel/default.onnx"},
     "use backend onnxruntime for .onnx"),
    ("backend = 'onnxruntime'", {"model": Path(__file__).parent.parent / "detector/defaultmodel/default.pt2"},
     "is not a .onnx file"),
    ("backend = 'onnxruntime'\nhalf = true", {}, "half: fp16 is the torch backend's"),
    ("backend = 'onnxruntime'\ncompile = true", {}, "compile: torch.compile is the torch backend's"),
    ("compile = true", {"model": Path(__file__)}, "compile: needs a torch.export (.pt2)"),
    ("max_batch = ", {}, "not valid TOML"),
])
def test_invalid_settings_name_field_value_and_rule(
    tmp_path: Path, toml: str, overrides: dict[str, object], message: str
) -> None:
    f = tmp_path / "w.toml"
    f.write_text(toml)
    with pytest.raises(ConfigError, match=None) as err:
        config.load(f, overrides)
    assert message in str(err.value)


@pytest.mark.parametrize("args", [
    ["--listen", "127.0.0.1:0", "--max-batch", "0"],
    ["--listen", "127.0.0.1:0", "--device", "tpu"],
    ["--listen", "127.0.0.1:0", "--config", "/nonexistent.toml"],
    ["--listen", "127.0.0.1:0", "--compile", "--backend", "onnxruntime"],
    ["--no-such-flag"],
    ["--max-batch", "lots"],
])
def test_detector_cli_rejects_bad_flags_with_one_line_and_exit_2(args: list[str]) -> None:
    proc = subprocess.run([BIN / "eagleeye-detector", *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("eagleeye-detector:"), proc.stderr
    assert "Traceback" not in proc.stderr


def test_client_cli_rejects_bad_flags_with_one_line_and_exit_2() -> None:
    proc = subprocess.run([BIN / "eagleeye", "load", "--target", "nohost", "--rate", "-1"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_every_setting_is_documented() -> None:
    import dataclasses

    doc = (Path(__file__).parent.parent / "docs" / "configuration.md").read_text()
    for cls in (config.DetectorConfig, config.HealthConfig):
        for f in dataclasses.fields(cls):
            if f.name != "health":
                assert f"| `{f.name}` |" in doc, f"docs/configuration.md does not describe {f.name}"


def test_every_router_setting_is_documented() -> None:
    import dataclasses

    from eagleeye.router.config import RouterConfig

    doc = (Path(__file__).parent.parent / "docs" / "router.md").read_text()
    for f in dataclasses.fields(RouterConfig):
        assert f"| `{f.name}` |" in doc, f"docs/router.md does not describe {f.name}"


@pytest.mark.parametrize(("args", "message"), [
    (["--listen", "127.0.0.1:0", "--primary", "127.0.0.1:1"], "both backends are required"),
    (["--listen", "127.0.0.1:0", "--primary", "127.0.0.1:1", "--standby", "127.0.0.1:1"], "must differ"),
    (["--listen", "127.0.0.1:0", "--primary", "127.0.0.1:1", "--standby", "127.0.0.1:2", "--weights", "90,5"],
     "summing to 100"),
    (["--listen", "127.0.0.1:0", "--primary", "127.0.0.1:1", "--standby", "127.0.0.1:2", "--weights", "a"],
     "PRIMARY,STANDBY"),
    (["--listen", "127.0.0.1:0", "--primary", "127.0.0.1:1", "--standby", "127.0.0.1:2", "--hold-down", "0"],
     "hold_down_s=0.0: must be > 0"),
    (["--listen", "", "--primary", "127.0.0.1:1", "--standby", "127.0.0.1:2"], "listen: required unless xds_listen"),
    (["--listen", "127.0.0.1:7000", "--xds-listen", "127.0.0.1:7000", "--primary", "127.0.0.1:1", "--standby",
      "127.0.0.1:2"], "xds_listen='127.0.0.1:7000': must differ from listen"),
    (["--xds-listen", "127.0.0.1:0", "--xds-name", "a/b", "--primary", "127.0.0.1:1", "--standby", "127.0.0.1:2"],
     "xds_name='a/b': must be a plain name"),
    (["--primary", "127.0.0.1:1", "--standby", "127.0.0.1:2", "--request-default", "FAILOVER:score=0.4"],
     "request_defaults.FAILOVER.score: not a request default"),
    (["--primary", "127.0.0.1:1", "--standby", "127.0.0.1:2", "--request-default", "FAILOVER=0.4"],
     "--request-default: 'FAILOVER=0.4' is not STATE:FIELD=VALUE"),
])
def test_router_cli_rejects_bad_settings_with_one_line_and_exit_2(args: list[str], message: str) -> None:
    proc = subprocess.run([BIN / "eagleeye-router", *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert message in proc.stderr


def _router(**overrides: object) -> None:
    from eagleeye.router import config as router_config

    router_config.load(None, {"primary": "127.0.0.1:1", "standby": "127.0.0.1:2", **overrides})


def test_request_defaults_from_file_environment_and_flags(tmp_path: Path) -> None:
    from eagleeye.router import config as router_config

    f = tmp_path / "r.toml"
    f.write_text('primary = "127.0.0.1:1"\nstandby = "127.0.0.1:2"\n'
                 "[request_defaults.FAILOVER]\nscore_threshold = 0.4\nmax_detections = 200\n")
    assert router_config.load(f, {}).request_defaults == {"FAILOVER": {"score_threshold": 0.4,
                                                                       "max_detections": 200.0}}
    env = {"EAGLEEYE_REQUEST_DEFAULTS": '{"DEGRADED": {"score_threshold": 0.45}}'}
    assert router_config.load(f, {}, env).request_defaults == {"DEGRADED": {"score_threshold": 0.45}}
    flags = {"request_defaults": router_config.parse_request_defaults(["recovering:iou_threshold=0.5"])}
    assert router_config.load(f, flags, env).request_defaults == {"RECOVERING": {"iou_threshold": 0.5}}
    with pytest.raises(ConfigError, match="EAGLEEYE_REQUEST_DEFAULTS='nope': must be a JSON object"):
        router_config.load(f, {}, {"EAGLEEYE_REQUEST_DEFAULTS": "nope"})


def test_tls_settings_are_checked_before_anything_listens(tmp_path: Path) -> None:
    from tests.certs import TestCA

    ca = TestCA(tmp_path)
    pem, other = ca.issue("server"), ca.issue("other")
    config.load(None, {"tls_cert": pem.cert, "tls_key": pem.key, "tls_client_ca": ca.cert})
    _router(tls_cert=pem.cert, tls_key=pem.key, backend_tls_ca=ca.cert, backend_tls_cert=pem.cert,
            backend_tls_key=pem.key, backend_tls_server_name="localhost")
    cases: list[tuple[dict[str, object], str]] = [
        ({"tls_cert": pem.cert}, "tls_cert and tls_key: give both"),
        ({"tls_client_ca": ca.cert}, "tls_client_ca: needs tls_cert"),
        ({"tls_cert": pem.cert, "tls_key": other.key}, "not a PEM certificate and its matching private key"),
        ({"tls_cert": tmp_path / "missing.pem", "tls_key": pem.key}, "tls_cert="),
    ]
    for flags, message in cases:
        with pytest.raises(ConfigError) as err:
            config.load(None, flags)
        assert message in str(err.value), (flags, err.value)
    with pytest.raises(ConfigError, match="backend_tls_cert: needs backend_tls_ca"):
        _router(backend_tls_cert=pem.cert, backend_tls_key=pem.key)
    with pytest.raises(ConfigError, match="backend_tls_server_name: needs backend_tls_ca"):
        _router(backend_tls_server_name="worker")


ADMIN_TOKEN = "0123456789abcdef0123456789abcdef"  # 32 bytes, the least accepted


def test_admin_listener_needs_a_token_and_a_port_of_its_own() -> None:
    with pytest.raises(ConfigError, match="admin_token: required with admin_listen"):
        _router(admin_listen="127.0.0.1:9")
    with pytest.raises(ConfigError, match=r"admin_listen='127\.0\.0\.1:50050': must differ from listen"):
        _router(admin_listen="127.0.0.1:50050", admin_token=ADMIN_TOKEN)
    _router(admin_listen="127.0.0.1:9", admin_token=ADMIN_TOKEN)


@pytest.mark.parametrize(("token", "message"), [
    ("s3cret", "admin_token: must be at least 32 bytes (the one given has 6)"),
    (ADMIN_TOKEN[:-1], "admin_token: must be at least 32 bytes (the one given has 31)"),
    ("é" * 16, "admin_token: must be printable ASCII"),       # 32 bytes, but not a gRPC header value
    (ADMIN_TOKEN + "\n", "admin_token: must be printable ASCII"),
])
def test_a_short_or_unprintable_admin_token_is_refused_without_showing_it(token: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        _router(admin_listen="127.0.0.1:9", admin_token=token)
    assert message in str(err.value) and token.strip() not in str(err.value)
    with pytest.raises(ConfigError, match="admin_token: must be"):  # a token is checked even if unused yet
        _router(admin_token=token)


def test_admin_limits_leave_operators_room() -> None:
    from eagleeye.router import config as router_config
    from eagleeye.router.adminaccess import MAX_ANONYMOUS_STREAMS, AdminLimits

    cfg = router_config.load(None, {"primary": "127.0.0.1:1", "standby": "127.0.0.1:2"})
    assert cfg.admin_limits() == AdminLimits()
    assert ADMIN_TOKEN not in repr(router_config.load(None, {"primary": "127.0.0.1:1", "standby": "127.0.0.1:2",
                                                           "admin_token": ADMIN_TOKEN}))
    _router(admin_max_anonymous_streams=0)  # event streams need the token
    _router(admin_max_anonymous_streams=MAX_ANONYMOUS_STREAMS)
    too_many = MAX_ANONYMOUS_STREAMS + 1
    with pytest.raises(ConfigError, match=rf"admin_max_anonymous_streams={too_many}: must be in \[0, {too_many - 1}\]"):
        _router(admin_max_anonymous_streams=too_many)
    with pytest.raises(ConfigError, match=r"admin_max_anonymous_streams_per_peer=0: must be in \[1, 8\]"):
        _router(admin_max_anonymous_streams_per_peer=0)


def test_fault_injection_only_from_the_flag_and_only_on_loopback(tmp_path: Path) -> None:
    f = tmp_path / "w.toml"
    f.write_text("fault_injection = true\n")
    with pytest.raises(ConfigError, match="only the --fault-injection flag"):
        config.load(f, {})
    for host in ("127.0.0.1", "[::1]", "localhost", "127.0.0.2"):
        assert config.load(None, {"fault_injection": True, "listen": f"{host}:0"}).fault_injection
    for host in ("0.0.0.0", "10.0.0.5", "[::]", "worker.internal"):
        with pytest.raises(ConfigError, match="loopback"):
            config.load(None, {"fault_injection": True, "listen": f"{host}:0"})


def test_environment_sits_between_flags_and_the_file(tmp_path: Path) -> None:
    f = tmp_path / "w.toml"
    f.write_text('max_batch = 4\nmax_queue = 100\nlisten = "127.0.0.1:7000"\n[health]\ncanary_deadline_s = 1\n')
    env = {"EAGLEEYE_MAX_BATCH": "6", "EAGLEEYE_MAX_QUEUE": "50", "EAGLEEYE_HEALTH_CANARY_DEADLINE_S": "1.5",
           "EAGLEEYE_HEALTH_REQUIRE_GPU": "true", "EAGLEEYE_DEVICE": "cpu",
           "EAGLEEYE_HEALTH_ADDR": "127.0.0.1:50061", "EAGLEEYE_SOMETHING_ELSE": "ignored"}
    cfg = config.load(f, {"max_batch": 2, "listen": None}, env)
    assert cfg.max_batch == 2                      # flag over environment
    assert cfg.max_queue == 50 and cfg.device == "cpu"  # environment over file and default
    assert cfg.listen == "127.0.0.1:7000"          # file where nothing else says
    assert cfg.health.canary_deadline_s == 1.5 and cfg.health.require_gpu


@pytest.mark.parametrize(("env", "message"), [
    ({"EAGLEEYE_MAX_BATCH": "many"}, "EAGLEEYE_MAX_BATCH='many': must be an integer"),
    ({"EAGLEEYE_MAX_BATCH": "0"}, "max_batch=0: must be in [1, 64]"),
    ({"EAGLEEYE_HEALTH_REQUIRE_GPU": "maybe"}, "EAGLEEYE_HEALTH_REQUIRE_GPU='maybe': must be true or false"),
    ({"EAGLEEYE_FAULT_INJECTION": "1", "EAGLEEYE_LISTEN": "127.0.0.1:0"}, "only the --fault-injection flag"),
])
def test_bad_environment_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        config.load(None, {}, env)
    assert message in str(err.value)


def test_every_setting_has_one_variable_and_the_router_reads_them() -> None:
    import dataclasses

    from eagleeye.common.settings import env_name
    from eagleeye.router import config as router_config

    names = [env_name(f.name) for f in dataclasses.fields(config.DetectorConfig) if f.name != "health"]
    names += [env_name(f.name, "health") for f in dataclasses.fields(config.HealthConfig)]
    assert len(names) == len(set(names))
    cfg = router_config.load(None, {"listen": "127.0.0.1:0"},
                             {"EAGLEEYE_PRIMARY": "127.0.0.1:1", "EAGLEEYE_STANDBY": "127.0.0.1:2",
                              "EAGLEEYE_WEIGHTS": "90,10", "EAGLEEYE_ADMIN_LISTEN": "127.0.0.1:9",
                              "EAGLEEYE_ADMIN_TOKEN": ADMIN_TOKEN})
    assert cfg.weights == (90.0, 10.0) and cfg.admin_token == ADMIN_TOKEN and cfg.primary == "127.0.0.1:1"


def test_a_worker_started_with_a_bad_variable_says_which_and_exits_2() -> None:
    import os

    done = subprocess.run([str(BIN / "eagleeye-detector"), "--listen", "127.0.0.1:0"], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "EAGLEEYE_MAX_BATCH": "lots"})
    assert done.returncode == 2
    assert done.stderr.strip() == ("eagleeye-detector: invalid configuration: "
                                   "EAGLEEYE_MAX_BATCH='lots': must be an integer")
