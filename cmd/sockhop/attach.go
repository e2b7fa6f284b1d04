package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/containerd/cgroups/v3"
	"github.com/spf13/cobra"

	"github.com/sockhop/sockhop/pkg/cliout"
	"github.com/sockhop/sockhop/pkg/datapath"
)

// loadFlags are the datapath options used when a command installs the
// datapath. An installed datapath (the agent's, or an earlier attach's) is
// used as it is, with the options it was installed with.
type loadFlags struct {
	appReceivers bool
	proxyUIDs    []uint
	backlogLimit int
	syscallGuard bool
}

func (f *loadFlags) register(cmd *cobra.Command) {
	cmd.Flags().BoolVar(&f.appReceivers, "app-receivers", true,
		"redirect into sockets of any owner, behind the receiver guard (only into sockets seen reading with recvmsg); =false: only into the sidecar proxies'")
	def := make([]uint, len(datapath.DefaultProxyUIDs))
	for i, u := range datapath.DefaultProxyUIDs {
		def[i] = uint(u)
	}
	cmd.Flags().UintSliceVar(&f.proxyUIDs, "proxy-uids", def,
		"uids of the sidecar proxies whose sockets are always safe to redirect into (at most 4)")
	cmd.Flags().IntVar(&f.backlogLimit, "backlog-limit", datapath.DefaultBacklogLimit,
		"unread redirected bytes per receiver before its sender goes back to TCP (-1: unbounded)")
	cmd.Flags().BoolVar(&f.syscallGuard, "syscall-guard", true,
		"mark a receiver unsafe before it splices or reads with MSG_WAITALL (as the agent's flag: fentry programs, or syscall tracepoints where the kernel refuses them, which slow every syscall on the node)")
}

func (f *loadFlags) options(pinDir string) (datapath.Options, error) {
	opts := datapath.Options{PinDir: pinDir, AppReceivers: f.appReceivers, BacklogLimit: f.backlogLimit,
		NoSyscallGuard: !f.syscallGuard}
	if len(f.proxyUIDs) > 4 {
		return opts, cliout.Usagef("--proxy-uids: at most 4 uids, got %d", len(f.proxyUIDs))
	}
	opts.ProxyUIDs = []uint32{}
	for _, u := range f.proxyUIDs {
		if u >= 1<<32-1 {
			return opts, cliout.Usagef("--proxy-uids: %d is not a uid", u)
		}
		opts.ProxyUIDs = append(opts.ProxyUIDs, uint32(u))
	}
	if f.backlogLimit == 0 || f.backlogLimit < -1 {
		return opts, cliout.Usagef("--backlog-limit must be positive or -1 (unbounded), got %d", f.backlogLimit)
	}
	return opts, nil
}

func newAttachCommand(g *globalOptions) *cobra.Command {
	var (
		ports string
		lf    loadFlags
	)
	cmd := &cobra.Command{
		Use:   "attach CGROUP",
		Short: "Accelerate the loopback TCP connections of a cgroup (no Kubernetes needed)",
		Long: `Attach sockhop's sockops program to a cgroup v2 directory, for hosts without
Kubernetes: systemd services, docker-compose hosts. It uses the same pins and
gives the same guarantees as the agent: connections opened from now on are
paired when both ends are in attached cgroups; connections that exist already
stay on TCP; the attachment survives this command (it is a pinned bpf_link).

CGROUP is a directory of the cgroup v2 hierarchy, absolute or relative to its
mount point (/sys/fs/cgroup on unified hosts, /sys/fs/cgroup/unified on hybrid
ones). Attaching an attached cgroup updates its excluded ports.

When sockhop is installed already (by an earlier attach), attach uses it as
it is, with the options it was installed with; --app-receivers, --proxy-uids
and --backlog-limit apply only when this attach installs it.

On a node where sockhop-agent manages the datapath, attach refuses: the agent
derives what is attached from the Kubernetes API and detaches every cgroup
that is not one of its pods'. Opt pods in with the namespace label instead.

A cgroup inside an attached one, or containing one, is refused too: the
sockops program would run twice for each of its connections.`,
		Example: `  sockhop attach system.slice/nginx.service
  sockhop attach /sys/fs/cgroup/app.slice --exclude-ports 5432,9300`,
		Args: exactArgs(1, "CGROUP"),
	}
	cmd.Flags().StringVar(&ports, "exclude-ports", "",
		fmt.Sprintf("comma-separated ports whose connections stay on TCP (at most %d)", datapath.MaxExcludePorts))
	lf.register(cmd)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		excl, err := datapath.ParsePorts(ports)
		if err != nil {
			return &cliout.UsageError{Err: fmt.Errorf("--exclude-ports: %w", err)}
		}
		opts, err := lf.options(g.pinDir)
		if err != nil {
			return err
		}
		dir, err := cgroupArg(args[0])
		if err != nil {
			return err
		}
		lock, err := lockAgainstAgent(g.pinDir)
		if err != nil {
			return err
		}
		defer lock.Unlock()
		dp, err := datapath.Open(g.pinDir)
		if errors.Is(err, datapath.ErrNotInstalled) {
			dp, err = datapath.Load(opts)
		}
		if err != nil {
			return fmt.Errorf("open the datapath: %w", err)
		}
		defer dp.Close()
		if err := dp.Attach(dir, datapath.PodConfig{ExcludePorts: excl}); err != nil {
			return err
		}
		fmt.Fprintf(g.stdout, "attached %s (excluded ports: %s)\n", dir, cliout.Ports(excl))
		return nil
	}
	return cmd
}

func newDetachCommand(g *globalOptions) *cobra.Command {
	var (
		id             uint64
		ignoreNotFound bool
	)
	cmd := &cobra.Command{
		Use:   "detach {CGROUP | --id CGROUP_ID}",
		Short: "Stop accelerating new connections of a cgroup",
		Long: `Detach sockhop's sockops program from a cgroup. New connections of the cgroup
go through TCP; established ones keep their path and lose no byte. The
cgroup may be gone already: it is found by the path recorded at attach, or
by its id (as 'sockhop status' lists it). detach uses the installed datapath
as it is and never installs one. Once no cgroup is attached and no paired
connection is open, it also detaches the node-wide tracepoints (attach puts
them back).`,
		Example: `  sockhop detach system.slice/nginx.service
  sockhop detach --id 4711`,
		Args: func(cmd *cobra.Command, args []string) error {
			switch {
			case len(args) == 1 && cmd.Flags().Changed("id"):
				return cliout.Usagef("give either CGROUP or --id, not both")
			case len(args) == 0 && !cmd.Flags().Changed("id"):
				return cliout.Usagef("detach needs a CGROUP or --id")
			case len(args) > 1:
				return cliout.Usagef("detach takes one CGROUP, got %d", len(args))
			}
			return nil
		},
	}
	cmd.Flags().Uint64Var(&id, "id", 0, "cgroup id of the attachment (from 'sockhop status')")
	cmd.Flags().BoolVar(&ignoreNotFound, "ignore-not-found", false, "succeed when the cgroup is not attached")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		what := fmt.Sprintf("cgroup id %d", id)
		if len(args) == 1 {
			dir, err := cgroupPath(args[0])
			if err != nil {
				return err
			}
			what = dir
		}
		notFound := func() error {
			if ignoreNotFound {
				fmt.Fprintf(g.stdout, "%s is not attached\n", what)
				return nil
			}
			return fmt.Errorf("%s is not attached (see 'sockhop status')", what)
		}
		dp, err := datapath.Open(g.pinDir)
		if errors.Is(err, datapath.ErrNotInstalled) {
			return notFound()
		}
		if err != nil {
			return fmt.Errorf("open the datapath: %w", err)
		}
		defer dp.Close()
		atts, err := dp.Attachments()
		if err != nil {
			return fmt.Errorf("list attachments: %w", err)
		}
		target, ok := findAttachment(atts, what, id, len(args) == 1)
		if !ok {
			return notFound()
		}
		if err := dp.DetachID(target.CgroupID); err != nil {
			return err
		}
		fmt.Fprintf(g.stdout, "detached %s (cgroup id %d)\n", cliout.Dash(target.CgroupPath), target.CgroupID)
		// The last cgroup gone and no paired connection left: the
		// node-wide tracepoints go too, as the agent's do, so that a
		// host with nothing accelerated pays nothing for them.
		attached, err := dp.ReleaseIdleGuards()
		switch {
		case err != nil:
			return fmt.Errorf("release the node-wide tracepoints: %w", err)
		case attached && len(atts) == 1:
			fmt.Fprintln(g.stdout, "the node-wide tracepoints stay while paired connections are open; a later detach or attach checks again")
		case !attached && len(atts) == 1:
			fmt.Fprintln(g.stdout, "nothing left to guard: the node-wide tracepoints are detached")
		}
		return nil
	}
	return cmd
}

// lockAgainstAgent takes the node lock for a CLI change of the attachments,
// refusing when the node agent runs (it holds the lock) or manages the
// datapath (its mark is in the pins, e.g. while it restarts): the agent
// detaches every cgroup that belongs to none of its pods, so an attachment
// made by hand would be silently undone.
func lockAgainstAgent(pinDir string) (*datapath.NodeLock, error) {
	lock, err := datapath.TryLockNode(pinDir)
	if errors.Is(err, datapath.ErrLocked) {
		return nil, fmt.Errorf("sockhop-agent manages this node (it holds %s): it would detach a cgroup attached by hand; opt the pod's namespace in with the label instead", pinDir)
	}
	if err != nil {
		return nil, err
	}
	if datapath.AgentManaged(pinDir) {
		lock.Unlock()
		return nil, fmt.Errorf("sockhop-agent manages the datapath in %s (it is not running now, e.g. restarting): it would detach a cgroup attached by hand; opt the pod's namespace in with the label instead, or, if Kubernetes no longer runs here, 'sockhop uninstall --yes' first", pinDir)
	}
	return lock, nil
}

func findAttachment(atts []datapath.Attachment, path string, id uint64, byPath bool) (datapath.Attachment, bool) {
	for _, a := range atts {
		if byPath && a.CgroupPath == path || !byPath && a.CgroupID == id {
			return a, true
		}
	}
	return datapath.Attachment{}, false
}

func newUninstallCommand(g *globalOptions) *cobra.Command {
	var yes bool
	cmd := &cobra.Command{
		Use:   "uninstall --yes",
		Short: "Remove every sockhop link and pin from this node",
		Long: `Remove every sockhop link and pin under --bpffs-dir: every cgroup is detached
and the maps are freed. New connections go through TCP; sockets in the
sockhash leave it and carry on through TCP, in order, without losing a byte.
It refuses while sockhop-agent runs on the node: stop the agent first, or it
attaches the pods again.`,
		Args: noArgs,
	}
	cmd.Flags().BoolVar(&yes, "yes", false, "really uninstall")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		lock, err := datapath.TryLockNode(g.pinDir)
		if errors.Is(err, datapath.ErrLocked) {
			return fmt.Errorf("a running sockhop-agent (or another sockhop command) holds %s: stop the agent first, or it attaches the pods again; `helm uninstall` removes sockhop from every node", g.pinDir)
		}
		if err != nil {
			return err
		}
		defer lock.Unlock()
		ro, err := datapath.Open(g.pinDir)
		if errors.Is(err, datapath.ErrNotInstalled) {
			fmt.Fprintf(g.stdout, "sockhop is not installed in %s: nothing to remove\n", g.pinDir)
			return nil
		}
		n := -1
		if err == nil {
			if atts, err := ro.Attachments(); err == nil {
				n = len(atts)
			}
			ro.Close()
		}
		if !yes {
			if n >= 0 {
				fmt.Fprintf(g.stderr, "This detaches %d cgroup(s) and removes every pin in %s.\n", n, g.pinDir)
			}
			return cliout.Usagef("refusing to uninstall without --yes")
		}
		if err := datapath.Uninstall(g.pinDir); err != nil {
			return fmt.Errorf("uninstall: %w", err)
		}
		if n >= 0 {
			fmt.Fprintf(g.stdout, "uninstalled: detached %d cgroup(s), removed %s\n", n, g.pinDir)
		} else {
			fmt.Fprintf(g.stdout, "uninstalled: removed %s\n", g.pinDir)
		}
		return nil
	}
	return cmd
}

// cgroupPath makes a CGROUP argument absolute: a relative one is relative
// to the cgroup v2 mount point.
func cgroupPath(arg string) (string, error) {
	if filepath.IsAbs(arg) {
		return filepath.Clean(arg), nil
	}
	mount, err := cgroupV2Mount(cgroups.Mode())
	if err != nil {
		return "", err
	}
	return cgroupPathUnder(mount, arg)
}

func cgroupPathUnder(mount, arg string) (string, error) {
	p := filepath.Join(mount, arg)
	if p != mount && !strings.HasPrefix(p, mount+"/") {
		return "", cliout.Usagef("cgroup %q leaves the cgroup v2 hierarchy %s", arg, mount)
	}
	return p, nil
}

// cgroupArg is cgroupPath for attach, where the directory must exist.
func cgroupArg(arg string) (string, error) {
	p, err := cgroupPath(arg)
	if err != nil {
		return "", err
	}
	if fi, err := statDir(p); err != nil || !fi {
		return "", fmt.Errorf("cgroup %s: not an existing directory (CGROUP is absolute or relative to the cgroup v2 mount)", p)
	}
	return p, nil
}

func cgroupV2Mount(mode cgroups.CGMode) (string, error) {
	switch mode {
	case cgroups.Unified:
		return "/sys/fs/cgroup", nil
	case cgroups.Hybrid:
		return "/sys/fs/cgroup/unified", nil
	case cgroups.Legacy:
		return "", errors.New("this host has cgroup v1 only: sockhop needs cgroup v2 (see 'sockhop doctor')")
	default:
		return "", errors.New("no cgroup hierarchy is mounted at /sys/fs/cgroup (see 'sockhop doctor')")
	}
}

// statDir reports whether p is an existing directory.
func statDir(p string) (bool, error) {
	fi, err := os.Stat(p)
	if err != nil {
		return false, err
	}
	return fi.IsDir(), nil
}
