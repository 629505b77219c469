"""The demo (`ueconnect demo`): Bill and Dave play over a connection their operators created.

The demo walks TR 22.807 section 4.2.3's flows with the UE API a game developer uses
(ue_ua.client.UeClient, docs/ue-guide.md): both UEs register with their own operator; in the
game lobby (JSON over WebSocket) Bill invites Dave, they agree the rules with Bill's UE as
session server and Dave's UE forwards its UE and MNO identifiers; Bill's UE `connect()`s to
Dave with them (an INVITE with Require: ueconnect and Target-MNO); Alpha locates Beta through
ENUM and RFC 3263; Beta's permission function asks Dave's UE, which allows; each operator opens
its side of the data path and adds it to the SDP; Dave's UE answers; the ICE checks select a
pair and `connect()` returns the Connection. Bill's UE hosts a game of pong (ue_ua/game.py)
over it that Dave's UE joins, with per-datagram RTT; Bill closes the Connection (BYE), every
mapping and relay is released; both UEs close (unregister). Each step prints with its time; a
failed step names the operator element and the SIP response that stopped it. The SIP ladder of
the call prints at the end and is written as HTML. Exit status 0 only when every step behaved.

Two worlds (`world.World`):
- the embedded default (ims/embedded.py; embedded_run.py): DNS, both operators and both UEs on
  loopback in this process, no root. On loopback every candidate reaches every other, so the
  ICE checks would always pick the UEs' own host pair and the operators would be bystanders;
  the UEs ask for transport policy "relay" (only the operators' `typ relay` candidates), which
  is what a symmetric CGN forces, and the path is the operators' relays.
- `--testbed` (root): the same steps in the network-namespace testbed (ims/testbed/world.py;
  testbed_run.py): each UE behind its operator's symmetric CGN, UEs with transport policy "all"
  and the STUN server, operators with [gateway] mode pcp. play: the CGNs map through PCP, the
  path is direct; relay: the CGNs refuse PCP, the operators relay; unassisted: no gateway, no
  PCP, the UEs try alone (host and STUN candidates) and must fail with ConnectivityFailed.

`--scenario` picks the flow (play; deny: Dave's app refuses and Bill gets DeniedByCallee, 603
cause 2 of docs/extension.md section 7; same-mno: Bill -> Carol inside Alpha; relay;
unassisted: --testbed only, exit 2 without). `--json` prints one JSON object with the outcome
(the step lines go to stderr); `--serve` keeps the world running (embedded, or with --testbed
the testbed's) for any SIP client and writes a UE config per subscriber for `ueconnect ue`;
`--play` lets the user play Bill's paddle in the terminal.

The game runs headless by default: 200 ticks at HEADLESS_SPEEDUP times the lobby's tick rate
(the same game, tick for tick, in a fraction of the real time), the host's end in Bill's UE
loop and the guest's in Dave's (in the testbed each UE's loop runs in its own namespace).

The modules, in the order a run meets them: scenarios (the `--scenario` table), world (what the
demo needs of a running world; what both worlds share), embedded_run and testbed_run (the two
worlds), walk (the steps with the UE API), report (timed steps, the `--json` document, a
failure attributed to the element and response that stopped it), lobby (flow 2 in the game
lobby), match (the game across two UEs' loops), terminal (`--play`), holdings (what the
operators still hold; the wait for the release), ladder (the call's SIP ladder), serve
(`--serve`). The command line itself (options, checks, exit codes) is ims/cli/demo.py.
"""
