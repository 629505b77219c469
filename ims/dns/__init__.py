"""DNS interconnect: how operators find each other (ENUM, RFC 3263) and the embedded server.

One module per concept: `errors` (the family), `enum` (RFC 3402/6116 substitution, pure),
`plmn` (TS 23.003 home domains), `cache` (TTL cache, time passed in), `resolution` (the
sans-IO RFC 3263 procedure), `locator` (the asyncio driver), `zones` (master files),
`authority` (pure query -> response), `server` (asyncio UDP+TCP adapter), `worlds` (the demo
address plan the zone files are generated from).
"""
