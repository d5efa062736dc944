"""A thin layer over ``tenseal.sealapi`` (SEAL's own API).

TenSEAL's vector API creates Galois keys for every power-of-two rotation
(about 97 MB for the MNIST tutorial). Here keys are made for exactly the
rotation steps the compiled program uses, and the client/server split is
explicit: :class:`ClientKeys` holds the secret key and never leaves the
caller; :class:`ServerContext` is built only from public material.

What crosses to the server is as small as SEAL allows: relinearization and
Galois keys in SEAL's seeded form (the uniformly random half of each key is
replaced by the seed that regenerates it, halving the bytes), and no public
key at all, because the server never encrypts. The client encrypts with its
secret key (symmetric CKKS, as secure for the key holder and half the work),
and input ciphertexts travel seeded too.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any

import numpy as np

from secure_infer.backends.tenseal._params import CKKSParameters


def _seal() -> Any:
    import tenseal.sealapi as seal

    return seal


def galois_element(step: int, poly_modulus_degree: int) -> int:
    """SEAL's Galois element for a left rotation of the slot vector by ``step``."""
    slots = poly_modulus_degree // 2
    step %= slots
    return pow(3, step, 2 * poly_modulus_degree)


@functools.cache
def _scratch() -> str | None:
    """Where SEAL objects pass through a file: ``/dev/shm`` (memory) when it has room, else the temp folder.

    A container's ``/dev/shm`` is often 64 MB: below 256 MB free it is not used.
    """
    try:
        if os.access("/dev/shm", os.W_OK) and shutil.disk_usage("/dev/shm").free >= 256 << 20:
            return "/dev/shm"
    except OSError:
        pass
    return None


def to_bytes(obj: Any) -> bytes:
    """SEAL's own (compressed) serialization of a key, ciphertext or plaintext.

    ``tenseal.sealapi`` exposes only ``save(path)``, hence the temporary file
    (in memory where it can be: :func:`_scratch`).
    """
    fd, path = tempfile.mkstemp(prefix="secure-infer-", suffix=".seal", dir=_scratch())
    os.close(fd)
    try:
        obj.save(path)
        with open(path, "rb") as fh:
            return fh.read()
    finally:
        os.unlink(path)


SEAL_KINDS = ("Ciphertext", "PublicKey", "RelinKeys", "GaloisKeys")


def from_bytes(kind: str, context: Any, data: bytes) -> Any:
    """Load a SEAL object of ``kind`` (one of :data:`SEAL_KINDS`) checked against ``context``.

    SEAL validates the header, sizes and parameters while loading; anything it
    rejects raises ``ValueError`` naming the kind.
    """
    if kind not in SEAL_KINDS:
        raise ValueError(f"unknown SEAL object kind {kind!r}")
    obj = getattr(_seal(), kind)()
    fd, path = tempfile.mkstemp(prefix="secure-infer-", suffix=".seal", dir=_scratch())
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        obj.load(context, path)
    except Exception as exc:  # SEAL raises RuntimeError/ValueError/IndexError on bad bytes
        raise ValueError(f"not a valid SEAL {kind} for these parameters: {exc}") from None
    finally:
        os.unlink(path)
    return obj


class SecretKeyInContext(ValueError):
    """A serialized TenSEAL context that carries private members (a secret key, or key-generation flags)."""


def _proto_fields(data: bytes) -> list[tuple[int, int, bytes | int]]:
    """Top-level fields of a protobuf message: (number, wire type, value); ``ValueError`` if malformed."""

    def varint(at: int) -> tuple[int, int]:
        value = shift = 0
        while True:
            if at >= len(data) or shift > 63:
                raise ValueError("truncated or overlong varint")
            byte = data[at]
            value |= (byte & 0x7F) << shift
            at, shift = at + 1, shift + 7
            if not byte & 0x80:
                return value, at

    fields: list[tuple[int, int, bytes | int]] = []
    at = 0
    while at < len(data):
        key, at = varint(at)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ValueError("field number 0")
        if wire == 0:
            value, at = varint(at)
            fields.append((number, wire, value))
        elif wire in (1, 2, 5):
            size, at = varint(at) if wire == 2 else ({1: 8, 5: 4}[wire], at)
            if at + size > len(data):
                raise ValueError(f"field {number} runs past the end")
            fields.append((number, wire, data[at : at + size]))
            at += size
        else:
            raise ValueError(f"wire type {wire}")
    return fields


def screen_tenseal_context(blob: bytes, context: Any) -> None:
    """Refuse a serialized TenSEAL context before TenSEAL parses it.

    TenSEAL's ``context_from`` builds whatever the bytes ask for before anyone
    can look at the result: a SEAL context for any parameters (up to N=32768
    and 881-bit moduli), and, when the bytes carry a secret key and set the
    ``galois_keys_generated``/``relin_keys_generated`` flags, it *generates*
    every power-of-two Galois key for those parameters. A 0.9 MB upload at
    N=16384 cost 3.7 s and 538 MB (measured); N=32768 with its 881-bit modulus
    would take several GB per request (extrapolated), enough for a few
    concurrent uploads to take a server down. So, from the outer
    protobuf (``TenSEALContextProto``) alone: any private member (field 3) is
    :class:`SecretKeyInContext`; the encryption parameters (field 1) are
    loaded by SEAL on their own (small, bounded) and must be CKKS with the
    ring degree and primes of ``context`` (a SEAL context), else ``ValueError``.
    Only then may TenSEAL build a context, of the size the server already runs.
    """
    try:
        fields = _proto_fields(blob)
    except ValueError as exc:
        raise ValueError(f"malformed protobuf ({exc})") from None
    if any(number == 3 for number, _, _ in fields):
        raise SecretKeyInContext("the uploaded TenSEAL context carries private members (a secret key): serialize "
                                 "it with save_secret_key=False (or call make_context_public()) and send it again")
    params_blobs = [value for number, _, value in fields if number == 1 and isinstance(value, bytes)]
    if not params_blobs:
        raise ValueError("the TenSEAL context has no encryption parameters")
    seal = _seal()
    parms = seal.EncryptionParameters(seal.SCHEME_TYPE.NONE)  # load() replaces it
    fd, path = tempfile.mkstemp(prefix="secure-infer-", suffix=".seal")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(params_blobs[-1])  # protobuf: the last occurrence of a field wins
        parms.load(path)
    except Exception as exc:  # SEAL's load raises several types on bad bytes
        raise ValueError(f"its encryption parameters are not valid SEAL: {exc}") from None
    finally:
        os.unlink(path)
    ours = context.key_context_data().parms()
    theirs_primes = [m.value() for m in parms.coeff_modulus()]
    ours_primes = [m.value() for m in ours.coeff_modulus()]
    if (parms.scheme() != seal.SCHEME_TYPE.CKKS or parms.poly_modulus_degree() != ours.poly_modulus_degree()
            or theirs_primes != ours_primes):
        raise ValueError(f"its encryption parameters (scheme {parms.scheme().name}, N={parms.poly_modulus_degree()}, "
                         f"{len(theirs_primes)} primes) are not the layout's (CKKS, N={ours.poly_modulus_degree()}, "
                         f"primes {[p.bit_length() for p in ours_primes]} bits)")


def serialized_size(obj: Any) -> int:
    """Bytes ``obj`` takes in SEAL's (compressed) serialization."""
    return len(to_bytes(obj))


def seal_context(params: CKKSParameters) -> Any:
    seal = _seal()
    parms = seal.EncryptionParameters(seal.SCHEME_TYPE.CKKS)
    parms.set_poly_modulus_degree(params.poly_modulus_degree)
    parms.set_coeff_modulus(seal.CoeffModulus.Create(params.poly_modulus_degree, list(params.coeff_mod_bit_sizes)))
    ctx = seal.SEALContext(parms, True, seal.SEC_LEVEL_TYPE.TC128)
    if not ctx.parameters_set():
        from secure_infer._errors import ParameterError

        raise ParameterError(f"SEAL rejected the CKKS parameters {params.describe()}")
    return ctx


KEY_BLOBS = {"relin_keys": "RelinKeys", "galois_keys": "GaloisKeys"}


@dataclass
class PublicMaterial:
    """The evaluation keys a server holds: never the secret key, and no public key (it never encrypts).

    ``blob_sizes`` are the bytes each key took on the wire, which is what the
    reports call public key material.
    """

    relin_keys: Any
    galois_keys: Any | None
    rotation_steps: tuple[int, ...]
    blob_sizes: dict[str, int]

    @classmethod
    def load(cls, context: Any, blobs: dict[str, bytes], rotation_steps: tuple[int, ...]) -> PublicMaterial:
        """Keys from their serialized form (:data:`KEY_BLOBS` names); ``ValueError`` names a bad one."""
        unknown = sorted(set(blobs) - set(KEY_BLOBS))
        if unknown:
            raise ValueError(f"unknown key material {unknown}; expected {sorted(KEY_BLOBS)}")
        if "relin_keys" not in blobs:
            raise ValueError("relin_keys missing")
        loaded = {name: from_bytes(KEY_BLOBS[name], context, blob) for name, blob in blobs.items()}
        return cls(loaded["relin_keys"], loaded.get("galois_keys"), tuple(rotation_steps),
                   {name: len(blob) for name, blob in blobs.items()})

    def sizes(self) -> dict[str, int]:
        return dict(self.blob_sizes)


class ClientKeys:
    """The data owner's side: secret key, encryption and decryption, and the evaluation keys to publish."""

    def __init__(self, params: CKKSParameters, rotation_steps: tuple[int, ...]) -> None:
        seal = _seal()
        self.params = params
        self.context = seal_context(params)
        keygen = seal.KeyGenerator(self.context)
        self._secret_key = keygen.secret_key()
        self.rotation_steps = tuple(sorted(set(s % params.slots for s in rotation_steps) - {0}))
        # seeded serializations: the server expands the seeds when it loads them
        self.public_blobs: dict[str, bytes] = {"relin_keys": to_bytes(keygen.create_relin_keys())}
        if self.rotation_steps:
            elements = [galois_element(s, params.poly_modulus_degree) for s in self.rotation_steps]
            self.public_blobs["galois_keys"] = to_bytes(keygen.create_galois_keys(elements))
        self.encoder = seal.CKKSEncoder(self.context)
        self._encryptor = seal.Encryptor(self.context, self._secret_key)
        self._decryptor = seal.Decryptor(self.context, self._secret_key)
        self.scale = float(2**params.scale_bits)

    def server_material(self, context: Any | None = None) -> PublicMaterial:
        """What a server loads from :attr:`public_blobs` (in process: the same bytes, the same path)."""
        return PublicMaterial.load(context or self.context, self.public_blobs, self.rotation_steps)

    def _plain(self, values: np.ndarray) -> Any:
        plain = _seal().Plaintext()
        self.encoder.encode(np.asarray(values, dtype=np.float64), self.scale, plain)
        return plain

    def encrypt(self, values: np.ndarray) -> Any:
        """A ciphertext to evaluate in this process."""
        ct = _seal().Ciphertext()
        self._encryptor.encrypt_symmetric(self._plain(values), ct)
        return ct

    def encrypt_for_wire(self, values: np.ndarray) -> Any:
        """A seeded ciphertext that only serializes (:func:`to_bytes`): half the bytes of :meth:`encrypt`'s."""
        return self._encryptor.encrypt_symmetric(self._plain(values))

    def wire_size(self) -> int:
        """Bytes one fresh input ciphertext takes on the wire."""
        return len(to_bytes(self.encrypt_for_wire(np.zeros(self.params.slots))))

    def decrypt(self, ct: Any) -> np.ndarray:
        seal = _seal()
        plain = seal.Plaintext()
        self._decryptor.decrypt(ct, plain)
        return np.asarray(self.encoder.decode_double(plain))


class ServerContext:
    """The evaluating side: public key material only.

    ``public=None`` gives a context that can encode weights but not evaluate
    (a server compiling a program before any client has sent its keys).
    """

    def __init__(self, params: CKKSParameters, public: PublicMaterial | None) -> None:
        seal = _seal()
        self.params = params
        self.context = seal_context(params)
        self.public = public
        self.evaluator = seal.Evaluator(self.context)
        self.encoder = seal.CKKSEncoder(self.context)

    @property
    def keys(self) -> PublicMaterial:
        """The evaluation keys loaded so far; evaluating without any is a programming error."""
        if self.public is None:
            raise RuntimeError("this server context holds no evaluation keys: load_keys() first")
        return self.public

    def load_keys(self, blobs: dict[str, bytes], rotation_steps: tuple[int, ...]) -> PublicMaterial:
        """Load a client's serialized evaluation keys (see :data:`KEY_BLOBS`); ``ValueError`` if bad."""
        self.public = PublicMaterial.load(self.context, blobs, rotation_steps)
        return self.public

    def prime_at(self, parms_id: Any) -> float:
        """The prime a rescale at this level removes."""
        data = self.context.get_context_data(parms_id)
        return float(data.parms().coeff_modulus()[-1].value())

    def parms_id_after(self, levels: int) -> Any:
        data = self.context.first_context_data()
        for _ in range(levels):
            data = data.next_context_data()
        return data.parms_id()

    def encode(self, values: np.ndarray | float, parms_id: Any, scale: float) -> Any:
        seal = _seal()
        plain = seal.Plaintext()
        if isinstance(values, float):
            self.encoder.encode(values, parms_id, scale, plain)
        else:
            self.encoder.encode(np.asarray(values, dtype=np.float64).tolist(), parms_id, scale, plain)
        return plain
