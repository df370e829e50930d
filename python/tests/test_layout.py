"""The ctypes declarations against runtime/api/s2lora.h: every struct's size and every field's
offset and size from a C program compiled against the header, the status codes and version
macros, and every function of the header declared with matching parameter and return types.
Skips only when no C compiler is on PATH."""
import ctypes
import os
import re
import subprocess
import tempfile
import unittest

import _paths  # noqa: F401  (sys.path)
from s2lora import _lib, errors


def header_text():
    with open(_paths.HEADER, encoding="utf-8") as f:
        text = f.read()
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    return re.sub(r"//[^\n]*", " ", text)


def header_structs():
    """{struct name: [field names in order]} from the header's typedef structs with bodies."""
    out = {}
    for m in re.finditer(r"typedef\s+struct\s+(\w+)\s*\{(.*?)\}\s*\w+\s*;", header_text(), re.S):
        fields = []
        for decl in m.group(2).split(";"):
            decl = " ".join(decl.split())
            if not decl:
                continue
            parts = decl.split(",")
            first = re.match(r"(.*?)([\s*]+)(\w+)\s*(\[[^\]]*\])?$", parts[0])
            fields.append(first.group(3))
            for p in parts[1:]:
                fields.append(re.match(r"\s*\**\s*(\w+)\s*(\[[^\]]*\])?\s*$", p).group(1))
        out[m.group(1)] = fields
    return out


def header_functions():
    """{name: (return type text, [parameter type texts])} of every function the header
    declares."""
    text = "\n".join(l for l in header_text().splitlines() if not l.lstrip().startswith("#"))
    text = re.sub(r"typedef[^;]*?\{.*?\}\s*\w+\s*;", " ", text, flags=re.S)
    out = {}
    for m in re.finditer(r"([\w\s\*]+?)\b(s2lora_\w+)\s*\(([^;{)]*)\)\s*;", text):
        ret = " ".join(m.group(1).split())
        params = []
        raw = " ".join(m.group(3).split())
        if raw and raw != "void":
            for p in raw.split(","):
                p = p.strip()
                # drop the parameter name: the last identifier, unless the text is only a type
                mm = re.match(r"^(.*?[\s*])(\w+)$", p)
                params.append(" ".join(mm.group(1).split()) if mm else p)
        out[m.group(2)] = (ret, params)
    return out


HANDLES = {"s2lora_ctx", "s2lora_spec", "s2lora_attn", "s2lora_lora"}
SCALARS = {"int": ctypes.c_int, "size_t": ctypes.c_size_t, "double": ctypes.c_double,
           "s2lora_status": ctypes.c_int, "float": ctypes.c_float}


def expected_ctype(ctext):
    """The ctypes type a C parameter or return type must be declared as."""
    t = ctext.replace("const", " ")
    depth = t.count("*")
    base = " ".join(t.replace("*", " ").split())
    if depth == 0:
        return None if base == "void" else SCALARS[base]
    if base == "char":
        return ctypes.c_char_p if depth == 1 else ctypes.POINTER(ctypes.c_char_p)
    if base == "void" or base in HANDLES:
        return ctypes.c_void_p if depth == 1 else ctypes.POINTER(ctypes.c_void_p)
    target = _lib.STRUCTS.get(base) or SCALARS.get(base)
    assert target is not None, f"no ctypes type for C type '{ctext}'"
    assert depth == 1, f"'{ctext}'"
    return ctypes.POINTER(target)


class TestDeclarations(unittest.TestCase):
    def test_every_header_function_is_declared_alike(self):
        funcs = header_functions()
        self.assertGreater(len(funcs), 20, "the header parse found too few functions")
        self.assertEqual(sorted(funcs), sorted(_lib.DECLARATIONS),
                         "functions of s2lora.h and _lib.DECLARATIONS differ")
        for name, (ret, params) in funcs.items():
            restype, argtypes = _lib.DECLARATIONS[name]
            self.assertEqual(restype, expected_ctype(ret), f"{name}: return type '{ret}'")
            self.assertEqual(len(argtypes), len(params), f"{name}: parameters {params}")
            for i, (want, got) in enumerate(zip(params, argtypes)):
                self.assertEqual(got, expected_ctype(want), f"{name}: parameter {i} '{want}'")

    def test_every_header_struct_is_mirrored(self):
        structs = header_structs()
        self.assertEqual(sorted(structs), sorted(_lib.STRUCTS))
        for cname, fields in structs.items():
            py = [_lib.C_FIELD_NAMES.get(f[0], f[0]) for f in _lib.STRUCTS[cname]._fields_]
            self.assertEqual(py, fields, f"{cname}: field names and order")


PROGRAM_HEAD = """#include <stddef.h>
#include <stdio.h>
#include "runtime/api/s2lora.h"
#define FIELD(T, f) printf("field %s %s %zu %zu\\n", #T, #f, offsetof(T, f), sizeof(((T *)0)->f))
int main(void) {
"""


@unittest.skipUnless(_paths.c_compiler(), "no C compiler on PATH ($CC or cc)")
class TestCLayout(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        structs = header_structs()
        lines = [PROGRAM_HEAD]
        for cname, fields in structs.items():
            lines.append(f'    printf("size {cname} %zu %zu\\n", sizeof({cname}), '
                         f'_Alignof({cname}));')
            lines += [f"    FIELD({cname}, {f});" for f in fields]
        for code, name in errors.STATUS_NAMES.items():
            lines.append(f'    printf("const {name} %d\\n", (int){name});')
        for m in ("MAJOR", "MINOR", "PATCH"):
            lines.append(f'    printf("const S2LORA_VERSION_{m} %d\\n", S2LORA_VERSION_{m});')
        lines.append('    printf("const sizeof_status %zu\\n", sizeof(s2lora_status));')
        lines.append("    return 0;\n}\n")
        cls.tmp = tempfile.TemporaryDirectory()
        src = os.path.join(cls.tmp.name, "layout.c")
        exe = os.path.join(cls.tmp.name, "layout")
        with open(src, "w") as f:
            f.write("\n".join(lines))
        cc = _paths.c_compiler()
        r = subprocess.run([cc, "-std=c11", "-Wall", "-Werror", "-I", _paths.REPO, src, "-o",
                            exe], capture_output=True, text=True)
        if r.returncode:
            raise AssertionError(f"{cc} failed on the layout program:\n{r.stderr}")
        out = subprocess.run([exe], capture_output=True, text=True, check=True).stdout
        cls.sizes, cls.fields, cls.consts = {}, {}, {}
        for line in out.splitlines():
            kind, *rest = line.split()
            if kind == "size":
                cls.sizes[rest[0]] = (int(rest[1]), int(rest[2]))
            elif kind == "field":
                cls.fields[(rest[0], rest[1])] = (int(rest[2]), int(rest[3]))
            else:
                cls.consts[rest[0]] = int(rest[1])

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def test_struct_sizes_and_alignment(self):
        self.assertEqual(sorted(self.sizes), sorted(_lib.STRUCTS))
        for cname, (size, align) in self.sizes.items():
            cls = _lib.STRUCTS[cname]
            self.assertEqual(ctypes.sizeof(cls), size, f"sizeof({cname})")
            self.assertEqual(ctypes.alignment(cls), align, f"_Alignof({cname})")

    def test_field_offsets_and_sizes(self):
        checked = 0
        for cname, cls in _lib.STRUCTS.items():
            for fname, _ in cls._fields_:
                c_field = _lib.C_FIELD_NAMES.get(fname, fname)
                off, size = self.fields[(cname, c_field)]
                desc = getattr(cls, fname)
                self.assertEqual(desc.offset, off, f"offsetof({cname}, {c_field})")
                self.assertEqual(desc.size, size, f"sizeof({cname}.{c_field})")
                checked += 1
        self.assertEqual(checked, len(self.fields))

    def test_status_codes_and_version(self):
        for code, name in errors.STATUS_NAMES.items():
            self.assertEqual(self.consts[name], code, name)
        self.assertEqual(self.consts["sizeof_status"], ctypes.sizeof(ctypes.c_int))
        self.assertEqual(tuple(self.consts[f"S2LORA_VERSION_{m}"] for m in
                               ("MAJOR", "MINOR", "PATCH")), _lib.HEADER_VERSION)


if __name__ == "__main__":
    unittest.main()
