"""Build flair_registry, Flair's on-chain program: compile its C with Debian's clang-19 for the upstream BPF
target, then link the relocatable object into the shared object Solana's loader (SBPF v0) runs.

No linker that ships with Debian can do the second step (``ld.lld`` refuses ``EM_BPF``, GNU ``bpf-ld`` has no
``-shared``), so ``link`` is Flair's own. It accepts what clang makes of one C file that keeps to Solana's rules
and refuses the rest with a ``LinkError`` naming the section, symbol or relocation at fault:

- one executable section, ``.text``; every ``.rodata*`` section is merged into one ``.rodata``; no writable
  section (an SBPF v0 program has no writable static data: state lives in accounts);
- relocations only in ``.rel.text``, of two types: ``R_BPF_64_64`` (an ``lddw`` of an address: the linker writes
  the address as a file offset and leaves an ``R_BPF_64_RELATIVE`` for the loader, which adds the program's base)
  and ``R_BPF_64_32`` (a call: to a function of the program it becomes a pc-relative call; to an undefined symbol,
  a syscall such as ``sol_log_``, it stays an ``R_BPF_64_32`` against that name, which the loader replaces by the
  syscall's murmur3 hash);
- a global function ``entrypoint``, the program's entry.

The output holds, in this order, the ELF header, two program headers (``PT_LOAD`` over everything up to the end
of ``.rel.dyn``, ``PT_DYNAMIC``), ``.text``, ``.rodata``, ``.dynamic``, ``.dynsym``, ``.dynstr``, ``.rel.dyn``,
``.shstrtab`` and the section headers, each section's address equal to its file offset. The same object always
links to the same bytes.

Errors::

    BuildError
    ├── ToolchainMissing    clang-19 is not on PATH
    ├── CompileError        clang refused the source
    └── LinkError           the object cannot be made into an SBPF v0 program

Run ``python anchor_program/build.py [--out PATH] [--force]`` (or ``scripts/build-program``). This file uses
only the standard library, so the build needs nothing but clang-19 and Python.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
SOURCE_DIR = HERE / "src"
OUT = HERE / "target" / "flair_registry.so"
MAIN_SOURCE = "registry.c"

CLANG = "clang-19"
CFLAGS = ("-target", "bpfel", "-mcpu=v1", "-O2", "-fPIC", "-fno-builtin", "-ffreestanding", "-fno-jump-tables",
          "-Wall", "-Wextra", "-Werror", "-std=c11",
          # Upstream BPF allows a function 512 bytes of stack; an SBPF v0 call frame has 4 KiB.
          "-mllvm", "-bpf-stack-size=4096")

#: libc's names, which no syscall answers to (upstream clang refuses to emit these calls itself for BPF, so a call
#: to one comes from the source).
COMPILER_RUNTIME = frozenset({"memcpy", "memset", "memmove", "memcmp"})


class BuildError(Exception):
    """Root of this module's errors; the message says what was wrong and what to do."""


class ToolchainMissing(BuildError):
    """clang-19 is not installed."""


class CompileError(BuildError):
    """clang refused the program's source."""


class LinkError(BuildError):
    """The object uses something an SBPF v0 program cannot have, or something this linker does not handle."""


# --- ELF ----------------------------------------------------------------------------------------------------------

EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
PHDR = struct.Struct("<IIQQQQQQ")
SHDR = struct.Struct("<IIQQQQIIQQ")
SYM = struct.Struct("<IBBHQQ")
REL = struct.Struct("<QQ")
DYN = struct.Struct("<qQ")

ET_REL, ET_DYN = 1, 3
EM_BPF = 247
SHT_PROGBITS, SHT_SYMTAB, SHT_STRTAB, SHT_RELA, SHT_DYNAMIC, SHT_NOBITS, SHT_REL, SHT_DYNSYM = 1, 2, 3, 4, 6, 8, 9, 11
SHF_WRITE, SHF_ALLOC, SHF_EXECINSTR = 0x1, 0x2, 0x4
SHN_UNDEF = 0
STB_LOCAL, STB_GLOBAL, STB_WEAK = 0, 1, 2
STT_NOTYPE, STT_FUNC, STT_SECTION = 0, 2, 3
PT_LOAD, PT_DYNAMIC = 1, 2
PF_X, PF_W, PF_R = 1, 2, 4
DT_NULL, DT_STRTAB, DT_SYMTAB, DT_STRSZ, DT_SYMENT, DT_REL, DT_RELSZ, DT_RELENT = 0, 5, 6, 10, 11, 17, 18, 19
R_BPF_64_64, R_BPF_64_RELATIVE, R_BPF_64_32 = 1, 8, 10
RELOCATION_NAMES = {0: "R_BPF_NONE", 1: "R_BPF_64_64", 2: "R_BPF_64_ABS64", 3: "R_BPF_64_ABS32",
                    4: "R_BPF_64_NODYLD32", 8: "R_BPF_64_RELATIVE", 10: "R_BPF_64_32"}

INSN = 8  # bytes per BPF instruction slot; lddw takes two
OP_LDDW, OP_CALL, OP_CALLX = 0x18, 0x85, 0x8D
SECTION_NAMES = ("", ".text", ".rodata", ".dynamic", ".dynsym", ".dynstr", ".rel.dyn", ".shstrtab")


def _align(n: int, alignment: int) -> int:
    return -(-n // alignment) * alignment


@dataclass(frozen=True)
class _Section:
    index: int
    name: str
    type: int
    flags: int
    size: int
    link: int
    info: int
    align: int
    data: bytes


@dataclass(frozen=True)
class _Symbol:
    name: str
    bind: int
    type: int
    shndx: int
    value: int
    size: int


@dataclass(frozen=True)
class _Object:
    sections: list[_Section]
    symbols: list[_Symbol]


def _cstring(table: bytes, offset: int) -> str:
    end = table.find(b"\0", offset)
    if end < 0:
        raise LinkError(f"string at offset {offset} of a string table is not terminated")
    return table[offset:end].decode("utf-8", "replace")


def _parse(obj: bytes) -> _Object:
    if len(obj) < EHDR.size or obj[:4] != b"\x7fELF":
        raise LinkError("not an ELF file")
    ident, e_type, machine, _, _, _, shoff, _, _, _, _, shentsize, shnum, shstrndx = EHDR.unpack_from(obj)
    if ident[4] != 2 or ident[5] != 1:
        raise LinkError("not a 64-bit little-endian ELF file: compile with `-target bpfel`")
    if machine != EM_BPF or e_type != ET_REL:
        raise LinkError(f"not a BPF relocatable object (e_machine {machine}, e_type {e_type}): "
                        "pass the .o that `clang-19 -target bpfel -c` wrote")
    if shentsize != SHDR.size or shoff + shnum * SHDR.size > len(obj) or shstrndx >= shnum:
        raise LinkError("the section header table is malformed")
    raw = [SHDR.unpack_from(obj, shoff + i * SHDR.size) for i in range(shnum)]
    names = obj[raw[shstrndx][4]:raw[shstrndx][4] + raw[shstrndx][5]]
    sections = []
    for i, (name, type_, flags, _, offset, size, link, info, align, _) in enumerate(raw):
        if type_ != SHT_NOBITS and offset + size > len(obj):
            raise LinkError(f"section {i} lies outside the file")
        sections.append(_Section(i, _cstring(names, name), type_, flags, size, link, info, max(align, 1),
                                 b"" if type_ == SHT_NOBITS else obj[offset:offset + size]))
    symtabs = [s for s in sections if s.type == SHT_SYMTAB]
    if len(symtabs) != 1:
        raise LinkError(f"expected one symbol table, found {len(symtabs)}")
    strtab = sections[symtabs[0].link].data
    symbols = []
    for at in range(0, len(symtabs[0].data), SYM.size):
        name, info, _, shndx, value, size = SYM.unpack_from(symtabs[0].data, at)
        type_ = info & 0xF
        label = sections[shndx].name if type_ == STT_SECTION and shndx < len(sections) else _cstring(strtab, name)
        symbols.append(_Symbol(label, info >> 4, type_, shndx, value, size))
    return _Object(sections, symbols)


# --- the linker ---------------------------------------------------------------------------------------------------


def _symbols_in(o: _Object, section: _Section) -> str:
    names = sorted({s.name for s in o.symbols if s.shndx == section.index and s.type != STT_SECTION and s.name})
    return f" ({', '.join(names)})" if names else ""


def _classify(o: _Object) -> tuple[_Section, list[_Section]]:
    """The object's ``.text`` and its ``.rodata*`` sections; refuses any other allocated section."""
    texts, rodata = [], []
    for s in o.sections:
        if not s.flags & SHF_ALLOC:
            continue  # symbol tables, .llvm_addrsig, debug info, ...: not part of the program
        if s.flags & SHF_WRITE:
            raise LinkError(
                f"section {s.name}{_symbols_in(o, s)} is writable: an SBPF v0 program has no writable static data "
                "(no .bss, no .data); make the variable const, or keep the state in an account")
        if s.flags & SHF_EXECINSTR:
            texts.append(s)
        elif s.name == ".rodata" or s.name.startswith(".rodata."):
            rodata.append(s)
        else:
            raise LinkError(f"section {s.name}{_symbols_in(o, s)} is not .text or .rodata*, which is all this "
                            "linker places")
    if [s.name for s in texts] != [".text"]:
        raise LinkError(f"the program needs exactly one executable section, .text; it has "
                        f"{', '.join(s.name for s in texts) or 'none'}: build without -ffunction-sections and "
                        "without section attributes on functions")
    return texts[0], rodata


class _Linker:
    """Places the object's sections and resolves its ``.text`` relocations into ``text`` and ``dynamic``."""

    def __init__(self, o: _Object, text: _Section, rodata: list[_Section], text_off: int) -> None:
        self.o = o
        self.text_section = text
        self.text = bytearray(text.data)
        self.text_off = text_off
        self.base = {text.index: text_off}  # input section index -> its file offset in the output
        self.rodata = bytearray()
        self.rodata_off = _align(text_off + len(self.text), max([8, *(s.align for s in rodata)]))
        for s in rodata:
            self.rodata += bytes(_align(len(self.rodata), s.align) - len(self.rodata))
            self.base[s.index] = self.rodata_off + len(self.rodata)
            self.rodata += s.data if s.type != SHT_NOBITS else bytes(s.size)
        self.imports: dict[str, int] = {}  # syscall name -> .dynsym index, in order of first use
        self.dynamic: list[tuple[int, int, int]] = []  # (offset, type, .dynsym index) for .rel.dyn

    def where(self, offset: int) -> str:
        """``entrypoint+0x10 (.text+0x58)`` for a byte offset into .text."""
        for s in self.o.symbols:
            if s.shndx == self.text_section.index and s.type == STT_FUNC and s.value <= offset < s.value + s.size:
                return f"{s.name}+{offset - s.value:#x} (.text+{offset:#x})"
        return f".text+{offset:#x}"

    def relocate(self) -> None:
        for rs in self.o.sections:
            if rs.type not in (SHT_REL, SHT_RELA):
                continue
            target = self.o.sections[rs.info]
            if not target.flags & SHF_ALLOC:
                continue  # relocations of debug info, dropped with it
            if target.index != self.text_section.index:
                raise LinkError(f"relocation section {rs.name} relocates {target.name}: only .text may hold "
                                "relocations (a table of pointers in read-only data cannot be linked here)")
            if rs.type == SHT_RELA:
                raise LinkError(f"relocation section {rs.name} is RELA; clang emits REL for BPF")
            for at in range(0, len(rs.data), REL.size):
                offset, info = REL.unpack_from(rs.data, at)
                self.apply(offset, info & 0xFFFFFFFF, self.o.symbols[info >> 32])
        self.dynamic.sort()

    def callx_to_sbpf(self) -> None:
        """Upstream BPF names ``callx``'s register in dst; SBPF v0 reads it from the immediate."""
        at = 0
        while at < len(self.text):
            opcode, registers, imm = self.text[at], self.text[at + 1], struct.unpack_from("<i", self.text, at + 4)[0]
            if opcode == OP_CALLX and registers & 0xF and imm == 0:
                self.text[at + 1] = registers & 0xF0
                struct.pack_into("<i", self.text, at + 4, registers & 0xF)
            at += 2 * INSN if opcode == OP_LDDW else INSN

    def apply(self, offset: int, type_: int, sym: _Symbol) -> None:
        if type_ == R_BPF_64_64:
            self.address(offset, sym)
        elif type_ == R_BPF_64_32:
            self.call(offset, sym)
        else:
            name = RELOCATION_NAMES.get(type_, "unknown")
            raise LinkError(f"relocation type {type_} ({name}) against {sym.name or '?'} at {self.where(offset)}: "
                            "only R_BPF_64_64 (an lddw) and R_BPF_64_32 (a call) are supported in .text")

    def instruction(self, offset: int, opcode: int, slots: int, what: str, sym: _Symbol) -> None:
        if offset % INSN or offset + slots * INSN > len(self.text) or self.text[offset] != opcode:
            raise LinkError(f"the relocation against {sym.name} at {self.where(offset)} is not on {what}")

    def address(self, offset: int, sym: _Symbol) -> None:
        """``lddw rX, sym + addend``: the file offset of the target, plus an R_BPF_64_RELATIVE for the loader."""
        self.instruction(offset, OP_LDDW, 2, "an lddw instruction", sym)
        if sym.shndx not in self.base:
            what = "undefined (extern data is not supported)" if sym.shndx == SHN_UNDEF else "not in .text or .rodata"
            raise LinkError(f"lddw of the address of {sym.name} at {self.where(offset)}: the symbol is {what}")
        (lo,), (hi,) = struct.unpack_from("<I", self.text, offset + 4), struct.unpack_from("<I", self.text, offset + 12)
        address = self.base[sym.shndx] + sym.value + (hi << 32 | lo)  # REL: the addend sits in the immediates
        struct.pack_into("<I", self.text, offset + 4, address & 0xFFFFFFFF)
        struct.pack_into("<I", self.text, offset + 12, address >> 32)
        self.dynamic.append((self.text_off + offset, R_BPF_64_RELATIVE, 0))

    def call(self, offset: int, sym: _Symbol) -> None:
        self.instruction(offset, OP_CALL, 1, "a call instruction", sym)
        if sym.shndx == SHN_UNDEF:
            if sym.name in COMPILER_RUNTIME:
                raise LinkError(f"call to {sym.name} at {self.where(offset)}: there is no libc on chain and no "
                                f"syscall of that name; define {sym.name} in the program (over sol_memcpy_, "
                                "sol_memset_, ... or as a loop)")
            self.imports.setdefault(sym.name, len(self.imports) + 1)
            # The loader reads an immediate other than -1 as a pc-relative call, so a syscall's must be -1.
            struct.pack_into("<i", self.text, offset + 4, -1)
            self.dynamic.append((self.text_off + offset, R_BPF_64_32, self.imports[sym.name]))
            return
        if sym.shndx != self.text_section.index:
            raise LinkError(f"call to {sym.name} at {self.where(offset)}: the symbol is not a function in .text")
        # LLVM stores a call's addend A in the immediate as (A - 8) / 8: -1 against a function's own symbol, the
        # callee's offset against the .text section symbol.
        imm = struct.unpack_from("<i", self.text, offset + 4)[0]
        target = sym.value + (imm + 1) * INSN
        relative = target // INSN - (offset // INSN + 1)
        if target % INSN or not 0 <= target < len(self.text) or relative == -1:
            raise LinkError(f"call to {sym.name} at {self.where(offset)} lands at .text+{target:#x}, which is not "
                            "a function's first instruction")
        struct.pack_into("<i", self.text, offset + 4, relative)

    def entry(self) -> int:
        for s in self.o.symbols:
            if s.name == "entrypoint" and s.bind in (STB_GLOBAL, STB_WEAK) and s.shndx == self.text_section.index:
                if s.value % INSN:
                    raise LinkError(f"entrypoint is at .text+{s.value:#x}, not on an instruction")
                return self.text_off + s.value
        raise LinkError("no global function `entrypoint` in .text: define "
                        "`uint64_t entrypoint(const uint8_t *input)` (not static)")


def link(obj: bytes) -> bytes:
    """Link one BPF relocatable object (``clang-19 -target bpfel -mcpu=v1 -fPIC -c``) into an SBPF v0 program."""
    o = _parse(obj)
    text, rodata = _classify(o)
    text_off = _align(EHDR.size + 2 * PHDR.size, INSN)
    linker = _Linker(o, text, rodata, text_off)
    linker.relocate()
    linker.callx_to_sbpf()
    entry = linker.entry()

    dynstr = bytearray(b"\0")
    dynsym = bytearray(SYM.size)  # the null symbol
    for name in linker.imports:  # in .dynsym order (dicts keep insertion order)
        dynsym += SYM.pack(len(dynstr), STB_GLOBAL << 4 | STT_NOTYPE, 0, SHN_UNDEF, 0, 0)
        dynstr += name.encode() + b"\0"
    rel_dyn = b"".join(REL.pack(offset, index << 32 | type_) for offset, type_, index in linker.dynamic)
    shstrtab = b"\0".join(n.encode() for n in SECTION_NAMES) + b"\0"

    dynamic_off = _align(linker.rodata_off + len(linker.rodata), 8)
    dynamic_count = 5 + (3 if rel_dyn else 0)  # the loader refuses a DT_REL whose DT_RELSZ is 0
    dynsym_off = dynamic_off + dynamic_count * DYN.size
    dynstr_off = dynsym_off + len(dynsym)
    rel_off = _align(dynstr_off + len(dynstr), 8)
    shstrtab_off = rel_off + len(rel_dyn)
    shoff = _align(shstrtab_off + len(shstrtab), 8)

    entries = [(DT_SYMTAB, dynsym_off), (DT_SYMENT, SYM.size), (DT_STRTAB, dynstr_off), (DT_STRSZ, len(dynstr))]
    if rel_dyn:
        entries += [(DT_REL, rel_off), (DT_RELSZ, len(rel_dyn)), (DT_RELENT, REL.size)]
    dynamic = b"".join(DYN.pack(tag, value) for tag, value in [*entries, (DT_NULL, 0)])

    image = bytearray(shoff)
    for offset, data in ((text_off, linker.text), (linker.rodata_off, linker.rodata), (dynamic_off, dynamic),
                         (dynsym_off, dynsym), (dynstr_off, dynstr), (rel_off, rel_dyn), (shstrtab_off, shstrtab)):
        image[offset:offset + len(data)] = data

    name_at = {n: shstrtab.index(n.encode() + b"\0") if n else 0 for n in SECTION_NAMES}

    def section(n: str, type_: int, flags: int, offset: int, size: int, link: int = 0, info: int = 0,
                align: int = 1, entsize: int = 0) -> bytes:
        return SHDR.pack(name_at[n], type_, flags, offset, offset, size, link, info, align, entsize)

    image += b"".join([
        bytes(SHDR.size),
        section(".text", SHT_PROGBITS, SHF_ALLOC | SHF_EXECINSTR, text_off, len(linker.text), align=8),
        section(".rodata", SHT_PROGBITS, SHF_ALLOC, linker.rodata_off, len(linker.rodata), align=8),
        section(".dynamic", SHT_DYNAMIC, SHF_ALLOC | SHF_WRITE, dynamic_off, len(dynamic), link=5, align=8,
                entsize=DYN.size),
        section(".dynsym", SHT_DYNSYM, SHF_ALLOC, dynsym_off, len(dynsym), link=5, info=1, align=8,
                entsize=SYM.size),
        section(".dynstr", SHT_STRTAB, SHF_ALLOC, dynstr_off, len(dynstr)),
        section(".rel.dyn", SHT_REL, SHF_ALLOC, rel_off, len(rel_dyn), link=4, align=8, entsize=REL.size),
        section(".shstrtab", SHT_STRTAB, 0, shstrtab_off, len(shstrtab)),
    ])
    load_end = rel_off + len(rel_dyn)
    image[EHDR.size:text_off] = (PHDR.pack(PT_LOAD, PF_R | PF_X, 0, 0, 0, load_end, load_end, 8)
                                 + PHDR.pack(PT_DYNAMIC, PF_R | PF_W, dynamic_off, dynamic_off, dynamic_off,
                                             len(dynamic), len(dynamic), 8))
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)  # ELF64, little-endian, version 1, OSABI 0 (System V)
    image[:EHDR.size] = EHDR.pack(ident, ET_DYN, EM_BPF, 1, entry, EHDR.size, shoff, 0, EHDR.size, PHDR.size, 2,
                                  SHDR.size, len(SECTION_NAMES), SECTION_NAMES.index(".shstrtab"))
    return bytes(image)


# --- compiling and building ---------------------------------------------------------------------------------------


def clang() -> str:
    """The path of clang-19, or ``ToolchainMissing`` saying how to install it."""
    found = shutil.which(CLANG)
    if found is None:
        raise ToolchainMissing(f"{CLANG} is not on PATH: install it with `apt-get install {CLANG}` "
                               "(scripts/bootstrap does so when run as root on Debian)")
    return found


def compile(sources: Sequence[Path], out: Path, include: Path) -> Path:
    """Compile the program's translation unit (one .c file, which includes the others) into the BPF object ``out``."""
    if len(sources) != 1:
        raise CompileError(f"the program is one translation unit, got {len(sources)} sources: "
                           "#include the others from one .c file")
    result = subprocess.run([clang(), *CFLAGS, "-I", str(include), "-c", str(sources[0]), "-o", str(out)],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise CompileError(f"{CLANG} failed on {sources[0]}:\n{result.stderr.rstrip()}")
    return out


def _newest_input(source_dir: Path) -> int:
    inputs = [p for p in source_dir.rglob("*") if p.is_file()] + [Path(__file__)]
    return max(p.stat().st_mtime_ns for p in inputs)


def build(source_dir: Path = SOURCE_DIR, out: Path = OUT, *, force: bool = False) -> Path:
    """Compile ``source_dir/registry.c`` and link it into ``out``; nothing to do when ``out`` is newer than every
    file in ``source_dir`` and than this file. Returns ``out``."""
    main = source_dir / MAIN_SOURCE
    if not main.is_file():
        raise BuildError(f"{main} does not exist: the program's source is {MAIN_SOURCE} in {source_dir}")
    if not force and out.exists() and out.stat().st_mtime_ns > _newest_input(source_dir):
        logger.debug("%s is up to date", out)
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="flair-sbf-") as tmp:
        obj = compile([main], Path(tmp) / (main.stem + ".o"), include=source_dir)
        program = link(obj.read_bytes())
    # Written beside ``out`` and renamed, so a concurrent build or reader never sees half a program.
    fd, partial = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o644)  # mkstemp's 0600 is for secrets; this is a build output
            f.write(program)
        os.replace(partial, out)
    finally:
        Path(partial).unlink(missing_ok=True)  # gone already unless writing failed
    logger.info("built %s (%d bytes)", out, len(program))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="anchor_program/build.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUT, help=f"where to write the program (default: {OUT})")
    parser.add_argument("--force", action="store_true", help="rebuild even when the program is up to date")
    args = parser.parse_args(argv)
    try:
        path = build(out=args.out, force=args.force)
    except BuildError as exc:
        print(f"build.py: {exc}", file=sys.stderr)
        return 1
    print(f"{path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
