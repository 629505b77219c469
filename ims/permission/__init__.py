"""The permission function (docs/extension.md sections 5, 6, 7 and 11), sans-IO.

One module per concept:
- `outcomes`: allow/deny (`Decision`), what the caller receives (`Outcome`, section 7);
- `rules`: the callee's standing rule set, parsed and evaluated (section 6);
- `bodies`: the inquiry, answer and withdrawal JSON bodies and their media types (section 5);
- `function`: `PermissionDecider`, rules then cache then inquiries, with `now` as an input;
- `audit`: `DecisionRecord`, what is recorded for every decision (section 11);
- `errors`: the layer's error family.

Nothing here opens a socket or reads a clock; the S-CSCF's asyncio shell drives the decider.
"""
