"""Who is calling: the principal of the current call, and the ownership rules."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass

from helix.common import errors

ADMIN_SCOPE = "admin"


@dataclass(frozen=True, slots=True)
class Principal:
    """A verified caller: the token's subject and the scopes it grants."""

    subject: str
    scopes: frozenset[str]
    expires_at: float = float("inf")

    def has_scope(self, scope: str) -> bool:
        """True if the principal holds `scope`, or `admin`, which holds every scope."""
        return scope in self.scopes or ADMIN_SCOPE in self.scopes

    @property
    def is_admin(self) -> bool:
        return ADMIN_SCOPE in self.scopes


ANONYMOUS = Principal("anonymous", frozenset())

_current: contextvars.ContextVar[Principal] = contextvars.ContextVar(
    "helix_principal_obj", default=ANONYMOUS
)


def current_principal() -> Principal:
    """The principal of the call being served (ANONYMOUS outside an authenticated call)."""
    return _current.get()


def set_current_principal(principal: Principal) -> None:
    """Set by the auth stage for the rest of the call."""
    _current.set(principal)


def may_act_on(principal: Principal, owner: str) -> bool:
    """Whether `principal` may change or see a resource owned by `owner`."""
    return principal.is_admin or principal.subject == owner


def require_owner(principal: Principal, owner: str | None, name: str) -> None:
    """Permission before existence: raise unless `principal` may act on `name`.

    `owner` is None when the resource does not exist. A caller who is neither the owner nor
    an admin gets the same NOT_FOUND whether or not the resource exists, so nobody learns
    of another principal's resources; an admin asking for a missing one gets NOT_FOUND too.
    """
    if owner is None or not may_act_on(principal, owner):
        raise errors.NotFound(f"{name} not found", metadata={"name": name})
