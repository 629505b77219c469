"""The UE side of the ueconnect extension on top of our SIP user agent.

`UeAgent` wraps a started `UserAgent`:
- `register(...)` registers with `Supported: ueconnect` (docs/extension.md section 3), so that
  the operator sends this binding permission inquiries;
- `publish_rules()` sends the `RuleBook` in a PUBLISH, `Event: ueconnect-rules` (section 6.3);
- inquiry MESSAGEs from the UE's own operator (section 5.2: over its registered flow from its
  P-CSCF, asserting an identity of its home domain) are answered 202 at once, then decided by
  the rule book or the application's `ask` callback, and the answer MESSAGE goes to the
  inquiry's `reply_to` through the P-CSCF (section 5.3). Withdrawals stop the asking.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ims.extension import OPTION_TAG
from ims.permission.bodies import (
    ANSWER_TYPE,
    INQUIRY_TYPE,
    RULES_EVENT,
    RULES_TYPE,
    Inquiry,
    Withdrawal,
    parse_inquiry_body,
)
from ims.permission.errors import InvalidBody
from ims.permission.outcomes import Decision
from ims.sip.address import Address
from ims.sip.errors import ParseError
from ims.sip.message import Request, Response, make_response
from ims.sip.registration import Registered
from ims.sip.uri import SipUri, parse_uri
from ims.sip.useragent import UserAgent
from ue_ua.permissions import (
    Answered,
    AsyncInquiryAnswerer,
    InquiryAnswerer,
    RuleBook,
    trusted_inquirer,
)

__all__ = ["RULES_EVENT", "SentAnswer", "UeAgent"]

logger = logging.getLogger(__name__)

AskCallback = Callable[[Inquiry], Awaitable[Decision | str | None]]


async def _silent(inquiry: Inquiry) -> None:
    return None  # no application: silence, which the operator takes as a refusal


@dataclass(frozen=True)
class SentAnswer:
    """An answer this UE sent (section 5.3) and the operator's final response to it."""

    answered: Answered
    response: Response


class UeAgent:
    """A ueconnect UE: `ua` (started) whose operator has home domain `home_domain`.

    `rulebook` answers inquiries it can decide; `ask(inquiry)` is the application, asked for
    the others (a decision, or None for no answer). `inquiries` receives every inquiry that
    was accepted, `withdrawn` the identifiers withdrawn, `answers` what was sent.
    """

    def __init__(
        self,
        ua: UserAgent,
        *,
        home_domain: str,
        rulebook: RuleBook | None = None,
        ask: AskCallback | None = None,
        clock: Callable[[], float] = time.time,
        margin: float = 0.2,
    ) -> None:
        self.ua = ua
        self.home_domain = home_domain.lower()
        self.rulebook = rulebook if rulebook is not None else RuleBook()
        self.answerer = AsyncInquiryAnswerer(
            InquiryAnswerer(self.rulebook, margin=margin), ask or _silent, clock)
        self.inquiries: asyncio.Queue[Inquiry] = asyncio.Queue()
        self.withdrawn: asyncio.Queue[str] = asyncio.Queue()
        self.answers: asyncio.Queue[SentAnswer] = asyncio.Queue()
        self.etag: str | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        ua.on_request = self._on_request
        if "MESSAGE" not in ua.allow:
            ua.allow = (*ua.allow, "MESSAGE")

    async def register(self, registrar: SipUri, *, username: str, password: str,
                       expires: int = 600) -> Registered:
        """Register with `Supported: ueconnect` (section 3)."""
        return await self.ua.register(registrar, username=username, password=password,
                                      expires=expires, extra=[("Supported", OPTION_TAG)])

    async def publish_rules(self, *, expires: int = 86_400) -> Response:
        """Send the whole rule book (section 6.3); `expires=0` removes it at the operator.
        Keeps the SIP-ETag of a 200 for the next PUBLISH (RFC 3903 section 4.4)."""
        extra = [("Event", RULES_EVENT), ("Expires", str(expires))]
        if self.etag is not None:
            extra.append(("SIP-If-Match", self.etag))
        body = b"" if expires == 0 else self.rulebook.to_json()
        response = await self.ua.send_request(
            "PUBLISH", self.ua.aor, extra=extra, body=body,
            content_type=RULES_TYPE if body else None)
        if 200 <= response.status_code < 300:
            self.etag = None if expires == 0 else response.headers.get("SIP-ETag")
        return response

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    # -- inquiries (section 5.2) ------------------------------------------------------------

    def _on_request(self, request: Request, source: Address) -> Response:
        if request.method != "MESSAGE":
            return make_response(request, 405, extra=[("Allow", ", ".join(self.ua.allow))])
        proxy = self.ua.outbound_proxy
        if proxy is not None and (source.host, source.port) != (proxy.host, proxy.port):
            return make_response(request, 403, "Forbidden (not over my registered flow)")
        if not trusted_inquirer(request.headers.get("P-Asserted-Identity"), self.home_domain):
            return make_response(request, 403, "Forbidden (not asserted by my operator)")
        content_type = (request.headers.get("Content-Type") or "").split(";")[0].strip()
        if content_type.lower() != INQUIRY_TYPE:
            return make_response(request, 415, None, extra=[("Accept", INQUIRY_TYPE)])
        try:
            parsed = parse_inquiry_body(request.body)
        except InvalidBody as exc:
            return make_response(request, 400, exc.reason_phrase)
        if isinstance(parsed, Withdrawal):
            self.withdrawn.put_nowait(parsed.inquiry)
        else:
            self.inquiries.put_nowait(parsed)
        self._spawn(self._handle(request.body))
        # Section 5.2: 202 acknowledges receipt; the decision comes in an answer MESSAGE.
        return make_response(request, 202, "Accepted")

    async def _handle(self, body: bytes) -> None:
        answered = await self.answerer.handle(body)
        if answered is None:
            return
        try:
            target = parse_uri(answered.reply_to)
        except ParseError:
            logger.warning("inquiry %s: reply_to %r unusable", answered.inquiry.inquiry,
                           answered.reply_to)
            return
        response = await self.ua.send_request("MESSAGE", target, body=answered.body,
                                              content_type=ANSWER_TYPE)
        logger.info("answer to %s (%s): %d %s", answered.inquiry.inquiry,
                    answered.answer.decision, response.status_code, response.reason)
        self.answers.put_nowait(SentAnswer(answered, response))

    def _spawn(self, work: Awaitable[None]) -> None:
        async def guarded() -> None:
            try:
                await work
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("answering an inquiry failed")

        task = asyncio.get_running_loop().create_task(guarded())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
