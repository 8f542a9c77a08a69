"""Regular expressions for the SIP grammar, built from the ABNF of RFC 3261 section 25.

Each rule is quoted beside the regex that implements it, so the two can be checked by eye
(the shape of h11's ``_abnf.py``). The regexes work on ``str``: the message parser decodes the
wire bytes as UTF-8 with ``surrogateescape``, so ASCII is ASCII, well-formed UTF-8 becomes code
points above U+007F and stray bytes become lone surrogates; both match ``UTF8_NONASCII`` below,
which is more liberal than the RFC (it does not check UTF-8 shapes) and is documented as such.

Header field values are *unfolded* before any of these regexes see them (``CRLF 1*WSP`` becomes
one SP, RFC 3261 s.7.3.1), so ``LWS`` here is plain ``1*WSP``.

Only the building blocks are strings; the compiled patterns the parsers use end in ``_RE``.
"""

from __future__ import annotations

import re

__all__ = [
    "CALL_ID_RE",
    "CSEQ_RE",
    "GENERIC_PARAM_RE",
    "HEADER_NAME_RE",
    "HOSTPORT_RE",
    "HOST_RE",
    "METHOD_RE",
    "NAME_ADDR_RE",
    "QUOTED_STRING_RE",
    "REQUEST_URI_SIP_RE",
    "SIP_URI_RE",
    "SIP_VERSION_RE",
    "STATUS_CODE_RE",
    "TOKEN_RE",
    "URI_SCHEME_RE",
    "VIA_RE",
]

# WSP = SP / HTAB                          (RFC 5234)
WSP = r"[ \t]"
# LWS  =  [*WSP CRLF] 1*WSP ; linear whitespace   (values are unfolded first: 1*WSP)
LWS = rf"{WSP}+"
# SWS  =  [LWS] ; sep whitespace
SWS = rf"{WSP}*"
# HCOLON  =  *( SP / HTAB ) ":" SWS
HCOLON = rf"{WSP}*:{SWS}"

# alphanum  =  ALPHA / DIGIT
ALPHANUM = r"A-Za-z0-9"
# mark        =  "-" / "_" / "." / "!" / "~" / "*" / "'" / "(" / ")"
MARK = r"\-_.!~*'()"
# unreserved  =  alphanum / mark
UNRESERVED = ALPHANUM + MARK
# escaped     =  "%" HEXDIG HEXDIG
ESCAPED = r"%[0-9A-Fa-f]{2}"

# token       =  1*(alphanum / "-" / "." / "!" / "%" / "*"
#                   / "_" / "+" / "`" / "'" / "~" )
TOKEN_CHARS = ALPHANUM + r"\-.!%*_+`'~"
TOKEN = rf"[{TOKEN_CHARS}]+"
# word        =  1*(alphanum / "-" / "." / "!" / "%" / "*" /
#                   "_" / "+" / "`" / "'" / "~" /
#                   "(" / ")" / "<" / ">" /
#                   ":" / "\" / DQUOTE /
#                   "/" / "[" / "]" / "?" /
#                   "{" / "}" )
WORD = rf"[{TOKEN_CHARS}()<>:\\\"/\[\]?{{}}]+"

# UTF8-NONASCII   =  %xC0-DF 1UTF8-CONT / %xE0-EF 2UTF8-CONT / ...   (any non-ASCII code point here)
UTF8_NONASCII = r"[^\x00-\x7f]"
# quoted-pair  =  "\" (%x00-09 / %x0B-0C / %x0E-7F)
QUOTED_PAIR = r"\\[\x00-\x09\x0b\x0c\x0e-\x7f]"
# qdtext         =  LWS / %x21 / %x23-5B / %x5D-7E / UTF8-NONASCII
# (one character class: WSP, the printable ASCII except DQUOTE and backslash, and non-ASCII)
QDTEXT = r"[^\"\\\x00-\x08\x0a-\x1f\x7f]"
# quoted-string  =  SWS DQUOTE *(qdtext / quoted-pair ) DQUOTE   (possessive: no backtracking)
QUOTED_STRING = rf'"(?:{QDTEXT}+|{QUOTED_PAIR})*+"'

# Method            =  INVITEm / ACKm / OPTIONSm / BYEm / CANCELm / REGISTERm / extension-method
# extension-method  =  token
METHOD = TOKEN
# SIP-Version    =  "SIP" "/" 1*DIGIT "." 1*DIGIT
SIP_VERSION = r"[Ss][Ii][Pp]/[0-9]+\.[0-9]+"
# Status-Code     =  ... / extension-code ;  extension-code  =  3DIGIT
STATUS_CODE = r"[1-6][0-9]{2}"

# hex4           =  1*4HEXDIG
HEX4 = r"[0-9A-Fa-f]{1,4}"
# IPv4address    =  1*3DIGIT "." 1*3DIGIT "." 1*3DIGIT "." 1*3DIGIT
IPV4ADDRESS = r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}"
# hexseq         =  hex4 *( ":" hex4)
HEXSEQ = rf"{HEX4}(?::{HEX4})*"
# hexpart        =  hexseq / hexseq "::" [ hexseq ] / "::" [ hexseq ]
HEXPART = rf"(?:{HEXSEQ}::(?:{HEXSEQ})?|::(?:{HEXSEQ})?|{HEXSEQ})"
# IPv6address    =  hexpart [ ":" IPv4address ]
IPV6ADDRESS = rf"{HEXPART}(?::{IPV4ADDRESS})?"
# IPv6reference  =  "[" IPv6address "]"
IPV6REFERENCE = rf"\[{IPV6ADDRESS}\]"
# toplabel       =  ALPHA / ALPHA *( alphanum / "-" ) alphanum
# domainlabel    =  alphanum / alphanum *( alphanum / "-" ) alphanum
# hostname       =  *( domainlabel "." ) toplabel [ "." ]
# (the toplabel-starts-with-ALPHA rule is relaxed so that IPv4 look-alikes with >3 digits and
#  numeric labels still lex as a hostname; an IPv4address alternative is tried first.)
DOMAINLABEL = r"[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?"
HOSTNAME = rf"(?:{DOMAINLABEL}\.)*{DOMAINLABEL}\.?"
# host           =  hostname / IPv4address / IPv6reference
HOST = rf"(?:{IPV6REFERENCE}|{IPV4ADDRESS}|{HOSTNAME})"
# port           =  1*DIGIT
PORT = r"[0-9]{1,5}"
# hostport       =  host [ ":" port ]
HOSTPORT = rf"(?P<host>{HOST})(?::(?P<port>{PORT}))?"

# user             =  1*( unreserved / escaped / user-unreserved )
# user-unreserved  =  "&" / "=" / "+" / "$" / "," / ";" / "?" / "/"
USER = rf"(?:[{UNRESERVED}&=+$,;?/]|{ESCAPED})+"
# password         =  *( unreserved / escaped / "&" / "=" / "+" / "$" / "," )
PASSWORD = rf"(?:[{UNRESERVED}&=+$,]|{ESCAPED})*"
# userinfo         =  ( user / telephone-subscriber ) [ ":" password ] "@"
USERINFO = rf"(?P<user>{USER})(?::(?P<password>{PASSWORD}))?@"
# paramchar         =  param-unreserved / unreserved / escaped
# param-unreserved  =  "[" / "]" / "/" / ":" / "&" / "+" / "$"
PARAMCHAR = rf"(?:[{UNRESERVED}\[\]/:&+$]|{ESCAPED})"
# uri-parameters    =  *( ";" uri-parameter)
# uri-parameter     =  transport-param / user-param / ... / other-param
# other-param       =  pname [ "=" pvalue ] ; pname = 1*paramchar ; pvalue = 1*paramchar
URI_PARAMETERS = rf"(?:;{PARAMCHAR}+(?:={PARAMCHAR}+)?)*"
# hnv-unreserved  =  "[" / "]" / "/" / "?" / ":" / "+" / "$"
# hname  =  1*( hnv-unreserved / unreserved / escaped ) ; hvalue =  *( hnv-unreserved / ... )
HNVCHAR = rf"(?:[{UNRESERVED}\[\]/?:+$]|{ESCAPED})"
# headers         =  "?" header *( "&" header ) ; header = hname "=" hvalue
URI_HEADERS = rf"\?{HNVCHAR}+={HNVCHAR}*(?:&{HNVCHAR}+={HNVCHAR}*)*"
# (unnamed-group variants, for composing bigger rules without group-name clashes)
HOSTPORT_NC = rf"{HOST}(?::{PORT})?"
USERINFO_NC = rf"{USER}(?::{PASSWORD})?@"
# SIP-URI          =  "sip:" [ userinfo ] hostport uri-parameters [ headers ]
# SIPS-URI         =  "sips:" [ userinfo ] hostport uri-parameters [ headers ]
SIP_URI = (
    rf"(?P<scheme>[Ss][Ii][Pp][Ss]?):(?:{USERINFO})?{HOSTPORT}"
    rf"(?P<params>{URI_PARAMETERS})(?P<headers>{URI_HEADERS})?"
)
SIP_URI_NC = rf"[Ss][Ii][Pp][Ss]?:(?:{USERINFO_NC})?{HOSTPORT_NC}{URI_PARAMETERS}(?:{URI_HEADERS})?"
# scheme         =  ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )
SCHEME = r"[A-Za-z][A-Za-z0-9+\-.]*"
NOT_SIP_SCHEME = r"(?![Ss][Ii][Pp][Ss]?:)"
# absoluteURI    =  scheme ":" ( hier-part / opaque-part )   (checked loosely: no SP, no <>)
ABSOLUTE_URI = rf"{NOT_SIP_SCHEME}{SCHEME}:[^\s<>\"]+"
# addr-spec      =  SIP-URI / SIPS-URI / absoluteURI, written without <> (RFC 3261 s.20.10: a URI
# holding "," "?" or ";" MUST then be enclosed, so here those characters end the URI and the rest
# are header parameters)
ADDR_SPEC_USER = rf"(?:[{UNRESERVED}&=+$/]|{ESCAPED})+"
ADDR_SPEC = (
    rf"(?:[Ss][Ii][Pp][Ss]?:(?:{ADDR_SPEC_USER}(?::{PASSWORD})?@)?{HOSTPORT_NC}"
    rf"|{NOT_SIP_SCHEME}{SCHEME}:[^\s<>\";,?]+)"
)

# generic-param  =  token [ EQUAL gen-value ]
# gen-value      =  token / host / quoted-string
# (hostname and IPv4address are made of token characters, so only IPv6reference is added)
GEN_VALUE = rf"(?:{TOKEN}|{IPV6REFERENCE}|{QUOTED_STRING})"
GENERIC_PARAM = rf"(?P<name>{TOKEN})(?:{SWS}={SWS}(?P<value>{GEN_VALUE}))?"
# params after a value:  *( SEMI generic-param )    SEMI = SWS ";" SWS
PARAMS = rf"(?:{SWS};{SWS}{GENERIC_PARAM})*"

# name-addr      =  [ display-name ] LAQUOT addr-spec RAQUOT
# display-name   =  *(token LWS)/ quoted-string
# LAQUOT  =  SWS "<" ; RAQUOT  =  ">" SWS
# (RFC 4475 s.3.1.1.6: a token display name directly followed by "<" is accepted)
DISPLAY_NAME = rf"(?:{QUOTED_STRING}|{TOKEN}(?:{LWS}{TOKEN})*)"
# from-spec / to-spec / contact-param / rec-route / route-param:
#   ( name-addr / addr-spec ) *( SEMI generic-param )
NAME_ADDR = (
    rf"(?:(?P<display>{DISPLAY_NAME})?{SWS}<(?P<uri>{SIP_URI_NC}|{ABSOLUTE_URI})>"
    rf"|(?P<spec>{ADDR_SPEC}))(?P<params>{PARAMS}){SWS}"
)

# sent-protocol     =  protocol-name SLASH protocol-version SLASH transport
# protocol-name     =  "SIP" / token ; protocol-version  =  token
# transport         =  "UDP" / "TCP" / "TLS" / "SCTP" / other-transport ; other-transport = token
SLASH = rf"{SWS}/{SWS}"
SENT_PROTOCOL = rf"(?P<protocol>{TOKEN}){SLASH}(?P<version>{TOKEN}){SLASH}(?P<transport>{TOKEN})"
# sent-by           =  host [ COLON port ]
SENT_BY = rf"(?P<host>{HOST})(?:{SWS}:{SWS}(?P<port>{PORT}))?"
# via-parm          =  sent-protocol LWS sent-by *( SEMI via-params )
VIA_PARM = rf"{SENT_PROTOCOL}{LWS}{SENT_BY}(?P<params>{PARAMS})"

# Call-ID  =  ( "Call-ID" / "i" ) HCOLON callid ; callid   =  word [ "@" word ]
CALLID = rf"{WORD}(?:@{WORD})?"
# CSeq  =  "CSeq" HCOLON 1*DIGIT LWS Method
CSEQ = rf"(?P<seq>[0-9]+){LWS}(?P<method>{METHOD})"
# extension-header  =  header-name HCOLON header-value ; header-name = token
HEADER_NAME = TOKEN

TOKEN_RE = re.compile(TOKEN)
METHOD_RE = re.compile(METHOD)
SIP_VERSION_RE = re.compile(SIP_VERSION)
STATUS_CODE_RE = re.compile(STATUS_CODE)
HEADER_NAME_RE = re.compile(HEADER_NAME)
QUOTED_STRING_RE = re.compile(QUOTED_STRING)
HOST_RE = re.compile(HOST)
HOSTPORT_RE = re.compile(HOSTPORT)
SIP_URI_RE = re.compile(SIP_URI)
REQUEST_URI_SIP_RE = re.compile(
    rf"(?P<scheme>[Ss][Ii][Pp][Ss]?):(?:{USERINFO})?{HOSTPORT}(?P<params>{URI_PARAMETERS})"
)
URI_SCHEME_RE = re.compile(rf"({SCHEME}):")
ABSOLUTE_URI_RE = re.compile(ABSOLUTE_URI)
GENERIC_PARAM_RE = re.compile(GENERIC_PARAM)
PARAMS_RE = re.compile(PARAMS)
# one "; name [= value]" step, used to walk a params string that PARAMS_RE has validated
PARAM_STEP_RE = re.compile(rf"{SWS};{SWS}{GENERIC_PARAM}")
VIA_RE = re.compile(VIA_PARM)
NAME_ADDR_RE = re.compile(NAME_ADDR)
CALL_ID_RE = re.compile(CALLID)
CSEQ_RE = re.compile(CSEQ)
# one URI parameter inside uri-parameters: ";" pname [ "=" pvalue ]
URI_PARAM_STEP_RE = re.compile(rf";(?P<name>{PARAMCHAR}+)(?:=(?P<value>{PARAMCHAR}+))?")
