"""ueconnect, the operator side: SIP core, network roles, DNS interconnect, gateway."""
