"""Protocol limits, each with its unit and the RFC section that sets it."""

from __future__ import annotations

MAX_COMMAND_LINE_OCTETS = 512  # RFC 5321 4.5.3.1.4, CRLF included
MAX_TEXT_LINE_OCTETS = 1000  # RFC 5321 4.5.3.1.6, CRLF included
MAX_LOCAL_PART_OCTETS = 64  # RFC 5321 4.5.3.1.1
MAX_DOMAIN_OCTETS = 255  # RFC 5321 4.5.3.1.2
MAX_LABEL_OCTETS = 63  # RFC 1035 2.3.4, which RFC 5321 2.3.5 follows
MIN_RECIPIENTS = 100  # RFC 5321 4.5.3.1.8: servers MUST accept at least 100
MAX_MAIL_LINE_EXTRA_OCTETS = 26  # RFC 1870 3: SIZE lengthens the MAIL line
MAX_AUTH_PARAM_EXTRA_OCTETS = 500  # RFC 4954 5: AUTH= lengthens the MAIL line
MAX_ENVID_OCTETS = 100  # RFC 3461 4.4
MAX_DSN_MAIL_EXTRA_OCTETS = 110  # RFC 3461 4: RET and ENVID lengthen the MAIL line
MAX_DSN_RCPT_EXTRA_OCTETS = 500  # RFC 3461 4: NOTIFY and ORCPT lengthen the RCPT line
MAX_SIZE_DIGITS = 20  # RFC 1870 3: size-value ::= 1*20DIGIT
DEFAULT_MAX_MESSAGE_OCTETS = 25 * 1024 * 1024
DEFAULT_MAX_RECIPIENTS = 1000
DEFAULT_ERROR_BUDGET = 20  # Postfix smtpd_hard_error_limit
MAX_SASL_LINE_OCTETS = 12288  # RFC 4954 4: AUTH lines of at least 12288 octets
