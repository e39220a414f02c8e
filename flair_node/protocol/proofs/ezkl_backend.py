"""EZKL behind one small interface: the circuit that proves a fixed-point weighted sum, its keys, proofs.

The only module that imports ``ezkl`` (and ``onnx``, through torch's exporter). The circuit for a shape
``(K, N)`` takes K+1 inputs, the K integer weights and K chunks of N integer values (fixed-point deltas), and
outputs the N sums ``Σ_i w_i · d_i``. No value is public: a proof carries a *commitment* to the weights, to each
chunk and to the sums, in that order, so it says "the values committed here, weighted by the values committed
there, sum to the values committed in that one" and reveals none of them. Scales are 0 (the values are integers
already: Flair's fixed-point numbers with 24 fraction bits), so the circuit multiplies and adds in the field
with no rescaling: the proven sums are exact. Inputs and outputs are not range-checked; nothing needs them to
be, since every value is fixed by its commitment.

Two more circuits (``KINDS``) prove that a vector committed chunk by chunk has a bounded L2 norm (``norms``
uses them; KZG only, since it adds their commitments): ``squares`` takes G chunks and a salt and outputs the pair
``[Σ x², salt]`` (committed, so the sum of squares stays hidden); ``bound`` takes the pair ``[S, R]`` of totals
and K bits with a salt, and outputs, in public, ``S + Σ_k b_k 2^k`` and each ``b_k² − b_k``: a verifier who
reads B² and K zeros there knows ``S = B² − (a number below 2^K)``, that is S <= B².

Two commitment schemes (``SCHEMES``), chosen per repository:

- ``kzg`` (EZKL's ``polycommit`` visibility): each input and the output sit alone in an unblinded advice column,
  and the proof opens with the KZG commitments of those columns; ``commit`` computes the same point from the
  values (``ezkl.kzg_commit``). Cheap: about 1.5 rows per multiply-add. A commitment depends on the SRS and on
  the circuit's row count (``logrows``), so every circuit of a chunk size has the same ``logrows``, sized for up
  to ``KZG_INPUTS`` inputs: then commitments made with any of them are the same point.
- ``poseidon`` (``hashed`` visibility): the proof's public values are the Poseidon hashes of the values, which
  anyone computes with no key or SRS. About 41 rows per value, so ~30x slower to prove.

Built circuits (ONNX, settings, compiled circuit, proving and verifying keys) are cached per shape and SRS in a
folder named by their hash; a build goes to a temporary folder first, renamed into place when complete. The SRS
is a file: ``development_srs`` makes one with ``ezkl.gen_srs`` (its secret is not destroyed: for tests and
development only); a production SRS from a ceremony is passed as a path. Prover and verifier must use the same
SRS: the verifying key depends on it.

Every call into EZKL runs inside ``map_ezkl_errors``: whatever it raises (its Rust panics included), or a
``False`` it returns, becomes a ``ProofError`` there, and nothing of EZKL's leaves this module.

Scratch folders (``.tmp-*`` here, the proving worker's ``.job-*``) hold the values being proven, in plaintext;
they are removed when their step ends, and ``remove_scratch`` removes those a killed process left behind (the
daemon calls it on start, before any proof runs).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...core.errors import FlairError, IntegrityError, InvalidInput
from ...storage.atomic import atomic_write

#: The BN254 scalar field, where EZKL's circuits compute.
FIELD = 21888242871839275222246405745257275088548364400416034343698204186575808495617
SCHEMES = ("kzg", "poseidon")
KINDS = ("sum", "squares", "bound")  # what a circuit proves: see the module docstring
ROWS_PER_VALUE = 41  # Poseidon rows per hashed value (measured: 41.0-41.04, multiply-adds included)
VISIBILITY = {"kzg": "polycommit", "poseidon": "hashed"}  # EZKL's name for each scheme
KZG_INPUTS = 16  # inputs a kzg circuit takes at most: its logrows is sized for them
MAX_INPUTS = 64  # inputs a poseidon circuit takes at most
#: Bits a ``bound`` circuit takes at most: EZKL computes witnesses in i128, and S + Σ b_k 2^k stays below 2^126.
MAX_BOUND_BITS = 125
ROWS_RESERVED = 1024  # margin for the rows a circuit reserves beyond its gates
MIN_LOGROWS, MAX_LOGROWS = 12, 24
#: Bounds that keep EZKL's witness arithmetic (in i128) from overflowing: 64 products of a weight below 2^32
#: and a value below 2^63 sum to less than 2^101. Flair's weights are at most 2^16, its deltas int64.
MAX_WEIGHT, MAX_VALUE = 1 << 32, 1 << 63
#: Values a ``squares`` proof takes: 16 chunks of up to 65536 squares of them sum to less than 2^120.
MAX_SQUARED = 1 << 50
MAX_SALT = 1 << 110  # the salt a ``squares`` proof passes through: thousands of them sum inside i128
CIRCUIT_VERSION = "flair-weighted-sum-1"  # part of every cache key: change it when the circuit changes


class ProofError(FlairError):
    """EZKL failed to build, prove or verify (the message says which step and why)."""


@dataclass(frozen=True)
class Shape:
    """K weighted inputs of N values each, committed with ``scheme``. For the norm circuits (``kind``), K is the
    chunks a ``squares`` proof takes, or the bits a ``bound`` proof takes; N is the chunk size, which fixes the
    rows (so that their commitments are those of the repository's chunks)."""

    inputs: int
    size: int
    scheme: str = "kzg"
    kind: str = "sum"

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise InvalidInput(f"unknown commitment scheme {self.scheme!r}: use one of {', '.join(SCHEMES)}")
        if self.kind not in KINDS or self.kind != "sum" and self.scheme != "kzg":
            raise InvalidInput(f"unknown circuit {self.kind!r} for {self.scheme}: norm circuits are KZG ones")
        if self.kind == "bound":
            if not (1 <= self.inputs <= MAX_BOUND_BITS and 1 <= self.size <= 1 << 16):
                raise InvalidInput(f"a bound circuit takes 1 to {MAX_BOUND_BITS} bits (not {self.inputs})")
            return
        most = KZG_INPUTS if self.scheme == "kzg" else MAX_INPUTS
        if not (1 <= self.inputs <= most and 1 <= self.size <= 1 << 16):
            raise InvalidInput(f"a {self.scheme} proof circuit takes 1 to {most} inputs of 1 to 65536 values (not "
                               f"{self.inputs} x {self.size})")

    @property
    def logrows(self) -> int:
        """The fewest rows (as a power of 2) for the circuit: proving time follows 2^logrows, so no headroom
        beyond the margin (``build`` checks the real count). Poseidon: the hashes of K weights, K x N values and
        N sums. KZG: the multiply-adds of ``KZG_INPUTS`` inputs (measured: (1.5 K − 0.5) N + K/2 rows), whatever
        K is, so that every circuit of this chunk size commits alike."""
        if self.scheme == "kzg":
            rows = (3 * KZG_INPUTS - 1) * self.size // 2 + KZG_INPUTS
        else:
            rows = (self.inputs + self.inputs * self.size + self.size) * ROWS_PER_VALUE
        return max(MIN_LOGROWS, min(MAX_LOGROWS, math.ceil(math.log2(rows + ROWS_RESERVED))))


@dataclass(frozen=True)
class Circuit:
    """A built circuit: where its files are, and the hashes a repository records to name what it accepts."""

    shape: Shape
    folder: Path
    logrows: int
    srs: Path
    vk_sha256: str
    srs_sha256: str

    @property
    def compiled(self) -> Path:
        return self.folder / "circuit.ezkl"

    @property
    def settings(self) -> Path:
        return self.folder / "settings.json"

    @property
    def pk(self) -> Path:
        return self.folder / "pk.key"

    @property
    def vk(self) -> Path:
        return self.folder / "vk.key"


def felt(value: int) -> str:
    """``value`` as EZKL writes a field element: 32 little-endian bytes of ``value mod p``, in hex."""
    return (value % FIELD).to_bytes(32, "little").hex()


def felt_value(text: str) -> int:
    """The signed integer a field element stands for (values above p/2 are negative)."""
    if not isinstance(text, str) or len(text) != 64:
        raise IntegrityError("a field element is 64 hex digits")
    try:
        value = int.from_bytes(bytes.fromhex(text), "little")
    except ValueError:
        raise IntegrityError("a field element is 64 hex digits") from None
    if value >= FIELD:
        raise IntegrityError("a field element must be below the field's modulus")
    return value - FIELD if value > FIELD // 2 else value


def poseidon(values: Sequence[int]) -> str:
    """The Poseidon hash EZKL's circuits compute over ``values`` (as field elements): a commitment."""
    ezkl = _ezkl()
    if not values:
        raise InvalidInput("nothing to hash")
    with map_ezkl_errors("Poseidon hash"):
        (digest,) = ezkl.poseidon_hash([felt(int(v)) for v in values])
    return str(digest)


def commit(circuit: Circuit, values: Sequence[int]) -> str:
    """The commitment to ``values`` that ``circuit``'s proofs carry for an input or output holding them: their
    Poseidon hash, or the KZG commitment of their column (64 bytes in hex: x then y, as the proof holds them)."""
    ezkl = _ezkl()
    if circuit.shape.scheme == "poseidon":
        return poseidon(values)
    most = max(circuit.shape.size, KZG_INPUTS)
    if not values or len(values) > most:
        raise InvalidInput(f"a commitment of this circuit covers 1 to {most} values")
    with map_ezkl_errors("KZG commitment"):
        (point,) = ezkl.kzg_commit([felt(int(v)) for v in values], str(circuit.vk), str(circuit.settings),
                                   str(circuit.srs))
    return (bytes.fromhex(point.x)[::-1] + bytes.fromhex(point.y)[::-1]).hex()


def development_srs(folder: Path, logrows: int) -> Path:
    """An SRS for ``2^logrows`` rows made here with ``ezkl.gen_srs`` (cached in ``folder``). Its toxic waste is
    not destroyed, so proofs made with it convince only who trusts this machine: tests and development."""
    ezkl = _ezkl()
    path = folder / f"dev-k{logrows}.srs"
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        with _scratch(folder) as tmp:
            with map_ezkl_errors(f"SRS for 2^{logrows} rows"):
                ezkl.gen_srs(str(tmp / "srs"), logrows)
            os.replace(tmp / "srs", path)
    return path


def srs_logrows(srs: Path) -> int:
    """How many rows (as a power of 2) an SRS file is for: its first 4 bytes, little-endian."""
    with open(srs, "rb") as f:
        head = f.read(4)
    if len(head) != 4 or not 1 <= int.from_bytes(head, "little") <= 30:
        raise ProofError(f"{srs} is not an SRS file")
    return int.from_bytes(head, "little")


def build(cache: Path, shape: Shape, srs: Path) -> Circuit:
    """The circuit for ``shape`` with keys for ``srs``, built once and cached under ``cache``. A KZG circuit
    needs an SRS for exactly its rows: EZKL's prover shrinks a larger one, ``ezkl.kzg_commit`` does not, so
    commitments made with a larger one would not be those its proofs carry."""
    k = srs_logrows(srs)
    if k < shape.logrows or shape.scheme == "kzg" and k != shape.logrows:
        raise ProofError(f"the SRS {srs.name} is for 2^{k} rows; {shape.scheme} circuits for chunks of {shape.size} "
                         f"need one for {'exactly ' if shape.scheme == 'kzg' else ''}2^{shape.logrows} (EZKL "
                         f"publishes one per size, kzg{shape.logrows}.srs)")
    srs_sha = sha256_file(srs)
    named = [CIRCUIT_VERSION, _ezkl_version(), shape.scheme, shape.inputs, shape.size, shape.logrows, srs_sha]
    if shape.kind != "sum":
        named.append(shape.kind)
    key = hashlib.sha256(json.dumps(named).encode()).hexdigest()
    folder = cache / key[:32]
    if not (folder / "vk.key").exists():
        cache.mkdir(parents=True, exist_ok=True)
        with _scratch(cache) as tmp:
            _build_into(tmp, shape, srs)
            with contextlib.suppress(OSError):  # another process finished the same build first: keep theirs
                os.rename(tmp, folder)
    return Circuit(shape, folder, shape.logrows, srs, sha256_file(folder / "vk.key"), srs_sha)


def prove(circuit: Circuit, weights: Sequence[int], chunks: Sequence[Sequence[int]]) -> bytes:
    """A proof that ``Σ_i weights[i] · chunks[i]`` is what it is; the proof file's bytes (JSON)."""
    shape = circuit.shape
    if shape.kind != "sum":
        raise InvalidInput(f"a {shape.kind} circuit does not prove weighted sums")
    if len(weights) != shape.inputs or len(chunks) != shape.inputs or any(len(c) != shape.size for c in chunks):
        raise InvalidInput(f"this circuit proves {shape.inputs} weights and {shape.inputs} chunks of {shape.size}")
    if any(abs(int(w)) >= MAX_WEIGHT for w in weights) or any(abs(int(v)) >= MAX_VALUE for c in chunks for v in c):
        raise InvalidInput("proven weights are below 2^32 and values below 2^63 in magnitude")
    return _prove(circuit, [weights, *chunks])


def prove_squares(circuit: Circuit, salt: int, chunks: Sequence[Sequence[int]]) -> bytes:
    """A proof that the pair ``[Σ x², salt]`` over ``chunks`` is what it is (a ``squares`` circuit)."""
    shape = circuit.shape
    if shape.kind != "squares" or len(chunks) != shape.inputs or any(len(c) != shape.size for c in chunks):
        raise InvalidInput(f"this circuit does not prove the squares of {len(chunks)} chunks")
    if not 0 <= salt < MAX_SALT or any(abs(int(v)) >= MAX_SQUARED for c in chunks for v in c):
        raise InvalidInput(f"a salt is below 2^{MAX_SALT.bit_length() - 1} and squared values below "
                           f"2^{MAX_SQUARED.bit_length() - 1}")
    return _prove(circuit, [[salt], *chunks])


def prove_bound(circuit: Circuit, totals: Sequence[int], bits: Sequence[int], salt: int) -> bytes:
    """A proof that ``totals[0] + Σ_k bits[k] 2^k`` and each ``bits[k]² − bits[k]`` are what they are (a ``bound``
    circuit), with ``totals`` and the bits (followed by ``salt``, which hides them) committed."""
    shape = circuit.shape
    if shape.kind != "bound" or len(totals) != 2 or len(bits) != shape.inputs:
        raise InvalidInput(f"this circuit does not prove a bound with {len(bits)} bits")
    return _prove(circuit, [totals, [*bits, salt]])


def _prove(circuit: Circuit, columns: Sequence[Sequence[int]]) -> bytes:
    ezkl = _ezkl()
    shape = circuit.shape
    # as field elements, not numbers: EZKL reads numbers as float32, which would round values beyond 2^24
    data = {"input_data": [[felt(int(v)) for v in column] for column in columns]}
    with _scratch(circuit.folder.parent) as tmp:
        (tmp / "input.json").write_text(json.dumps(data))
        what = f"{shape.inputs} x {shape.size}"
        keys = {"vk_path": str(circuit.vk), "srs_path": str(circuit.srs)} if shape.scheme == "kzg" else {}
        with map_ezkl_errors(f"witness for {what}") as call:
            call(ezkl.gen_witness(str(tmp / "input.json"), str(circuit.compiled), str(tmp / "witness.json"), **keys))
        with map_ezkl_errors(f"proof of {what}") as call:
            call(ezkl.prove(str(tmp / "witness.json"), str(circuit.compiled), str(circuit.pk), str(tmp / "proof.json"),
                            str(circuit.srs)))
        return (tmp / "proof.json").read_bytes()


def verify(circuit: Circuit, proof: bytes) -> list[str]:
    """Check ``proof`` with the circuit's verifying key; the commitments it carries (weights, each chunk, the
    sums: Poseidon hashes as its public values, or the KZG commitments it opens with). ``IntegrityError`` if it
    does not verify or is not a proof of this shape. This checks the proof against the commitments *in the
    proof*: the caller compares them with what was published. For a ``squares`` circuit: the salt's, each
    chunk's and the pair's; for a ``bound`` circuit: the totals', the bits', then its 1 + K public values."""
    ezkl = _ezkl()
    shape = circuit.shape
    count = 2 if shape.kind == "bound" else shape.inputs + 2
    public = shape.inputs + 1 if shape.kind == "bound" else 0
    try:
        parsed = json.loads(proof)
        instances, raw = parsed["instances"], parsed["proof"]
    except (ValueError, KeyError, TypeError):
        raise IntegrityError("a proof is the JSON EZKL writes, with 'instances' and 'proof'") from None
    if not (isinstance(instances, list) and len(instances) == 1 and isinstance(instances[0], list)
            and all(isinstance(v, str) for v in instances[0])):
        raise IntegrityError("a proof's public values are one list of field elements")
    if shape.scheme == "kzg":
        if len(instances[0]) != public:
            raise IntegrityError(f"a proof of this circuit has {public} public values")
        for value in instances[0]:
            felt_value(value)  # well-formed field elements
        if not (isinstance(raw, list) and len(raw) >= 64 * count and all(type(b) is int and 0 <= b < 256
                                                                          for b in raw[:64 * count])):
            raise IntegrityError(f"a proof of this circuit opens with {count} commitments of 64 bytes")
        commitments = [bytes(raw[64 * i:64 * (i + 1)]).hex() for i in range(count)] + list(instances[0])
    else:
        if len(instances[0]) != count:
            raise IntegrityError(f"a proof of this circuit has {count} public values")
        for value in instances[0]:
            felt_value(value)  # well-formed field elements
        commitments = list(instances[0])
    with _scratch(circuit.folder.parent) as tmp:
        atomic_write(tmp / "proof.json", proof)
        try:
            with map_ezkl_errors("verification") as call:
                call(ezkl.verify(str(tmp / "proof.json"), str(circuit.settings), str(circuit.vk), str(circuit.srs)))
        except ProofError:  # false, or a panic on a malformed proof
            raise IntegrityError("the proof does not verify against this circuit's verifying key") from None
    return commitments


def export_onnx(path: Path, shape: Shape) -> None:
    """The module for ``shape`` as ONNX: for a weighted sum, K weights and K chunks of N values in, N sums out;
    for the norm circuits, see the module docstring."""
    import torch

    if shape.kind != "sum":
        _export_norm_onnx(path, shape)
        return

    class WeightedSum(torch.nn.Module):
        def forward(self, weights: torch.Tensor, *chunks: torch.Tensor) -> torch.Tensor:
            total = weights[0] * chunks[0]
            for i in range(1, len(chunks)):
                total = total + weights[i] * chunks[i]
            return total

    example = (torch.zeros(shape.inputs), *(torch.zeros(shape.size) for _ in range(shape.inputs)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated; it is what EZKL's tract reads
        torch.onnx.export(WeightedSum(), example, str(path), dynamo=False,
                          input_names=["weights", *(f"chunk{i}" for i in range(shape.inputs))],
                          output_names=["sums"])


def _export_norm_onnx(path: Path, shape: Shape) -> None:
    import torch

    class Squares(torch.nn.Module):
        def forward(self, salt: torch.Tensor, *chunks: torch.Tensor) -> torch.Tensor:
            total = (chunks[0] * chunks[0]).sum(dim=0, keepdim=True)
            for chunk in chunks[1:]:
                total = total + (chunk * chunk).sum(dim=0, keepdim=True)
            return torch.cat([total, salt])

    class Bound(torch.nn.Module):
        def forward(self, totals: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
            bits = bits[:-1]  # the last value is the salt: committed with the bits, hiding them
            value = bits[-1:]
            for k in range(bits.shape[0] - 2, -1, -1):  # Horner: only the constant 2, exact at scale 0
                value = value * 2 + bits[k:k + 1]
            return torch.cat([totals[:1] + value, bits * bits - bits])

    if shape.kind == "squares":
        module: torch.nn.Module = Squares()
        example: tuple[torch.Tensor, ...] = (torch.zeros(1), *(torch.zeros(shape.size) for _ in range(shape.inputs)))
        names = ["salt", *(f"chunk{i}" for i in range(shape.inputs))]
    else:
        module, example, names = Bound(), (torch.zeros(2), torch.zeros(shape.inputs + 1)), ["totals", "bits"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # as in export_onnx
        torch.onnx.export(module, example, str(path), dynamo=False, input_names=names, output_names=["out"])


def run_args(logrows: int, visibility: str) -> Any:
    """EZKL's run arguments for the weighted sum: integers at scale 0, no range checks on inputs and outputs,
    inputs and outputs with ``visibility`` (``polycommit`` or ``hashed``; ``public`` for the naive baseline)."""
    args = _ezkl().PyRunArgs()
    args.input_visibility = args.output_visibility = visibility
    args.param_visibility = "fixed"
    args.input_scale = args.param_scale = 0
    args.ignore_range_check_inputs_outputs = True
    args.logrows = logrows
    return args


# -- internals -----------------------------------------------------------------------------------------


def _build_into(folder: Path, shape: Shape, srs: Path) -> None:
    ezkl = _ezkl()
    export_onnx(folder / "circuit.onnx", shape)
    args = run_args(shape.logrows, VISIBILITY[shape.scheme])
    if shape.kind == "bound":
        args.output_visibility = "public"
    what = f"{shape.inputs} x {shape.size}"
    with map_ezkl_errors(f"settings for {what}") as call:
        call(ezkl.gen_settings(str(folder / "circuit.onnx"), str(folder / "settings.json"), py_run_args=args))
    settings = json.loads((folder / "settings.json").read_text())
    # EZKL lists the range checks and lookups a circuit needs in a hash set's order, which differs from run to
    # run, and the layout, so the verifying key, follows it: sorted, every node builds the same key (measured:
    # two builds of the bound circuit gave two keys about one time in two)
    for name in ("required_range_checks", "required_lookups"):
        if isinstance(settings.get(name), list):
            settings[name] = sorted(settings[name], key=json.dumps)
    atomic_write(folder / "settings.json", json.dumps(settings).encode())
    rows = settings.get("num_rows", 0)
    if rows + ROWS_RESERVED // 4 > 1 << shape.logrows:
        raise ProofError(f"{what} needs {rows} rows, more than the 2^{shape.logrows} its shape allows for")
    with map_ezkl_errors(f"compile for {what}") as call:
        call(ezkl.compile_circuit(str(folder / "circuit.onnx"), str(folder / "circuit.ezkl"),
                                  str(folder / "settings.json")))
    with map_ezkl_errors(f"setup for {what}") as call:
        call(ezkl.setup(str(folder / "circuit.ezkl"), str(folder / "vk.key"), str(folder / "pk.key"), str(srs)))


def _ezkl() -> Any:
    """The ``ezkl`` module, imported on first use (it is large, and only proofs need it). Typed ``Any``: its
    stubs lag its run time (they declare no attributes on ``PyRunArgs`` or ``PyG1Affine``, and no defaults for
    ``verify``'s and ``setup``'s optional arguments), and nothing of it leaves this module untranslated."""
    import ezkl

    return ezkl


@contextlib.contextmanager
def map_ezkl_errors(what: str) -> Iterator[Callable[[object], None]]:
    """Run one EZKL step: what it raises becomes ``ProofError`` ("EZKL <what> failed: <its error>"), its Rust
    panics included (pyo3 raises those as ``BaseException``s; ``KeyboardInterrupt`` and ``SystemExit`` pass).
    Yields ``call``, to hand it what the step returned: EZKL reports some failures by returning ``False``."""
    def call(result: object) -> None:
        if result is False:
            raise ProofError(f"EZKL {what} failed")

    try:
        yield call
    except (KeyboardInterrupt, SystemExit, FlairError):
        raise
    except BaseException as exc:
        raise ProofError(f"EZKL {what} failed: {exc}") from None


SCRATCH_PREFIXES = (".tmp-", ".job-")


def remove_scratch(root: Path) -> int:
    """Delete every scratch folder (``SCRATCH_PREFIXES``) under ``root``, left by a process killed mid-step; how
    many. Only safe while no build, proof or worker uses ``root`` (a daemon starting, holding its home's lock)."""
    removed = 0
    if not root.is_dir():
        return 0
    for folder, subfolders, _ in os.walk(root):
        for name in list(subfolders):
            if name.startswith(SCRATCH_PREFIXES):
                subfolders.remove(name)
                path = Path(folder) / name
                if not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                    removed += 1
    return removed


@contextlib.contextmanager
def _scratch(parent: Path) -> Iterator[Path]:
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=parent))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def sha256_file(path: Path) -> str:
    """The SHA-256 of a file, in hex: how a repository names the SRS it accepts."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _ezkl_version() -> str:
    from importlib.metadata import version

    return version("ezkl")
