package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/sockhop/sockhop/pkg/cliout"
	"github.com/sockhop/sockhop/pkg/testbed"
)

func TestMain(m *testing.M) {
	// The kernel test's peer processes are this test binary, re-executed.
	testbed.RunPeerIfRequested()
	os.Exit(m.Run())
}

// cli runs the command line in-process as main does and returns its
// output and exit code.
func cli(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var out, errOut bytes.Buffer
	cmd := newRootCommand(&out, &errOut)
	cmd.SetArgs(args)
	err := cliout.Execute(cmd, &errOut)
	return out.String(), errOut.String(), cliout.ExitCode(err)
}

func TestExitCodes(t *testing.T) {
	absent := t.TempDir() + "/absent"
	for _, tc := range []struct {
		args []string
		code int
		// stderr must contain this.
		msg string
	}{
		{[]string{"--help"}, cliout.ExitOK, ""},
		{[]string{}, cliout.ExitOK, ""},
		{[]string{"status", "--help"}, cliout.ExitOK, ""},
		{[]string{"frobnicate"}, cliout.ExitUsage, `unknown command "frobnicate"`},
		{[]string{"status", "--no-such-flag"}, cliout.ExitUsage, "unknown flag"},
		{[]string{"status", "extra"}, cliout.ExitUsage, "takes no arguments"},
		{[]string{"status", "-o", "yaml"}, cliout.ExitUsage, `unknown output format "yaml"`},
		{[]string{"doctor", "-o", "wide"}, cliout.ExitUsage, "unknown output format"},
		{[]string{"bench", "-o", "csv"}, cliout.ExitUsage, "unknown output format"},
		{[]string{"bench", "--plot", "out.gif"}, cliout.ExitUsage, ".png, .svg or .pdf"},
		{[]string{"bench", "--rounds", "-1"}, cliout.ExitUsage, "negative"},
		{[]string{"bench", "--cases", "pingpong-1cpu,nosuch"}, cliout.ExitUsage, `"nosuch" selects no case`},
		{[]string{"bench", "--cases", "pingpong-1c"}, cliout.ExitUsage, "selects no case"},
		{[]string{"bench", "--list"}, cliout.ExitOK, ""},
		{[]string{"attach"}, cliout.ExitUsage, "takes 1 argument"},
		{[]string{"attach", "a", "b"}, cliout.ExitUsage, "takes 1 argument"},
		{[]string{"attach", "x", "--exclude-ports", "5432,abc"}, cliout.ExitUsage, `entry 2 ("abc") is not a port`},
		{[]string{"attach", "x", "--exclude-ports", "0"}, cliout.ExitUsage, "port 0 is out of range"},
		{[]string{"attach", "x", "--proxy-uids", "1,2,3,4,5"}, cliout.ExitUsage, "at most 4"},
		{[]string{"attach", "x", "--backlog-limit", "0"}, cliout.ExitUsage, "--backlog-limit"},
		{[]string{"attach", "../../etc"}, cliout.ExitUsage, "leaves the cgroup v2 hierarchy"},
		{[]string{"detach"}, cliout.ExitUsage, "needs a CGROUP or --id"},
		{[]string{"detach", "x", "--id", "3"}, cliout.ExitUsage, "not both"},
		{[]string{"detach", "--id", "nope"}, cliout.ExitUsage, "invalid argument"},
		{[]string{"--bpffs-dir", absent, "status"}, cliout.ExitFailure, "not installed"},
		{[]string{"--bpffs-dir", absent, "detach", "--id", "7"}, cliout.ExitFailure, "not attached"},
		{[]string{"--bpffs-dir", absent, "detach", "--id", "7", "--ignore-not-found"}, cliout.ExitOK, ""},
		{[]string{"--bpffs-dir", absent, "uninstall"}, cliout.ExitOK, ""},
		{[]string{"version", "-o", "json"}, cliout.ExitOK, ""},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			_, stderr, code := cli(t, tc.args...)
			if code != tc.code {
				t.Fatalf("exit code %d, want %d; stderr: %s", code, tc.code, stderr)
			}
			if !strings.Contains(stderr, tc.msg) {
				t.Fatalf("stderr %q lacks %q", stderr, tc.msg)
			}
			if tc.code == cliout.ExitUsage && !strings.Contains(stderr, "--help' for usage") {
				t.Fatalf("a usage error must point at --help: %q", stderr)
			}
		})
	}
}

func TestExitCodeOfWrappedErrors(t *testing.T) {
	if got := cliout.ExitCode(errors.Join(errors.New("x"), cliout.Usagef("y"))); got != cliout.ExitUsage {
		t.Fatalf("a wrapped usage error gives %d", got)
	}
	if got := cliout.ExitCode(cliout.ErrReported); got != cliout.ExitFailure {
		t.Fatalf("cliout.ErrReported gives %d", got)
	}
}

func TestVersionJSON(t *testing.T) {
	out, _, code := cli(t, "version", "-o", "json")
	var v versionInfo
	if code != 0 || json.Unmarshal([]byte(out), &v) != nil || v.Version == "" || !strings.HasPrefix(v.GoVersion, "go") {
		t.Fatalf("version -o json: code %d, %q", code, out)
	}
	out, _, _ = cli(t, "version")
	if !strings.HasPrefix(out, "sockhop ") {
		t.Fatalf("version: %q", out)
	}
}

func TestHelpEverywhere(t *testing.T) {
	for _, c := range newRootCommand(&bytes.Buffer{}, &bytes.Buffer{}).Commands() {
		out, _, code := cli(t, c.Name(), "--help")
		if code != 0 || !strings.Contains(out, "Usage:") || !strings.Contains(out, "--bpffs-dir") {
			t.Errorf("%s --help: code %d, output %q", c.Name(), code, out)
		}
	}
}
