"""Dialogs and the requests a UA core builds (RFC 3261 sections 8.1.1, 12, 13, 14, 15).

A `Dialog` is a frozen value: every operation that changes dialog state returns the next value
(and the request to send, when there is one). `DialogTable` keys the live dialogs of one UA by
dialog id. Nothing here sends: requests come out with a placeholder Via sent-by that the
transport fills (`with_sent_by`), and a fresh branch from the injected `IdSource`.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from ims.sip.address import Address
from ims.sip.errors import LocalProtocolError, ProtocolError, SipError
from ims.sip.headers import NameAddress, Via, parse_via
from ims.sip.ids import IdSource
from ims.sip.message import Headers, Request, Response, make_response
from ims.sip.uri import SipUri, Uri

# RFC 3261 section 8.1.1.6: a UAC SHOULD start Max-Forwards at 70.
DEFAULT_MAX_FORWARDS = 70

# The Via sent-by of a request the core built; the transport replaces it with its own address
# (section 18.1.1). ".invalid" (RFC 6761) can never resolve, so a leak is harmless and visible.
SENT_BY_PLACEHOLDER = "sent-by.invalid"

# Requests that create a dialog: INVITE (section 12.1) and SUBSCRIBE (RFC 6665 section 4.1.2).
DIALOG_CREATING_METHODS = frozenset({"INVITE", "SUBSCRIBE"})

# Target refresh requests (section 12.2, RFC 3311 UPDATE, RFC 6665 SUBSCRIBE/NOTIFY/REFER):
# they carry a Contact, and it replaces the remote target.
TARGET_REFRESH_METHODS = frozenset({"INVITE", "UPDATE", "SUBSCRIBE", "NOTIFY", "REFER"})

# Section 13.2.2.4: an ACK for 2xx copies these from the INVITE.
_AUTH_HEADERS = ("Authorization", "Proxy-Authorization")

CSEQ_LIMIT = 2**31  # section 8.1.1.5: a CSeq number is less than 2**31


class CallDoesNotExist(ProtocolError):
    """A request with a To tag matches no dialog (section 12.2.2: 481)."""

    status_code = 481


class RequestOutOfOrder(ProtocolError):
    """An in-dialog request whose CSeq is lower than the remote CSeq (section 12.2.2: 500)."""

    status_code = 500


class InviteInProgress(ProtocolError):
    """A second INVITE while our final response to an earlier one is pending (section 14.2: 500
    with a Retry-After between 0 and 10 seconds, carried in `retry_after`)."""

    status_code = 500

    def __init__(self, reason: str, retry_after: int) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class RequestPending(ProtocolError):
    """An INVITE while our own re-INVITE on the dialog is pending (section 14.2: 491)."""

    status_code = 491


class DialogTableFull(SipError):
    """The dialog table reached its configured bound; answer a new INVITE with 503."""


class DialogState(enum.Enum):
    EARLY = "early"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


@dataclass(frozen=True, slots=True)
class DialogId:
    """Call-ID, local tag, remote tag (section 12). A missing remote tag (an RFC 2543 peer) is
    the empty string, the "null" tag of sections 12.1.1 and 12.1.2."""

    call_id: str
    local_tag: str
    remote_tag: str

    @classmethod
    def of_incoming_request(cls, request: Request) -> DialogId | None:
        """The id a UAS looks up for `request`; None when it has no To tag (not in a dialog)."""
        local = request.to.tag
        if local is None:
            return None
        return cls(request.call_id, local, request.from_.tag or "")

    @classmethod
    def of_incoming_response(cls, response: Response) -> DialogId:
        """The id a UAC looks up for `response` to a request it sent (section 12.1.2)."""
        local = response.from_.tag
        if local is None:
            raise ProtocolError("response without a From tag")
        return cls(response.call_id, local, response.to.tag or "")


def _name_addr(value: NameAddress | Uri) -> NameAddress:
    return value if isinstance(value, NameAddress) else NameAddress(value)


def _with_tag(uri: Uri, tag: str) -> str:
    na = NameAddress(uri)
    return str(na.with_param("tag", tag) if tag else na)


def _contact_uri(message: Request | Response) -> Uri | None:
    contacts = message.name_addrs("Contact")
    return contacts[0].uri if contacts else None


def _is_loose(route: NameAddress) -> bool:
    return isinstance(route.uri, SipUri) and route.uri.param("lr") is not None


def place_route_set(
    target: Uri, route_set: Sequence[NameAddress]
) -> tuple[Uri, tuple[NameAddress, ...]]:
    """The Request-URI and Route values for a request to `target` through `route_set`
    (section 12.2.1.1, and 8.1.1.1 for a pre-loaded route set).

    Loose routing (first route has `lr`): Request-URI = target, Route = the route set. Strict
    routing: Request-URI = first route without the parameters a Request-URI may not carry
    (section 19.1.1 table: `method`, and URI headers), Route = the rest, then the target.
    """
    if not route_set:
        return target, ()
    first = route_set[0]
    if _is_loose(first):
        return target, tuple(route_set)
    request_uri = first.uri
    if isinstance(request_uri, SipUri):
        request_uri = replace(request_uri.without_param("method"), headers=())
    return request_uri, (*route_set[1:], NameAddress(target))


def placeholder_via(branch: str) -> Via:
    """The Via a core puts on a request it originates: placeholder sent-by, the branch, and
    rport (RFC 3581 section 3) since a UE sits behind NAT."""
    return Via("UDP", SENT_BY_PLACEHOLDER, None, (("branch", branch), ("rport", None)))


def with_sent_by(request: Request, local: Address) -> Request:
    """Fill the top Via's transport and sent-by from the local address the transport sends from
    (section 18.1.1). Leaves a request alone whose top Via is not the placeholder."""
    value = request.headers.get("Via")
    if value is None:
        return request
    via = parse_via(value)
    if via.host != SENT_BY_PLACEHOLDER:
        return request
    filled = replace(via, transport=local.transport, host=_via_host(local.host), port=local.port)
    headers = request.headers.without_first("Via").prepended("Via", str(filled))
    return request.with_headers(headers)


def _via_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def create_initial_request(
    method: str,
    request_uri: Uri,
    *,
    from_: NameAddress | Uri,
    to: NameAddress | Uri,
    ids: IdSource,
    contact: NameAddress | Uri | None = None,
    route_set: Sequence[NameAddress | Uri] = (),
    call_id: str | None = None,
    cseq: int = 1,
    max_forwards: int = DEFAULT_MAX_FORWARDS,
    extra: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    content_type: str | None = None,
) -> Request:
    """A request outside any dialog (section 8.1.1): Via placeholder with a new branch,
    Max-Forwards, Route (a pre-loaded route set such as a Service-Route, placed per 12.2.1.1),
    To without tag, From with a new tag (unless it has one), Call-ID, CSeq, Contact."""
    if method == "ACK" or method == "CANCEL":
        raise LocalProtocolError(f"{method} is built from the request it refers to, not here")
    if not 0 <= cseq < CSEQ_LIMIT:
        raise LocalProtocolError(f"CSeq number {cseq} out of range (section 8.1.1.5)")
    to_na = _name_addr(to)
    if to_na.tag is not None:
        raise LocalProtocolError("the To of a request outside a dialog has no tag (8.1.1.2)")
    from_na = _name_addr(from_)
    if from_na.tag is None:
        from_na = from_na.with_param("tag", ids.tag())
    if contact is None and method in DIALOG_CREATING_METHODS:
        raise LocalProtocolError(f"{method} needs a Contact (section 8.1.1.8)")
    uri, routes = place_route_set(request_uri, [_name_addr(r) for r in route_set])
    items: list[tuple[str, str]] = [
        ("Via", str(placeholder_via(ids.branch()))),
        ("Max-Forwards", str(max_forwards)),
    ]
    items.extend(("Route", str(r)) for r in routes)
    items += [
        ("To", str(to_na)),
        ("From", str(from_na)),
        ("Call-ID", call_id if call_id is not None else ids.call_id()),
        ("CSeq", f"{cseq} {method}"),
    ]
    if contact is not None:
        items.append(("Contact", str(_name_addr(contact))))
    items.extend(extra)
    return Request(method, uri, Headers.of(*items)).with_body(body, content_type)


@dataclass(frozen=True, slots=True)
class Dialog:
    """The state of one dialog (section 12): id, the two CSeq spaces, the URIs, the remote
    target and route set, the secure flag, and the INVITE transactions in flight (section 14).
    `is_uac` is the role this UA had in the request that created the dialog."""

    id: DialogId
    state: DialogState
    is_uac: bool
    local_uri: Uri
    remote_uri: Uri
    local_target: Uri
    remote_target: Uri
    route_set: tuple[NameAddress, ...] = ()
    local_cseq: int | None = None
    remote_cseq: int | None = None
    secure: bool = False
    invite_out: int | None = None  # CSeq of our INVITE awaiting a final response
    invite_in: int | None = None  # CSeq of the peer's INVITE we have not answered finally

    # --- creation (section 12.1) ---------------------------------------------------------

    @classmethod
    def from_uac(cls, request: Request, response: Response, *, over_tls: bool = False) -> Dialog:
        """The dialog a UAC builds from its request and a 101-199 (with To tag) or 2xx response
        (section 12.1.2): route set = Record-Route reversed, remote target = Contact."""
        if request.method not in DIALOG_CREATING_METHODS:
            raise LocalProtocolError(f"{request.method} does not create a dialog")
        code = response.status_code
        if not 101 <= code < 300:
            raise LocalProtocolError(f"a {code} response does not create a dialog")
        remote_tag = response.to.tag
        if remote_tag is None and code < 200:
            raise LocalProtocolError("a provisional response without To tag creates no dialog")
        local_tag = request.from_.tag
        local_target = _contact_uri(request)
        if local_tag is None or local_target is None:
            raise LocalProtocolError("our dialog-creating request lacks a From tag or Contact")
        if response.call_id != request.call_id or response.from_.tag != local_tag:
            raise LocalProtocolError("the response does not answer this request")
        remote_target = _contact_uri(response)
        if remote_target is None:
            if code >= 200:
                raise ProtocolError("2xx response establishing a dialog without Contact")
            # Many UAs send 18x without Contact; the early dialog then targets the
            # Request-URI until a later response tells better.
            remote_target = request.uri
        pending = request.cseq.number if request.method == "INVITE" and code < 200 else None
        return cls(
            id=DialogId(request.call_id, local_tag, remote_tag or ""),
            state=DialogState.EARLY if code < 200 else DialogState.CONFIRMED,
            is_uac=True,
            local_uri=request.from_.uri,
            remote_uri=request.to.uri,
            local_target=local_target,
            remote_target=remote_target,
            route_set=tuple(reversed(response.name_addrs("Record-Route"))),
            local_cseq=request.cseq.number,
            remote_cseq=None,
            secure=over_tls and _is_sips(request.uri),
            invite_out=pending,
        )

    @classmethod
    def from_uas(cls, request: Request, response: Response, *, over_tls: bool = False) -> Dialog:
        """The dialog a UAS builds from the request and the 101-199/2xx it sends (section
        12.1.1): route set = Record-Route as received, remote target = the request's Contact."""
        if request.method not in DIALOG_CREATING_METHODS:
            raise LocalProtocolError(f"{request.method} does not create a dialog")
        code = response.status_code
        if not 101 <= code < 300:
            raise LocalProtocolError(f"a {code} response does not create a dialog")
        local_tag = response.to.tag
        local_target = _contact_uri(response)
        if local_tag is None or local_target is None:
            raise LocalProtocolError("a dialog-creating response needs a To tag and a Contact")
        remote_target = _contact_uri(request)
        if remote_target is None:
            raise ProtocolError(f"{request.method} without Contact (section 8.1.1.8)")
        pending = request.cseq.number if request.method == "INVITE" and code < 200 else None
        return cls(
            id=DialogId(request.call_id, local_tag, request.from_.tag or ""),
            state=DialogState.EARLY if code < 200 else DialogState.CONFIRMED,
            is_uac=False,
            local_uri=request.to.uri,
            remote_uri=request.from_.uri,
            local_target=local_target,
            remote_target=remote_target,
            route_set=tuple(request.name_addrs("Record-Route")),
            local_cseq=None,
            remote_cseq=request.cseq.number,
            secure=over_tls and _is_sips(request.uri),
            invite_in=pending,
        )

    # --- requests we send (sections 12.2.1, 13.2.2.4, 14.1, 15) ---------------------------

    def create_request(
        self,
        method: str,
        *,
        ids: IdSource,
        extra: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        content_type: str | None = None,
    ) -> tuple[Dialog, Request]:
        """The next in-dialog request (section 12.2.1.1) and the dialog with the local CSeq
        advanced. ACK for 2xx is `create_ack`; CANCEL is built from the INVITE (section 9.1)."""
        if method in ("ACK", "CANCEL"):
            raise LocalProtocolError(f"{method} is built from the request it refers to")
        if self.state is DialogState.TERMINATED:
            raise LocalProtocolError("the dialog is terminated")
        if method == "INVITE":
            if self.state is not DialogState.CONFIRMED:
                raise LocalProtocolError("a re-INVITE needs a confirmed dialog (section 14.1)")
            if self.invite_out is not None or self.invite_in is not None:
                # Section 14.1: no re-INVITE while another INVITE transaction is in progress.
                raise LocalProtocolError("an INVITE transaction is in progress on this dialog")
        if method == "BYE" and self.state is DialogState.EARLY and not self.is_uac:
            raise LocalProtocolError("the callee MUST NOT send BYE on an early dialog (15)")
        cseq = 1 if self.local_cseq is None else self.local_cseq + 1
        if cseq >= CSEQ_LIMIT:
            raise LocalProtocolError("local CSeq space exhausted (section 8.1.1.5)")
        request = self._build(method, cseq, ids, extra, body, content_type)
        nxt = replace(self, local_cseq=cseq)
        if method == "INVITE":
            nxt = replace(nxt, invite_out=cseq)
        return nxt, request

    def create_bye(
        self, *, ids: IdSource, extra: Iterable[tuple[str, str]] = ()
    ) -> tuple[Dialog, Request]:
        """BYE (section 15.1.1). The session ends as soon as it is sent; the dialog ends with
        its final response (`receive_response`)."""
        return self.create_request("BYE", ids=ids, extra=extra)

    def create_ack(
        self,
        invite: Request,
        *,
        ids: IdSource,
        extra: Iterable[tuple[str, str]] = (),
        body: bytes = b"",
        content_type: str | None = None,
    ) -> Request:
        """The ACK for a 2xx to `invite` (section 13.2.2.4): built like any in-dialog request,
        but with the INVITE's CSeq number, method ACK, and its credentials copied. A new
        branch: the ACK for 2xx is a transaction of its own (section 17.1.1.3)."""
        if invite.method != "INVITE":
            raise LocalProtocolError(f"an ACK acknowledges an INVITE, not {invite.method}")
        if invite.call_id != self.id.call_id or (invite.from_.tag or "") != self.id.local_tag:
            raise LocalProtocolError("the INVITE does not belong to this dialog")
        if self.state is not DialogState.CONFIRMED:
            raise LocalProtocolError("an ACK for 2xx needs a confirmed dialog")
        auth = [(n, v) for n, v in invite.headers if n in _AUTH_HEADERS]
        return self._build(
            "ACK", invite.cseq.number, ids, [*auth, *extra], body, content_type, contact=False
        )

    def _build(
        self,
        method: str,
        cseq: int,
        ids: IdSource,
        extra: Iterable[tuple[str, str]],
        body: bytes,
        content_type: str | None,
        *,
        contact: bool = True,
    ) -> Request:
        uri, routes = place_route_set(self.remote_target, self.route_set)
        items: list[tuple[str, str]] = [
            ("Via", str(placeholder_via(ids.branch()))),
            ("Max-Forwards", str(DEFAULT_MAX_FORWARDS)),
        ]
        items.extend(("Route", str(r)) for r in routes)
        items += [
            ("To", _with_tag(self.remote_uri, self.id.remote_tag)),
            ("From", _with_tag(self.local_uri, self.id.local_tag)),
            ("Call-ID", self.id.call_id),
            ("CSeq", f"{cseq} {method}"),
        ]
        if contact and method in TARGET_REFRESH_METHODS:
            items.append(("Contact", str(NameAddress(self.local_target))))
        items.extend(extra)
        return Request(method, uri, Headers.of(*items)).with_body(body, content_type)

    # --- responses to what we sent (sections 12.2.1.2, 13.2.2.4, 12.3) ---------------------

    def receive_response(self, request: Request, response: Response) -> Dialog:
        """The dialog after `response` to `request` (one this UA sent in, or to create, it)."""
        if response.call_id != self.id.call_id or (response.from_.tag or "") != self.id.local_tag:
            raise LocalProtocolError("the response belongs to another dialog")
        code = response.status_code
        if code == 100:
            return self
        to_tag = response.to.tag or ""
        if to_tag != self.id.remote_tag:
            raise LocalProtocolError("the response belongs to another dialog (To tag)")
        nxt = self
        final = code >= 200
        if request.method == "INVITE" and final and self.invite_out == request.cseq.number:
            nxt = replace(nxt, invite_out=None)
        if 200 <= code < 300:
            if nxt.state is DialogState.EARLY and request.method in DIALOG_CREATING_METHODS:
                # Section 13.2.2.4: the 2xx confirms the early dialog and the route set is
                # recomputed from it.
                nxt = replace(
                    nxt,
                    state=DialogState.CONFIRMED,
                    route_set=tuple(reversed(response.name_addrs("Record-Route"))),
                )
            if request.method in TARGET_REFRESH_METHODS:
                target = _contact_uri(response)
                if target is not None:  # section 12.2.1.2: the 2xx's Contact replaces it
                    nxt = replace(nxt, remote_target=target)
        elif code < 200:
            target = _contact_uri(response)
            if nxt.state is DialogState.EARLY and target is not None:
                nxt = replace(nxt, remote_target=target)
        if request.method == "BYE" and final:
            return replace(nxt, state=DialogState.TERMINATED)
        if code in (408, 481):
            # Section 12.2.1.2: the peer has lost the dialog, or cannot be reached.
            return replace(nxt, state=DialogState.TERMINATED)
        if (
            code >= 300
            and nxt.state is DialogState.EARLY
            and request.method in DIALOG_CREATING_METHODS
        ):
            # Section 12.3: a non-2xx final answer ends the early dialogs of the request.
            return replace(nxt, state=DialogState.TERMINATED)
        return nxt

    def request_failed(self, request: Request) -> Dialog:
        """The client transaction of `request` timed out or could not be sent: as a 408
        (sections 8.1.3.1, 12.2.1.2), the dialog terminates."""
        return replace(
            self,
            state=DialogState.TERMINATED,
            invite_out=None if request.method == "INVITE" else self.invite_out,
        )

    # --- requests from the peer (section 12.2.2, 14.2) -------------------------------------

    def receive_request(self, request: Request, *, ids: IdSource) -> Dialog:
        """The dialog after an in-dialog `request`, or a ProtocolError saying how to reject it:
        RequestOutOfOrder (500, section 12.2.2), RequestPending (491) or InviteInProgress (500
        with Retry-After) for an INVITE that crosses another (section 14.2)."""
        if request.call_id != self.id.call_id or request.to.tag != self.id.local_tag:
            raise LocalProtocolError("the request belongs to another dialog")
        if (request.from_.tag or "") != self.id.remote_tag:
            raise LocalProtocolError("the request belongs to another dialog (From tag)")
        if self.state is DialogState.TERMINATED:
            raise CallDoesNotExist("the dialog is terminated")
        method = request.method
        if method in ("ACK", "CANCEL"):
            # ACK for 2xx carries the INVITE's CSeq; CANCEL is matched to its transaction.
            return self
        number = request.cseq.number
        if self.remote_cseq is not None and number < self.remote_cseq:
            raise RequestOutOfOrder(
                f"CSeq {number} is lower than the dialog's remote CSeq {self.remote_cseq}"
            )
        if method == "INVITE":
            if self.invite_in is not None:
                retry = ids.random(1)[0] % 11  # section 14.2: random, 0 to 10 seconds
                raise InviteInProgress("an earlier INVITE is still being answered", retry)
            if self.invite_out is not None:
                raise RequestPending("our own re-INVITE on this dialog is pending")
        nxt = replace(self, remote_cseq=number)
        if method == "INVITE":
            nxt = replace(nxt, invite_in=number)
        if method in TARGET_REFRESH_METHODS:
            target = _contact_uri(request)
            if target is not None:  # section 12.2.2: the Contact replaces the remote target
                nxt = replace(nxt, remote_target=target)
        return nxt

    def send_response(self, request: Request, response: Response) -> Dialog:
        """The dialog after we answer `request` (the creating INVITE or an in-dialog one)."""
        code = response.status_code
        if code < 200 or request.method not in ("INVITE", "BYE"):
            return self
        nxt = self
        if request.method == "INVITE" and self.invite_in == request.cseq.number:
            nxt = replace(nxt, invite_in=None)
        if request.method == "BYE":
            # Section 15.1.2: the UAS ends the dialog when it answers BYE with 2xx.
            return replace(nxt, state=DialogState.TERMINATED) if code < 300 else nxt
        if nxt.state is DialogState.EARLY:
            state = DialogState.CONFIRMED if code < 300 else DialogState.TERMINATED
            nxt = replace(nxt, state=state)
        return nxt


def _is_sips(uri: Uri) -> bool:
    return isinstance(uri, SipUri) and uri.secure


def reject(request: Request, error: ProtocolError, *, to_tag: str | None = None) -> Response:
    """The response a UAS sends for a request the dialog layer refused with `error`."""
    extra: list[tuple[str, str]] = []
    if isinstance(error, InviteInProgress):
        extra.append(("Retry-After", str(error.retry_after)))
    return make_response(request, error.status_code, to_tag=to_tag, extra=extra)


class DialogTable:
    """The live dialogs of one UA, keyed by dialog id; bounded, terminated dialogs dropped."""

    def __init__(self, max_dialogs: int = 100_000) -> None:
        if max_dialogs < 1:
            raise ValueError("max_dialogs must be at least 1")
        self._max = max_dialogs
        self._dialogs: dict[DialogId, Dialog] = {}

    def __len__(self) -> int:
        return len(self._dialogs)

    def __contains__(self, dialog_id: object) -> bool:
        return dialog_id in self._dialogs

    def get(self, dialog_id: DialogId) -> Dialog | None:
        return self._dialogs.get(dialog_id)

    def put(self, dialog: Dialog) -> None:
        """Store `dialog` (a new one or the next value of one); a terminated one is removed."""
        if dialog.state is DialogState.TERMINATED:
            self._dialogs.pop(dialog.id, None)
            return
        if dialog.id not in self._dialogs and len(self._dialogs) >= self._max:
            raise DialogTableFull(f"{self._max} dialogs already live")
        self._dialogs[dialog.id] = dialog

    def remove(self, dialog_id: DialogId) -> Dialog | None:
        return self._dialogs.pop(dialog_id, None)

    def for_request(self, request: Request) -> Dialog | None:
        """The dialog of an incoming request; None when it has no To tag (outside any dialog).
        A To tag that matches nothing raises CallDoesNotExist (section 12.2.2: 481)."""
        dialog_id = DialogId.of_incoming_request(request)
        if dialog_id is None:
            return None
        dialog = self._dialogs.get(dialog_id)
        if dialog is None:
            raise CallDoesNotExist("no dialog matches the request's tags and Call-ID")
        return dialog

    def for_response(self, response: Response) -> Dialog | None:
        return self._dialogs.get(DialogId.of_incoming_response(response))

    def dialogs_of(self, call_id: str, local_tag: str) -> list[Dialog]:
        """All dialogs one request created (a forked INVITE creates one per remote tag)."""
        return [
            d
            for d in self._dialogs.values()
            if d.id.call_id == call_id and d.id.local_tag == local_tag
        ]
