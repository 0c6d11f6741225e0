"""From a W&B run back to its Flyte action: the console URL, the tags and the notes line.

Pure: everything comes from the arguments (an environment mapping, the action's names), so the
rank hooks and the tests compute the same values.

The URL is the one Flyte's own builder gives (`flyte.remote`'s `Console.action_url`, reached in a
client as `get_client().console.action_url(...)`): `{console}/v2/domain/{domain}/project/{project}/
runs/{run}?i={action}`. It is written out here rather than imported, because importing
`flyte.remote`'s client module would cost each logging rank 0.2 to 0.4 s before its function
starts (this takes about 5 us); the tests check that both agree for every form of endpoint.

The console's address is the endpoint the pod's Flyte client uses, found as `flyte`'s
`init_in_cluster` finds it (`flyte/_initialize.py`): `_U_EP_OVERRIDE` (which the backend injects),
else `FLYTE_ADMIN_ENDPOINT`, else the endpoint encoded in the API key the backend injects
(`_UNION_EAGER_API_KEY`, `EAGER_API_KEY`). Where none is set (a local run, `run_ranks_locally`, a
pod without them) there is no URL: `init_in_cluster`'s last resort (`host.docker.internal:8090`)
names no console anyone can open, so it is never used.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote, urlparse

ENDPOINT_ENV = ("_U_EP_OVERRIDE", "FLYTE_ADMIN_ENDPOINT")
API_KEY_ENV = ("_UNION_EAGER_API_KEY", "EAGER_API_KEY")
INSECURE_ENV = "_U_INSECURE"
MAX_TAG_CHARS = 64
"""W&B's limit on a tag's length (`wandb.Settings` rejects a longer one)."""
TAG_PREFIX = "flyte-"


def console_endpoint(environ: Mapping[str, str]) -> tuple[str, bool] | None:
    """The Flyte endpoint a pod's client uses, and whether it is plain HTTP; `None` where unknown."""
    for name in ENDPOINT_ENV:
        endpoint = (environ.get(name) or "").strip()
        if endpoint:
            insecure = "localhost" in endpoint or "docker" in endpoint
            return endpoint, insecure or _true(environ.get(INSECURE_ENV, ""))
    for name in API_KEY_ENV:
        key = (environ.get(name) or "").strip()
        if key:
            try:  # `endpoint:client id:secret:org`, base64-encoded (flyte's `decode_api_key`)
                parts = base64.b64decode(key.encode(), validate=True).decode().rsplit(":", 3)
            except (ValueError, UnicodeDecodeError):
                continue
            # split from the right, so that an endpoint with a port or a scheme stays whole
            if len(parts) == 4 and parts[0].strip():
                return parts[0].strip(), False
    return None


def action_url(endpoint: str, insecure: bool, project: str, domain: str, run_name: str, action_name: str) -> str:
    """The Flyte console's page for an action, opened within its run (as `Console.action_url` builds it)."""
    if "://" not in endpoint:  # flyte's `sanitize_endpoint`: a bare host is a `dns:///` endpoint
        endpoint = f"dns:///{endpoint}"
    parsed = urlparse(endpoint)
    host = parsed.path.lstrip("/") if parsed.scheme == "dns" else parsed.netloc or parsed.path
    name, _, port = host.partition(":")
    if name == "localhost" and port == "8090":  # the sandbox's API port; its console is on 8080
        host = "localhost:8080"
    base = f"{'http' if insecure else 'https'}://{host}"
    return f"{base}/v2/domain/{domain}/project/{project}/runs/{run_name}?i={quote(action_name, safe='')}"


@dataclass(frozen=True)
class FlyteAction:
    """The Flyte action a rank runs in, as W&B shows it.

    Attributes:
        project: Flyte project.
        domain: Flyte domain.
        run_name: Flyte run name.
        action_name: Flyte action name.
        url: The action's console URL, or `None` where the console's endpoint is unknown.
    """

    project: str
    domain: str
    run_name: str
    action_name: str
    url: str | None = None

    @classmethod
    def of(cls, environ: Mapping[str, str], project: str, domain: str, run_name: str, action_name: str) -> FlyteAction:
        """The action, with its console URL where `environ` says where the console is."""
        found = console_endpoint(environ)
        url = action_url(found[0], found[1], project, domain, run_name, action_name) if found else None
        return cls(project, domain, run_name, action_name, url)

    def tags(self, user_tags: list[str] | None = None) -> list[str]:
        """The user's tags, then `flyte-project:`, `flyte-domain:`, `flyte-run:` and `flyte-action:` tags.

        Each is cut to W&B's 64 characters (the whole names are in the config's `flyte` key);
        a tag the user already has is not repeated.
        """
        own = [
            f"{TAG_PREFIX}{kind}:{value}"[:MAX_TAG_CHARS]
            for kind, value in (
                ("project", self.project),
                ("domain", self.domain),
                ("run", self.run_name),
                ("action", self.action_name),
            )
            if value
        ]
        tags = list(user_tags or [])
        return tags + [tag for tag in own if tag not in tags]

    def notes(self, user_notes: str | None = None) -> str | None:
        """The user's notes, then a Markdown link to the action (the notes as given where there is no URL)."""
        if self.url is None:
            return user_notes
        link = f"[Flyte action {self.run_name}/{self.action_name}]({self.url})"
        return f"{user_notes}\n\n{link}" if user_notes else link


def _true(value: str) -> bool:
    return value.strip().lower() in ("true", "t", "1")  # flyte's `str2bool`
