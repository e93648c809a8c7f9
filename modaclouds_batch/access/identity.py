"""The caller of a request, as the domain sees it."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import Forbidden, InvalidRequest

ROLES = ("user", "admin")
USER_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


@dataclass(frozen=True)
class Actor:
    user: str
    role: str = "user"

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def may_see(self, owner: str) -> bool:
        return self.is_admin or owner == self.user

    def require_admin(self, what: str) -> None:
        if not self.is_admin:
            raise Forbidden(f"{what} is for admins; ask an admin, or use an admin token")


# Auth turned off (a single-user laptop): one user who may do everything.
LOCAL_ACTOR = Actor("anonymous", "admin")


def check_user_name(name: str) -> str:
    """User names also name HTCondor accounting groups, so they are kept simple."""
    if not isinstance(name, str) or not USER_NAME_RE.match(name):
        raise InvalidRequest(
            "user names are 1-32 characters: a lower-case letter, then letters, digits, '-' or '_'",
            field="owner",
        )
    return name
