"""Push providers' start-up checks (tx/push/providers.py); sending is tested end to end in tests/e2e/test_push_apns_fcm.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.internet.testing import MemoryReactor

from mcs_edge import config as c
from mcs_edge.errors import StartupError
from mcs_edge.tx.push.providers import PushSender, require_asyncio_reactor


def _config(tmp: Path, push: str) -> c.EdgeConfig:
    return c.loads(
        '[[tenants]]\nid = "rossi"\ndomains = ["rossi.example.com"]\nbackend_sip = "udp:127.0.0.1:5060"\n'
        + push,
        str(tmp),
    )


APNS = '[tenants.push.apns]\nkey_id = "ABC123DEFG"\nteam_id = "TEAM123456"\nkey_file = "k.p8"\ntopic = "x.voip"\n'


def test_apns_push_refuses_a_reactor_without_asyncio(tmp_path: Path) -> None:
    """Push configured on a non-asyncio reactor is a start-up error naming tenants.push; without push nothing is checked."""
    with pytest.raises(StartupError, match="asyncio reactor") as info:
        require_asyncio_reactor(_config(tmp_path, APNS), MemoryReactor())
    assert info.value.key == "tenants.push"
    require_asyncio_reactor(_config(tmp_path, ""), MemoryReactor())


def test_fcm_unusable_service_account_is_a_start_up_error(tmp_path: Path) -> None:
    """A service account file that is not one (no client_email/private_key) refuses the start, without echoing its content."""
    (tmp_path / "sa.json").write_text('{"private": "s3cret-material"}')
    cfg = _config(tmp_path, '[tenants.push.fcm]\nservice_account_file = "sa.json"\n')
    sender = PushSender(cfg, cfg.tenant, lambda push, outcome: None, lambda: 0.0)
    from twisted.internet import reactor

    if "asyncio" not in type(reactor).__module__:
        reactor = None  # type: ignore[assignment]
        with pytest.raises(StartupError, match="asyncio"):
            sender.start(MemoryReactor())
        return
    with pytest.raises(StartupError) as info:
        sender.start(reactor)
    assert info.value.key == "tenants.push.fcm" and "s3cret" not in str(info.value)


def test_apns_push_is_refused_with_several_workers(tmp_path: Path) -> None:
    """A held call lives in one worker and the woken app may reconnect to another: the config refuses push with workers > 1."""
    with pytest.raises(c.ConfigErrors, match=r"tenants\[0\]\.push.*edge.workers = 1"):
        c.loads(
            '[edge]\nworkers = 2\n[[tenants]]\nid = "rossi"\ndomains = ["rossi.example.com"]\n'
            'backend_sip = "udp:127.0.0.1:5060"\n' + APNS,
            str(tmp_path),
        )
