"""Verify a tollgate licence offline with PyJWT (pip install pyjwt cryptography).

    python3 verify_licence.py https://pay.example.com/.well-known/jwks.json https://pay.example.com < licence.jwt

Prints the claims as JSON and exits 0 when the licence is valid; prints why not and exits 1
otherwise. The JWKS is fetched once and cached by PyJWKClient; a real app keeps the client.
"""
import json
import sys

import jwt
from jwt import PyJWKClient

LICENCE_TYP = "tollgate-licence+jwt"


def verify_licence(token: str, jwks: PyJWKClient, issuer: str) -> dict:
    if jwt.get_unverified_header(token).get("typ") != LICENCE_TYP:
        raise jwt.InvalidTokenError("not a tollgate licence")
    key = jwks.get_signing_key_from_jwt(token)  # by the header's kid
    return jwt.decode(
        token,
        key.key,
        algorithms=["EdDSA"],
        issuer=issuer,
        options={"require": ["iss", "sub", "exp", "nbf", "iat", "jti"]},
    )


def main() -> int:
    jwks_url, issuer = sys.argv[1], sys.argv[2]  # issuer: TOLLGATE_PUBLIC_URL
    jwks = PyJWKClient(jwks_url)
    try:
        claims = verify_licence(sys.stdin.read().strip(), jwks, issuer)
    except jwt.PyJWTError as e:
        print(f"refused: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(json.dumps(claims))
    return 0


if __name__ == "__main__":
    sys.exit(main())
