"""Who may write: recording outcomes and deleting batches need a known person.

- With a login configured (an `[auth]` section in `.streamlit/secrets.toml`, Streamlit's own
  `st.login` over OIDC), the signed-in user's e-mail (or name) goes with each outcome; a visitor
  who is not signed in reads but cannot write.
- With no login configured, the dashboard listens on 127.0.0.1 only (`.streamlit/config.toml`,
  the Makefile's `dashboard` target): whoever can open it sits at this machine, and names
  themselves. Started on another address without a login, it refuses every write.

Kept free of Streamlit apart from `current_writer`, so the rule is tested directly.
"""
from __future__ import annotations

import getpass
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

LOOPBACK = ("127.0.0.1", "localhost", "::1")
LOCAL_SUFFIX = " (local, not signed in)"


@dataclass(frozen=True)
class Writer:
    """Who would write, or why nobody may (`who` None)."""

    who: str | None
    reason: str  # in words, shown on the page

    @property
    def allowed(self) -> bool:
        return self.who is not None


def login_configured(secrets: Mapping[str, Any]) -> bool:
    """Whether Streamlit's `st.login` is set up: an `[auth]` section with a redirect URI and a client."""
    auth = secrets.get("auth") if secrets else None
    if not isinstance(auth, Mapping):
        return False
    has_client = "client_id" in auth or any(isinstance(v, Mapping) and "client_id" in v for v in auth.values())
    return bool(auth.get("redirect_uri")) and has_client


def is_loopback(address: str | None) -> bool:
    """Whether the server listens on this machine only (an empty address means every interface)."""
    return bool(address) and str(address).strip("[]") in LOOPBACK


def writer(login: bool, user: Mapping[str, Any] | None, address: str | None, local_name: str = "") -> Writer:
    """The rule: signed-in user where a login is configured; a named local user on loopback;
    else nobody."""
    if login:
        if user and user.get("is_logged_in"):
            who = str(user.get("email") or user.get("name") or "").strip()
            if who:
                return Writer(who, f"signed in as {who}")
        return Writer(None, "Sign in to record outcomes or delete batches (reading needs no sign-in).")
    if not is_loopback(address):
        return Writer(None, f"No login is configured and the dashboard listens on {address or 'every interface'}, "
                            "so recording is off. Configure a login in .streamlit/secrets.toml (see the README), or "
                            "run it on 127.0.0.1 (`make dashboard`).")
    name = local_name.strip() or getpass.getuser()
    return Writer(name + LOCAL_SUFFIX, f"No login is configured: the dashboard listens on {address} only, so only "
                                       "this machine can reach it; outcomes are recorded under the name you give.")


def login_here() -> bool:
    """Whether this Streamlit server has a login configured (its secrets.toml)."""
    import streamlit as st

    try:
        return login_configured(st.secrets.to_dict())
    except Exception:  # noqa: BLE001  (no secrets.toml at all: Streamlit raises its own error type)
        return False


def current_writer(local_name: str = "") -> Writer:
    """`writer` for this Streamlit session."""
    import streamlit as st

    login = login_here()
    user = st.user.to_dict() if login else None
    return writer(login, user, st.get_option("server.address"), local_name)
