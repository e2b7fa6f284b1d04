package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/containerd/cgroups/v3"
	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/sockhop/sockhop/pkg/cliout"
	"github.com/sockhop/sockhop/pkg/datapath"
)

// Levels of a doctor line. Only fail means acceleration cannot work.
const (
	levelOK   = "ok"
	levelWarn = "warn"
	levelFail = "fail"
	levelInfo = "info"
)

// doctorLine is one finding of `sockhop doctor`.
type doctorLine struct {
	Check  string `json:"check"`
	Level  string `json:"level"`
	Detail string `json:"detail"`
	Hint   string `json:"hint,omitempty"`
}

type doctorReport struct {
	// OK is false when at least one line failed: sockhop cannot
	// accelerate on this node (traffic stays on TCP).
	OK    bool         `json:"ok"`
	Lines []doctorLine `json:"checks"`
}

// doctorInput is everything doctor looks at, gathered from the machine
// (gatherDoctorInput) or made up by tests.
type doctorInput struct {
	KernelRelease string
	CgroupMode    cgroups.CGMode
	// MountInfo is the text of /proc/self/mountinfo.
	MountInfo    string
	MountInfoErr error
	// ProcCgroup is the text of /proc/self/cgroup: one line for every cgroup
	// hierarchy the kernel has, whatever this process' mount namespace
	// mounts, so that inside a pod it shows the host's v1 controllers.
	ProcCgroup    string
	ProcCgroupErr error
	// BPFFS: whether /sys/fs/bpf is a bpf filesystem.
	BPFFS    bool
	BPFFSErr error
	// LSM is the text of /sys/kernel/security/lsm.
	LSM    string
	LSMErr error
	// CapEff is the effective capability mask of the process.
	CapEff    uint64
	CapEffErr error
	Checks    []datapath.Check
	// AbortErr is datapath.ProbeAbort's answer: nil when this kernel can
	// abort a stranded receiver's connection.
	AbortErr error
	// FnGuardErr is datapath.ProbeFunctionGuard's answer: nil when the
	// syscall guard can run on kernel functions (fentry).
	FnGuardErr error
	// PinDir is --bpffs-dir; Attached is how many cgroups are attached
	// there, -1 when sockhop is not installed; InstalledErr says why the
	// pins could not be read.
	PinDir       string
	Attached     int
	InstalledErr error
	SelfTest     []doctorLine
}

func newDoctorCommand(g *globalOptions) *cobra.Command {
	var (
		output       string
		skipSelfTest bool
	)
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Check that this node's kernel can run sockhop, with a hint for each problem",
		Long: `Check everything sockhop needs on this node and say how to fix what is missing:
kernel version, BTF, the cgroup v2 mount and mode, cgroup v1 net_cls/net_prio
(which turn off cgroup v2 socket matching), bpffs, every BPF program type, map
type and helper the datapath uses (probed by loading tiny programs), the
process's capabilities, and the kernel hazard self-test.

Each line is ok, warn, fail or info. The exit code is 1 when a line fails:
sockhop cannot accelerate here and traffic stays on TCP.`,
		Example: `  sockhop doctor
  sockhop doctor -o json`,
		Args: noArgs,
	}
	validate := cliout.OutputFlag(cmd, &output, formatTable, formatJSON)
	cmd.Flags().BoolVar(&skipSelfTest, "skip-self-test", false,
		"skip the hazard self-test (it loads an unpinned sk_msg program in a throwaway network namespace for about a second)")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if err := validate(); err != nil {
			return err
		}
		in := gatherDoctorInput(g.pinDir)
		if !skipSelfTest {
			in.SelfTest = hazardLines(runSelfTest(cmd.Context()))
		}
		rep := evaluateDoctor(in)
		var err error
		if output == formatJSON {
			err = cliout.WriteJSON(g.stdout, rep)
		} else {
			err = renderDoctor(g.stdout, rep)
		}
		if err != nil {
			return err
		}
		if !rep.OK {
			return cliout.ErrReported
		}
		return nil
	}
	return cmd
}

func gatherDoctorInput(pinDir string) doctorInput {
	in := doctorInput{PinDir: pinDir, Attached: -1}
	var uts unix.Utsname
	if err := unix.Uname(&uts); err == nil {
		in.KernelRelease = unix.ByteSliceToString(uts.Release[:])
	}
	in.CgroupMode = cgroups.Mode()
	b, err := os.ReadFile("/proc/self/mountinfo")
	in.MountInfo, in.MountInfoErr = string(b), err
	b, err = os.ReadFile("/proc/self/cgroup")
	in.ProcCgroup, in.ProcCgroupErr = string(b), err
	var st unix.Statfs_t
	if err := unix.Statfs("/sys/fs/bpf", &st); err != nil {
		in.BPFFSErr = err
	} else {
		in.BPFFS = st.Type == unix.BPF_FS_MAGIC
	}
	b, err = os.ReadFile("/sys/kernel/security/lsm")
	in.LSM, in.LSMErr = string(b), err
	b, err = os.ReadFile("/proc/self/status")
	if err != nil {
		in.CapEffErr = err
	} else {
		in.CapEff, in.CapEffErr = parseCapEff(string(b))
	}
	in.Checks = datapath.Checks()
	in.AbortErr = datapath.ProbeAbort()
	in.FnGuardErr = datapath.ProbeFunctionGuard()
	if dp, err := datapath.Open(pinDir); err == nil {
		atts, err := dp.Attachments()
		in.Attached, in.InstalledErr = len(atts), err
		dp.Close()
	} else if !errors.Is(err, datapath.ErrNotInstalled) {
		in.InstalledErr = err
	}
	return in
}

// parseCapEff reads the CapEff line of /proc/<pid>/status.
func parseCapEff(status string) (uint64, error) {
	for _, line := range strings.Split(status, "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			n, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				return 0, fmt.Errorf("parse CapEff %q: %w", strings.TrimSpace(v), err)
			}
			return n, nil
		}
	}
	return 0, errors.New("no CapEff line in /proc/self/status")
}

// Capability numbers (linux/capability.h).
const (
	capNetAdmin = 12
	capSysAdmin = 21
	capPerfmon  = 38
	capBPF      = 39
)

// minKernel is the oldest kernel with bpf_link for sk_msg programs, which
// the datapath pins so that it outlives the agent.
var minKernel = [2]int{6, 10}

func evaluateDoctor(in doctorInput) doctorReport {
	var lines []doctorLine
	add := func(check, level, detail, hint string) {
		lines = append(lines, doctorLine{Check: check, Level: level, Detail: detail, Hint: hint})
	}

	// Kernel version.
	if maj, min, ok := parseKernelRelease(in.KernelRelease); !ok {
		add("kernel", levelWarn, fmt.Sprintf("cannot parse release %q", in.KernelRelease), "")
	} else if maj < minKernel[0] || maj == minKernel[0] && min < minKernel[1] {
		add("kernel", levelFail, "Linux "+in.KernelRelease,
			fmt.Sprintf("sockhop needs Linux %d.%d or newer (bpf_link for sk_msg programs); upgrade the node's kernel", minKernel[0], minKernel[1]))
	} else {
		add("kernel", levelOK, "Linux "+in.KernelRelease, "")
	}

	// cgroup v2.
	switch in.CgroupMode {
	case cgroups.Unified:
		add("cgroup v2", levelOK, "unified hierarchy at /sys/fs/cgroup", "")
	case cgroups.Hybrid:
		add("cgroup v2", levelOK, "hybrid: cgroup2 at /sys/fs/cgroup/unified beside cgroup v1 controllers", "")
	case cgroups.Legacy:
		add("cgroup v2", levelFail, "cgroup v1 only (legacy mode)",
			"sockhop attaches to cgroup v2 directories: boot with systemd.unified_cgroup_hierarchy=1, or mount cgroup2 at /sys/fs/cgroup/unified")
	default:
		add("cgroup v2", levelFail, "no cgroup hierarchy mounted at /sys/fs/cgroup",
			"mount cgroup2 at /sys/fs/cgroup (inside a pod: mount the host's /sys/fs/cgroup)")
	}

	// net_cls / net_prio.
	level, detail, hint := evaluateNetClsPrio(in)
	add("net_cls/net_prio", level, detail, hint)

	// bpffs.
	switch {
	case in.BPFFSErr != nil:
		add("bpffs", levelWarn, "/sys/fs/bpf: "+in.BPFFSErr.Error(),
			"sockhop pins its maps and links in /sys/fs/bpf; inside a pod, mount the host's /sys/fs/bpf (hostPath)")
	case !in.BPFFS:
		add("bpffs", levelWarn, "nothing mounted at /sys/fs/bpf",
			"the agent mounts bpffs there when it starts; inside a pod, mount the host's /sys/fs/bpf (hostPath, Bidirectional) or pins die with the pod")
	default:
		add("bpffs", levelOK, "mounted at /sys/fs/bpf", "")
	}

	// Kernel features, probed by loading programs.
	for _, c := range in.Checks {
		if c.Err == nil {
			add(c.Name, levelOK, "available", "")
			continue
		}
		hint := "this kernel lacks it: upgrade the kernel or enable the option in its config"
		switch {
		case errors.Is(c.Err, unix.EPERM), errors.Is(c.Err, unix.EACCES):
			hint = "permission denied: run as root or with CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN"
		case strings.Contains(c.Name, "BTF"):
			hint = "the kernel was built without CONFIG_DEBUG_INFO_BTF: sockhop reads kernel structures through BTF"
		}
		add(c.Name, levelFail, c.Err.Error(), hint)
	}

	// Optional: aborting stranded receivers.
	if in.AbortErr == nil {
		add("abort stranded receivers", levelOK, "bpf_sock_destroy from an iter/tcp program loads: a receiver stranded with redirected bytes unread has its connection aborted (ECONNABORTED, a reset for its peer)", "")
	} else {
		add("abort stranded receivers", levelWarn, in.AbortErr.Error(),
			"needs Linux 6.5 (bpf_sock_destroy, iter/tcp); without it a receiver that starts to splice with redirected bytes unread may stall (counted as stranded, a Warning Event names the pod), as before; everything else works")
	}

	// Optional: the syscall guard on kernel functions.
	if in.FnGuardErr == nil {
		add("syscall guard on kernel functions", levelOK, "fentry programs load: the syscall guard runs only when a socket is spliced, read with MSG_WAITALL or zerocopy-received, and costs other syscalls nothing", "")
	} else {
		add("syscall guard on kernel functions", levelInfo, "fentry programs are refused ("+in.FnGuardErr.Error()+"): the syscall guard is syscall tracepoints, which slow every syscall on the node while pods are accelerated (tens of ns each), and a splice through io_uring of a registered (fixed) file is not seen",
			"BPF trampolines need a kernel with DYNAMIC_FTRACE_WITH_DIRECT_CALLS and a hypervisor that allows them; or run the agent with --syscall-guard=false to trade the guard for the cost (docs/hazards.md)")
	}

	// BPF LSM: not needed, reported for the record.
	switch {
	case errors.Is(in.LSMErr, os.ErrNotExist):
		add("BPF LSM", levelInfo, "securityfs is not mounted at /sys/kernel/security, the active LSMs are unknown; sockhop needs no BPF LSM", "")
	case in.LSMErr != nil:
		add("BPF LSM", levelInfo, "cannot read /sys/kernel/security/lsm ("+in.LSMErr.Error()+"); sockhop needs no BPF LSM", "")
	case hasLSM(in.LSM, "bpf"):
		add("BPF LSM", levelInfo, "bpf is in the active LSMs; sockhop needs no BPF LSM", "")
	default:
		add("BPF LSM", levelInfo, "bpf is not in the active LSMs; sockhop needs no BPF LSM", "")
	}

	// Capabilities.
	if in.CapEffErr != nil {
		add("capabilities", levelWarn, in.CapEffErr.Error(), "")
	} else {
		level, detail, hint := evaluateCaps(in.CapEff)
		add("capabilities", level, detail, hint)
	}

	// The installed datapath, if any.
	switch {
	case in.InstalledErr != nil:
		add("datapath", levelWarn, fmt.Sprintf("pins in %s cannot be read: %v", in.PinDir, in.InstalledErr),
			"run as root; if an incompatible sockhop left them, 'sockhop uninstall --yes' removes them (established connections carry on through TCP)")
	case in.Attached < 0:
		add("datapath", levelInfo, "not installed in "+in.PinDir, "")
	default:
		add("datapath", levelInfo, fmt.Sprintf("installed in %s, %d cgroup(s) attached ('sockhop status' lists them)", in.PinDir, in.Attached), "")
	}

	lines = append(lines, in.SelfTest...)
	rep := doctorReport{OK: true, Lines: lines}
	for _, l := range lines {
		if l.Level == levelFail {
			rep.OK = false
		}
	}
	return rep
}

// evaluateCaps says whether a process with this effective set can load
// and attach the datapath: loading needs bpf_capable and perfmon_capable
// (bpf_probe_read_kernel), sock_ops and sk_msg programs need CAP_NET_ADMIN;
// CAP_SYS_ADMIN stands in for all three.
func evaluateCaps(capEff uint64) (level, detail, hint string) {
	has := func(c uint) bool { return capEff&(1<<c) != 0 }
	names := []struct {
		c    uint
		name string
	}{{capBPF, "CAP_BPF"}, {capNetAdmin, "CAP_NET_ADMIN"}, {capPerfmon, "CAP_PERFMON"}, {capSysAdmin, "CAP_SYS_ADMIN"}}
	var parts []string
	for _, n := range names {
		parts = append(parts, n.name+"="+cliout.YesNo(has(n.c)))
	}
	detail = strings.Join(parts, " ")
	sys := has(capSysAdmin)
	var missing []string
	if !has(capBPF) && !sys {
		missing = append(missing, "CAP_BPF")
	}
	if !has(capPerfmon) && !sys {
		missing = append(missing, "CAP_PERFMON")
	}
	if !has(capNetAdmin) && !sys {
		missing = append(missing, "CAP_NET_ADMIN")
	}
	if len(missing) > 0 {
		return levelFail, detail, "missing " + strings.Join(missing, ", ") +
			": run as root, or add them to the container's securityContext.capabilities (the chart does)"
	}
	return levelOK, detail, ""
}

// netClsPrioHint says what net_cls/net_prio in a v1 hierarchy does and how
// to stop it.
const netClsPrioHint = "once net_cls or net_prio is used the kernel turns off cgroup v2 socket matching for every socket (dmesg: " +
	"\"disabling cgroup2 socket matching due to net_prio or net_cls activation\") and sockops programs on pod cgroups see nothing; " +
	"boot with cgroup_no_v1=net_cls,net_prio (or stop mounting these controllers) and reboot"

// evaluateNetClsPrio says whether net_cls or net_prio is bound to a cgroup v1
// hierarchy. /proc/self/cgroup answers for the whole kernel, so the host's
// mounts count even in a pod that mounts only its own /sys/fs/cgroup; the
// mount table says where, when this mount namespace sees the mount.
func evaluateNetClsPrio(in doctorInput) (level, detail, hint string) {
	var where []string
	if in.MountInfoErr == nil {
		where = netClsPrioMounts(in.MountInfo)
	}
	mounted := ""
	if len(where) > 0 {
		mounted = "mounted at " + strings.Join(where, ", ")
	}
	if in.ProcCgroupErr != nil {
		switch {
		case mounted != "":
			return levelFail, "cgroup v1 controllers " + mounted, netClsPrioHint
		case in.MountInfoErr != nil:
			return levelWarn, "cannot read /proc/self/cgroup (" + in.ProcCgroupErr.Error() + ") nor /proc/self/mountinfo (" + in.MountInfoErr.Error() + ")", ""
		default:
			return levelWarn, "not mounted here, but /proc/self/cgroup cannot be read (" + in.ProcCgroupErr.Error() +
				"): the host may still mount them outside this mount namespace", ""
		}
	}
	bound := netClsPrioHierarchies(in.ProcCgroup)
	switch {
	case len(bound) > 0 && mounted != "":
		return levelFail, "cgroup v1 hierarchy " + strings.Join(bound, ", ") + " (/proc/self/cgroup), " + mounted, netClsPrioHint
	case len(bound) > 0:
		return levelFail, "cgroup v1 hierarchy " + strings.Join(bound, ", ") + " (/proc/self/cgroup); mounted outside this mount namespace (the host's)", netClsPrioHint
	case mounted != "":
		// A mount the kernel does not list: only in a test's made-up input.
		return levelFail, "cgroup v1 controllers " + mounted, netClsPrioHint
	}
	return levelOK, "not bound to a cgroup v1 hierarchy on this kernel (/proc/self/cgroup)", ""
}

// netClsPrioHierarchies lists, as "ID:controllers", the cgroup v1
// hierarchies carrying net_cls or net_prio in /proc/<pid>/cgroup text
// ("3:net_cls,net_prio:/kubepods/pod1"; "0::/..." is cgroup v2).
func netClsPrioHierarchies(procCgroup string) []string {
	return v1Hierarchies(procCgroup, "net_cls", "net_prio")
}

// v1Hierarchies lists, as "ID:controllers", the cgroup v1 hierarchies of
// /proc/<pid>/cgroup text that carry one of the controllers.
func v1Hierarchies(procCgroup string, controllers ...string) []string {
	var bound []string
	for _, line := range strings.Split(procCgroup, "\n") {
		id, rest, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok {
			continue
		}
		ctrls, _, ok := strings.Cut(rest, ":")
		if !ok || id == "0" {
			continue
		}
		for _, c := range strings.Split(ctrls, ",") {
			if slices.Contains(controllers, c) {
				bound = append(bound, id+":"+ctrls)
				break
			}
		}
	}
	return bound
}

// netClsPrioMounts lists the mount points of cgroup v1 hierarchies that
// carry the net_cls or net_prio controller, from mountinfo text.
func netClsPrioMounts(mountinfo string) []string {
	var where []string
	for _, line := range strings.Split(mountinfo, "\n") {
		// 36 35 0:30 / /sys/fs/cgroup/net_cls,net_prio rw,nosuid - cgroup cgroup rw,net_cls,net_prio
		pre, post, ok := strings.Cut(line, " - ")
		if !ok {
			continue
		}
		pf, qf := strings.Fields(pre), strings.Fields(post)
		if len(pf) < 5 || len(qf) < 3 || qf[0] != "cgroup" {
			continue
		}
		for _, opt := range strings.Split(qf[2], ",") {
			if opt == "net_cls" || opt == "net_prio" {
				where = append(where, unescapeMountPath(pf[4]))
				break
			}
		}
	}
	return where
}

// unescapeMountPath undoes the octal escapes (\040 for a space) of
// mountinfo paths.
func unescapeMountPath(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func hasLSM(list, name string) bool {
	for _, l := range strings.Split(strings.TrimSpace(list), ",") {
		if l == name {
			return true
		}
	}
	return false
}

// parseKernelRelease reads major and minor from a release like
// "6.18.44-fc-v445".
func parseKernelRelease(rel string) (major, minor int, ok bool) {
	parts := strings.SplitN(rel, ".", 3)
	if len(parts) < 2 {
		return 0, 0, false
	}
	major, err1 := strconv.Atoi(parts[0])
	end := strings.IndexFunc(parts[1], func(r rune) bool { return r < '0' || r > '9' })
	if end < 0 {
		end = len(parts[1])
	}
	minor, err2 := strconv.Atoi(parts[1][:end])
	return major, minor, err1 == nil && err2 == nil
}

func renderDoctor(w io.Writer, rep doctorReport) error {
	width := 0
	for _, l := range rep.Lines {
		width = max(width, len(l.Check))
	}
	for _, l := range rep.Lines {
		fmt.Fprintf(w, "%-4s  %-*s  %s\n", l.Level, width, l.Check, l.Detail)
		if l.Hint != "" {
			indent := strings.Repeat(" ", 6+width+2)
			for i, line := range wrapText("hint: "+l.Hint, max(120-len(indent), 60)) {
				if i > 0 {
					line = "      " + line
				}
				fmt.Fprintf(w, "%s%s\n", indent, line)
			}
		}
	}
	fmt.Fprintln(w)
	if rep.OK {
		_, err := fmt.Fprintln(w, "sockhop can accelerate on this node.")
		return err
	}
	_, err := fmt.Fprintln(w, "sockhop cannot accelerate on this node: fix the failed checks (traffic stays on TCP until then).")
	return err
}

// wrapText breaks s into lines of at most width bytes at spaces (a longer
// word gets a line of its own).
func wrapText(s string, width int) []string {
	var lines []string
	line := ""
	for _, word := range strings.Fields(s) {
		switch {
		case line == "":
			line = word
		case len(line)+1+len(word) <= width:
			line += " " + word
		default:
			lines = append(lines, line)
			line = word
		}
	}
	if line != "" {
		lines = append(lines, line)
	}
	return lines
}
