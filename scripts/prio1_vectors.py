#!/usr/bin/env python3
"""Prio v1 (libprio) oracle: test vectors and a server benchmark made by the
real libprio, through its Python bindings from PyPI (`prio==0.2` for the old
PRG generation, `prio==1.1` for the new one).

Run it through scripts/prio1-vectors, which sets up the two virtualenvs.
Modes (run with the venv's python):

  vectors --out FILE          write one vector file for the installed package
  check FILE --expect same    re-verify FILE's reports with this package (fresh
                              servers) and assert libprio reproduces opened,
                              valid, verify1/2, total, accepted; and the model
                              the check point
  check FILE --expect other   assert this package (the other generation)
                              rejects FILE's honest reports
  bench LENGTH REPORTS --out FILE
                              time libprio's server work per report (both
                              servers, one core); FILE gets the numbers
  ours FILE --bin BIN --dir DIR
                              write random measurements to DIR and encode
                              them into pings with BIN (prio-processor
                              encode-shares) for FILE's generation and keys
  check-pings FILE DIR --expect same
                              verify those pings with this package (FILE's
                              keys and seed, fresh servers) and assert every
                              report valid, total and accepted count right
  check-pings FILE DIR --expect other
                              assert this package (the other generation)
                              opens and rejects them

Besides libprio itself, the script carries a small independent model of the
libprio packet format (X25519 + AES-128-GCM envelope, msgpack body) and of the
server's verification arithmetic; it asserts that the model reproduces every
packet and verify message libprio produced.  The model is used to make
tampered packets (decrypt, alter, re-encrypt) and is never written to the
vector files: everything in them is what libprio produced or accepted/refused.
"""

import argparse
import base64
import hashlib
import json
import os
import random
import re
import secrets
import subprocess
import sys
import time
from importlib import metadata

import msgpack
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import (
    X25519PrivateKey,
    X25519PublicKey,
)
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from prio import libprio as L

# --------------------------------------------------------------------------
# Constants of libprio (prio/params.h)

P = 0x8000000000000000080001
GENERATOR = 0x2597C14F48D5B65ED8DCCA  # of order 2^19 in Z*_p
GENERATOR_LOG2_ORDER = 19
INV2 = (P + 1) // 2
PRIO_TAG = b"PrioPacket"

# How each package's server draws the check point r from its PRG: "full",
# r below p; "range", r = (length + 2) + a draw below p - (length + 2).  Not
# taken from libprio's history but asserted on every report: the model
# reproduces libprio's verify messages with this rule and not with the other.
PRIO_VERSION = metadata.version("prio")
if PRIO_VERSION == "0.2":
    # Its sdist carries a libmprio.a built on 2018-11-13.
    LIBRARY = "PyPI prio 0.2 (libprio before 2020)"
    GENERATION = "seed"
    CHECK_POINT_RULE = "full"
elif PRIO_VERSION == "1.1":
    LIBRARY = "PyPI prio 1.1"
    GENERATION = "seed_and_batch_id"
    CHECK_POINT_RULE = "range"
else:
    sys.exit(f"prio1_vectors.py: unsupported prio version {PRIO_VERSION}")


def b64(data):
    return base64.b64encode(bytes(data)).decode("ascii")


def unb64(text):
    return base64.b64decode(text, validate=True)


def fail(msg):
    raise SystemExit(f"prio1_vectors.py ({LIBRARY}): ASSERTION FAILED: {msg}")


def check(cond, msg):
    if not cond:
        fail(msg)


# --------------------------------------------------------------------------
# libprio through SWIG (the low-level API is common to 0.2 and 1.1)


class Lib:
    def __init__(self):
        L.Prio_init()

    @staticmethod
    def hex_text(raw):
        # prio 0.2's export_hex returns 65 bytes: the NUL terminator too.
        return bytes(raw).rstrip(b"\0").decode("ascii")

    def keypair(self):
        sk, pk = L.Keypair_new()
        return {
            "sk": sk,
            "pk": pk,
            "sk_raw": bytes(L.PrivateKey_export(sk)),
            "pk_raw": bytes(L.PublicKey_export(pk)),
            "private_key_hex": self.hex_text(L.PrivateKey_export_hex(sk)),
            "public_key_hex": self.hex_text(L.PublicKey_export_hex(pk)),
        }

    def import_keypair(self, private_hex, public_hex):
        sk = L.PrivateKey_import_hex(private_hex.encode(), public_hex.encode())
        pk = L.PublicKey_import_hex(public_hex.encode())
        return {
            "sk": sk,
            "pk": pk,
            "sk_raw": bytes.fromhex(private_hex),
            "pk_raw": bytes.fromhex(public_hex),
            "private_key_hex": private_hex,
            "public_key_hex": public_hex,
        }


def ok(fn, *args):
    """Call a libprio function whose SECStatus failure raises RuntimeError."""
    try:
        fn(*args)
        return True
    except RuntimeError:
        return False


class Batch:
    """A PrioConfig plus the two servers' keys and shared seed."""

    def __init__(self, keys_a, keys_b, seed, batch_id, length):
        self.keys_a, self.keys_b, self.seed = keys_a, keys_b, seed
        self.batch_id, self.length = batch_id, length
        self.cfg = L.PrioConfig_new(length, keys_a["pk"], keys_b["pk"], batch_id)
        check(L.PrioConfig_numDataFields(self.cfg) == length, "numDataFields")
        # Long-lived servers for aggregation only (aggregation does not use
        # the servers' PRG).
        self.agg_a = self.server(L.PRIO_SERVER_A)
        self.agg_b = self.server(L.PRIO_SERVER_B)
        self.accepted = 0
        self.check_point = check_point(seed, batch_id, length)

    def server(self, idx):
        keys = self.keys_a if idx == L.PRIO_SERVER_A else self.keys_b
        return L.PrioServer_new(self.cfg, idx, keys["sk"], self.seed)

    def encode(self, measurement):
        check(len(measurement) == self.length, "measurement length")
        a, b = L.PrioClient_encode(self.cfg, bytes(int(x) for x in measurement))
        return bytes(a), bytes(b)

    def verify(self, a, b, aggregate=True):
        """Verify one report with a FRESH server pair (so the check point is
        the first draw of the server PRG) and, if valid, aggregate it into
        the long-lived servers.  The verify messages are libprio's own
        PrioPacketVerify{1,2}_write bytes; the packets are handed on as
        objects, not re-read: prio 0.2's SWIG PrioPacketVerify*_read and
        PrioTotalShare_read wrappers overflow the heap (msgpack_unpacker_init
        with len+1, then a len-byte memcpy into the smaller free space)."""
        s_a, s_b = self.server(L.PRIO_SERVER_A), self.server(L.PRIO_SERVER_B)
        v_a, v_b = L.PrioVerifier_new(s_a), L.PrioVerifier_new(s_b)
        opened = {
            "a": ok(L.PrioVerifier_set_data, v_a, a),
            "b": ok(L.PrioVerifier_set_data, v_b, b),
        }
        out = {"opened": opened, "verify1": None, "verify2": None, "valid": False}
        if opened["a"] and opened["b"]:
            p1 = {side: L.PrioPacketVerify1_new() for side in "ab"}
            for side, v in (("a", v_a), ("b", v_b)):
                check(ok(L.PrioPacketVerify1_set_data, p1[side], v), "Verify1_set_data")
            p2 = {side: L.PrioPacketVerify2_new() for side in "ab"}
            for side, v in (("a", v_a), ("b", v_b)):
                check(ok(L.PrioPacketVerify2_set_data, p2[side], v, p1["a"], p1["b"]),
                      "Verify2_set_data")
            valid_a = ok(L.PrioVerifier_isValid, v_a, p2["a"], p2["b"])
            valid_b = ok(L.PrioVerifier_isValid, v_b, p2["a"], p2["b"])
            check(valid_a == valid_b, "the two servers disagree on validity")
            out.update(verify1={k: bytes(L.PrioPacketVerify1_write(p)) for k, p in p1.items()},
                       verify2={k: bytes(L.PrioPacketVerify2_write(p)) for k, p in p2.items()},
                       valid=valid_a)
            if valid_a and aggregate:
                check(ok(L.PrioServer_aggregate, self.agg_a, v_a), "aggregate A")
                check(ok(L.PrioServer_aggregate, self.agg_b, v_b), "aggregate B")
                self.accepted += 1
        del v_a, v_b, s_a, s_b  # verifiers before their servers
        return out

    def total(self):
        shares = []
        for s in (self.agg_a, self.agg_b):
            t = L.PrioTotalShare_new()
            check(ok(L.PrioTotalShare_set_data, t, s), "TotalShare_set_data")
            shares.append(t)
        raw = bytes(L.PrioTotalShare_final(self.cfg, shares[0], shares[1]))
        check(len(raw) == 8 * self.length, "PrioTotalShare_final length")
        return [int.from_bytes(raw[8 * i: 8 * i + 8], "little") for i in range(self.length)]


# --------------------------------------------------------------------------
# Independent model of the packet envelope (prio/encrypt.c)


def x25519_public(sk_raw):
    return (
        X25519PrivateKey.from_private_bytes(sk_raw)
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )


def gcm_key(shared):
    # NSS PK11_PubDeriveWithKDF(CKD_SHA256_KDF, no shared info), 16 bytes:
    # ANSI X9.63 KDF = SHA-256(Z || 00 00 00 01)[0..16].
    return hashlib.sha256(shared + b"\x00\x00\x00\x01").digest()[:16]


def decrypt(sk_raw, ct):
    eph, nonce, body = ct[:32], ct[32:44], ct[44:]
    z = X25519PrivateKey.from_private_bytes(sk_raw).exchange(
        X25519PublicKey.from_public_bytes(eph))
    return AESGCM(gcm_key(z)).decrypt(nonce, body, PRIO_TAG + eph + nonce)


def encrypt(pk_raw, pt):
    eph_sk = X25519PrivateKey.generate()
    eph = eph_sk.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    nonce = secrets.token_bytes(12)
    z = eph_sk.exchange(X25519PublicKey.from_public_bytes(pk_raw))
    return eph + nonce + AESGCM(gcm_key(z)).encrypt(nonce, pt, PRIO_TAG + eph + nonce)


# --------------------------------------------------------------------------
# Independent model of the packet body (prio/serial.c)


def fe_bytes(x):
    # mp_to_fixlen_octets with mp_unsigned_octet_size: big-endian, no
    # leading zeros, zero as one 0x00 byte.
    return x.to_bytes(max(1, (x.bit_length() + 7) // 8), "big")


def pack_str(b):
    n = len(b)
    if n < 32:
        return bytes([0xA0 | n]) + b
    if n < 0x100:
        return bytes([0xD9, n]) + b
    if n < 0x10000:
        return b"\xda" + n.to_bytes(2, "big") + b
    return b"\xdb" + n.to_bytes(4, "big") + b


def pack_array_header(n):
    if n < 16:
        return bytes([0x90 | n])
    if n < 0x10000:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


def to_int(obj):
    check(isinstance(obj, bytes), "field element is not a msgpack str")
    return int.from_bytes(obj, "big")


def parse_packet(pt):
    up = msgpack.Unpacker(raw=True, max_buffer_size=len(pt) + 16)
    up.feed(pt)
    objs = list(up)
    pkt = {
        "batch_id": objs[0],
        "a": to_int(objs[1]), "b": to_int(objs[2]), "c": to_int(objs[3]),
        "f0": to_int(objs[4]), "g0": to_int(objs[5]), "h0": to_int(objs[6]),
        "server": objs[7],
    }
    if pkt["server"] == 0:
        check(len(objs) == 10, "server A packet has 10 msgpack objects")
        pkt["data"] = [to_int(x) for x in objs[8]]
        pkt["h_points"] = [to_int(x) for x in objs[9]]
    else:
        check(pkt["server"] == 1 and len(objs) == 9, "server B packet has 9 msgpack objects")
        pkt["seed"] = objs[8]
    return pkt


def serialize_packet(pkt):
    out = [pack_str(pkt["batch_id"])]
    out += [pack_str(fe_bytes(pkt[k])) for k in ("a", "b", "c", "f0", "g0", "h0")]
    out.append(bytes([pkt["server"]]))  # positive fixint
    if pkt["server"] == 0:
        for arr in (pkt["data"], pkt["h_points"]):
            out.append(pack_array_header(len(arr)))
            out += [pack_str(fe_bytes(x)) for x in arr]
    else:
        out.append(pack_str(pkt["seed"]))
    return b"".join(out)


def parse_fields(data):
    """A verify1/verify2 message: consecutive msgpack strs (not an array)."""
    up = msgpack.Unpacker(raw=True)
    up.feed(data)
    return [to_int(x) for x in up]


# --------------------------------------------------------------------------
# Independent model of the server arithmetic (prio/prg.c, rand.c, server.c)


class PRG:
    """AES-128-CTR, all-zero 128-bit big-endian counter block, a stream."""

    def __init__(self, key):
        self.enc = Cipher(algorithms.AES(key), modes.CTR(b"\0" * 16)).encryptor()

    def get(self, n):
        return self.enc.update(b"\0" * n)


def prg_key(seed, batch_id):
    if GENERATION == "seed":
        return seed
    return hashlib.sha256(seed + batch_id).digest()[:16]


def msb_mask(val):
    mask = 0
    while (val & mask) != val:
        mask = ((mask << 1) + 1) & 0xFF
    return mask


def rand_below(prg, maximum):
    # rand_int_rng: nbytes = octet size of max-1; draw nbytes, then overwrite
    # byte 0 with one more byte, mask it, reject if >= max.
    m1 = maximum - 1
    nbytes = max(1, (m1.bit_length() + 7) // 8)
    mask = msb_mask(m1 >> (8 * (nbytes - 1)))
    while True:
        buf = bytearray(prg.get(nbytes))
        buf[0] = prg.get(1)[0]
        if mask:
            buf[0] &= mask
        v = int.from_bytes(buf, "big")
        if v < maximum:
            return v


def check_point(seed, batch_id, length, rule=None):
    """The first check point r a fresh libprio server draws from its PRG."""
    prg = PRG(prg_key(seed, batch_id))
    if (rule or CHECK_POINT_RULE) == "full":  # r in [0, p)
        return rand_below(prg, P)
    lower = length + 2  # r in [n + 1, p), n = length + 1 points of f and g
    return lower + rand_below(prg, P - lower)


def next_pow2(n):
    k = 1
    while k < n:
        k <<= 1
    return k


def interp_eval(ys, r):
    """Value at r of the polynomial through (w^i, ys[i]), w a len(ys)-th
    root of unity (poly_interp_evaluate)."""
    n = len(ys)
    w = pow(GENERATOR, (1 << GENERATOR_LOG2_ORDER) // n, P)
    scale = (pow(r, n, P) - 1) * pow(n, -1, P) % P
    acc, wi = 0, 1
    for y in ys:
        if y:
            if r == wi:
                return y
            acc += y * wi * pow(r - wi, -1, P)
        wi = wi * w % P
    return acc * scale % P


def model_verify(batch, pkt_a, pkt_b, r):
    """(verify1 a, verify1 b, verify2 a, verify2 b) as field elements, for
    check point r."""
    n = batch.length
    big_n = next_pow2(n + 1)
    prg_b = PRG(prg_key(pkt_b["seed"], batch.batch_id))
    data_b = [rand_below(prg_b, P) for _ in range(n)]
    h_b = [rand_below(prg_b, P) for _ in range(big_n)]
    shares = {}
    for side, pkt, data, hpts in (("a", pkt_a, pkt_a["data"], pkt_a["h_points"]),
                                  ("b", pkt_b, data_b, h_b)):
        f = [pkt["f0"]] + data + [0] * (big_n - n - 1)
        g = [pkt["g0"]] + [(x - 1) % P if side == "a" else x for x in data]
        g += [0] * (big_n - n - 1)
        h = [0] * (2 * big_n)
        h[0] = pkt["h0"]
        for j, x in enumerate(hpts):
            h[2 * j + 1] = x
        fr, gr, hr = interp_eval(f, r), interp_eval(g, r), interp_eval(h, r)
        shares[side] = (pkt, (fr - pkt["a"]) % P, (gr - pkt["b"]) % P, hr)
    d = (shares["a"][1] + shares["b"][1]) % P
    e = (shares["a"][2] + shares["b"][2]) % P
    out2 = {}
    for side, (pkt, _, _, hr) in shares.items():
        out2[side] = (d * e * INV2 + d * pkt["b"] + e * pkt["a"] + pkt["c"] - hr) % P
    return [[shares["a"][1], shares["a"][2]], [shares["b"][1], shares["b"][2]],
            [out2["a"]], [out2["b"]]]


# --------------------------------------------------------------------------
# Vector generation

TAMPERS = ["a_data_share", "a_h_point", "a_f0_share", "a_triple_c", "b_seed",
           "a_ciphertext_byte", "a_other_batch_id"]


def measurements(rng, length, count, with_extremes=True):
    out = []
    if with_extremes:
        out += [[False] * length, [True] * length]
    while len(out) < count:
        out.append([rng.random() < 0.5 for _ in range(length)])
    return out[:count]


def other_batch_id(batch_id):
    return batch_id + b"-OTHER"


def make_report(batch, measurement, tamper, stats):
    a, b = batch.encode(measurement)
    pt_a = decrypt(batch.keys_a["sk_raw"], a)
    pt_b = decrypt(batch.keys_b["sk_raw"], b)
    check(len(a) == len(pt_a) + 60 and len(b) == len(pt_b) + 60, "ciphertext = 32 + 12 + pt + 16")
    pkt_a, pkt_b = parse_packet(pt_a), parse_packet(pt_b)
    # The model's serialiser reproduces libprio's plaintext byte for byte.
    check(serialize_packet(pkt_a) == pt_a, "A plaintext re-serialises identically")
    check(serialize_packet(pkt_b) == pt_b, "B plaintext re-serialises identically")
    check(pkt_a["batch_id"] == batch.batch_id and pkt_b["batch_id"] == batch.batch_id, "batch id")
    check(pkt_a["server"] == 0 and pkt_b["server"] == 1, "server ids")
    check(len(pkt_a["data"]) == batch.length, "A data shares")
    check(len(pkt_a["h_points"]) == next_pow2(batch.length + 1), "A h points")
    check(len(pkt_b["seed"]) == 16, "B seed length")
    # A's and B's data shares add up to the measurement (B's from its seed).
    prg_b = PRG(prg_key(pkt_b["seed"], batch.batch_id))
    for x, bit in zip(pkt_a["data"], measurement):
        check((x + rand_below(prg_b, P)) % P == int(bit), "data shares add up to the measurement")

    reencrypt_a = reencrypt_b = False
    if tamper == "a_data_share":
        pkt_a["data"][0] = (pkt_a["data"][0] + 1) % P
        reencrypt_a = True
    elif tamper == "a_h_point":
        pkt_a["h_points"][0] = (pkt_a["h_points"][0] + 1) % P
        reencrypt_a = True
    elif tamper == "a_f0_share":
        pkt_a["f0"] = (pkt_a["f0"] + 1) % P
        reencrypt_a = True
    elif tamper == "a_triple_c":
        pkt_a["c"] = (pkt_a["c"] + 1) % P
        reencrypt_a = True
    elif tamper == "b_seed":
        new_seed = secrets.token_bytes(16)
        while new_seed == pkt_b["seed"]:
            new_seed = secrets.token_bytes(16)
        pkt_b["seed"] = new_seed
        reencrypt_b = True
    elif tamper == "a_ciphertext_byte":
        # XOR 0x01 into the middle byte of the AES-GCM ciphertext body
        # (after the 32-byte ephemeral key and the 12-byte nonce).
        body_len = len(a) - 44 - 16
        pos = 44 + body_len // 2
        a = a[:pos] + bytes([a[pos] ^ 0x01]) + a[pos + 1:]
    elif tamper == "a_other_batch_id":
        other = L.PrioConfig_new(batch.length, batch.keys_a["pk"], batch.keys_b["pk"],
                                 other_batch_id(batch.batch_id))
        a2, _ = L.PrioClient_encode(other, bytes(int(x) for x in measurement))
        a = bytes(a2)
        check(parse_packet(decrypt(batch.keys_a["sk_raw"], a))["batch_id"]
              == other_batch_id(batch.batch_id), "other batch id")
    else:
        check(tamper is None, f"unknown tamper {tamper}")
    if reencrypt_a:
        a = encrypt(batch.keys_a["pk_raw"], serialize_packet(pkt_a))
    if reencrypt_b:
        b = encrypt(batch.keys_b["pk_raw"], serialize_packet(pkt_b))

    if os.environ.get("PRIO1_DEBUG"):
        print("verify", batch.length, tamper, file=sys.stderr, flush=True)
    res = batch.verify(a, b)
    rep = {"measurement": [bool(x) for x in measurement], "tampered": tamper,
           "a": b64(a), "b": b64(b), "opened": res["opened"]}
    rep["verify1"] = res["verify1"] and {k: b64(v) for k, v in res["verify1"].items()}
    rep["verify2"] = res["verify2"] and {k: b64(v) for k, v in res["verify2"].items()}
    rep["valid"] = res["valid"]

    # Expectations.
    if tamper is None:
        check(res["opened"] == {"a": True, "b": True} and res["valid"], "honest report valid")
    elif tamper in ("a_ciphertext_byte", "a_other_batch_id"):
        check(res["opened"] == {"a": False, "b": True}, f"{tamper}: A refuses at open")
    else:
        # Our re-encrypted packets open: the envelope model is right.
        check(res["opened"] == {"a": True, "b": True}, f"{tamper}: libprio opens re-encrypted packets")
        check(not res["valid"], f"{tamper}: libprio rejects it")
    if res["verify1"] is not None:
        got = [parse_fields(res[m][side]) for m in ("verify1", "verify2") for side in "ab"]
        check(model_verify(batch, pkt_a, pkt_b, batch.check_point) == got,
              f"model reproduces libprio's verify messages ({tamper or 'honest'}, "
              f"check point rule {CHECK_POINT_RULE!r})")
        other = {"full": "range", "range": "full"}[CHECK_POINT_RULE]
        r_other = check_point(batch.seed, batch.batch_id, batch.length, other)
        check(model_verify(batch, pkt_a, pkt_b, r_other)[0] != got[0],
              f"check point rule {other!r} does not reproduce libprio's verify1")
        check(((got[2][0] + got[3][0]) % P == 0) == res["valid"],
              "valid iff the verify2 shares sum to 0")
        stats["model_checked"] += 1
    return rep


BATCHES = [
    # (batch id, length, honest reports, tampers); each file stays ~300 KB.
    ("content.blocking_blocked_TESTONLY-0", 1, 6, TAMPERS),
    ("content.blocking_blocked_TESTONLY-1", 5, 6, TAMPERS),
    ("content.blocking_blocked_TESTONLY-2/ü: «prio» ✓", 5, 3, ["a_data_share", "a_other_batch_id"]),
    ("origin-telemetry.content_blocking_TESTONLY-0", 441, 3, ["a_h_point"]),
    ("origin-telemetry.content_blocking_TESTONLY-1", 2046, 3, []),
]


def cmd_vectors(args):
    lib = Lib()
    rng = random.Random()
    keys_a, keys_b = lib.keypair(), lib.keypair()
    for k in (keys_a, keys_b):
        check(x25519_public(k["sk_raw"]) == k["pk_raw"], "X25519(private) == public")
        check(k["private_key_hex"] == k["sk_raw"].hex().upper(), "private hex is upper case")
        check(k["public_key_hex"] == k["pk_raw"].hex().upper(), "public hex is upper case")
    seed = bytes(L.PrioPRGSeed_randomize())
    check(len(seed) == 16, "seed length")
    stats = {"model_checked": 0}
    out = {
        "library": LIBRARY,
        "generation": GENERATION,
        "modulus_hex": format(P, "X"),
        "server_a": {"private_key_hex": keys_a["private_key_hex"],
                     "public_key_hex": keys_a["public_key_hex"]},
        "server_b": {"private_key_hex": keys_b["private_key_hex"],
                     "public_key_hex": keys_b["public_key_hex"]},
        "shared_seed_base64": b64(seed),
        "check_point_rule": CHECK_POINT_RULE,
        "batches": [],
    }
    for batch_id, length, honest, tampers in BATCHES:
        bid = batch_id.encode("utf-8")
        batch = Batch(keys_a, keys_b, seed, bid, length)
        reports = []
        specs = [(m, None) for m in measurements(rng, length, honest)]
        specs += [(measurements(rng, length, 1, False)[0], t) for t in tampers]
        rng.shuffle(specs)
        truth = [0] * length
        for m, t in specs:
            rep = make_report(batch, m, t, stats)
            if rep["valid"]:
                truth = [x + int(y) for x, y in zip(truth, m)]
            reports.append(rep)
        total = batch.total()
        check(total == truth, "total equals the sum of the valid measurements")
        check(batch.accepted == sum(r["valid"] for r in reports), "accepted count")
        out["batches"].append({"batch_id": batch_id, "length": length,
                               "check_point": str(batch.check_point), "reports": reports,
                               "total": total, "accepted": batch.accepted})
        print(f"  {LIBRARY}: batch {batch_id!r} length {length}: {len(reports)} reports, "
              f"{batch.accepted} valid", file=sys.stderr)
    write_json(out, args.out)
    print(f"{LIBRARY}: wrote {args.out} ({os.path.getsize(args.out)} bytes); the model "
          f"reproduced the verify messages of {stats['model_checked']} reports with check "
          f"point rule {CHECK_POINT_RULE!r} (and not with the other rule)", file=sys.stderr)


def write_json(obj, path):
    text = json.dumps(obj, indent=2, ensure_ascii=False)
    # Keep long bool/int arrays on one line.
    text = re.sub(r"\[\s+((?:(?:true|false|\d+),\s+)*(?:true|false|\d+))\s+\]",
                  lambda m: "[" + re.sub(r",\s+", ", ", m.group(1)) + "]", text)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text + "\n")
    os.replace(tmp, path)


# --------------------------------------------------------------------------
# Re-verification of a file (same package: reproduce; other: must reject)


def load_vectors(path):
    """A vector file, its two servers' keys imported into libprio, its seed."""
    lib = Lib()
    with open(path, encoding="utf-8") as f:
        doc = json.load(f)
    keys = [lib.import_keypair(doc[s]["private_key_hex"], doc[s]["public_key_hex"])
            for s in ("server_a", "server_b")]
    return doc, keys[0], keys[1], unb64(doc["shared_seed_base64"])


def cmd_check(args):
    doc, keys_a, keys_b, seed = load_vectors(args.file)
    same = args.expect == "same"
    if same:
        check(doc["generation"] == GENERATION and doc["check_point_rule"] == CHECK_POINT_RULE,
              "the file's generation and check point rule are this package's")
    n_reports = 0
    for bt in doc["batches"]:
        batch = Batch(keys_a, keys_b, seed, bt["batch_id"].encode("utf-8"), bt["length"])
        for rep in bt["reports"]:
            if not same and rep["tampered"] is not None:
                continue
            res = batch.verify(unb64(rep["a"]), unb64(rep["b"]), aggregate=same)
            n_reports += 1
            if same:
                check(res["opened"] == rep["opened"], "re-verify: opened")
                check(res["valid"] == rep["valid"], "re-verify: valid")
                got1 = res["verify1"] and {k: b64(v) for k, v in res["verify1"].items()}
                got2 = res["verify2"] and {k: b64(v) for k, v in res["verify2"].items()}
                check(got1 == rep["verify1"] and got2 == rep["verify2"],
                      "re-verify reproduces verify1/verify2 byte for byte")
            else:
                check(res["opened"] == {"a": True, "b": True},
                      "the other generation's packets open (same layout and encryption)")
                check(not res["valid"], "the other generation rejects the report")
        if same:
            check(str(batch.check_point) == bt["check_point"], "check point")
            check(batch.total() == bt["total"] and batch.accepted == bt["accepted"],
                  "re-aggregation reproduces total and accepted")
    what = ("reproduced opened/valid/verify1/verify2/total of" if same
            else "opened but rejected (other PRG generation) all")
    print(f"{LIBRARY}: {what} {n_reports} reports of {args.file} ({doc['library']})",
          file=sys.stderr)


# --------------------------------------------------------------------------
# Our client: prio-processor's pings, checked by libprio

OURS = [
    # (batch id, length, reports)
    ("prio-processor_TESTONLY-0", 1, 6),
    ("prio-processor_TESTONLY-1/ü: «prio» ✓", 5, 6),
    ("prio-processor_TESTONLY-2", 441, 4),
    ("prio-processor_TESTONLY-3", 2046, 4),
]


def ours_paths(directory, k):
    """Batch k's measurements (a JSON array of 0/1 per line) and pings."""
    return (os.path.join(directory, f"{k}.measurements.ndjson"),
            os.path.join(directory, f"{k}.pings.ndjson"))


def read_ndjson(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def cmd_ours(args):
    with open(args.file, encoding="utf-8") as f:
        doc = json.load(f)
    os.makedirs(args.dir, exist_ok=True)
    rng = random.Random()
    for k, (batch_id, length, count) in enumerate(OURS):
        m_path, p_path = ours_paths(args.dir, k)
        with open(m_path, "w", encoding="utf-8") as f:
            f.writelines(json.dumps([int(x) for x in m]) + "\n"
                         for m in measurements(rng, length, count))
        config = {batch_id: {"vdaf": "prio1", "length": length, "prg_key": doc["generation"]}}
        run = subprocess.run(
            [args.bin, "encode-shares", "--config", json.dumps(config), "--batch-id", batch_id,
             "--public-key-a", doc["server_a"]["public_key_hex"],
             "--public-key-b", doc["server_b"]["public_key_hex"],
             "--input", m_path, "--output", p_path, "--format", "ping"],
            capture_output=True, text=True)
        check(run.returncode == 0, f"{args.bin} encode-shares: {run.stderr.strip()}")


def cmd_check_pings(args):
    doc, keys_a, keys_b, seed = load_vectors(args.file)
    same = args.expect == "same"
    check((doc["generation"] == GENERATION) == same,
          f"{args.file} is {'this' if same else 'the other'} package's generation")
    for k, (batch_id, length, count) in enumerate(OURS):
        m_path, p_path = ours_paths(args.dir, k)
        ms, pings = read_ndjson(m_path), read_ndjson(p_path)
        check(len(ms) == count and len(pings) == count, f"{p_path}: one ping per measurement")
        batch = Batch(keys_a, keys_b, seed, batch_id.encode("utf-8"), length)
        for n, ping in enumerate(pings):
            entries = ping["payload"]["prioData"]
            check(len(entries) == 1 and entries[0]["encoding"] == batch_id,
                  f"{p_path}:{n + 1}: one entry, for {batch_id!r}")
            res = batch.verify(unb64(entries[0]["prio"]["a"]), unb64(entries[0]["prio"]["b"]),
                               aggregate=same)
            check(res["opened"] == {"a": True, "b": True},
                  f"{p_path}:{n + 1}: libprio opens both packets")
            check(res["valid"] == same, f"{p_path}:{n + 1}: libprio "
                  + ("accepts the report" if same else "rejects the report (other generation)"))
        if same:
            check(batch.total() == [sum(col) for col in zip(*ms)],
                  f"{batch_id!r}: libprio's total is the sum of the measurements")
            check(batch.accepted == count, f"{batch_id!r}: accepted count")


# --------------------------------------------------------------------------
# Benchmark


def cmd_bench(args):
    """libprio's server work per report, both servers, one thread: open
    (decrypt, decode, B's PRG expansion) and evaluate, verify1 and verify2
    (set_data and write), isValid and aggregate.  Long-lived servers, as
    deployed; client encoding is done beforehand and not timed.  CPU time of
    this process, so a busy machine does not skew the per-core rate."""
    lib = Lib()
    length, count = args.length, args.reports
    keys_a, keys_b = lib.keypair(), lib.keypair()
    seed = bytes(L.PrioPRGSeed_randomize())
    batch = Batch(keys_a, keys_b, seed, f"bench_TESTONLY-{length}".encode(), length)
    rng = random.Random()
    ms = measurements(rng, length, count, with_extremes=False)
    packets = [batch.encode(m) for m in ms]
    servers = (batch.agg_a, batch.agg_b)
    valid = 0
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for pkts in packets:
        v = [L.PrioVerifier_new(s) for s in servers]
        for vi, pkt in zip(v, pkts):
            L.PrioVerifier_set_data(vi, pkt)
        p1 = [L.PrioPacketVerify1_new() for _ in v]
        for p, vi in zip(p1, v):
            L.PrioPacketVerify1_set_data(p, vi)
            L.PrioPacketVerify1_write(p)
        p2 = [L.PrioPacketVerify2_new() for _ in v]
        for p, vi in zip(p2, v):
            L.PrioPacketVerify2_set_data(p, vi, p1[0], p1[1])
            L.PrioPacketVerify2_write(p)
        if all(ok(L.PrioVerifier_isValid, vi, p2[0], p2[1]) for vi in v):
            valid += 1
            for s, vi in zip(servers, v):
                L.PrioServer_aggregate(s, vi)
        del p1, p2, v
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    check(valid == count, "bench reports valid")
    check(batch.total() == [sum(int(m[i]) for m in ms) for i in range(length)], "bench total")
    result = {"library": LIBRARY, "generation": GENERATION, "length": length,
              "reports": count, "cpu_seconds": round(cpu, 3), "wall_seconds": round(wall, 3),
              "reports_per_second_per_core": round(count / cpu, 2)}
    write_json(result, args.out)
    print(json.dumps(result))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("vectors")
    v.add_argument("--out", required=True)
    c = sub.add_parser("check")
    c.add_argument("file")
    c.add_argument("--expect", choices=["same", "other"], required=True)
    bn = sub.add_parser("bench")
    bn.add_argument("length", type=int)
    bn.add_argument("reports", type=int)
    bn.add_argument("--out", required=True)
    o = sub.add_parser("ours")
    o.add_argument("file")
    o.add_argument("--bin", required=True)
    o.add_argument("--dir", required=True)
    cp = sub.add_parser("check-pings")
    cp.add_argument("file")
    cp.add_argument("dir")
    cp.add_argument("--expect", choices=["same", "other"], required=True)
    args = ap.parse_args()
    {"vectors": cmd_vectors, "check": cmd_check, "bench": cmd_bench, "ours": cmd_ours,
     "check-pings": cmd_check_pings}[args.cmd](args)


if __name__ == "__main__":
    main()
