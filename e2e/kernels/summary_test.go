// Package kernels holds the kernel matrix (matrix.sh boots kernels under
// qemu, init.sh runs in the guest, summary.awk reads what it wrote). This
// test checks summary.awk's verdicts on result logs shaped like the guest's.
package kernels

import (
	"os/exec"
	"strings"
	"testing"
)

const doctorOK = `@@@ kernel 6.12.117+deb12-cloud-amd64
@@@ doctor
ok    kernel      Linux 6.12.117+deb12-cloud-amd64
ok    cgroup v2   unified hierarchy at /sys/fs/cgroup

sockhop can accelerate on this node.
@@@ exit doctor 0
`

const doctorFail = `@@@ kernel 6.1.0-57-cloud-amd64
@@@ doctor
fail  kernel      Linux 6.1.0-57-cloud-amd64
                  hint: sockhop needs Linux 6.10 or newer (bpf_link for sk_msg
                        programs); upgrade the node's kernel
ok    cgroup v2   unified hierarchy at /sys/fs/cgroup

sockhop cannot accelerate on this node: fix the failed checks (traffic stays on TCP until then).
@@@ exit doctor 1
`

// A -test.v run: one pass, one skip with its reason, one failed subtest
// (its parent fails too), logs of parallel tests interleaved.
const testsMixed = `@@@ test pkg/datapath
=== RUN   TestA
--- PASS: TestA (0.10s)
=== RUN   TestB
    b_test.go:12: kernel lacks a feature
--- SKIP: TestB (0.00s)
=== RUN   TestC
=== PAUSE TestC
=== RUN   TestD
=== PAUSE TestD
=== CONT  TestC
=== CONT  TestD
=== NAME  TestC
    c_test.go:40: bytes out of order
=== NAME  TestD
    d_test.go:9: fine
--- PASS: TestD (1.00s)
=== RUN   TestC/ipv6
    c_test.go:44: paired=15, want 16
--- FAIL: TestC (2.00s)
    --- FAIL: TestC/ipv6 (1.00s)
FAIL
@@@ exit test pkg/datapath 1 5s
`

const passOnly = `@@@ test cmd/sockhop
=== RUN   TestE
--- PASS: TestE (0.00s)
PASS
@@@ exit test cmd/sockhop 0 1s
`

// What the kernel tests print where the kernel cannot run sockhop.
const unsupportedSkips = `@@@ test pkg/datapath
=== RUN   TestA
    a_test.go:20: this kernel cannot run sockhop: kernel lacks kfunc bpf_cast_to_kern_ctx (Linux 6.2)
--- SKIP: TestA (0.00s)
=== RUN   TestF
    f_test.go:7: this kernel cannot run sockhop: kernel lacks kfunc bpf_cast_to_kern_ctx (Linux 6.2)
--- SKIP: TestF (0.00s)
=== RUN   TestG
    g_test.go:9: no cgroup v1 hierarchy
--- SKIP: TestG (0.00s)
=== RUN   TestUnsupportedKernel
    unsupported_test.go:41: this kernel lacks kfunc bpf_cast_to_kern_ctx (Linux 6.2)
--- PASS: TestUnsupportedKernel (0.20s)
PASS
@@@ exit test pkg/datapath 0 1s
`

const done = "@@@ leftovers\n@@@ done\n"

func summarize(t *testing.T, log string) (report, verdict string) {
	t.Helper()
	cmd := exec.Command("awk", "-f", "summary.awk")
	cmd.Stdin = strings.NewReader(strings.ReplaceAll(log, "\n", "\r\n")) // a serial port's line ends
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("awk: %v", err)
	}
	report = string(out)
	for _, line := range strings.Split(report, "\n") {
		if v, ok := strings.CutPrefix(line, "@@ verdict="); ok {
			verdict = v
		}
	}
	return report, verdict
}

func TestSummaryVerdicts(t *testing.T) {
	for _, tc := range []struct {
		name, log, verdict string
		want               []string // substrings of the report
	}{
		{"all pass", doctorOK + passOnly + done, "ok passed=1 failed=0 skipped=0", nil},
		{"a failed subtest fails its kernel", doctorOK + testsMixed + passOnly + done, "failed passed=3 failed=1 skipped=1",
			[]string{"SKIP TestB: b_test.go:12: kernel lacks a feature", "FAIL TestC/ipv6: c_test.go:44: paired=15, want 16"}},
		{"a panic without a failed test is a failure", doctorOK +
			"@@@ test pkg/datapath\n=== RUN   TestA\npanic: boom\n@@@ exit test pkg/datapath 2 1s\n" + done,
			"failed passed=0 failed=1 skipped=0", []string{"exited 2 without a failed test (panic: boom)"}},
		{"a guest that stops is incomplete", doctorOK + "@@@ test pkg/datapath\n=== RUN   TestA\n", "incomplete passed=0 failed=1 skipped=0",
			[]string{"did not finish"}},
		{"a guest that never reaches init is incomplete", "", "incomplete passed=0 failed=1 skipped=0", []string{"doctor: did not run"}},
		{"doctor's failure makes the kernel unsupported", doctorFail + unsupportedSkips + passOnly + done, "unsupported passed=2 failed=0 skipped=3",
			[]string{"@@ reason kernel: Linux 6.1.0-57-cloud-amd64 — sockhop needs Linux 6.10 or newer (bpf_link for sk_msg programs); upgrade the node's kernel\n",
				"SKIP 2 tests: this kernel cannot run sockhop: kernel lacks kfunc bpf_cast_to_kern_ctx (Linux 6.2)\n      TestA, TestF\n",
				"SKIP TestG: g_test.go:9: no cgroup v1 hierarchy\n",
				"@@ pass pkg/datapath TestUnsupportedKernel\n", "@@ pass cmd/sockhop TestE\n"}},
		{"a failure on an unsupported kernel still fails it", doctorFail + testsMixed + done, "failed passed=2 failed=1 skipped=1",
			[]string{"@@ reason kernel: Linux 6.1.0-57-cloud-amd64", "FAIL TestC/ipv6"}},
		{"leftovers fail the kernel", doctorOK + passOnly + "@@@ leftovers\npin:/sys/fs/bpf/sockhop-test-1\n@@@ done\n", "failed passed=1 failed=1 skipped=0",
			[]string{"left behind in the guest: pin:/sys/fs/bpf/sockhop-test-1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			report, verdict := summarize(t, tc.log)
			if verdict != tc.verdict {
				t.Errorf("verdict %q, want %q\n%s", verdict, tc.verdict, report)
			}
			for _, w := range tc.want {
				if !strings.Contains(report, w) {
					t.Errorf("report lacks %q:\n%s", w, report)
				}
			}
		})
	}
}
