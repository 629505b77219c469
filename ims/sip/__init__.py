"""A strict sans-IO SIP core (RFC 3261): messages, URIs, transactions, dialogs, proxy core.

Nothing in this package opens a socket or reads a clock; `ims.sip.transport` is the thin
asyncio shell around it.
"""
