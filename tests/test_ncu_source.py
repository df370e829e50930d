#!/usr/bin/env python3
"""bench/ncu_source.py without a GPU: SYNTHETIC source pages in the two column styles of ncu's
versions (made here, never results): the totals, the reasons' shares, the order of the
instructions and their reasons, the opcodes (predicates dropped), and a page without samples
or without a header refused with the file named."""
import os
import sys
import tempfile
import unittest

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, os.path.join(ROOT, "bench"))
import ncu_source  # noqa: E402


def write(d, name, lines):
    p = os.path.join(d, name)
    with open(p, "w") as f:
        f.write("\n".join(lines) + "\n")
    return p


class NcuSource(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.d = self.tmp.name

    def tearDown(self):
        self.tmp.cleanup()

    def test_newer_columns(self):
        p = write(self.d, "new.csv", [
            '"Kernel Name","s2_attn_bwd_dkdv"',
            '"Address","Source","Warp Stall Sampling (All Samples)",'
            '"smsp__pcsamp_warps_issue_stalled_long_scoreboard",'
            '"smsp__pcsamp_warps_issue_stalled_long_scoreboard_not_issued",'
            '"smsp__pcsamp_warps_issue_stalled_wait"',
            '"00a0","LDG.E.STRONG.GPU R4, desc[UR6][R2.64]","600","540","500","60"',
            '"00b0","@!P0 BRA 0x00a0","100","0","0","100"',
            '"00c0","HGMMA.64x64x16.F32.BF16 R24, gdesc[UR8], R24","1,300","0","0","1,300"',
            '"00d0","NOP","0","0","0","0"',
        ])
        out = ncu_source.summary(p, 2)
        self.assertEqual(out[0], f"ncu source: {p}: 4 instructions, 2000 samples")
        self.assertEqual(out[1], "stalls: wait 73.0%, long_scoreboard 27.0%")
        self.assertIn("HGMMA.64x64x16", out[3])
        self.assertIn(" 65.0%  wait 100%", out[3])
        self.assertTrue(out[3].lstrip().startswith("00c0"))
        self.assertIn("long_scoreboard 90%, wait 10%", out[4])
        self.assertEqual(len(out), 6)  # two instructions (--top 2), then the opcodes
        self.assertEqual(out[5], "by opcode: HGMMA 65.0%, LDG 30.0%, BRA 5.0%")

    def test_older_columns(self):
        p = write(self.d, "old.csv", [
            '"Address","Source","# Samples","stall_long_sb","stall_wait","stall_barrier"',
            '"10","BAR.SYNC.DEFER_BLOCKING 0x3","30","0","0","30"',
            '"20","MOV R1, R2","10","0","10","0"',
        ])
        out = ncu_source.summary(p, 25)
        self.assertEqual(out[1], "stalls: barrier 75.0%, wait 25.0%")
        self.assertIn("barrier 100%", out[3])
        self.assertEqual(out[-1], "by opcode: BAR 75.0%, MOV 25.0%")

    def test_refusals(self):
        p = write(self.d, "none.csv", ['"Address","Source","# Samples"', '"10","NOP","0"'])
        self.assertIn("no samples", ncu_source.summary(p, 5)[1])
        p = write(self.d, "bad.csv", ['"ID","Kernel Name"', '"0","k"'])
        with self.assertRaisesRegex(ValueError, "bad.csv: no header with a Source column"):
            ncu_source.summary(p, 5)
        self.assertEqual(ncu_source.main([p]), 1)
        with self.assertRaises(SystemExit):
            ncu_source.main([p, "--top", "0"])


if __name__ == "__main__":
    unittest.main()
