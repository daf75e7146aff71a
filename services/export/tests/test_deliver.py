"""Delivery to a destination: a FHIR endpoint on a loopback HTTP server whose answer the test chooses; its statuses
map to retryable and refused errors. The workflow around it (retries, dead letters, replay) is in
tests/e2e/test_export_delivery.py."""

from __future__ import annotations

import pytest

from services.export.deliver import DicomPeer, post_fhir, stow
from shared.errors import ConfigurationError, DeliveryRefused, DeliveryUnavailable
from synthetic.peers import Endpoint


@pytest.fixture
def endpoint():
    server = Endpoint()
    yield server
    server.close()


def test_http_statuses_map_to_retryable_and_refused(endpoint):
    assert post_fhir(endpoint.url, b"{}", "s1") == 201
    endpoint.status = 503
    with pytest.raises(DeliveryUnavailable, match="answered 503"):
        post_fhir(endpoint.url, b"{}", "s1")
    endpoint.status = 400
    with pytest.raises(DeliveryRefused, match="400"):
        stow(endpoint.url, [b"DICM"], "s1")
    with pytest.raises(DeliveryUnavailable, match="cannot be reached"):
        post_fhir("http://127.0.0.1:9/fhir/Bundle", b"{}", "s1")
    for peer in ("no-port", "PACS:104"):
        with pytest.raises(ConfigurationError, match="AE_TITLE@host:port"):
            DicomPeer.parse(peer)
