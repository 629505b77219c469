"""Interop tests: real third-party SIP peers (sipp, pjsua2) on loopback."""
