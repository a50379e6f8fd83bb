"""Inputs the fuzzers in bench/fuzz/ found in the sources' parsers, kept as regression tests."""

from __future__ import annotations

import pytest

from netplane.errors import ConfigError
from netplane.sources.kube.kubeconfig import load_kubeconfig

CONFIG = """\
current-context: dev
clusters:
- name: c
  cluster: {{server: "{server}"}}
users:
- name: u
  user: {{token: abc}}
contexts:
- name: dev
  context: {{cluster: c, user: u}}
"""


@pytest.mark.parametrize(
    "server", ["https://10.0.0.1:http", "https://10.0.0.1:99999", "https://[fd00::1]:x"]
)
def test_a_server_url_without_a_valid_port_is_a_config_error(tmp_path, server):
    # kubeconfig: the config loaded, and ClusterConfig.host_port raised ValueError (int("http"))
    # later, when the client connected; a port past 65535 went as far as the socket.
    path = tmp_path / "config"
    path.write_text(CONFIG.format(server=server))
    with pytest.raises(ConfigError, match="port"):
        load_kubeconfig(path)


def test_a_server_url_with_a_port_or_none_loads(tmp_path):
    path = tmp_path / "config"
    for server, port in [("https://h:6443", 6443), ("https://h", 443), ("http://[::1]:80/", 80)]:
        path.write_text(CONFIG.format(server=server))
        assert load_kubeconfig(path).host_port[1] == port


def test_a_kubeconfig_that_is_not_utf8_is_a_config_error(tmp_path):
    # kubeconfig: read_text() raised UnicodeDecodeError past the OSError/YAMLError handler.
    path = tmp_path / "config"
    path.write_bytes(b"clusters: \x8c\n")
    with pytest.raises(ConfigError, match="cannot read"):
        load_kubeconfig(path)
