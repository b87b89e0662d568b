"""Issue 10's acceptance on the real engine: an unchanged ``openai`` app with ONE api_key, 50
requests through the proxy to the llama.cpp enclave, across a token refresh (the proxy's clock
moves past 80% of the token's life; the refresh is counted at the IdP, not timed).

The enclave fixture trusts the session's test issuer; the dev IdP here serves that issuer's key
under that name, on 127.0.0.1. Its tokens are not DPoP-bound in this test (the dev IdP checks a
proof against its issuer URL, which here is not the URL it listens on); the DPoP path is covered
against the spy engine in ``test_proxy_credentials``.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import openai
import pytest

from medclave.auth.exchange import GRANT_TYPE
from medclave.auth.issuer import Directory, TokenService
from medclave.background import BackgroundServer, running
from medclave.client.apikeys import ApiKeyStore
from medclave.client.callers import Callers
from medclave.client.credentials import Credentials, IdpClientConfig
from medclave.client.proxy import create_proxy_app
from medclave.client.session import EnclaveSession
from medclave.enclave.model import DEFAULT_MODEL_ID
from tests.e2e.helpers import TENANT, Enclave, Idp, sim_policy

SECRET = "proxy client secret 2024"


@pytest.fixture
def idp_server(folder: Path, idp: Idp) -> Iterator[tuple[str, TokenService]]:
    data = folder / "idp"  # where make_idp keeps the issuer's key
    d = Directory(data)
    d.add_client("proxy", SECRET, tenant=TENANT, roles=[], act_for_users=True)
    d.add_user("dr-alice", None, tenant=TENANT, roles=["clinician"])
    with running(lambda url: TokenService(idp.issuer, Directory(data))) as served:
        yield served


def test_one_api_key_serves_50_llama_requests_across_a_token_refresh(
        llama_enclave: Enclave, idp_server: tuple[str, TokenService], tmp_path: Path) -> None:
    url, service = idp_server
    offset = [timedelta(0)]
    credentials = Credentials(
        IdpClientConfig(token_url=f"{url}/token", client_id="proxy", client_secret=SECRET,
                        dpop=False),
        clock=lambda: datetime.now(UTC) + offset[0])
    keys = ApiKeyStore(tmp_path / "proxy")
    key, _ = keys.add(subject="dr-alice", roles=["clinician"])
    session = EnclaveSession(llama_enclave.url, sim_policy(),
                             sim_roots=frozenset({llama_enclave.sim_root}))
    callers = Callers(credentials=credentials, keys=keys)
    before = service.issued[GRANT_TYPE]
    with BackgroundServer(create_proxy_app(session, callers=callers)) as proxy:
        app = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key=key, max_retries=0)
        for i in range(50):
            if i == 25:
                offset[0] += timedelta(minutes=4, seconds=10)  # past 80% of 5 minutes
            answer = app.chat.completions.create(
                model=DEFAULT_MODEL_ID, max_tokens=1, temperature=0, seed=1,
                messages=[{"role": "user", "content": "Say yes."}])
            assert answer.choices[0].finish_reason in ("stop", "length")
            assert answer.usage is not None and answer.usage.completion_tokens <= 1
    assert service.issued[GRANT_TYPE] - before == 2  # the first token and one refresh
    session.close()
    callers.close()
