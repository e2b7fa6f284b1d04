package main

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sockhop/sockhop/internal/needs"
	"github.com/sockhop/sockhop/pkg/cliout"
	"github.com/sockhop/sockhop/pkg/datapath"
	"github.com/sockhop/sockhop/pkg/testbed"
)

// requireRoot: the kernel tests follow the needs rule (skipped under
// -short; without root skipped, or failed in CI).
func requireRoot(t *testing.T) {
	t.Helper()
	needs.Root(t, "to load BPF programs and create cgroups and network namespaces")
}

// requireKernel is requireRoot on a kernel that can run sockhop: where the
// datapath's Probe names a missing feature the test is skipped with it
// (failed in CI). TestDoctorOnThisNode and TestAttachOnUnsupportedKernel
// check what the CLI does on such a kernel.
func requireKernel(t *testing.T) {
	t.Helper()
	requireRoot(t)
	if err := datapath.Probe(); err != nil {
		needs.Missing(t, "this kernel cannot run sockhop: "+err.Error())
	}
}

type statusJSON struct {
	Attachments []attachmentView `json:"attachments"`
	Sockets     int              `json:"sockets_in_sockhash"`
	Counters    countersView     `json:"counters"`
	Hazards     []hazardView     `json:"hazards"`
	Datapath    datapathView     `json:"datapath"`
}

// statusOf runs status -o json (without the self-test) through sh.
func statusOf(t *testing.T, sh func(args ...string) (string, string, int)) statusJSON {
	t.Helper()
	out, errOut, code := sh("status", "-o", "json", "--skip-self-test")
	if code != 0 {
		t.Fatalf("status: exit %d: %s", code, errOut)
	}
	var s statusJSON
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		t.Fatalf("status JSON: %v\n%s", err, out)
	}
	return s
}

// cliBed gives a kernel test of the CLI a testbed, a bpffs directory of its
// own (uninstalled at the end) and sh, which runs the CLI on it.
func cliBed(t *testing.T) (*testbed.Bed, string, func(args ...string) (string, string, int)) {
	t.Helper()
	bed, err := testbed.New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := bed.Close(); err != nil {
			t.Error(err)
		}
	})
	pinDir := "/sys/fs/bpf/sockhop-test-" + bed.ID()
	t.Cleanup(func() {
		if err := datapath.Uninstall(pinDir); err != nil {
			t.Error(err)
		}
	})
	sh := func(args ...string) (string, string, int) {
		t.Helper()
		return cli(t, append([]string{"--bpffs-dir", pinDir}, args...)...)
	}
	return bed, pinDir, sh
}

// TestAttachStatusDetach drives the CLI against the real kernel: attach a
// pod-shaped cgroup under a throwaway parent, see it and its traffic in
// status, honour excluded ports, detach, uninstall; nothing is left.
func TestAttachStatusDetach(t *testing.T) {
	requireKernel(t)
	bed, pinDir, sh := cliBed(t)
	status := func() statusJSON { t.Helper(); return statusOf(t, sh) }

	// A cgroup laid out as kubelet's cgroupfs driver names a BestEffort pod.
	const uid = "0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0"
	var pod string
	var err error
	for _, dir := range []string{"kubepods", "kubepods/besteffort", "kubepods/besteffort/pod" + uid} {
		if pod, err = bed.Cgroup(dir); err != nil {
			t.Fatal(err)
		}
	}
	ns, err := bed.NetNS("app")
	if err != nil {
		t.Fatal(err)
	}
	mount, err := testbed.CgroupMount()
	if err != nil {
		t.Fatal(err)
	}
	rel, err := filepath.Rel(mount, pod)
	if err != nil {
		t.Fatal(err)
	}

	if _, errOut, code := sh("status"); code != cliout.ExitFailure || !strings.Contains(errOut, "not installed") {
		t.Fatalf("status before install: exit %d: %s", code, errOut)
	}

	// Relative to the cgroup v2 mount; app receivers so that app ↔ app
	// loopback is redirected.
	out, errOut, code := sh("attach", rel, "--exclude-ports", "5432,9300", "--app-receivers")
	if code != 0 || !strings.Contains(out, "attached "+pod) {
		t.Fatalf("attach: exit %d: %s %s", code, out, errOut)
	}
	var st unix.Stat_t
	if err := unix.Stat(pod, &st); err != nil {
		t.Fatal(err)
	}
	s := status()
	if len(s.Attachments) != 1 {
		t.Fatalf("want 1 attachment: %+v", s.Attachments)
	}
	a := s.Attachments[0]
	if a.Cgroup != pod || a.CgroupID != st.Ino || !a.Live || a.PodUID != uid || a.QOSClass != "BestEffort" ||
		len(a.ExcludePorts) != 2 || a.ExcludePorts[0] != 5432 || a.ExcludePorts[1] != 9300 {
		t.Fatalf("attachment: %+v (cgroup id %d)", a, st.Ino)
	}

	// Traffic inside the pod: redirected on 8080, left on TCP on 5432.
	for _, port := range []string{"8080", "5432"} {
		if _, err := bed.Start(testbed.PeerSpec{Role: testbed.RoleServer, Mode: testbed.ModeEcho, NetNS: ns.Name, Cgroup: pod,
			Listen: []string{"127.0.0.1:" + port}}); err != nil {
			t.Fatal(err)
		}
	}
	before := s.Counters
	res, err := bed.Run(testbed.PeerSpec{Mode: testbed.ModePingPong, NetNS: ns.Name, Cgroup: pod,
		Target: "127.0.0.1:8080", Size: 1024, Iterations: 200})
	if err == nil {
		err = res.Err()
	}
	if err != nil {
		t.Fatal(err)
	}
	s = status()
	// At least the echo direction: the client's may, rarely, race the
	// pairing of the server end and stay on TCP (no_peer).
	if d := s.Counters.RedirectedBytes - before.RedirectedBytes; d < 200*1024 {
		t.Fatalf("status must show the pod's bytes redirected: %d more (counters %+v)", d, s.Counters)
	}
	if d := s.Counters.PairedSockets - before.PairedSockets; d != 2 {
		t.Fatalf("want 2 more paired sockets, got %d", d)
	}
	before = s.Counters
	res, err = bed.Run(testbed.PeerSpec{Mode: testbed.ModePingPong, NetNS: ns.Name, Cgroup: pod,
		Target: "127.0.0.1:5432", Size: 1024, Iterations: 50})
	if err == nil {
		err = res.Err()
	}
	if err != nil {
		t.Fatal(err)
	}
	s = status()
	if s.Counters.RedirectedBytes != before.RedirectedBytes || s.Counters.PairedSockets != before.PairedSockets ||
		s.Counters.Passthrough[datapath.ReasonExcluded] <= before.Passthrough[datapath.ReasonExcluded] {
		t.Fatalf("an excluded port must stay on TCP and be counted: before %+v after %+v", before, s.Counters)
	}

	// The table says the same, for people.
	out, _, code = sh("status", "--skip-self-test")
	if code != 0 || !strings.Contains(out, pod) || !strings.Contains(out, uid) || !strings.Contains(out, "5432,9300") ||
		!strings.Contains(out, "excluded_port=") {
		t.Fatalf("status table (exit %d):\n%s", code, out)
	}

	// Attaching again updates the excluded ports.
	if _, errOut, code := sh("attach", pod, "--exclude-ports", "9300", "--app-receivers"); code != 0 {
		t.Fatalf("re-attach: exit %d: %s", code, errOut)
	}
	if s = status(); len(s.Attachments) != 1 || len(s.Attachments[0].ExcludePorts) != 1 || s.Attachments[0].ExcludePorts[0] != 9300 {
		t.Fatalf("re-attach must update the ports: %+v", s.Attachments)
	}

	// Detach: new connections stay on TCP.
	out, errOut, code = sh("detach", rel)
	if code != 0 || !strings.Contains(out, "detached "+pod) {
		t.Fatalf("detach: exit %d: %s %s", code, out, errOut)
	}
	if s = status(); len(s.Attachments) != 0 {
		t.Fatalf("still attached: %+v", s.Attachments)
	}
	// Nothing attached, no paired connection open: nothing for the
	// node-wide tracepoints to guard, and every process stops paying them.
	if s.Datapath.NodeTracepoints || !strings.Contains(out, "node-wide tracepoints are detached") {
		t.Fatalf("the last detach must take the node-wide tracepoints away: %q, status %+v", out, s)
	}
	before = s.Counters
	res, err = bed.Run(testbed.PeerSpec{Mode: testbed.ModePingPong, NetNS: ns.Name, Cgroup: pod,
		Target: "127.0.0.1:8080", Size: 1024, Iterations: 50})
	if err == nil {
		err = res.Err()
	}
	if err != nil {
		t.Fatal(err)
	}
	if s = status(); s.Counters.PairedSockets != before.PairedSockets || s.Counters.RedirectedBytes != before.RedirectedBytes {
		t.Fatalf("a detached pod must not be paired: before %+v after %+v", before, s.Counters)
	}
	if _, errOut, code := sh("detach", pod); code != cliout.ExitFailure || !strings.Contains(errOut, "not attached") {
		t.Fatalf("detaching twice: exit %d: %s", code, errOut)
	}
	if _, _, code := sh("detach", pod, "--ignore-not-found"); code != 0 {
		t.Fatalf("detach --ignore-not-found: exit %d", code)
	}

	// Uninstall asks for --yes, then removes every pin.
	if _, errOut, code := sh("uninstall"); code != cliout.ExitUsage || !strings.Contains(errOut, "--yes") {
		t.Fatalf("uninstall without --yes: exit %d: %s", code, errOut)
	}
	if _, err := os.Stat(pinDir); err != nil {
		t.Fatalf("uninstall without --yes removed the pins: %v", err)
	}
	if _, errOut, code := sh("uninstall", "--yes"); code != 0 {
		t.Fatalf("uninstall: exit %d: %s", code, errOut)
	}
	if _, err := os.Stat(pinDir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("pins left after uninstall: %v", err)
	}
	if _, _, code := sh("status"); code != cliout.ExitFailure {
		t.Fatalf("status after uninstall: exit %d", code)
	}
}

// TestStatusSelfTest runs status with the hazard self-test on a freshly
// installed, empty datapath.
func TestStatusSelfTest(t *testing.T) {
	requireKernel(t)
	var rnd [4]byte
	rand.Read(rnd[:])
	pinDir := "/sys/fs/bpf/sockhop-test-" + hex.EncodeToString(rnd[:])
	// Before Load: a load that fails may leave its pin directory.
	t.Cleanup(func() {
		if err := datapath.Uninstall(pinDir); err != nil {
			t.Error(err)
		}
	})
	dp, err := datapath.Load(datapath.Options{PinDir: pinDir})
	if err != nil {
		t.Fatal(err)
	}
	dp.Close()
	out, errOut, code := cli(t, "--bpffs-dir", pinDir, "status", "-o", "json")
	if code != 0 {
		t.Fatalf("status: exit %d: %s", code, errOut)
	}
	var s statusJSON
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		t.Fatal(err)
	}
	if len(s.Hazards) != len(datapath.Hazards) || len(s.Attachments) != 0 {
		t.Fatalf("want every hazard and no attachment: %s", out)
	}
	for _, h := range s.Hazards {
		if h.Status == "" || h.Detail == "" {
			t.Errorf("hazard without a finding: %+v", h)
		}
	}
}

// TestDoctorOnThisNode runs doctor for real: where the datapath can run,
// every check passes; on a kernel that cannot run it (the kernel matrix's
// 6.1), doctor fails with exit 1 and a failed line for each feature the
// datapath's probes miss, and for a kernel older than bpf_link for sk_msg.
func TestDoctorOnThisNode(t *testing.T) {
	requireRoot(t)
	out, errOut, code := cli(t, "doctor", "-o", "json")
	var rep doctorReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("doctor JSON: %v\n%s%s", err, out, errOut)
	}
	if err := datapath.Probe(); err != nil {
		t.Logf("this kernel cannot run sockhop (%v): doctor must say so", err)
		if code != cliout.ExitFailure || rep.OK {
			t.Fatalf("doctor passes (exit %d) on a kernel that lacks a feature:\n%s", code, out)
		}
		for _, c := range datapath.Checks() {
			if l := lineOf(t, rep, c.Name); (c.Err != nil) != (l.Level == levelFail) {
				t.Errorf("probe %q: %v, but doctor's line is %s: %s", c.Name, c.Err, l.Level, l.Detail)
			}
		}
		var uts unix.Utsname
		if err := unix.Uname(&uts); err != nil {
			t.Fatal(err)
		}
		maj, min, ok := parseKernelRelease(unix.ByteSliceToString(uts.Release[:]))
		old := ok && (maj < minKernel[0] || maj == minKernel[0] && min < minKernel[1])
		if l := lineOf(t, rep, "kernel"); old != (l.Level == levelFail) {
			t.Errorf("kernel line %s (%s) for a kernel older than %d.%d: %v", l.Level, l.Detail, minKernel[0], minKernel[1], old)
		}
		return
	}
	if code != 0 || !rep.OK {
		t.Fatalf("doctor fails on this node (exit %d):\n%s", code, out)
	}
	for _, want := range []string{"kernel", "cgroup v2", "net_cls/net_prio", "capabilities", "hazard splice", "hazard backpressure"} {
		lineOf(t, rep, want)
	}
}

// TestHierarchiesOutsideMountNamespace shows that /proc/self/cgroup, which
// doctor reads for net_cls/net_prio, lists the kernel's v1 hierarchies even
// where none is mounted: in a mount namespace whose cgroup mounts are detached
// and /sys/fs/cgroup is an empty tmpfs (as in a pod that mounts only the cgroup2 directory it needs), every v1
// controller this host mounts is still listed. Skips on a pure cgroup v2 host.
func TestHierarchiesOutsideMountNamespace(t *testing.T) {
	requireRoot(t)
	host, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	want := v1Hierarchies(string(host), "memory", "cpu", "pids", "net_cls", "net_prio")
	if len(want) == 0 {
		t.Skip("no cgroup v1 hierarchy on this host (pure cgroup v2): nothing to hide")
	}
	// The unmount happens only in the new, private mount namespace (nothing
	// propagates to the host's); unshare exits with its shell and the
	// namespace goes with it.
	out, err := exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c",
		"umount -l /sys/fs/cgroup && mount -t tmpfs none /sys/fs/cgroup && echo '--- mountinfo' && cat /proc/self/mountinfo && echo '--- cgroup' && cat /proc/self/cgroup").CombinedOutput()
	if err != nil {
		t.Fatalf("unshare: %v\n%s", err, out)
	}
	mountinfo, procCgroup, ok := strings.Cut(strings.TrimPrefix(string(out), "--- mountinfo\n"), "--- cgroup\n")
	if !ok {
		t.Fatalf("unexpected output:\n%s", out)
	}
	for _, line := range strings.Split(mountinfo, "\n") {
		if _, post, ok := strings.Cut(line, " - "); ok && strings.HasPrefix(post, "cgroup ") {
			t.Fatalf("a cgroup v1 mount is still visible: %s", line)
		}
	}
	if got := v1Hierarchies(procCgroup, "memory", "cpu", "pids", "net_cls", "net_prio"); !slices.Equal(got, want) {
		t.Fatalf("without v1 mounts /proc/self/cgroup lists %v, the host %v", got, want)
	}
	t.Logf("v1 hierarchies seen without any v1 mount: %v", want)
}

// TestBenchQuickWithPlot runs two quick cases through the command and
// draws them: the plumbing from bench.Run to the table, the JSON and the
// picture. It asserts no timing.
func TestBenchQuickWithPlot(t *testing.T) {
	requireKernel(t)
	png := filepath.Join(t.TempDir(), "bench.png")
	out, errOut, code := cli(t, "bench", "--quick", "--cases", "pingpong-1cpu-64B,bulk-1cpu-64KiB", "--plot", png, "-o", "json")
	if code != 0 {
		t.Fatalf("bench: exit %d:\n%s\n%s", code, errOut, out)
	}
	var rep struct {
		Cases []struct {
			ID      string `json:"id"`
			Metrics []struct {
				Ratio float64 `json:"ratio"`
			} `json:"metrics"`
		} `json:"cases"`
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("bench JSON: %v\n%s", err, out)
	}
	if len(rep.Cases) < 2 || rep.Cases[0].ID != "pingpong-1cpu-64B" || len(rep.Cases[0].Metrics) == 0 || rep.Cases[0].Metrics[0].Ratio <= 0 {
		t.Fatalf("bench cases: %+v", rep.Cases)
	}
	if !strings.Contains(errOut, "[1] pingpong-1cpu-64B") || !strings.Contains(errOut, "plot written to") {
		t.Fatalf("progress and plot messages on stderr: %s", errOut)
	}
	fi, err := os.Stat(png)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() < 20_000 {
		t.Fatalf("plot has only %d bytes", fi.Size())
	}
}

// TestAttachRefusesNested: a cgroup inside an attached one, or containing
// one, is refused (sockops would run twice for its connections); siblings
// are fine, and once the inner one is detached the outer one attaches.
func TestAttachRefusesNested(t *testing.T) {
	requireKernel(t)
	bed, _, sh := cliBed(t)
	dirs := map[string]string{}
	var err error
	for _, name := range []string{"outer", "outer/inner", "outer/inner/deeper", "sibling"} {
		if dirs[name], err = bed.Cgroup(name); err != nil {
			t.Fatal(err)
		}
	}
	mustAttach := func(name string) {
		t.Helper()
		if _, errOut, code := sh("attach", dirs[name]); code != 0 {
			t.Fatalf("attach %s: exit %d: %s", name, code, errOut)
		}
	}
	refused := func(name, why string) {
		t.Helper()
		_, errOut, code := sh("attach", dirs[name])
		if code != cliout.ExitFailure || !strings.Contains(errOut, "nested attachment") || !strings.Contains(errOut, why) {
			t.Fatalf("attach %s: exit %d, stderr %q; want it refused as nested (%s)", name, code, errOut, why)
		}
	}
	mustAttach("outer/inner")
	refused("outer", "contains "+dirs["outer/inner"])
	refused("outer/inner/deeper", "inside "+dirs["outer/inner"])
	mustAttach("sibling")
	mustAttach("outer/inner") // re-attaching itself is an update, not nesting
	if _, errOut, code := sh("detach", dirs["outer/inner"]); code != 0 {
		t.Fatalf("detach: exit %d: %s", code, errOut)
	}
	mustAttach("outer")
	refused("outer/inner", "inside "+dirs["outer"])
}

// TestAttachSyscallGuardFlag: --syscall-guard=false installs the datapath
// without the syscall guard (the other node-wide tracepoints still come with
// the pod), and the default installs it.
func TestAttachSyscallGuardFlag(t *testing.T) {
	requireKernel(t)
	bed, _, sh := cliBed(t)
	pod, err := bed.Cgroup("app")
	if err != nil {
		t.Fatal(err)
	}
	view := func() datapathView { t.Helper(); return statusOf(t, sh).Datapath }
	for _, tc := range []struct {
		flags []string
		guard bool
	}{{[]string{"--syscall-guard=false"}, false}, {nil, true}} {
		if _, errOut, code := sh(append([]string{"attach", pod}, tc.flags...)...); code != 0 {
			t.Fatalf("attach %v: exit %d: %s", tc.flags, code, errOut)
		}
		if v := view(); !v.NodeTracepoints || (v.SyscallGuard != "") != tc.guard {
			t.Errorf("attach %v: node tracepoints %v, syscall guard %q (want one: %v)", tc.flags, v.NodeTracepoints, v.SyscallGuard, tc.guard)
		}
		if _, errOut, code := sh("uninstall", "--yes"); code != 0 {
			t.Fatalf("uninstall: exit %d: %s", code, errOut)
		}
	}
}

// TestUninstallWithAnOpenConnection: after an uninstall, a connection paired
// before it keeps the sk_msg program (and its maps) in the kernel; status
// says so, the connection loses no byte, and the programs go when it
// closes.
func TestUninstallWithAnOpenConnection(t *testing.T) {
	requireKernel(t)
	bed, pinDir, sh := cliBed(t)
	pod, err := bed.Cgroup("app")
	if err != nil {
		t.Fatal(err)
	}
	ns, err := bed.NetNS("app")
	if err != nil {
		t.Fatal(err)
	}
	if _, errOut, code := sh("attach", pod, "--app-receivers"); code != 0 {
		t.Fatalf("attach: exit %d: %s", code, errOut)
	}
	out, errOut, code := sh("status", "-o", "json", "--skip-self-test")
	if code != 0 {
		t.Fatalf("status: exit %d: %s", code, errOut)
	}
	var rep statusReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatal(err)
	}
	installed := map[uint32]string{}
	for _, p := range rep.Programs {
		if p.Installed {
			installed[p.ID] = p.Name
		}
	}
	if len(installed) != 2 {
		t.Fatalf("status lists %d installed programs, want sockops and sk_msg: %+v", len(installed), rep.Programs)
	}

	if _, err := bed.Start(testbed.PeerSpec{Role: testbed.RoleServer, Mode: testbed.ModeStream, NetNS: ns.Name, Cgroup: pod,
		Listen: []string{"127.0.0.1:8080"}}); err != nil {
		t.Fatal(err)
	}
	// One connection, established now, that writes only after the uninstall.
	const size = 8 << 20
	client, err := bed.Start(testbed.PeerSpec{Role: testbed.RoleClient, Mode: testbed.ModeStream, NetNS: ns.Name, Cgroup: pod,
		Target: "127.0.0.1:8080", Conns: 1, Bytes: size, MaxWrite: 64 << 10, ConnectPause: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ro, err := datapath.Open(pinDir)
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		c, err := ro.Counters()
		if err != nil {
			t.Fatal(err)
		}
		if c.PairedSockets == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the connection was not paired: %+v", c)
		}
	}
	ro.Close()
	if _, errOut, code := sh("uninstall", "--yes"); code != 0 {
		t.Fatalf("uninstall: exit %d: %s", code, errOut)
	}

	// Not installed, yet its sk_msg program runs for the open connection.
	_, errOut, code = sh("status")
	if code != cliout.ExitFailure || !strings.Contains(errOut, "not installed") || !strings.Contains(errOut, "still in the kernel") {
		t.Fatalf("status after uninstall with a connection open: exit %d: %s", code, errOut)
	}
	progs, err := datapath.Programs(pinDir)
	if err != nil {
		t.Fatal(err)
	}
	held := 0
	for _, p := range progs {
		if installed[p.ID] == "sockhop_msg" {
			held++
			if !strings.Contains(errOut, fmt.Sprintf("sockhop_msg id %d", p.ID)) {
				t.Errorf("status does not name the held program %d: %s", p.ID, errOut)
			}
		}
	}
	if held != 1 {
		t.Fatalf("after the uninstall the open connection should hold the sk_msg program %v; the kernel has %+v", installed, progs)
	}

	res, err := client.Wait()
	if err == nil {
		err = res.Err()
	}
	if err != nil {
		t.Fatal(err)
	}
	if res.Conns != 1 || res.BytesSent != size || res.BytesVerified != size {
		t.Fatalf("the connection opened before the uninstall lost bytes: %+v", res)
	}
	// Closed: its programs go (the kernel frees them after an RCU grace period).
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		progs, err := datapath.Programs(pinDir)
		if err != nil {
			t.Fatal(err)
		}
		left := 0
		for _, p := range progs {
			if installed[p.ID] != "" {
				left++
			}
		}
		if left == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("programs of the uninstalled datapath still in the kernel after the connection closed: %+v", progs)
		}
	}
}

// TestAttachOnUnsupportedKernel: on a kernel that cannot run sockhop,
// `sockhop attach` fails (exit 1) naming the missing feature, installs
// nothing (status still says not installed, no pin directory), and leaves
// the cgroup's connections on TCP. Skips where the kernel runs sockhop.
func TestAttachOnUnsupportedKernel(t *testing.T) {
	requireRoot(t)
	probeErr := datapath.Probe()
	var fe *datapath.FeatureError
	if probeErr == nil {
		t.Skip("this kernel runs sockhop: the other kernel tests cover attach")
	} else if !errors.As(probeErr, &fe) {
		t.Fatalf("Probe: want a *FeatureError, got %T: %v", probeErr, probeErr)
	}
	bed, pinDir, sh := cliBed(t)
	pod, err := bed.Cgroup("app")
	if err != nil {
		t.Fatal(err)
	}
	_, errOut, code := sh("attach", pod)
	if code != cliout.ExitFailure || !strings.Contains(errOut, fe.Feature) {
		t.Fatalf("attach: exit %d, stderr %q; want exit %d naming %q", code, errOut, cliout.ExitFailure, fe.Feature)
	}
	if _, err := os.Stat(pinDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a failed attach left %s (stat: %v)", pinDir, err)
	}
	if _, errOut, code := cli(t, "--bpffs-dir", pinDir, "status", "--skip-self-test"); code != cliout.ExitFailure || !strings.Contains(errOut, "not installed") {
		t.Errorf("status after the failed attach: exit %d: %s", code, errOut)
	}
}
