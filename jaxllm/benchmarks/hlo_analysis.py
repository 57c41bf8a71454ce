"""Reading XLA's optimized HLO text: instructions, the computations that run (and how often),
collectives, large data movement, the KV cache's aliasing, and a compiled executable's memory and
cost analysis. Used by `jaxllm.benchmarks.tp_hlo_probe`; imports no JAX.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass

COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")
MOVES = (
    "copy",
    "transpose",
    "dynamic-update-slice",
    "dynamic-slice",
    "slice",
    "scatter",
    "gather",
    "concatenate",
    "pad",
)
DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2}
_ARRAY = re.compile(r"([a-z]+[0-9]*)\[([0-9,]*)\]")
_LHS = re.compile(r"^\s*(?:ROOT )?%(\S+) = ")
_OPCODE = re.compile(r" ?([a-z][a-z0-9-]*)\(")


@dataclass
class Op:
    computation: str
    name: str
    opcode: str
    type_str: str
    line: str

    @property
    def shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        return [
            (dt, tuple(int(d) for d in dims.split(",") if d))
            for dt, dims in _ARRAY.findall(self.type_str)
        ]

    @property
    def nbytes(self) -> int:
        return sum(DTYPE_BYTES.get(dt, 4) * math.prod(dims) for dt, dims in self.shapes)


def parse_instruction(line: str) -> tuple[str, str, str] | None:
    """(name, result type, opcode) of one HLO instruction line `%name = TYPE opcode(...)`; TYPE is
    an array type or a parenthesized tuple of them (which may hold /*index=N*/ comments)."""
    m = _LHS.match(line)
    if not m:
        return None
    rest = line[m.end() :]
    if rest.startswith("("):
        depth, end = 0, len(rest)
        for pos, ch in enumerate(rest):
            depth += (ch == "(") - (ch == ")")
            if depth == 0:
                end = pos + 1
                break
        type_str, rest = rest[:end], rest[end:]
    else:
        type_str, _, rest = rest.partition(" ")
        rest = " " + rest
    mo = _OPCODE.match(rest)
    return (m.group(1), type_str, mo.group(1)) if mo else None


def parse_hlo(text: str) -> tuple[dict[str, list[Op]], str]:
    """computation name -> its instructions, and the ENTRY computation's name."""
    comps: dict[str, list[Op]] = {}
    entry, cur = "", None
    for line in text.splitlines():
        m = re.match(r"^(ENTRY )?%(\S+) .*\{\s*$", line)
        if m and not line.startswith(" "):
            cur = m.group(2)
            comps[cur] = []
            if m.group(1):
                entry = cur
            continue
        if cur is None:
            continue
        if line.startswith("}"):
            cur = None
            continue
        parsed = parse_instruction(line)
        if parsed:
            comps[cur].append(Op(cur, parsed[0], parsed[2], parsed[1], line))
    return comps, entry


def executed_computations(comps: dict[str, list[Op]], entry: str) -> dict[str, int]:
    """Computations that run as sequences of ops (ENTRY, while bodies and conditions, calls,
    conditional branches, async wrappers; not fusion bodies or reducers) -> runs per step (a while
    body: its known trip count, else 1)."""
    runs = {entry: 1}
    todo = [entry]
    while todo:
        c = todo.pop()
        for op in comps.get(c, []):
            m = re.search(r'"known_trip_count":\{"n":"(\d+)"', op.line)
            trips = int(m.group(1)) if m else 1
            targets = []
            if op.opcode == "while":
                found = re.findall(r"(?:body|condition)=%(\S+?)[,\s]", op.line)
                targets += [(t, trips) for t in found]
            elif op.opcode in ("call", "conditional") or op.opcode.endswith("-start"):
                keys = "to_apply|calls|branch_computations|true_computation|false_computation"
                for grp in re.findall(rf"(?:{keys})=\{{?([^}}\s]+)\}}?", op.line):
                    targets += [(t.strip("%,"), 1) for t in grp.split(",")]
            for t, n in targets:
                if t in comps and t not in runs:
                    runs[t] = runs[c] * n
                    todo.append(t)
    return runs


def collectives(comps, runs) -> list[tuple[Op, int]]:
    return [
        (op, n)
        for c, n in runs.items()
        for op in comps[c]
        if op.opcode.removesuffix("-start") in COLLECTIVES
    ]


def big_moves(comps, runs, min_bytes: int, marked: dict[tuple, str]) -> list[tuple[Op, int, str]]:
    """Data-movement ops of at least `min_bytes`, or shaped like a marked array (KV, params)."""
    out = []
    for c, n in runs.items():
        for op in comps[c]:
            if op.opcode == "fusion":
                stem = op.name.split(".")[0]
                if not any(m.replace("-", "_") in stem for m in MOVES):
                    continue
            elif op.opcode not in MOVES:
                continue
            tag = next((marked[s[1]] for s in op.shapes if s[1] in marked), "")
            if op.nbytes >= min_bytes or tag:
                out.append((op, n, tag))
    return out


def in_place(op: Op) -> bool:
    """A dynamic-update-slice or scatter (into the donated KV cache: no copy when aliased)."""
    what = (op.opcode + " " + op.name).replace("_", "-")
    return "dynamic-update-slice" in what or "scatter" in what


def fmt_bytes(n: float) -> str:
    for unit, div in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= div:
            return f"{n / div:.2f} {unit}"
    return f"{int(n)} B"


def replica_group(line: str) -> str:
    m = re.search(r"replica_groups=(\S+?\]\S*|\{[^}]*\}[^,]*)", line)
    return m.group(1)[:40] if m else ""


def analyze(text: str, row: dict, marked: dict[tuple, str], min_mib: float) -> None:
    """Print the collectives and data-movement tables of optimized HLO `text`; fill `row`."""
    comps, entry = parse_hlo(text)
    runs = executed_computations(comps, entry)
    loops = {c: n for c, n in runs.items() if c != entry and n > 1}
    if loops:
        print("while bodies (runs per step):", loops)
    print("\n| collective | result | group | bytes | runs | bytes/step |")
    print("|---|---|---|---|---|---|")
    total, counts = 0, Counter()
    for op, n in collectives(comps, runs):
        counts[op.opcode] += n
        total += op.nbytes * n
        print(
            f"| {op.opcode} | {op.type_str[:70]} | {replica_group(op.line)} | "
            f"{fmt_bytes(op.nbytes)} | {n} | {fmt_bytes(op.nbytes * n)} |"
        )
    print(f"collectives per step: {dict(counts)}; {fmt_bytes(total)} of results in all")
    row["coll"], row["coll_bytes"] = sum(counts.values()), total

    moves = big_moves(comps, runs, int(min_mib * 2**20), marked)
    print(f"\nlarge data movement (>= {min_mib} MiB or KV/param-shaped): {len(moves)} ops")
    grouped: Counter = Counter()
    for op, n, tag in moves:
        note = tag + (" [in place]" if in_place(op) else "")
        stem = re.sub(r"\.\d+$", "", op.name)
        grouped[(op.opcode, stem, op.type_str[:60], note, op.nbytes)] += n
    for (opcode, stem, ty, note, nbytes), n in sorted(grouped.items(), key=lambda kv: -kv[0][4]):
        print(f"  {n:4d} x {opcode:18s} {stem:34s} {ty:46s} {fmt_bytes(nbytes):>10s} {note}")
    row["moves"] = sum(n for op, n, _ in moves if not in_place(op))
    row["move_bytes"] = sum(op.nbytes * n for op, n, _ in moves if not in_place(op))
    alias = re.search(r"input_output_alias=\{([^}]*\})*[^}]*\}", text)
    alias_txt = alias.group(0) if alias else "input_output_alias: none"
    print(alias_txt[:160])
    row["aliased"] = alias_txt.count("-alias)") >= 2  # K and V


def report_compiled(exe, row: dict) -> None:
    """Memory and cost analysis of a compiled executable (when the backend gives them)."""
    row["gflop"] = row["accessed"] = None
    try:
        ma = exe.memory_analysis()
        if ma is not None:
            print(
                f"memory: arguments {fmt_bytes(ma.argument_size_in_bytes)}, outputs "
                f"{fmt_bytes(ma.output_size_in_bytes)}, aliased "
                f"{fmt_bytes(ma.alias_size_in_bytes)}, temp {fmt_bytes(ma.temp_size_in_bytes)}"
            )
    except Exception as e:  # noqa: BLE001 -- not every backend reports it
        print(f"memory analysis unavailable: {e}")
    try:
        ca = exe.cost_analysis()
        ca = ca[0] if isinstance(ca, list) else ca
        if not ca:
            return
        row["gflop"], row["accessed"] = ca.get("flops", 0) / 1e9, ca.get("bytes accessed", 0)
        print(
            f"cost analysis (per device): {row['gflop']:.3f} GFLOP, "
            f"{fmt_bytes(row['accessed'])} accessed"
        )
    except Exception as e:  # noqa: BLE001 -- not every backend reports it
        print(f"cost analysis unavailable: {e}")
