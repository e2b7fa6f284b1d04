package needs

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestRule runs a test that misses a precondition in a child process, once
// outside CI and once in it: skipped with the reason, then failed.
func TestRule(t *testing.T) {
	if os.Getenv("NEEDS_CHILD") == "1" {
		Missing(t, "the widget is absent")
		return
	}
	for _, tc := range []struct {
		ci      string
		fail    bool
		outputs string
	}{
		{ci: "", outputs: "--- SKIP: TestRule"},
		{ci: "1", outputs: "--- SKIP: TestRule"}, // only CI=true means CI
		{ci: "true", fail: true, outputs: "(CI=true forbids skipping): the widget is absent"},
	} {
		cmd := exec.Command(os.Args[0], "-test.run=^TestRule$", "-test.v")
		cmd.Env = append(os.Environ(), "NEEDS_CHILD=1", "CI="+tc.ci)
		out, err := cmd.CombinedOutput()
		if (err != nil) != tc.fail || !strings.Contains(string(out), tc.outputs) {
			t.Errorf("CI=%q: exit %v, output:\n%s\nwant failure %v and %q", tc.ci, err, out, tc.fail, tc.outputs)
		}
		if !tc.fail && !strings.Contains(string(out), "the widget is absent") {
			t.Errorf("CI=%q: the skip does not give the reason:\n%s", tc.ci, out)
		}
	}
}
