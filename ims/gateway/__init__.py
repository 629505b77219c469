"""The connectivity gateway: opens this operator's side of the data path.

Modules: errors (the family), relay (the sans-IO relay allocation table, IMS-AGW/TrGW style),
aiorelay (its asyncio driver: one UDP socket per relay port).
"""
