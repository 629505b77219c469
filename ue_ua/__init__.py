"""ueconnect, the UE side: the user agent, the connection a game uses, permission rules."""
