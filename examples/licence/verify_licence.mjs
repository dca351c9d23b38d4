// Verify a tollgate licence offline with jose (npm install jose).
//
//   node verify_licence.mjs https://pay.example.com/.well-known/jwks.json https://pay.example.com < licence.jwt
//
// Prints the claims as JSON and exits 0 when the licence is valid; prints why not and exits 1
// otherwise. createRemoteJWKSet caches the keys and fetches them again for a kid it does not know.
import { createRemoteJWKSet, jwtVerify } from "jose";

const [jwksUrl, issuer] = process.argv.slice(2); // issuer: TOLLGATE_PUBLIC_URL
const jwks = createRemoteJWKSet(new URL(jwksUrl));

export async function verifyLicence(licence) {
  const { payload } = await jwtVerify(licence, jwks, {
    algorithms: ["EdDSA"],
    typ: "tollgate-licence+jwt",
    issuer,
    requiredClaims: ["sub", "exp", "nbf", "iat", "jti"],
  });
  return payload;
}

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
try {
  console.log(JSON.stringify(await verifyLicence(Buffer.concat(chunks).toString().trim())));
} catch (e) {
  console.error(`refused: ${e.code ?? e.name}: ${e.message}`);
  process.exit(1);
}
