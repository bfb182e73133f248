// The URI-SAN check of the nginx pair's inbound side (njs 0.7): the client certificate must
// carry a subjectAltName extension holding exactly one name, the URI $spiffe_expected.
// nginx already validated the chain (ssl_verify_client on); this pins the SPIFFE ID.

function derLen(n) {
    // DER length octets for n < 65536.
    if (n < 0x80) return [n];
    if (n < 0x100) return [0x81, n];
    return [0x82, n >> 8, n & 0xff];
}

function hex(bytes) {
    return Buffer.from(bytes).toString('hex');
}

// extnID subjectAltName, extnValue OCTET STRING { GeneralNames SEQUENCE { [6] uri } }.
function sanPattern(id) {
    var uri = Buffer.from(id);
    var gn = [0x86].concat(derLen(uri.length));
    var seqLen = gn.length + uri.length;
    var seq = [0x30].concat(derLen(seqLen));
    var octLen = seq.length + seqLen;
    var oct = [0x04].concat(derLen(octLen));
    return '0603551d11' + hex(oct) + hex(seq) + hex(gn) + uri.toString('hex');
}

function peer_ok(r) {
    var pem = r.variables.ssl_client_raw_cert;
    var expected = r.variables.spiffe_expected;
    if (!pem || !expected) return '0';
    var b64 = pem.replace(/-----[A-Z ]+-----/g, '').replace(/\s+/g, '');
    var der = Buffer.from(b64, 'base64').toString('hex');
    return der.indexOf(sanPattern(expected)) >= 0 ? '1' : '0';
}

export default { peer_ok };
