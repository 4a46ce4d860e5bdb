#!/usr/bin/env python3
"""Prints the flash and RAM use of the node-esp image per section and fails above budget.

Reads section and symbol tables with `readelf` (binutils). Budgets (issue 6):
  flash image (everything loaded from flash)            <= 1 MiB
  static RAM (.data + .bss, heap reserve excluded)      <= 96 KiB
The heap reserve is the esp-alloc `HEAP` arrays, found by symbol name; it is reported apart.
"""
import re
import subprocess
import sys

FLASH_BUDGET = 1024 * 1024
STATIC_RAM_BUDGET = 96 * 1024


def sections(elf):
    out = subprocess.run(["readelf", "-S", "-W", elf], check=True, capture_output=True, text=True).stdout
    rows = []
    for line in out.splitlines():
        m = re.match(r"\s*\[\s*\d+\]\s+(\S+)\s+(\S+)\s+([0-9a-f]+)\s+[0-9a-f]+\s+([0-9a-f]+)\s+\S+\s+(\S*)\s", line)
        if m:
            name, typ, addr, size, flags = m.groups()
            rows.append((name, typ, int(addr, 16), int(size, 16), flags))
    return rows


def heap_reserve(elf):
    out = subprocess.run(["readelf", "-s", "-W", elf], check=True, capture_output=True, text=True).stdout
    total = {}
    for line in out.splitlines():
        f = line.split()
        if len(f) >= 8 and f[3] == "OBJECT" and re.search(r"4HEAP17h[0-9a-f]{16}E$", f[7]) \
                and not f[7].startswith("_ZN9esp_alloc"):  # the allocator itself, not its memory
            total[f[6]] = total.get(f[6], 0) + int(f[2])
    return total  # section index -> bytes


def main():
    elf = sys.argv[1]
    rows = sections(elf)
    heap_by_index = heap_reserve(elf)
    index_of = {}
    out = subprocess.run(["readelf", "-S", "-W", elf], check=True, capture_output=True, text=True).stdout
    for line in out.splitlines():
        m = re.match(r"\s*\[\s*(\d+)\]\s+(\S+)", line)
        if m:
            index_of[m.group(2)] = m.group(1)
    flash = 0
    data = bss = iram = heap = 0
    print(f"{'section':<22}{'address':>10}{'bytes':>10}  where")
    for name, typ, addr, size, flags in rows:
        if "A" not in flags or size == 0 or name.endswith("_dummy"):
            continue
        loaded = typ == "PROGBITS"
        where = []
        if loaded:
            flash += size
            where.append("flash")
        if 0x3FC80000 <= addr < 0x3FCE0000 or 0x40380000 <= addr < 0x403E0000:
            h = heap_by_index.get(index_of.get(name, ""), 0)
            if name.startswith(".data"):
                data += size
            elif name.startswith(".bss"):
                bss += size - h
            elif name.startswith((".trap", ".rwtext")):
                iram += size
            heap += h
            if name == ".stack":
                where.append("RAM (stack, rest of SRAM)")
            elif h:
                where.append(f"RAM ({h} of it heap reserve)")
            else:
                where.append("RAM")
        print(f"{name:<22}{addr:>#10x}{size:>10}  {', '.join(where)}")
    static_ram = data + bss
    print()
    print(f"flash image:                  {flash:>8} bytes ({flash / 1024:.1f} KiB; budget {FLASH_BUDGET // 1024} KiB)")
    print(f"static RAM (.data + .bss):    {static_ram:>8} bytes ({static_ram / 1024:.1f} KiB; budget "
          f"{STATIC_RAM_BUDGET // 1024} KiB; .data {data}, .bss {bss} without heap)")
    print(f"heap reserve (esp-alloc):     {heap:>8} bytes ({heap / 1024:.1f} KiB)")
    print(f"code in IRAM (.trap/.rwtext): {iram:>8} bytes ({iram / 1024:.1f} KiB)")
    ok = True
    if flash > FLASH_BUDGET:
        print(f"FAIL: flash image {flash} > {FLASH_BUDGET}")
        ok = False
    if static_ram > STATIC_RAM_BUDGET:
        print(f"FAIL: static RAM {static_ram} > {STATIC_RAM_BUDGET}")
        ok = False
    if heap == 0:
        print("FAIL: no esp-alloc HEAP symbol found; the heap reserve cannot be told apart from .bss")
        ok = False
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
