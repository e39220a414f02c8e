"""anchor_program/build.py on its own: small C programs compiled with clang-19, linked by Flair's SBPF v0 linker and
run in LiteSVM (in process; the root conftest.py deals with what that does to the FP state), and the programs
the linker must refuse.

clang-19 is required, not optional: without it these tests fail with the install hint (CI installs it)."""

from __future__ import annotations

import importlib.util
import os
import struct
import sys
from pathlib import Path
from types import ModuleType

import pytest
from solders.instruction import Instruction
from solders.keypair import Keypair
from solders.litesvm import LiteSVM
from solders.pubkey import Pubkey
from solders.transaction import Transaction
from solders.transaction_metadata import FailedTransactionMetadata, TransactionMetadata
from solders.transaction_status import InstructionErrorCustom, TransactionErrorInstructionError


def _load_build() -> ModuleType:
    """anchor_program is not a package: load its build.py by path, once (contracts_tests/conftest.py shares it)."""
    if "flair_anchor_build" not in sys.modules:
        path = Path(__file__).resolve().parents[2] / "anchor_program" / "build.py"
        spec = importlib.util.spec_from_file_location("flair_anchor_build", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    return sys.modules["flair_anchor_build"]


build = _load_build()

PRELUDE = """
typedef unsigned long long u64;
typedef unsigned char u8;
extern void sol_log_(const char *message, u64 len);
#define LOG(s) sol_log_((s), sizeof(s) - 1)
/* With no accounts, the input is: u64 0 (accounts), u64 data length, the data, the program id. */
#define DATA(input) ((input) + 16)
"""

LOGS_AND_CALLS = PRELUDE + """
static const u64 table[4] = {7, 1007, 2007, 3007};

static __attribute__((noinline)) u64 check_table(const u8 *data) {
    u64 i = data[0] & 3;
    return table[i] == i * 1000 + 7 ? 0 : 2;
}

__attribute__((noinline)) u64 say(const u8 *data) {
    static const char second[] = "hello from a second function";
    LOG(second);
    return check_table(data);
}

u64 entrypoint(const u8 *input) {
    LOG("hello from flair");
    return say(DATA(input));
}
"""

CUSTOM_ERROR = """
typedef unsigned long long u64;
u64 entrypoint(const unsigned char *input) { (void)input; return 6003; }
"""

FUNCTION_POINTERS = PRELUDE + """
static __attribute__((noinline)) void one(void) { LOG("one"); }
static __attribute__((noinline)) void two(void) { LOG("two"); }
u64 entrypoint(const u8 *input) {
    void (*volatile f)(void) = DATA(input)[0] ? two : one;
    f();
    return 0;
}
"""


def objectfile(tmp_path: Path, source: str, name: str = "program") -> bytes:
    c = tmp_path / f"{name}.c"
    c.write_text(source)
    obj: Path = build.compile([c], tmp_path / f"{name}.o", include=tmp_path)
    return obj.read_bytes()


def run(program: bytes, data: bytes = b"\0") -> TransactionMetadata | FailedTransactionMetadata:
    svm = LiteSVM()
    program_id = Pubkey.new_unique()
    svm.add_program(program_id, program)
    payer = Keypair()
    svm.airdrop(payer.pubkey(), 10**9)
    tx = Transaction.new_signed_with_payer([Instruction(program_id, data, [])], payer.pubkey(), [payer],
                                           svm.latest_blockhash())
    return svm.send_transaction(tx)


def sections(so: bytes) -> dict[str, tuple[int, int, int, int]]:
    """Each section's (type, address, offset, size), by name."""
    shoff, shnum, shstrndx = struct.unpack_from("<Q", so, 40)[0], *struct.unpack_from("<HH", so, 60)
    headers = [struct.unpack_from("<IIQQQQIIQQ", so, shoff + 64 * i) for i in range(shnum)]
    names = headers[shstrndx][4]
    out = {}
    for name, type_, _, addr, offset, size, *_ in headers:
        out[so[names + name:so.index(b"\0", names + name)].decode()] = (type_, addr, offset, size)
    return out


def dynamic_symbols(so: bytes) -> list[str]:
    _, _, dynsym, size = sections(so)[".dynsym"]
    dynstr = sections(so)[".dynstr"][2]
    names = [struct.unpack_from("<I", so, dynsym + at)[0] for at in range(24, size, 24)]
    return [so[dynstr + n:so.index(b"\0", dynstr + n)].decode() for n in names]


def test_a_program_logs_and_calls_its_own_functions(tmp_path: Path) -> None:
    so = build.link(objectfile(tmp_path, LOGS_AND_CALLS))
    for data in (b"\0", b"\2", b"\3"):
        result = run(so, data)
        assert isinstance(result, TransactionMetadata), result
        logs = list(result.logs())
        assert "Program log: hello from flair" in logs
        assert "Program log: hello from a second function" in logs
        assert logs[-1].endswith(" success")
    # The program's own functions are linked in, not left to the loader: the only import is the syscall.
    assert dynamic_symbols(so) == ["sol_log_"]


def test_a_custom_error_code_fails_the_transaction(tmp_path: Path) -> None:
    result = run(build.link(objectfile(tmp_path, CUSTOM_ERROR)))
    assert isinstance(result, FailedTransactionMetadata), result
    err = result.err()
    assert isinstance(err, TransactionErrorInstructionError), err
    assert isinstance(err.err, InstructionErrorCustom) and err.err.code == 6003, err
    assert any(line.endswith("custom program error: 0x1773") for line in result.meta().logs())


def test_calls_through_function_pointers(tmp_path: Path) -> None:
    # lddw of a function's address, then callx, whose register the linker moves to where SBPF v0 reads it.
    so = build.link(objectfile(tmp_path, FUNCTION_POINTERS))
    for data, expected in ((b"\0", "Program log: one"), (b"\1", "Program log: two")):
        result = run(so, data)
        assert isinstance(result, TransactionMetadata), result
        assert expected in result.logs()


@pytest.mark.parametrize(("source", "section"), [
    ("static int counter;", r"\.bss"),
    ("static int counter = 5;", r"\.data"),
])
def test_a_writable_global_is_refused(tmp_path: Path, source: str, section: str) -> None:
    obj = objectfile(tmp_path, PRELUDE + source + """
u64 entrypoint(const u8 *input) { counter++; return (u64)counter + input[0]; }
""")
    with pytest.raises(build.LinkError, match=rf"section {section} \(counter\) is writable"):
        build.link(obj)


def test_a_missing_entrypoint_is_refused(tmp_path: Path) -> None:
    obj = objectfile(tmp_path, PRELUDE + "u64 main_(const u8 *input) { return input[0]; }\n")
    with pytest.raises(build.LinkError, match="no global function `entrypoint`"):
        build.link(obj)


def test_a_call_to_an_undefined_memcpy_is_refused(tmp_path: Path) -> None:
    obj = objectfile(tmp_path, PRELUDE + """
void *memcpy(void *dst, const void *src, unsigned long n);
u64 entrypoint(const u8 *input) { memcpy((u8 *)DATA(input), input, input[8]); return 0; }
""")
    with pytest.raises(build.LinkError, match=r"call to memcpy at entrypoint\+0x[0-9a-f]+ .*define memcpy"):
        build.link(obj)


def test_a_second_executable_section_is_refused(tmp_path: Path) -> None:
    obj = objectfile(tmp_path, PRELUDE + """
__attribute__((section(".text.other"))) u64 entrypoint(const u8 *input) { return input[0]; }
""")
    with pytest.raises(build.LinkError, match=r"exactly one executable section.*\.text\.other"):
        build.link(obj)


def test_the_output_is_deterministic_and_laid_out_as_the_loader_requires(tmp_path: Path) -> None:
    obj = objectfile(tmp_path, LOGS_AND_CALLS)
    so = build.link(obj)
    assert build.link(obj) == so

    ident, e_type, machine, _, entry, phoff, _, flags = struct.unpack_from("<16sHHIQQQI", so)
    assert ident[:8] == b"\x7fELF\x02\x01\x01\x00"  # ELF64, little-endian, OSABI 0
    assert (e_type, machine, flags, phoff) == (3, 247, 0, 64)  # ET_DYN, EM_BPF, SBPF v0
    found = sections(so)
    assert list(found) == ["", ".text", ".rodata", ".dynamic", ".dynsym", ".dynstr", ".rel.dyn", ".shstrtab"]
    for name, (_, addr, offset, _) in found.items():
        assert addr == offset, name
    _, _, text, text_size = found[".text"]
    assert text <= entry < text + text_size and entry % 8 == 0
    assert found[".dynsym"][2] % 8 == 0 and found[".rel.dyn"][2] % 8 == 0
    load, dynamic = struct.unpack_from("<IIQQQQQQ", so, 64), struct.unpack_from("<IIQQQQQQ", so, 64 + 56)
    assert load[:4] == (1, 5, 0, 0) and load[5] == found[".rel.dyn"][2] + found[".rel.dyn"][3]  # PT_LOAD, R|X
    assert dynamic[0] == 2 and dynamic[2] == found[".dynamic"][2]  # PT_DYNAMIC


def test_build_skips_work_when_the_program_is_newer_than_its_sources(tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    (source / "sol.h").write_text(PRELUDE)
    (source / "registry.c").write_text('#include "sol.h"\nu64 entrypoint(const u8 *input) { return input[0]; }\n')
    out = tmp_path / "target" / "registry.so"

    assert build.build(source, out) == out
    built = out.stat()
    assert build.build(source, out).stat().st_ino == built.st_ino  # up to date: not rewritten

    earlier = built.st_mtime_ns - 10_000_000_000
    os.utime(out, ns=(earlier, earlier))  # as if sol.h had changed since
    rebuilt = build.build(source, out).stat()
    assert rebuilt.st_ino != built.st_ino  # rebuilt
    assert build.build(source, out).stat().st_ino == rebuilt.st_ino
    assert build.build(source, out, force=True).stat().st_ino != rebuilt.st_ino
    assert [p.name for p in out.parent.iterdir()] == ["registry.so"]  # no temporary files left behind


def test_a_missing_source_is_reported(tmp_path: Path) -> None:
    with pytest.raises(build.BuildError, match=r"registry\.c does not exist"):
        build.build(tmp_path, tmp_path / "out.so")
