// Command sockhop is the operator CLI of sockhop: it shows what the node
// agent attached (status), checks that the kernel can run the datapath
// (doctor), attaches cgroups without Kubernetes (attach, detach, uninstall)
// and measures the datapath side by side (bench).
//
// Exit codes: 0 success, 1 failure, 2 usage error.
package main

import (
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/sockhop/sockhop/pkg/cliout"
	"github.com/sockhop/sockhop/pkg/datapath"
	"github.com/sockhop/sockhop/pkg/testbed"
)

func main() {
	// `sockhop bench` re-executes this binary as its peer processes.
	testbed.RunPeerIfRequested()
	if err := run(); err != nil {
		os.Exit(cliout.ExitCode(err))
	}
}

// run executes the command line and reports a failure on stderr; the
// returned error only decides the exit code.
func run() error {
	cmd := newRootCommand(os.Stdout, os.Stderr)
	cmd.SetArgs(os.Args[1:])
	return cliout.Execute(cmd, os.Stderr)
}

// Output formats of -o.
const (
	formatTable    = "table"
	formatJSON     = "json"
	formatMarkdown = "markdown"
)

// globalOptions are the flags every subcommand shares.
type globalOptions struct {
	pinDir string
	stdout io.Writer
	stderr io.Writer
}

func newRootCommand(stdout, stderr io.Writer) *cobra.Command {
	g := &globalOptions{stdout: stdout, stderr: stderr}
	root := cliout.Root(&cobra.Command{
		Use:   "sockhop",
		Short: "Operate sockhop, the sidecar loopback accelerator, on this node",
		Long: `sockhop makes the TCP hop between an application and its service-mesh sidecar
skip the kernel's loopback TCP/IP stack. This CLI inspects and operates the
datapath on the node it runs on (or inside the agent pod).`,
	}, stdout, stderr)
	root.PersistentFlags().StringVar(&g.pinDir, "bpffs-dir", datapath.DefaultPinDir,
		"bpffs directory holding sockhop's pinned maps and links")

	root.AddCommand(
		newStatusCommand(g),
		newDoctorCommand(g),
		newAttachCommand(g),
		newDetachCommand(g),
		newUninstallCommand(g),
		newBenchCommand(g),
		newVersionCommand(g),
	)
	return root
}

// exactArgs is cobra.ExactArgs with a usage error.
func exactArgs(n int, what string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return cliout.Usagef("%s takes %d argument (%s), got %d", cmd.CommandPath(), n, what, len(args))
		}
		return nil
	}
}

// noArgs is cobra.NoArgs with a usage error.
func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return cliout.Usagef("%s takes no arguments, got %q", cmd.CommandPath(), args)
	}
	return nil
}
