"""Regular expressions for the SIP grammar, named after the ABNF rules of RFC 3261 section 25.1
(and RFC 3966 for tel:, RFC 5118 for IPv6 references). Each is a pattern string so rules compose.
"""

from __future__ import annotations

import re

# RFC 3261 25.1 basic rules
alphanum = r"[A-Za-z0-9]"
escaped = r"%[0-9A-Fa-f]{2}"
mark = r"[\-_.!~*'()]"
unreserved = r"[A-Za-z0-9\-_.!~*'()]"
token = r"[A-Za-z0-9\-.!%*_+`'~]+"
# word: token characters plus ( ) < > : \ " / [ ] ? { }
word = r"[A-Za-z0-9\-.!%*_+`'~()<>:\\\"/\[\]?{}]+"
callid = rf"{word}(?:@{word})?"
SIP_Version = r"[Ss][Ii][Pp]/[0-9]+\.[0-9]+"
Status_Code = r"[1-9][0-9]{2}"
LWS = r"(?:[ \t]*\r?\n)?[ \t]+"
SWS = rf"(?:{LWS})?"
# quoted-string = DQUOTE *(qdtext / quoted-pair) DQUOTE (section 25.1); qdtext excludes " and \.
quoted_string = r'"(?:[^"\\\r\n]|\\[\x00-\x09\x0b\x0c\x0e-\x7f])*"'

# Host (section 25.1, RFC 5118 for IPv6 references)
toplabel = r"[A-Za-z](?:[A-Za-z0-9\-]*[A-Za-z0-9])?"
domainlabel = r"[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?"
hostname = rf"(?:{domainlabel}\.)*{toplabel}\.?"
IPv4address = r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}"
IPv6address = r"[0-9A-Fa-f]{0,4}:[0-9A-Fa-f:.]*"
IPv6reference = r"\[[0-9A-Fa-f:.]+\]"
host = rf"(?:{hostname}|{IPv4address}|{IPv6reference})"
port = r"[0-9]+"

# userinfo (section 19.1.1, 25.1)
user = rf"(?:{unreserved}|{escaped}|[&=+$,;?/])+"
password = rf"(?:{unreserved}|{escaped}|[&=+$,])*"
paramchar = rf"(?:[\[\]/:&+$]|{unreserved}|{escaped})"
pname = rf"{paramchar}+"
pvalue = rf"{paramchar}+"
hnv_char = rf"(?:[\[\]/?:+$]|{unreserved}|{escaped})"

# RFC 3966 section 3: telephone-subscriber
phonedigit = r"[0-9\-.()]"
phonedigit_hex = r"[0-9A-Fa-f*#\-.()]"
global_number_digits = rf"\+{phonedigit}*[0-9]{phonedigit}*"
local_number_digits = rf"{phonedigit_hex}*[0-9A-Fa-f*#]{phonedigit_hex}*"

TOKEN_RE = re.compile(token)
CALLID_RE = re.compile(callid)
HOST_RE = re.compile(host)
HOSTNAME_RE = re.compile(hostname)
IPV4_RE = re.compile(IPv4address)
USER_RE = re.compile(user)
PASSWORD_RE = re.compile(password)
PNAME_RE = re.compile(pname)
PVALUE_RE = re.compile(pvalue)
HNV_RE = re.compile(rf"{hnv_char}*")
SIP_VERSION_RE = re.compile(SIP_Version)
GLOBAL_NUMBER_RE = re.compile(global_number_digits)
LOCAL_NUMBER_RE = re.compile(local_number_digits)
QUOTED_STRING_RE = re.compile(quoted_string)
SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*")
