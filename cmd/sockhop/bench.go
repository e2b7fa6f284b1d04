package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/sockhop/sockhop/pkg/bench"
	"github.com/sockhop/sockhop/pkg/cliout"
	"github.com/sockhop/sockhop/pkg/plot"
)

func newBenchCommand(g *globalOptions) *cobra.Command {
	var (
		output   string
		quick    bool
		rounds   int
		cases    []string
		plotFile string
		list     bool
	)
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure loopback TCP without and with sockhop, side by side",
		Long: `Measure what sockhop changes on this node. Every case runs the same client
against the same servers with its cgroup detached (off) and attached (on), in
interleaved rounds, and reports how many times better "on" is: ping-pong
latency per message size (one CPU and two), a client → relay → server chain,
bulk throughput per write size, connection rate, and traffic that must not be
paired. The counters of every round confirm which path the bytes took.

bench needs root. It works in throwaway cgroups, network namespaces and its
own pin directory (/sys/fs/bpf/sockhop-bench-*), and removes them when it
ends, also when interrupted: it does not touch the agent's datapath or any
pod. Other work on the node skews both modes alike but widens the spread.`,
		Example: `  sockhop bench --quick
  sockhop bench --plot bench.png
  sockhop bench --cases pingpong-1cpu,bulk-2cpu -o markdown`,
		Args: noArgs,
	}
	validate := cliout.OutputFlag(cmd, &output, formatTable, formatJSON, formatMarkdown)
	cmd.Flags().BoolVar(&quick, "quick", false, "few iterations, one round per mode: checks that everything works in seconds; not a measurement")
	cmd.Flags().IntVar(&rounds, "rounds", 0, "rounds per mode (default 3, 1 with --quick)")
	cmd.Flags().StringSliceVar(&cases, "cases", nil, "run only these cases, or cases starting with these prefixes (see --list)")
	cmd.Flags().StringVar(&plotFile, "plot", "", "also draw latency and throughput, off vs on, into this .png, .svg or .pdf file")
	cmd.Flags().BoolVar(&list, "list", false, "list the cases and exit")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if err := validate(); err != nil {
			return err
		}
		if list {
			for _, id := range bench.IDs() {
				fmt.Fprintln(g.stdout, id)
			}
			return nil
		}
		if err := checkCaseFilters(cases, bench.IDs()); err != nil {
			return err
		}
		if rounds < 0 {
			return cliout.Usagef("--rounds must not be negative")
		}
		if plotFile != "" {
			switch strings.ToLower(filepath.Ext(plotFile)) {
			case ".png", ".svg", ".pdf":
			default:
				return cliout.Usagef("--plot %s: the file must end in .png, .svg or .pdf", plotFile)
			}
		}
		if os.Geteuid() != 0 {
			return errors.New("bench needs root: it loads BPF programs and creates cgroups and network namespaces")
		}
		// Interrupting must still remove the bed: Run cleans up when ctx ends.
		ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		n := 0
		rep, runErr := bench.Run(ctx, bench.Config{Quick: quick, Rounds: rounds, Cases: cases,
			Progress: func(id string) {
				n++
				fmt.Fprintf(g.stderr, "[%d] %s\n", n, id)
			}})
		if len(rep.Cases) == 0 {
			return runErr
		}
		var err error
		switch output {
		case formatJSON:
			err = cliout.WriteJSON(g.stdout, rep)
		case formatMarkdown:
			_, err = io.WriteString(g.stdout, rep.Markdown())
		default:
			err = renderBench(g.stdout, rep)
		}
		if err != nil {
			return err
		}
		if plotFile != "" {
			f, err := plot.FromReport(rep)
			if err == nil {
				err = plot.WriteFile(f, plotFile)
			}
			if err != nil {
				return errors.Join(runErr, fmt.Errorf("plot: %w", err))
			}
			fmt.Fprintf(g.stderr, "plot written to %s\n", plotFile)
		}
		if runErr != nil {
			return runErr
		}
		if err := rep.Verify(); err != nil {
			return fmt.Errorf("the measurement is not sound: %w", err)
		}
		return nil
	}
	return cmd
}

// checkCaseFilters refuses a --cases entry that selects no case: an id,
// or a leading part of ids that ends before a '-' ("bulk-2cpu").
func checkCaseFilters(filters, ids []string) error {
	for _, f := range filters {
		ok := false
		for _, id := range ids {
			if id == f || strings.HasPrefix(id, strings.TrimSuffix(f, "-")+"-") {
				ok = true
				break
			}
		}
		if !ok {
			return cliout.Usagef("--cases: %q selects no case (see 'sockhop bench --list')", f)
		}
	}
	return nil
}

// renderBench prints one row per figure: off, on and the ratio.
func renderBench(w io.Writer, rep bench.Report) error {
	kind := "full run"
	if rep.Quick {
		kind = "quick run (a check, not a measurement)"
	}
	rounds := "1 round"
	if rep.Rounds != 1 {
		rounds = fmt.Sprintf("%d rounds", rep.Rounds)
	}
	fmt.Fprintf(w, "Linux %s, %d CPUs, load %.2f before / %.2f after; %s, %s per mode, %s\n\n",
		rep.Machine.Kernel, rep.Machine.CPUs, rep.Machine.LoadBefore, rep.Machine.LoadAfter, kind, rounds,
		rep.Duration.Round(1e9))
	tw := cliout.NewTable(w)
	fmt.Fprintln(tw, "CASE\tMETRIC\tOFF\tON\tRATIO\tREDIRECTED (ON)\tLEFT ON TCP (ON)")
	for _, c := range rep.Cases {
		if c.Error != "" {
			fmt.Fprintf(tw, "%s\terror\t\t\t\t\t%s\n", c.ID, c.Error)
			continue
		}
		on := c.Sum(bench.ModeOn)
		for i, m := range c.Metrics {
			redir, pass := "", ""
			if i == 0 {
				redir, pass = cliout.Bytes(on.RedirectedBytes), cliout.Counts(on.Passthrough, "none")
			}
			fmt.Fprintf(tw, "%s\t%s (%s)\t%s\t%s\t%.2f×\t%s\t%s\n", c.ID, m.Name, unitText(m.Unit),
				plot.Value(m.Off), plot.Value(m.On), m.Ratio, redir, pass)
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintln(w, "\nRATIO: how many times better with sockhop (off/on for latency, on/off for throughput and rate); above 1 is faster.")
	return err
}

func unitText(u string) string {
	if u == "us" {
		return "µs"
	}
	return u
}
