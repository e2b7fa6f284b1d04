// Command kubectl-sockhop is sockhop's cluster view, as a kubectl plugin
// (`kubectl sockhop ...` once it is on PATH): status of every node's agent,
// and sysdump, the archive a bug report needs. It takes kubectl's kubeconfig
// flags and reads what the agents already know, by running the node CLI
// (`sockhop status`, `sockhop doctor`) in each agent pod.
//
// Exit codes: 0 success, 1 failure, 2 usage error.
package main

import (
	"io"
	"os"

	"github.com/sockhop/sockhop/pkg/cliout"
	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericclioptions"
)

func main() {
	cmd := newRootCommand(os.Stdout, os.Stderr)
	cmd.SetArgs(os.Args[1:])
	os.Exit(cliout.ExitCode(cliout.Execute(cmd, os.Stderr)))
}

func newRootCommand(stdout, stderr io.Writer) *cobra.Command {
	c := &cluster{
		flags:     genericclioptions.NewConfigFlags(true),
		namespace: defaultNamespace,
		selector:  defaultSelector,
	}
	root := cliout.Root(&cobra.Command{
		// kubectl shows plugins as "kubectl sockhop": help, usage lines and
		// hints name the command as a user types it.
		Use:         "kubectl-sockhop",
		Annotations: map[string]string{cobra.CommandDisplayNameAnnotation: "kubectl sockhop"},
		Short:       "sockhop across the cluster: status of every node, and a sysdump for bug reports",
		Long: `kubectl sockhop shows what sockhop does on every node of the cluster, from the
agents themselves (it runs the node CLI 'sockhop' in each agent pod), and collects
a sysdump archive for a bug report.

-n/--namespace is where the agents run (default sockhop-system, not the context's
namespace); every other kubeconfig flag is kubectl's.`,
	}, stdout, stderr)
	c.flags.AddFlags(root.PersistentFlags())
	root.PersistentFlags().StringVarP(&c.selector, "selector", "l", defaultSelector, "label selector of the agent pods")
	root.AddCommand(newStatusCommand(c, stdout), newSysdumpCommand(c, stdout, stderr))
	return root
}

// noArgs is cobra.NoArgs with a usage error.
func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return cliout.Usagef("%s takes no arguments, got %q", cmd.CommandPath(), args)
	}
	return nil
}
