#!/usr/bin/env python3
"""A real SMTP server for the email tests (aiosmtpd, from PyPI): listens on 127.0.0.1, an ephemeral
port, prints `PORT <n>` once it accepts connections, and runs until its stdin closes.

Every AUTH attempt's user name is appended to --out + ".auth", one per line, whether or not
it succeeds. Every accepted message is appended to --out as one JSON line, parsed by Python's own `email`
package (the reference MIME reader): envelope, headers, and the decoded text/plain and text/html
parts.

    --tls plain|starttls|implicit   (starttls: STARTTLS is required before MAIL)
    --cert PEM --key PEM            the server's certificate, for starttls and implicit
    --auth USER:PASSWORD            AUTH required (over TLS unless --tls plain, where it is
                                    offered and accepted in clear)
    --fail-mail "553 5.7.1 ..."     answer every MAIL FROM with this
    --fail-rcpt "451 4.3.0 ..."     answer every RCPT TO with this
    --fail-data "550 5.7.1 ..."     answer every DATA with this
    --fail-first N                  answer the first N DATA with 451, then accept
"""
import argparse
import asyncio
import email
import email.policy
import json
import ssl
import sys

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("--tls", choices=["plain", "starttls", "implicit"], default="plain")
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--auth")
    p.add_argument("--fail-mail")
    p.add_argument("--fail-rcpt")
    p.add_argument("--fail-data")
    p.add_argument("--fail-first", type=int, default=0)
    p.add_argument("--out", required=True)
    return p.parse_args()


class Handler:
    def __init__(self, args):
        self.args = args
        self.deferred = 0

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        if self.args.fail_mail:
            return self.args.fail_mail
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.args.fail_rcpt:
            return self.args.fail_rcpt
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.args.fail_data:
            return self.args.fail_data
        if self.deferred < self.args.fail_first:
            self.deferred += 1
            return "451 4.3.0 Try again later"
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        parts = {}
        for part in msg.walk():
            if part.get_content_maintype() == "text":
                parts[part.get_content_type()] = part.get_content()
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            # STARTTLS sets session.ssl; implicit TLS is the transport's own.
            "tls": session.ssl is not None or server.transport.get_extra_info("sslcontext") is not None,
            "auth_user": session.auth_data.login.decode() if isinstance(session.auth_data, LoginPassword) else None,
            "content_type": msg.get_content_type(),
            "headers": {k.lower(): str(v) for k, v in msg.items()},
            "text": parts.get("text/plain"),
            "html": parts.get("text/html"),
        }
        with open(self.args.out, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        return "250 2.0.0 Accepted"


def authenticator(expected, attempts):
    user, password = expected.split(":", 1)

    def check(server, session, envelope, mechanism, auth_data):
        login = auth_data.login.decode(errors="replace") if isinstance(auth_data, LoginPassword) else "?"
        with open(attempts, "a", encoding="utf-8") as f:
            f.write(login + "\n")
        ok = isinstance(auth_data, LoginPassword) and auth_data.login.decode() == user and auth_data.password.decode() == password
        # handled=False: aiosmtpd itself answers a failure with 535.
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)

    return check


async def main():
    args = parse_args()
    context = None
    if args.tls != "plain":
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.cert, args.key)
    handler = Handler(args)
    options = {}
    if args.auth:
        options.update(authenticator=authenticator(args.auth, args.out + ".auth"), auth_required=True, auth_require_tls=args.tls != "plain")
    if args.tls == "starttls":
        options.update(tls_context=context, require_starttls=True)

    def factory():
        return SMTP(handler, hostname="smtp.test", **options)

    loop = asyncio.get_running_loop()
    server = await loop.create_server(factory, "127.0.0.1", 0, ssl=context if args.tls == "implicit" else None)
    print("PORT", server.sockets[0].getsockname()[1], flush=True)
    # Until the test closes our stdin (or dies).
    await loop.run_in_executor(None, sys.stdin.read)
    server.close()


if __name__ == "__main__":
    asyncio.run(main())
