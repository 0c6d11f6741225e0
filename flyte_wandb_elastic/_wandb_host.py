"""Which W&B server a task's runs go to, and where its pages are: one rule for the pods and the links.

The pods (`_wandb_run`, `_wandb_server`, the report tab) apply it to their own environment
(`os.environ`); the console links apply it to the task's `env_vars`, which is what Flyte gives the
pods. It never reads the environment itself and never imports wandb: it runs wherever a task is
serialized, too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

PUBLIC_APP_URL = "https://wandb.ai"
BASE_URL_ENV = "WANDB_BASE_URL"
APP_URL_ENV = "WANDB_APP_URL"
SERVER_ENV = (BASE_URL_ENV, APP_URL_ENV)
# CoreWeave Forge hosts that serve W&B's pages under a path (as W&B's `urls.FORGE_HOSTS`)
_FORGE_HOSTS = ("forge.coreweave.com", "qa.forge.coreweave.com")
_FORGE_APP_PATH = "/wandb"


@dataclass(frozen=True)
class WandbServer:
    """The W&B server that a task's runs go to.

    Attributes:
        base_url: The base URL to hand `wandb.init` (`settings.base_url`): `host`, where it decides.
            `None` where it does not: W&B then reads `WANDB_BASE_URL` from the process's
            environment itself (the value this rule read), else uses its own default.
        app_url: The root of the server's pages, as W&B's `run.url` starts:
            `{app_url}/{entity}/{project}/runs/{id}`.
    """

    base_url: str | None
    app_url: str


def declared_host(host: str | None) -> str | None:
    """`host` without its trailing slash, or `None` where it is unset or W&B's public default.

    A `host` equal to `https://wandb.ai` counts as unset: it is the default of upstream's link
    fields, so a task declared with it still follows `WANDB_BASE_URL`.
    """
    if not host or host.rstrip("/") == PUBLIC_APP_URL:
        return None
    return host.rstrip("/")


def wandb_server(host: str | None, environ: Mapping[str, str]) -> WandbServer:
    """The W&B server of a task whose options say `host`, in a process with `environ`.

    `host` where it is set (and not `https://wandb.ai`), else `WANDB_BASE_URL` from `environ`, else
    W&B's public cloud. Its pages are at `WANDB_APP_URL` where `environ` sets it (as W&B's own
    `app_url` setting), else at the app URL W&B derives from the base URL.

    Args:
        host: The task's `host` option (declared, or from the run context).
        environ: The environment the runs are opened in: a pod's `os.environ`, or, where the task is
            serialized, the task's `env_vars`.

    Returns:
        The server, with the base URL to hand W&B and the root of its pages.
    """
    base_url = declared_host(host)
    found = base_url or (environ.get(BASE_URL_ENV) or "").strip().rstrip("/")
    app_url = (environ.get(APP_URL_ENV) or "").strip().rstrip("/")
    return WandbServer(base_url, app_url or (api_to_app_url(found) if found else PUBLIC_APP_URL))


def api_to_app_url(api_url: str) -> str:
    """The root of the pages of the W&B server whose API is at `api_url`.

    W&B's own mapping (`wandb.util.api_to_app_url`): an `api.` host of a self-hosted server has its
    pages at its `app.` host, a CoreWeave Forge host under `/wandb`, and any other server (W&B
    Server, `wandb/local`) at the same address as its API. One difference: W&B's cloud API,
    `https://api.wandb.ai`, has its pages at `https://wandb.ai` here, as before wandb 0.31; wandb
    0.31 names the Forge address that serves the same runs (`https://forge.coreweave.com/wandb`).
    """
    api_url = api_url.rstrip("/")
    hostname = urlsplit(api_url).hostname or ""
    for forge in _FORGE_HOSTS:
        if hostname in (forge, f"api.{forge}"):
            return f"https://{forge}{_FORGE_APP_PATH}"
    if "://api.wandb.test" in api_url:  # W&B's development servers
        return api_url.replace("://api.", "://app.")
    if "://api.wandb." in api_url:
        return api_url.replace("://api.", "://")
    if "://api." in api_url:
        return api_url.replace("://api.", "://app.")
    return api_url
