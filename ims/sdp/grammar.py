"""Regular expressions for the SDP grammar, named after the ABNF rules of RFC 8866 section 9
and RFC 8839 section 5 (ICE attributes). Each is a pattern string so rules compose; the
compiled `*_RE` objects are matched with `fullmatch`.

SDP is parsed here as text (decoded UTF-8, RFC 8866 section 5), so the byte ranges of the ABNF
become code point ranges: %x80-FF stands for any non-ASCII character.
"""

from __future__ import annotations

import re

# RFC 8866 section 9: generic sub-rules, primitives
POS_DIGIT = r"[1-9]"
integer = rf"{POS_DIGIT}[0-9]*"
token_char = r"[A-Za-z0-9!#$%&'*+\-.^_`{|}~]"
token = rf"{token_char}+"
# byte-string: any byte except NUL, CR, LF. text = byte-string.
byte_string = r"[^\x00\r\n]+"
text = byte_string
# non-ws-string: VCHAR / %x80-FF
non_ws_string = r"[\x21-\x7e\x80-\U0010ffff]+"
# email-safe: any byte except NUL, CR, LF and the quoting characters ( ) < >
email_safe = r"[^\x00\r\n()<>]"

# o= sub-rules
username = non_ws_string
sess_id = r"[0-9]+"
sess_version = r"[0-9]+"
nettype = token
addrtype = token

# p= sub-rules
phone = r"\+?[0-9][ \-0-9]+"
phone_number = rf"(?:{phone} *\({email_safe}+\)|{email_safe}+<{phone}>|{phone})"

# b= sub-rules
bwtype = token
bandwidth = r"[0-9]+"

# t=, r=, z= sub-rules
time = rf"{POS_DIGIT}[0-9]{{9,}}"
start_time = rf"(?:{time}|0)"
stop_time = rf"(?:{time}|0)"
fixed_len_time_unit = r"[dhms]"
repeat_interval = rf"{POS_DIGIT}[0-9]*{fixed_len_time_unit}?"
typed_time = rf"[0-9]+{fixed_len_time_unit}?"

# k= sub-rules (obsolete, RFC 8866 section 5.12; kept so such descriptions still parse)
base64 = r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?"
key_type = rf"(?:prompt|clear:{text}|base64:{base64}|uri:{non_ws_string})"

# a= sub-rules
attribute_name = token
attribute_value = byte_string

# m= sub-rules
media = token
fmt = token
proto = rf"{token}(?:/{token})*"
port = r"[0-9]+"

# addressing
FQDN = r"[A-Za-z0-9\-.]{4,}"
decimal_uchar = r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9][0-9]|[0-9])"
IP4_address = rf"{decimal_uchar}(?:\.{decimal_uchar}){{3}}"
ttl = r"(?:[1-9][0-9]{0,2}|0)"

# RFC 8839 section 5.1 (candidate) and 5.4 (credentials)
ice_char = r"[A-Za-z0-9+/]"
foundation = rf"{ice_char}{{1,32}}"
component_id = r"[0-9]{1,3}"
transport = token
priority = r"[0-9]{1,10}"
candidate_types = token
extension_att_name = token
extension_att_value = r"[\x21-\x7e]*"
ufrag = rf"{ice_char}{{4,256}}"
password = rf"{ice_char}{{22,256}}"
ice_option_tag = rf"{ice_char}+"
pacing_value = r"[0-9]{1,10}"

TOKEN_RE = re.compile(token)
TEXT_RE = re.compile(text)
NON_WS_STRING_RE = re.compile(non_ws_string)
SESS_ID_RE = re.compile(sess_id)
PHONE_NUMBER_RE = re.compile(phone_number)
BANDWIDTH_RE = re.compile(bandwidth)
START_TIME_RE = re.compile(start_time)
REPEAT_INTERVAL_RE = re.compile(repeat_interval)
TYPED_TIME_RE = re.compile(typed_time)
SIGNED_TYPED_TIME_RE = re.compile(rf"-?{typed_time}")
TIME_RE = re.compile(time)
KEY_TYPE_RE = re.compile(key_type)
PROTO_RE = re.compile(proto)
FQDN_RE = re.compile(FQDN)
IP4_ADDRESS_RE = re.compile(IP4_address)
TTL_RE = re.compile(ttl)
INTEGER_RE = re.compile(integer)
DIGITS_RE = re.compile(r"[0-9]+")
FOUNDATION_RE = re.compile(foundation)
COMPONENT_ID_RE = re.compile(component_id)
PRIORITY_RE = re.compile(priority)
EXTENSION_ATT_VALUE_RE = re.compile(extension_att_value)
UFRAG_RE = re.compile(ufrag)
PASSWORD_RE = re.compile(password)
ICE_CHARS_RE = re.compile(rf"{ice_char}+")
ICE_OPTION_TAG_RE = re.compile(ice_option_tag)
PACING_VALUE_RE = re.compile(pacing_value)
