"""What the tests' HTTP clients share."""

from __future__ import annotations

import httpx

# One connection per request: uvicorn closes a kept-alive connection after 5 s idle, and a
# request sent on it at that very moment fails ("Server disconnected without sending a
# response"). A test that waits on a job between two requests hits that moment now and then
# on a loaded machine; a real client retries (dip_client does), a test should not need to.
FRESH_CONNECTIONS = httpx.Limits(max_keepalive_connections=0)
