package main

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/sockhop/sockhop/pkg/cgroup"
	"github.com/sockhop/sockhop/pkg/cliout"
	"github.com/sockhop/sockhop/pkg/datapath"
)

func newStatusCommand(g *globalOptions) *cobra.Command {
	var (
		output       string
		skipSelfTest bool
		pods         bool
	)
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show the attached cgroups (pods) and the datapath counters",
		Long: `Show what sockhop does on this node: every cgroup the sockops program is
attached to (with the pod UID when the path is a kubelet pod cgroup), the
sockets in the sockhash now, and the counters since the datapath was first
loaded: paired sockets, redirected messages and bytes, connections and
directions left on TCP by reason, failed map operations; with --pods, per
attached pod since its attach: connections paired, directions redirected,
directions on TCP for good and sockets not paired, by reason (the JSON output
always has them, as "stats" of each attachment); and which redirect
hazards the running kernel has and which of them sockhop guards (the hazard
self-test, as root).

status only reads the pinned maps and links: it loads no program into them,
re-links nothing and changes nothing. The self-test loads its own unpinned
program in a throwaway network namespace. status works on the node and
inside the agent pod.`,
		Example: `  sockhop status
  sockhop status --pods
  sockhop status -o json
  sockhop status --bpffs-dir /sys/fs/bpf/sockhop`,
		Args: noArgs,
	}
	validate := cliout.OutputFlag(cmd, &output, formatTable, formatJSON)
	cmd.Flags().BoolVar(&skipSelfTest, "skip-self-test", false, "do not run the hazard self-test")
	cmd.Flags().BoolVar(&pods, "pods", false, "also show, per attached pod, what was accelerated and what stayed on TCP")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if err := validate(); err != nil {
			return err
		}
		dp, err := datapath.Open(g.pinDir)
		if errors.Is(err, datapath.ErrNotInstalled) {
			return fmt.Errorf("sockhop is not installed on this node (no pins in %s; is the agent running, or was --bpffs-dir mistyped?)%s", g.pinDir, heldNote(g.pinDir))
		}
		if err != nil {
			return fmt.Errorf("open the datapath: %w", err)
		}
		defer dp.Close()
		rep, err := collectStatus(g.pinDir, dp)
		if err != nil {
			return err
		}
		// Listing the kernel's programs needs CAP_SYS_ADMIN; without it
		// status still shows the rest.
		if progs, err := datapath.Programs(g.pinDir); err == nil {
			rep.Programs = programViews(progs)
		}
		if !skipSelfTest {
			st, err := runSelfTest(cmd.Context())
			rep.Hazards = hazardViews(st)
			if err != nil {
				rep.HazardsError = err.Error()
			} else {
				safe := st.AppReceiversSafe()
				rep.AppReceiversSafe = &safe
			}
		}
		if output == formatJSON {
			return cliout.WriteJSON(g.stdout, rep)
		}
		if err := renderStatus(g.stdout, rep); err != nil {
			return err
		}
		if pods {
			return renderPods(g.stdout, rep)
		}
		return nil
	}
	return cmd
}

// statusSource is what status reads: a *datapath.Datapath from Open.
type statusSource interface {
	Attachments() ([]datapath.Attachment, error)
	Counters() (datapath.Counters, error)
	Sockets() (int, error)
	MapFill() ([]datapath.MapFill, error)
	Build() (datapath.Build, error)
	PodStats() (map[uint64]datapath.PodStats, error)
}

type statusReport struct {
	PinDir      string           `json:"bpffs_dir"`
	Datapath    datapathView     `json:"datapath"`
	Attachments []attachmentView `json:"attachments"`
	// SocketsInMap is how many sockets are in the sockhash now.
	SocketsInMap int `json:"sockets_in_sockhash"`
	// Maps: how full the maps that bound acceleration are.
	Maps     []mapFillView `json:"maps"`
	Counters countersView  `json:"counters"`
	// Hazards is the self-test on the running kernel (absent when skipped).
	Hazards      []hazardView `json:"hazards,omitempty"`
	HazardsError string       `json:"hazards_error,omitempty"`
	// AppReceiversSafe: splice and MSG_WAITALL see redirected data on this
	// kernel, so that even an unguarded redirect into any socket (not only
	// sidecar proxies') is safe on this kernel.
	AppReceiversSafe *bool `json:"app_receivers_safe,omitempty"`
	// Programs are the sockhop programs in the kernel: the installed ones,
	// and those still held by connections paired before an uninstall or
	// an upgrade (absent when they cannot be listed).
	Programs []programView `json:"programs,omitempty"`
}

type programView struct {
	ID        uint32 `json:"id"`
	Name      string `json:"name"`
	Tag       string `json:"tag"`
	Installed bool   `json:"installed"`
}

func programViews(progs []datapath.Program) []programView {
	views := make([]programView, 0, len(progs))
	for _, p := range progs {
		views = append(views, programView{ID: p.ID, Name: p.Name, Tag: p.Tag, Installed: p.Installed})
	}
	return views
}

// heldNote says, for the error of a node where sockhop is not installed,
// which of its programs the kernel still runs for established connections.
func heldNote(pinDir string) string {
	progs, err := datapath.Programs(pinDir)
	if err != nil || len(progs) == 0 {
		return ""
	}
	ids := make([]string, 0, len(progs))
	for _, p := range progs {
		ids = append(ids, fmt.Sprintf("%s id %d", p.Name, p.ID))
	}
	return fmt.Sprintf("; %d sockhop program(s) are still in the kernel (%s): connections paired before the uninstall hold them, with their maps, and keep being redirected until they close (or another sockhop process holds them)",
		len(progs), strings.Join(ids, ", "))
}

type mapFillView struct {
	Name     string `json:"name"`
	Entries  int    `json:"entries"`
	Capacity int    `json:"capacity"`
}

type attachmentView struct {
	Cgroup       string   `json:"cgroup"`
	CgroupID     uint64   `json:"cgroup_id"`
	Live         bool     `json:"live"`
	ExcludePorts []uint16 `json:"exclude_ports"`
	PodUID       string   `json:"pod_uid,omitempty"`
	QOSClass     string   `json:"qos_class,omitempty"`
	// Stats: what happened to the pod's connections since it was
	// attached (absent when the datapath keeps none for it).
	Stats *datapath.PodStats `json:"stats,omitempty"`
	// Summary is the same in words, as the agent's Events say it.
	Summary string `json:"summary,omitempty"`
}

// datapathView is the installed datapath: which build, and the guards its
// options set.
type datapathView struct {
	SockopsTag string   `json:"sockops_tag"`
	MsgTag     string   `json:"sk_msg_tag"`
	ProxyUIDs  []uint32 `json:"proxy_uids"`
	// AppReceivers: application sockets receive redirected data too.
	AppReceivers bool `json:"app_receivers"`
	// BacklogLimit: unread redirected bytes per receiver before its sender
	// goes back to TCP; -1 when unbounded.
	BacklogLimit int `json:"backlog_limit"`
	// NodeTracepoints: the node-wide tracepoints are attached (while a pod
	// is attached or a paired socket is open; nothing else on the node
	// pays for them otherwise).
	NodeTracepoints bool `json:"node_tracepoints_attached"`
	// SyscallGuard: how the syscall guard is attached ("kernel
	// functions", "per-syscall tracepoints" or "sys_enter"); empty while
	// it is not.
	SyscallGuard string `json:"syscall_guard,omitempty"`
}

type countersView struct {
	PairedSockets      uint64            `json:"paired_sockets"`
	RedirectedMessages uint64            `json:"redirected_messages"`
	RedirectedBytes    uint64            `json:"redirected_bytes"`
	TCPMessages        uint64            `json:"tcp_messages"`
	TCPBytes           uint64            `json:"tcp_bytes"`
	Switches           uint64            `json:"switches_to_redirect"`
	UnsafeReceivers    uint64            `json:"unsafe_receivers"`
	Stranded           uint64            `json:"stranded_receivers"`
	Poisoned           uint64            `json:"poisoned_directions"`
	ZeroCopyRefused    uint64            `json:"zerocopy_refused"`
	ULPRefused         uint64            `json:"ulp_refused"`
	Retired            uint64            `json:"retired_sockets"`
	Passthrough        map[string]uint64 `json:"passthrough"`
	MapErrors          map[string]uint64 `json:"map_errors"`
}

func collectStatus(pinDir string, src statusSource) (statusReport, error) {
	rep := statusReport{PinDir: pinDir, Attachments: []attachmentView{}}
	b, err := src.Build()
	if err != nil {
		return rep, err
	}
	rep.Datapath = datapathView{SockopsTag: b.SockopsTag, MsgTag: b.MsgTag, ProxyUIDs: b.Options.ProxyUIDs,
		AppReceivers: b.Options.AppReceivers, BacklogLimit: b.Options.BacklogLimit, NodeTracepoints: b.NodeTracepoints,
		SyscallGuard: b.SyscallGuard}
	atts, err := src.Attachments()
	if err != nil {
		return rep, fmt.Errorf("list attachments: %w", err)
	}
	stats, err := src.PodStats()
	if err != nil {
		return rep, err
	}
	for _, a := range atts {
		v := attachmentView{Cgroup: a.CgroupPath, CgroupID: a.CgroupID, Live: a.Live, ExcludePorts: a.Config.ExcludePorts}
		if st, ok := stats[a.CgroupID]; ok {
			v.Stats = &st
			v.Summary = st.String()
		}
		if v.ExcludePorts == nil {
			v.ExcludePorts = []uint16{}
		}
		uid, qos, _ := cgroup.PodOf(a.CgroupPath)
		v.PodUID, v.QOSClass = uid, string(qos)
		rep.Attachments = append(rep.Attachments, v)
	}
	c, err := src.Counters()
	if err != nil {
		return rep, err
	}
	rep.Counters = countersView{
		PairedSockets: c.PairedSockets, RedirectedMessages: c.RedirectedMessages, RedirectedBytes: c.RedirectedBytes,
		TCPMessages: c.TCPMessages, TCPBytes: c.TCPBytes, Passthrough: c.Passthrough, MapErrors: c.MapErrors,
		Switches: c.Switches, UnsafeReceivers: c.UnsafeReceivers, Stranded: c.Stranded, Poisoned: c.Poisoned,
		ZeroCopyRefused: c.ZeroCopyRefused, ULPRefused: c.ULPRefused, Retired: c.Retired,
	}
	if rep.SocketsInMap, err = src.Sockets(); err != nil {
		return rep, err
	}
	fills, err := src.MapFill()
	if err != nil {
		return rep, err
	}
	rep.Maps = []mapFillView{}
	for _, f := range fills {
		rep.Maps = append(rep.Maps, mapFillView{Name: f.Name, Entries: f.Entries, Capacity: f.Capacity})
	}
	return rep, nil
}

func renderStatus(w io.Writer, rep statusReport) error {
	dp := rep.Datapath
	fmt.Fprintf(w, "DATAPATH (pins in %s)\n", rep.PinDir)
	tw := cliout.NewTable(w)
	fmt.Fprintf(tw, "  programs\tsockops %s, sk_msg %s\n", cliout.Dash(dp.SockopsTag), cliout.Dash(dp.MsgTag))
	if dp.AppReceivers {
		fmt.Fprintf(tw, "  receivers\tany socket seen reading with recvmsg; never a splicer or MSG_WAITALL reader (guarded)\n")
	} else {
		fmt.Fprintf(tw, "  receivers\tsockets of proxy uids %v seen reading with recvmsg; never a splicer or MSG_WAITALL reader (guarded)\n", dp.ProxyUIDs)
	}
	if dp.BacklogLimit > 0 {
		fmt.Fprintf(tw, "  back-pressure bound\t%s unread per receiver (guarded)\n", cliout.Bytes(uint64(dp.BacklogLimit)))
	} else {
		fmt.Fprintf(tw, "  back-pressure bound\tnone (unguarded)\n")
	}
	if dp.NodeTracepoints {
		fmt.Fprintf(tw, "  node-wide tracepoints\tattached (pods attached or paired sockets open)\n")
		if dp.SyscallGuard != "" {
			fmt.Fprintf(tw, "  syscall guard\t%s\n", dp.SyscallGuard)
		}
	} else {
		fmt.Fprintf(tw, "  node-wide tracepoints\tnot attached (nothing to guard: the node pays nothing)\n")
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(w)
	tw = cliout.NewTable(w)
	fmt.Fprintf(tw, "ATTACHED CGROUPS: %d (pins in %s)\n", len(rep.Attachments), rep.PinDir)
	if len(rep.Attachments) > 0 {
		fmt.Fprintln(tw, "CGROUP\tCGROUP ID\tLIVE\tPOD UID\tQOS\tEXCLUDED PORTS")
		for _, a := range rep.Attachments {
			path := a.Cgroup
			if path == "" {
				path = "(unknown: no pod entry)"
			}
			fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\n", path, a.CgroupID, cliout.YesNo(a.Live),
				cliout.Dash(a.PodUID), cliout.Dash(a.QOSClass), cliout.Ports(a.ExcludePorts))
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if err := renderPrograms(w, rep.Programs); err != nil {
		return err
	}
	c := rep.Counters
	fmt.Fprintln(w)
	fmt.Fprintln(w, "COUNTERS (since the datapath was first loaded)")
	tw = cliout.NewTable(w)
	fmt.Fprintf(tw, "  sockets in the sockhash now\t%d\n", rep.SocketsInMap)
	for _, m := range rep.Maps {
		pct := 0.0
		if m.Capacity > 0 {
			pct = 100 * float64(m.Entries) / float64(m.Capacity)
		}
		fmt.Fprintf(tw, "  map %s\t%d of %d entries (%.0f%%)\n", m.Name, m.Entries, m.Capacity, pct)
	}
	fmt.Fprintf(tw, "  paired sockets\t%d\n", c.PairedSockets)
	fmt.Fprintf(tw, "  redirected\t%d messages, %s\n", c.RedirectedMessages, cliout.Bytes(c.RedirectedBytes))
	fmt.Fprintf(tw, "  paired sockets' sends through TCP\t%d messages, %s\n", c.TCPMessages, cliout.Bytes(c.TCPBytes))
	fmt.Fprintf(tw, "  directions switched to redirect\t%d\n", c.Switches)
	fmt.Fprintf(tw, "  sockets retired to plain TCP\t%d (their sends on TCP for good)\n", c.Retired)
	fmt.Fprintf(tw, "  receivers seen splicing or waiting for all\t%d (%d with redirected bytes unread, %d directions kept on redirect for them)\n",
		c.UnsafeReceivers, c.Stranded, c.Poisoned)
	fmt.Fprintf(tw, "  SO_ZEROCOPY refused in the sockhash\t%d (the sender falls back to plain sends)\n", c.ZeroCopyRefused)
	fmt.Fprintf(tw, "  kTLS (TCP_ULP) refused in the sockhash\t%d (the program does without kTLS)\n", c.ULPRefused)
	fmt.Fprintf(tw, "  left on TCP, by reason\t%s\n", cliout.Counts(c.Passthrough, "none"))
	fmt.Fprintf(tw, "  failed map operations\t%s\n", cliout.Counts(c.MapErrors, "none"))
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(rep.Hazards) == 0 && rep.HazardsError == "" {
		return nil
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "REDIRECT HAZARDS (self-test on this kernel)")
	if rep.HazardsError != "" {
		fmt.Fprintf(w, "  self-test: %s\n", rep.HazardsError)
	}
	tw = cliout.NewTable(w)
	for _, h := range rep.Hazards {
		fmt.Fprintf(tw, "  %s\t%s\t%s\n", h.Hazard, h.Status, h.Detail)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if rep.AppReceiversSafe != nil {
		if *rep.AppReceiversSafe {
			fmt.Fprintln(w, "  splice and MSG_WAITALL see redirected data on this kernel")
		} else {
			fmt.Fprintln(w, "  splice or MSG_WAITALL miss redirected data on this kernel: the receiver guard keeps such readers on TCP")
		}
	}
	return nil
}

// renderPrograms lists the sockhop programs in the kernel when any is not
// the installed one: after an upgrade or an uninstall, connections paired
// before keep running the program they were paired under until they close.
func renderPrograms(w io.Writer, progs []programView) error {
	held := 0
	for _, p := range progs {
		if !p.Installed {
			held++
		}
	}
	if held == 0 {
		return nil
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "PROGRAMS IN THE KERNEL: %d not installed, held by connections paired before an upgrade or uninstall (they go when those close)\n", held)
	tw := cliout.NewTable(w)
	fmt.Fprintln(tw, "ID\tNAME\tTAG\tRUNS FOR")
	for _, p := range progs {
		runs := "connections paired before an upgrade or uninstall"
		if p.Installed {
			runs = "new connections (installed)"
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\n", p.ID, p.Name, p.Tag, runs)
	}
	return tw.Flush()
}

// renderPods is --pods: per attached pod, what was accelerated since its
// attach and what stayed on TCP, by reason.
func renderPods(w io.Writer, rep statusReport) error {
	fmt.Fprintln(w)
	fmt.Fprintln(w, "PODS (since each was attached)")
	tw := cliout.NewTable(w)
	fmt.Fprintln(tw, "POD UID\tCGROUP ID\tCONNECTIONS\tDIRECTIONS REDIRECTED\tON TCP FOR GOOD\tNOT PAIRED\tRETIRED")
	for _, a := range rep.Attachments {
		id := a.PodUID
		if id == "" {
			id = cliout.Dash(a.Cgroup)
		}
		if a.Stats == nil {
			fmt.Fprintf(tw, "%s\t%d\t-\t-\t-\t-\t-\n", id, a.CgroupID)
			continue
		}
		st := a.Stats
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d of %d\t%s\t%s\t%d\n", id, a.CgroupID, st.Connections, st.Redirected, st.Directions,
			cliout.Counts(st.OnTCP, "none"), cliout.Counts(st.Unpaired, "none"), st.Retired)
	}
	return tw.Flush()
}
