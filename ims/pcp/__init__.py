"""PCP (RFC 6887): the codec, the client the connectivity gateway uses to open peer-scoped
mappings on its CGN, and the CGN-side server that writes them as nftables rules.

Modules: constants (numbers), errors (the family), codec (wire format), client / server
(sans-IO cores), aioclient / aioserver (asyncio drivers), nft (the data plane).
"""
