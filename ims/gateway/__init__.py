"""The connectivity gateway: opens this operator's side of the data path.

Modules: errors (the family), relay (the sans-IO relay allocation table, IMS-AGW/TrGW style,
with latching), aiorelay (its asyncio driver: one UDP socket per relay port), service (the
relaying gateway behind the S-CSCF's seam, [gateway] mode relay), pcp_gateway (mappings on the
CGN through PCP, the relay as fallback, [gateway] mode pcp).
"""
