// Package cliout holds what sockhop's command-line tools (sockhop,
// kubectl-sockhop) share in how they talk to people: the -o flag, tables,
// JSON, numbers and lists written for reading, and usage errors (exit code 2).
package cliout

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
)

// UsageError is a command line the tool cannot act on: exit code 2.
type UsageError struct{ Err error }

func (e *UsageError) Error() string { return e.Err.Error() }
func (e *UsageError) Unwrap() error { return e.Err }

// Usagef returns a UsageError.
func Usagef(format string, a ...any) error {
	return &UsageError{Err: fmt.Errorf(format, a...)}
}

// OutputFlag adds -o/--output with the given formats (the first is the
// default) and returns a function that validates it.
func OutputFlag(cmd *cobra.Command, dst *string, formats ...string) func() error {
	cmd.Flags().StringVarP(dst, "output", "o", formats[0], "output format: "+strings.Join(formats, "|"))
	return func() error {
		for _, f := range formats {
			if *dst == f {
				return nil
			}
		}
		return Usagef("unknown output format %q (want %s)", *dst, strings.Join(formats, ", "))
	}
}

// WriteJSON writes v as indented JSON.
func WriteJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// NewTable is the tools' table layout: columns two spaces apart.
func NewTable(w io.Writer) *tabwriter.Writer {
	return tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
}

// Bytes is a byte count for people: 0 B, 512 B, 1.5 KiB, 3.0 MiB ...
func Bytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// Counts renders counts as "a=1 b=2", sorted by key, zeros left out; empty
// when there are none.
func Counts(m map[string]uint64, empty string) string {
	keys := make([]string, 0, len(m))
	for k, v := range m {
		if v != 0 {
			keys = append(keys, k)
		}
	}
	if len(keys) == 0 {
		return empty
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = k + "=" + strconv.FormatUint(m[k], 10)
	}
	return strings.Join(parts, " ")
}

// Ports is a comma-separated port list, "-" when empty.
func Ports(ports []uint16) string {
	if len(ports) == 0 {
		return "-"
	}
	s := make([]string, len(ports))
	for i, p := range ports {
		s[i] = strconv.Itoa(int(p))
	}
	return strings.Join(s, ",")
}

// YesNo is "yes" or "no".
func YesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// Dash is s, or "-" when s is empty.
func Dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// ErrReported is returned by commands that already printed why they fail:
// exit code 1 without a second message.
var ErrReported = errors.New("failure reported above")

// Exit codes.
const (
	ExitOK      = 0
	ExitFailure = 1
	ExitUsage   = 2
)

// ExitCode is the exit code for what a command returned.
func ExitCode(err error) int {
	var ue *UsageError
	switch {
	case err == nil:
		return ExitOK
	case errors.As(err, &ue):
		return ExitUsage
	default:
		return ExitFailure
	}
}

// Root makes cmd a tool's root command: it prints its own errors (Execute),
// a flag or an unknown subcommand is a usage error, and without one it
// shows its help.
func Root(cmd *cobra.Command, stdout, stderr io.Writer) *cobra.Command {
	cmd.SilenceUsage = true
	cmd.SilenceErrors = true
	// Without this, cobra treats an unknown subcommand of a root without
	// Run as a request for help and exits 0.
	cmd.Args = func(cmd *cobra.Command, args []string) error {
		if len(args) > 0 {
			return Usagef("unknown command %q for %q", args[0], cmd.CommandPath())
		}
		return nil
	}
	cmd.RunE = func(cmd *cobra.Command, args []string) error { return cmd.Help() }
	cmd.SetOut(stdout)
	cmd.SetErr(stderr)
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return &UsageError{Err: err} })
	cmd.CompletionOptions.DisableDefaultCmd = true
	return cmd
}

// Execute runs cmd and prints its error on stderr, with a hint for usage
// errors; the error it returns only decides the exit code (ExitCode).
func Execute(cmd *cobra.Command, stderr io.Writer) error {
	c, err := cmd.ExecuteC()
	if err == nil {
		return nil
	}
	if !errors.Is(err, ErrReported) {
		fmt.Fprintf(stderr, "Error: %v\n", err)
	}
	var ue *UsageError
	if errors.As(err, &ue) {
		fmt.Fprintf(stderr, "Run '%s --help' for usage.\n", c.CommandPath())
	}
	return err
}
