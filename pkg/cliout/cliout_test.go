package cliout

import (
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

func TestBytes(t *testing.T) {
	for n, want := range map[uint64]string{0: "0 B", 1023: "1023 B", 1536: "1.5 KiB", 3 << 20: "3.0 MiB", 5 << 40: "5.0 TiB"} {
		if got := Bytes(n); got != want {
			t.Errorf("Bytes(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestCounts(t *testing.T) {
	if got := Counts(map[string]uint64{"b": 2, "a": 1, "z": 0}, "none"); got != "a=1 b=2" {
		t.Errorf("got %q", got)
	}
	if got := Counts(map[string]uint64{"z": 0}, "-"); got != "-" {
		t.Errorf("all zero: got %q, want the empty text", got)
	}
}

func TestOutputFlag(t *testing.T) {
	var out string
	cmd := &cobra.Command{}
	check := OutputFlag(cmd, &out, "table", "json")
	if out != "table" || check() != nil {
		t.Fatalf("default: %q, %v", out, check())
	}
	out = "xml"
	var ue *UsageError
	if err := check(); !errors.As(err, &ue) {
		t.Fatalf("unknown format: want a UsageError, got %v", err)
	}
}

func TestPortsYesNoDash(t *testing.T) {
	if Ports(nil) != "-" || Ports([]uint16{80, 443}) != "80,443" {
		t.Error("Ports")
	}
	if YesNo(true) != "yes" || YesNo(false) != "no" || Dash("") != "-" || Dash("x") != "x" {
		t.Error("YesNo/Dash")
	}
}

func TestExecuteAndExitCode(t *testing.T) {
	var stderr strings.Builder
	root := Root(&cobra.Command{Use: "tool"}, io.Discard, &stderr)
	root.SetArgs([]string{"nosuch"})
	err := Execute(root, &stderr)
	if got := ExitCode(err); got != ExitUsage {
		t.Fatalf("unknown subcommand: exit %d (%v), want %d", got, err, ExitUsage)
	}
	if !strings.Contains(stderr.String(), "Run 'tool --help' for usage.") {
		t.Fatalf("no usage hint: %q", stderr.String())
	}
	stderr.Reset()
	root.AddCommand(&cobra.Command{Use: "fails", RunE: func(*cobra.Command, []string) error { return ErrReported }})
	root.SetArgs([]string{"fails"})
	if got := ExitCode(Execute(root, &stderr)); got != ExitFailure || stderr.Len() != 0 {
		t.Fatalf("an error already reported: exit %d, stderr %q; want %d and nothing printed", got, stderr.String(), ExitFailure)
	}
	if ExitCode(nil) != ExitOK {
		t.Fatal("nil is not exit 0")
	}
}
