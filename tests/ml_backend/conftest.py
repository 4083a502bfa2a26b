"""One real Label Studio 1.23.2 for every test of the backend that needs it (it takes 1-2 minutes to
start), in its own data directory."""

from __future__ import annotations

import pytest

from tests.ml_backend.servers import label_studio_server


@pytest.fixture(scope="session")
def ls(tmp_path_factory):
    with label_studio_server(tmp_path_factory.mktemp("label-studio")) as server:
        yield server
