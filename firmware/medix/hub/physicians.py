"""Referring physicians' accounts at the hub, their sign-in and their sessions.

An account is a login (what the physician types), the physician's name as nodes send it in
`StudyRegistration.referring_physician` (the inbox shows the studies whose `physician_key`
matches it) and a password kept only as an scrypt hash. The admin makes accounts
(`/admin/physicians`); there is no self-service sign-up.

A session is a random token (256 bits) in a cookie; the hub keeps only its SHA-256, so a copy
of the database opens no session. It ends on sign-out (the row is deleted: the old cookie
is worth nothing afterwards), when the password changes or the account goes, after
`session_idle_s` without a request and `session_max_s` after sign-in.

Forms carry a CSRF token: an HMAC, under a key only the hub holds, of a nonce in a cookie
(the sign-in form, before there is a session) or of the session (the sign-out form).

Wrong passwords are counted per address and per login (medix.hub.throttle); while either
bucket is empty the password is not even checked.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from medix.clock import Clock
from medix.hub import schemas
from medix.hub.errors import HubError
from medix.hub.store import HubStore, PhysicianRow, SessionRow
from medix.hub.throttle import Throttle, retry_after
from medix.passwords import SCRYPT_N, hash_secret, verify_secret

# scrypt cost as afra_web uses it: 16 MiB and about 0.05 s a hash on a laptop. Memory-hard,
# so a stolen database is slow to attack on GPUs; standard library, nothing to build.
SESSION_TOKEN_BYTES = 32
FORM_NONCE_BYTES = 16
# A session's last use is written at most this often (each write is an fsync).
SESSION_TOUCH_S = 60.0
# The most sessions one login keeps (a phone, a desktop, ...); older ones end.
SESSIONS_PER_LOGIN = 10
LOGIN_PATTERN = re.compile(r"[a-z0-9][a-z0-9._@-]{0,63}")


def hash_password(password: str, *, n: int = SCRYPT_N) -> str:
    """`scrypt$N$r$p$salt$digest`, the form afra_web keeps its secrets in (medix.passwords)."""
    return hash_secret(password, n=n)


verify_password = verify_secret


def physician_key(name: str) -> str:
    """How the inbox matches a referring physician: the PN text as given, case-insensitive."""
    return name.strip().casefold()


def normalise_login(text: str) -> str:
    return text.strip().lower()


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


@dataclass(frozen=True)
class SessionSettings:
    idle_s: float = 1800.0  # half an hour without a request
    max_s: float = 12 * 3600.0  # a working day, however busy


class Physicians:
    """Accounts and sessions over the hub's store; thread-safe as the store is."""

    def __init__(
        self,
        store: HubStore,
        clock: Clock,
        throttle: Throttle,
        form_key: bytes,
        settings: SessionSettings | None = None,
        *,
        scrypt_n: int = SCRYPT_N,
    ) -> None:
        self.store = store
        self.clock = clock
        self.throttle = throttle
        self.settings = settings or SessionSettings()
        self._form_key = form_key
        self._scrypt_n = scrypt_n

    @functools.cached_property
    def _decoy(self) -> str:
        # Checked when the login does not exist, so that a wrong login costs the same time
        # as a wrong password and logins cannot be found by timing. Made when first needed:
        # a hub that never sees a wrong login never pays for it.
        return hash_password(secrets.token_urlsafe(16), n=self._scrypt_n)

    # -- accounts (admin) --------------------------------------------------------------------

    def add(self, order: schemas.PhysicianOrder) -> schemas.PhysicianInfo:
        login = normalise_login(order.login)
        _check_login(login)
        name = order.name.strip()
        _check_password(order.password, login)
        if not physician_key(name):
            raise HubError(422, "Invalid PhysicianOrder", "name: the physician's name is empty")
        password_hash = hash_password(order.password, n=self._scrypt_n)
        if not self.store.add_physician(login, name, password_hash, self.clock.time()):
            raise HubError(409, "Login taken", f"{login} already has an account")
        return self.info(login)

    def info(self, login: str) -> schemas.PhysicianInfo:
        row = self.store.physician(normalise_login(login))
        if row is None:
            raise HubError(404, "No such physician", login)
        return _info(row)

    def accounts(self) -> schemas.PhysicianList:
        return schemas.PhysicianList(physicians=tuple(_info(r) for r in self.store.physicians()))

    def set_password(self, login: str, password: str) -> schemas.PhysicianInfo:
        """A new password; the account's sessions end."""
        login = normalise_login(login)
        _check_password(password, login)
        password_hash = hash_password(password, n=self._scrypt_n)
        if not self.store.set_physician_password(login, password_hash, self.clock.time()):
            raise HubError(404, "No such physician", login)
        return self.info(login)

    def remove(self, login: str) -> None:
        if not self.store.remove_physician(normalise_login(login)):
            raise HubError(404, "No such physician", login)

    # -- sign-in and sessions ----------------------------------------------------------------

    def sign_in(self, login_text: str, password: str, client: str) -> str:
        """A new session's token, for the right login and password.

        429 while the address or the login has no wrong tries left (the password is then not
        checked at all); 403 for a wrong login or password, which one is not said (a form
        has no WWW-Authenticate challenge to go with a 401)."""
        login = normalise_login(login_text)
        if not LOGIN_PATTERN.fullmatch(login):
            login = login[:64]  # no account has it; the bucket key stays small
            row = None
        else:
            row = self.store.physician(login)
        wait = max(self.throttle.may_guess(client), self.throttle.may_try_account(login))
        if wait > 0:
            raise HubError(
                429,
                "Too many wrong sign-ins",
                f"wait {max(1, round(wait / 60))} minutes and try again",
                {"Retry-After": retry_after(wait)},
            )
        ok = False
        # A password no account could have is wrong without costing a hash.
        if len(password) <= schemas.MAX_PASSWORD_CHARS:
            ok = verify_password(password, row.password_hash if row else self._decoy)
        if row is None or not ok:
            self.throttle.wrong_password(client, login)
            raise HubError(403, "Sign-in refused", "The login or the password is wrong.")
        token = secrets.token_urlsafe(SESSION_TOKEN_BYTES)
        now = self.clock.time()
        self.store.add_session(
            token_hash(token),
            row.login,
            now,
            idle_before=now - self.settings.idle_s,
            started_before=now - self.settings.max_s,
            keep=SESSIONS_PER_LOGIN,
        )
        return token

    def session(self, token: str | None) -> SessionRow | None:
        """The live session behind a cookie's token, or None (an ended one is deleted)."""
        if not token:
            return None
        key = token_hash(token)
        row = self.store.session(key)
        if row is None:
            return None
        now = self.clock.time()
        if now - row.seen_at > self.settings.idle_s or now - row.created_at > self.settings.max_s:
            self.store.end_session(key)
            return None
        if now - row.seen_at >= SESSION_TOUCH_S:
            self.store.touch_session(key, now)
        return row

    def sign_out(self, token: str) -> None:
        self.store.end_session(token_hash(token))

    # -- CSRF --------------------------------------------------------------------------------

    @staticmethod
    def new_form_nonce() -> str:
        return secrets.token_urlsafe(FORM_NONCE_BYTES)

    def form_token(self, purpose: str, value: str) -> str:
        """The CSRF token a form carries: HMAC of what the cookie holds, for one purpose."""
        message = f"{purpose}\0{value}".encode("utf-8", "replace")
        return hmac.new(self._form_key, message, hashlib.sha256).hexdigest()

    def form_token_ok(self, purpose: str, value: str | None, given: str | None) -> bool:
        if not value or not given:
            return False
        expected = self.form_token(purpose, value).encode()
        return hmac.compare_digest(expected, given.encode("utf-8", "replace"))


def _check_login(login: str) -> None:
    if not LOGIN_PATTERN.fullmatch(login):
        raise HubError(
            422,
            "Invalid PhysicianOrder",
            "login: 1-64 of a-z, 0-9 and . _ @ -, starting with a letter or digit",
        )


def _check_password(password: str, login: str) -> None:
    if len(password) < schemas.MIN_PASSWORD_CHARS or len(password) > schemas.MAX_PASSWORD_CHARS:
        raise HubError(
            422,
            "Weak password",
            f"password: {schemas.MIN_PASSWORD_CHARS}-{schemas.MAX_PASSWORD_CHARS} characters",
        )
    if password.strip().lower() == login:
        raise HubError(422, "Weak password", "password: not the login")


def _info(row: PhysicianRow) -> schemas.PhysicianInfo:
    return schemas.PhysicianInfo(
        login=row.login,
        name=row.name,
        physician_key=physician_key(row.name),
        created_at=row.created_at,
        password_set_at=row.password_set_at,
    )
