"""Finding libs2lora.so: S2LORA_LIBRARY first and alone, then the usual places in order, and
errors that say what was tried and why each failed; a library of another major version, or one
missing functions of the header, is refused. Fake libraries are compiled with cc (those tests
skip without a C compiler)."""
import os
import subprocess
import sys
import tempfile
import unittest
from unittest import mock

import _paths  # noqa: F401  (sys.path)
from s2lora import _lib, errors


def _compile_so(tmp, name, body):
    src = os.path.join(tmp, name + ".c")
    so = os.path.join(tmp, name)
    with open(src, "w") as f:
        f.write(body)
    subprocess.run([_paths.c_compiler(), "-shared", "-fPIC", "-o", so, src], check=True,
                   capture_output=True)
    return so


class TestFinder(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.addCleanup(self.tmp.cleanup)
        # find_library must not find a real installed copy during these tests
        p = mock.patch("ctypes.util.find_library", return_value=None)
        p.start()
        self.addCleanup(p.stop)

    def dirs(self, *names):
        out = []
        for n in names:
            d = os.path.join(self.tmp.name, n)
            os.makedirs(d, exist_ok=True)
            out.append(d)
        return out

    def test_env_missing_file_is_an_error_naming_it(self):
        path = os.path.join(self.tmp.name, "nope", "libs2lora.so")
        with self.assertRaises(errors.LibraryNotFoundError) as cm:
            _lib.find_and_load({"S2LORA_LIBRARY": path})
        self.assertIn(f"S2LORA_LIBRARY={path}: no such file", str(cm.exception))
        self.assertIsNone(cm.exception.status)
        self.assertIsInstance(cm.exception, OSError)

    def test_env_set_is_used_alone(self):
        # a loadable-looking library elsewhere is not taken when S2LORA_LIBRARY is wrong
        pkg, = self.dirs("pkg")
        with open(os.path.join(pkg, "libs2lora.so"), "w") as f:
            f.write("x")
        bad = os.path.join(self.tmp.name, "missing.so")
        with self.assertRaises(errors.LibraryNotFoundError) as cm:
            _lib.find_and_load({"S2LORA_LIBRARY": bad}, package_dir=pkg, prefixes=[])
        self.assertNotIn(pkg, str(cm.exception))

    def test_env_empty_is_an_error(self):
        with self.assertRaises(errors.LibraryNotFoundError) as cm:
            _lib.find_and_load({"S2LORA_LIBRARY": ""})
        self.assertIn("set but empty", str(cm.exception))

    def test_env_not_a_library_says_why(self):
        path = os.path.join(self.tmp.name, "libs2lora.so")
        with open(path, "w") as f:
            f.write("not an ELF file\n")
        with self.assertRaises(errors.LibraryNotFoundError) as cm:
            _lib.find_and_load({"S2LORA_LIBRARY": path})
        msg = str(cm.exception)
        self.assertIn(f"S2LORA_LIBRARY={path}: cannot load:", msg)
        self.assertRegex(msg, r"(invalid ELF|file too short|not an ELF)")

    def test_search_lists_every_place_in_order(self):
        pkg, ld1, ld2, prefix = self.dirs("pkg/s2lora", "ld1", "ld2", "prefix")
        junk = os.path.join(ld2, "libs2lora.so")
        with open(junk, "w") as f:
            f.write("junk")
        env = {"LD_LIBRARY_PATH": os.pathsep.join([ld1, "", ld2])}
        with self.assertRaises(errors.LibraryNotFoundError) as cm:
            _lib.find_and_load(env, package_dir=pkg, prefixes=[prefix])
        msg = str(cm.exception)
        self.assertIn("Set S2LORA_LIBRARY", msg)
        want = [
            f"next to the package: {os.path.join(pkg, 'libs2lora.so')}: no such file",
            "the source tree's build/: "
            f"{os.path.normpath(os.path.join(pkg, '..', '..', 'build', 'libs2lora.so'))}: "
            "no such file",
            "ctypes.util.find_library('s2lora'): nothing found",
            f"LD_LIBRARY_PATH: {os.path.join(ld1, 'libs2lora.so')}: no such file",
            f"LD_LIBRARY_PATH: {junk}: ",
            f"the install prefix {prefix}: {os.path.join(prefix, 'lib', 'libs2lora.so')}: "
            "no such file",
        ]
        pos = [msg.find(w) for w in want]
        self.assertTrue(all(p >= 0 for p in pos), f"missing from:\n{msg}\nwant {want}")
        self.assertEqual(pos, sorted(pos), "places out of order")

    @unittest.skipUnless(_paths.c_compiler(), "no C compiler on PATH")
    def test_other_major_version_is_refused(self):
        d, = self.dirs("v1")
        so = _compile_so(d, "libs2lora.so", "int s2lora_version_number(void) { return 1002003; }\n")
        with self.assertRaises(errors.LibraryVersionError) as cm:
            _lib.find_and_load({"S2LORA_LIBRARY": so})
        msg = str(cm.exception)
        self.assertIn("is libs2lora 1.2.3", msg)
        self.assertIn("needs major version 0", msg)

    @unittest.skipUnless(_paths.c_compiler(), "no C compiler on PATH")
    def test_library_missing_functions_is_refused_by_name(self):
        d, = self.dirs("partial")
        _compile_so(d, "libs2lora.so",
                    "int s2lora_version_number(void) { return 2000; }\n"
                    "const char *s2lora_version(void) { return \"0.2.0\"; }\n")
        # found by the search (LD_LIBRARY_PATH), not only through the variable
        with self.assertRaises(errors.LibraryVersionError) as cm:
            _lib.find_and_load({"LD_LIBRARY_PATH": d}, package_dir=self.dirs("empty")[0],
                               prefixes=[])
        msg = str(cm.exception)
        self.assertIn("lacks s2lora_status_string, s2lora_open", msg)
        self.assertNotIn("s2lora_version,", msg)

    @unittest.skipUnless(_paths.c_compiler(), "no C compiler on PATH")
    def test_not_libs2lora_is_refused(self):
        d, = self.dirs("other")
        so = _compile_so(d, "libs2lora.so", "int something_else(void) { return 0; }\n")
        with self.assertRaises(errors.LibraryVersionError) as cm:
            _lib.find_and_load({"S2LORA_LIBRARY": so})
        self.assertIn("is not libs2lora", str(cm.exception))


class TestImport(unittest.TestCase):
    def test_import_needs_neither_torch_nor_the_library(self):
        code = ("import sys, s2lora; assert 'torch' not in sys.modules, 'torch imported'; "
                "assert s2lora._lib._loaded is None, 'library loaded'; print('ok')")
        env = dict(os.environ, PYTHONPATH=_paths.PYTHON_DIR, S2LORA_LIBRARY="/nonexistent.so")
        r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout.strip(), "ok")


if __name__ == "__main__":
    unittest.main()
