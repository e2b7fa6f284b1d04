package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"maps"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/containerd/cgroups/v3"
	"golang.org/x/sys/unix"

	"github.com/sockhop/sockhop/pkg/bench"
	"github.com/sockhop/sockhop/pkg/cliout"
	"github.com/sockhop/sockhop/pkg/datapath"
)

// source is a statusSource with fixed answers: it tests rendering, the
// kernel test reads a real datapath.
type source struct {
	atts    []datapath.Attachment
	c       datapath.Counters
	sockets int
	err     error
}

func (s source) Attachments() ([]datapath.Attachment, error) { return s.atts, s.err }
func (s source) Counters() (datapath.Counters, error)        { return s.c, nil }
func (s source) Sockets() (int, error)                       { return s.sockets, nil }
func (s source) MapFill() ([]datapath.MapFill, error) {
	return []datapath.MapFill{{Name: "sockhash", Entries: s.sockets, Capacity: 262144}}, nil
}
func (s source) PodStats() (map[uint64]datapath.PodStats, error) {
	return map[uint64]datapath.PodStats{4711: {Connections: 12, Directions: 24, Redirected: 20,
		OnTCP:    map[string]uint64{datapath.ReasonBackpressure: 2, datapath.ReasonUnsafeRx: 2},
		Unpaired: map[string]uint64{datapath.ReasonRemote: 14}, Retired: 4}}, nil
}
func (s source) Build() (datapath.Build, error) {
	return datapath.Build{SockopsTag: "0123456789abcdef", MsgTag: "fedcba9876543210",
		Options: datapath.Options{ProxyUIDs: []uint32{1337}, BacklogLimit: 3 << 20}, NodeTracepoints: true}, nil
}

const podPath = "/sys/fs/cgroup/unified/kubepods/besteffort/pod8b4c1d2e-3f40-4a5b-9c6d-7e8f90a1b2c3"

func sampleSource() source {
	return source{
		atts: []datapath.Attachment{
			{CgroupPath: podPath, CgroupID: 4711, Live: true, Config: datapath.PodConfig{ExcludePorts: []uint16{5432, 9300}}},
			{CgroupPath: "/sys/fs/cgroup/unified/system.slice/nginx.service", CgroupID: 99, Live: false},
		},
		c: datapath.Counters{PairedSockets: 8, RedirectedMessages: 1000, RedirectedBytes: 3 << 20, TCPMessages: 2, TCPBytes: 100,
			Passthrough: map[string]uint64{datapath.ReasonNoPeer: 0, datapath.ReasonExcluded: 3, datapath.ReasonRemote: 12},
			MapErrors:   map[string]uint64{"sockhash": 0}},
		sockets: 4,
	}
}

func TestStatusTable(t *testing.T) {
	rep, err := collectStatus("/sys/fs/bpf/sockhop", sampleSource())
	if err != nil {
		t.Fatal(err)
	}
	safe := false
	rep.Hazards = []hazardView{{Hazard: "splice", Status: "present", Detail: "splice missed 4 MiB"}}
	rep.AppReceiversSafe = &safe
	var b bytes.Buffer
	if err := renderStatus(&b, rep); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{
		"sockops 0123456789abcdef, sk_msg fedcba9876543210",
		"proxy uids [1337] seen reading with recvmsg",
		"3.0 MiB unread per receiver",
		"node-wide tracepoints", "attached (pods attached or paired sockets open)",
		"ATTACHED CGROUPS: 2",
		"8b4c1d2e-3f40-4a5b-9c6d-7e8f90a1b2c3",
		"BestEffort",
		"5432,9300",
		"sockets in the sockhash now",
		"4 of 262144 entries (0%)",
		"1000 messages, 3.0 MiB",
		"excluded_port=3 remote=12",
		"failed map operations",
		"splice",
		"the receiver guard keeps such readers on TCP",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("status table lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "no_peer") {
		t.Errorf("zero reasons must be left out:\n%s", out)
	}
	if strings.Contains(out, "PODS") {
		t.Errorf("the per-pod table is for --pods:\n%s", out)
	}
	b.Reset()
	if err := renderPods(&b, rep); err != nil {
		t.Fatal(err)
	}
	pods := b.String()
	for _, want := range []string{
		"POD UID", "DIRECTIONS REDIRECTED",
	} {
		if !strings.Contains(pods, want) {
			t.Errorf("--pods table lacks %q:\n%s", want, pods)
		}
	}
	rows := map[string]string{
		"8b4c1d2e-3f40-4a5b-9c6d-7e8f90a1b2c3": "8b4c1d2e-3f40-4a5b-9c6d-7e8f90a1b2c3 4711 12 20 of 24 backpressure=2 unsafe_receiver=2 remote=14 4",
		"nginx.service":                        "/sys/fs/cgroup/unified/system.slice/nginx.service 99 - - - - -",
	}
	for _, line := range strings.Split(pods, "\n") {
		for k, want := range rows {
			if strings.Contains(line, k) {
				if got := strings.Join(strings.Fields(line), " "); got != want {
					t.Errorf("--pods row %q, want %q", got, want)
				}
				delete(rows, k)
			}
		}
	}
	if len(rows) > 0 {
		t.Errorf("--pods table lacks rows %v:\n%s", rows, pods)
	}
	// The nginx row: not live, no pod UID, no ports.
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, "nginx.service") {
			f := strings.Fields(line)
			if len(f) != 6 || f[1] != "99" || f[2] != "no" || f[3] != "-" || f[5] != "-" {
				t.Errorf("nginx row: %q", line)
			}
		}
	}
}

func TestStatusJSON(t *testing.T) {
	rep, err := collectStatus("/pins", sampleSource())
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := cliout.WriteJSON(&b, rep); err != nil {
		t.Fatal(err)
	}
	var got struct {
		Attachments []struct {
			Cgroup       string   `json:"cgroup"`
			CgroupID     uint64   `json:"cgroup_id"`
			Live         bool     `json:"live"`
			ExcludePorts []uint16 `json:"exclude_ports"`
			PodUID       string   `json:"pod_uid"`
			Stats        *struct {
				Connections uint64            `json:"connections"`
				Directions  uint64            `json:"directions"`
				Redirected  uint64            `json:"redirected"`
				OnTCP       map[string]uint64 `json:"on_tcp"`
				Unpaired    map[string]uint64 `json:"unpaired"`
			} `json:"stats"`
			Summary string `json:"summary"`
		} `json:"attachments"`
		Sockets  int `json:"sockets_in_sockhash"`
		Counters struct {
			RedirectedBytes uint64            `json:"redirected_bytes"`
			Passthrough     map[string]uint64 `json:"passthrough"`
		} `json:"counters"`
	}
	if err := json.Unmarshal(b.Bytes(), &got); err != nil {
		t.Fatalf("%v:\n%s", err, b.String())
	}
	if len(got.Attachments) != 2 || got.Attachments[0].CgroupID != 4711 || !got.Attachments[0].Live ||
		got.Attachments[0].PodUID == "" || len(got.Attachments[0].ExcludePorts) != 2 || got.Attachments[1].ExcludePorts == nil {
		t.Fatalf("attachments: %+v", got.Attachments)
	}
	if st := got.Attachments[0].Stats; st == nil || st.Connections != 12 || st.Directions != 24 || st.Redirected != 20 ||
		st.OnTCP[datapath.ReasonBackpressure] != 2 || st.Unpaired[datapath.ReasonRemote] != 14 ||
		!strings.Contains(got.Attachments[0].Summary, "20 of 24 directions redirected") || got.Attachments[1].Stats != nil {
		t.Fatalf("per-pod stats: %+v", got.Attachments)
	}
	if got.Sockets != 4 || got.Counters.RedirectedBytes != 3<<20 || got.Counters.Passthrough[datapath.ReasonRemote] != 12 {
		t.Fatalf("counters: %+v", got)
	}
	if strings.Contains(b.String(), "hazards") {
		t.Fatalf("a skipped self-test must not appear: %s", b.String())
	}

	if _, err := collectStatus("/pins", source{err: errors.New("boom")}); err == nil {
		t.Fatal("a failed listing must fail status")
	}
	empty, _ := collectStatus("/pins", source{})
	b.Reset()
	cliout.WriteJSON(&b, empty)
	if !strings.Contains(b.String(), `"attachments": []`) {
		t.Fatalf("no attachments must be an empty list, not null: %s", b.String())
	}
}

const mountinfoHybrid = `22 1 8:1 / / rw,relatime - ext4 /dev/vda rw
25 22 0:22 / /sys rw,nosuid,nodev,noexec,relatime - sysfs sysfs rw
26 25 0:23 / /sys/fs/cgroup ro,nosuid,nodev,noexec - tmpfs tmpfs ro,mode=755
27 26 0:24 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime - cgroup2 cgroup2 rw,nsdelegate
28 26 0:25 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime - cgroup cgroup rw,cpu,cpuacct
29 26 0:26 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime - cgroup cgroup rw,memory
30 25 0:27 / /sys/fs/bpf rw,nosuid,nodev,noexec,relatime - bpf bpf rw,mode=700
`

// procCgroupHybrid is /proc/self/cgroup of a container on a hybrid host
// (no net_cls/net_prio hierarchy).
const procCgroupHybrid = `12:pids:/kubepods/besteffort/pod1/c1
11:memory:/kubepods/besteffort/pod1/c1
4:cpu,cpuacct:/kubepods/besteffort/pod1/c1
1:name=systemd:/kubepods/besteffort/pod1/c1
0::/kubepods/besteffort/pod1/c1
`

const netClsLine = `31 26 0:28 / /sys/fs/cgroup/net_cls,net_prio rw,nosuid,nodev,noexec,relatime - cgroup cgroup rw,net_cls,net_prio
`

// goodInput is a node that can run sockhop.
func goodInput() doctorInput {
	return doctorInput{
		KernelRelease: "6.18.44-fc-v445",
		CgroupMode:    cgroups.Hybrid,
		MountInfo:     mountinfoHybrid,
		ProcCgroup:    procCgroupHybrid,
		BPFFS:         true,
		LSM:           "lockdown,capability,landlock,yama,bpf",
		CapEff:        0x1ffffffffff,
		Checks:        []datapath.Check{{Name: "program type sock_ops"}, {Name: "sk_msg helper bpf_msg_redirect_hash"}},
		PinDir:        "/sys/fs/bpf/sockhop",
		Attached:      3,
	}
}

func lineOf(t *testing.T, rep doctorReport, check string) doctorLine {
	t.Helper()
	for _, l := range rep.Lines {
		if l.Check == check {
			return l
		}
	}
	t.Fatalf("no %q line in %+v", check, rep.Lines)
	return doctorLine{}
}

func TestDoctorGoodNode(t *testing.T) {
	rep := evaluateDoctor(goodInput())
	if !rep.OK {
		t.Fatalf("a good node must pass: %+v", rep.Lines)
	}
	for _, l := range rep.Lines {
		if l.Level != levelOK && l.Level != levelInfo {
			t.Errorf("unexpected %s line: %+v", l.Level, l)
		}
	}
	if l := lineOf(t, rep, "BPF LSM"); !strings.Contains(l.Detail, "bpf is in the active LSMs") {
		t.Errorf("BPF LSM: %+v", l)
	}
	if l := lineOf(t, rep, "datapath"); !strings.Contains(l.Detail, "3 cgroup(s) attached") {
		t.Errorf("datapath: %+v", l)
	}
}

func TestDoctorFailures(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mutate func(*doctorInput)
		check  string
		level  string
		hint   string
	}{
		{"net_cls mounted", func(in *doctorInput) { in.MountInfo += netClsLine }, "net_cls/net_prio", levelFail, "cgroup_no_v1=net_cls,net_prio"},
		{"net_prio alone", func(in *doctorInput) {
			in.MountInfo += "32 26 0:29 / /sys/fs/cgroup/net\\040prio rw - cgroup cgroup rw,net_prio\n"
		}, "net_cls/net_prio", levelFail, "socket matching"},
		{"net_cls on the host, not in the pod's mounts", func(in *doctorInput) {
			in.ProcCgroup = "10:net_cls,net_prio:/\n" + in.ProcCgroup
		}, "net_cls/net_prio", levelFail, "cgroup_no_v1=net_cls,net_prio"},
		{"net_prio mounted and bound", func(in *doctorInput) {
			in.ProcCgroup += "3:net_prio:/\n"
			in.MountInfo += "32 26 0:29 / /sys/fs/cgroup/net_prio rw - cgroup cgroup rw,net_prio\n"
		}, "net_cls/net_prio", levelFail, "socket matching"},
		{"net_cls mounted, /proc/self/cgroup unreadable", func(in *doctorInput) {
			in.MountInfo += netClsLine
			in.ProcCgroupErr = unix.EACCES
		}, "net_cls/net_prio", levelFail, "cgroup_no_v1"},
		{"old kernel", func(in *doctorInput) { in.KernelRelease = "5.15.0-91-generic" }, "kernel", levelFail, "6.10"},
		{"legacy cgroups", func(in *doctorInput) { in.CgroupMode = cgroups.Legacy }, "cgroup v2", levelFail, "unified_cgroup_hierarchy"},
		{"no cgroups", func(in *doctorInput) { in.CgroupMode = cgroups.Unavailable }, "cgroup v2", levelFail, "mount cgroup2"},
		{"helper missing", func(in *doctorInput) {
			in.Checks[1].Err = datapath.ErrNotSupported
		}, "sk_msg helper bpf_msg_redirect_hash", levelFail, "upgrade the kernel"},
		{"probe refused", func(in *doctorInput) {
			in.Checks[0].Err = unix.EPERM
		}, "program type sock_ops", levelFail, "CAP_BPF"},
		{"no capabilities", func(in *doctorInput) { in.CapEff = 0 }, "capabilities", levelFail, "CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN"},
		{"no net_admin", func(in *doctorInput) { in.CapEff = 1<<capBPF | 1<<capPerfmon }, "capabilities", levelFail, "missing CAP_NET_ADMIN:"},
		{"backpressure unguarded", func(in *doctorInput) {
			in.SelfTest = hazardLines(&datapath.SelfTestReport{Results: []datapath.HazardResult{
				{Hazard: datapath.HazardBackpressure, Status: datapath.HazardPresent, Detail: "queued 1 GiB"}}}, nil)
		}, "hazard backpressure", levelFail, "unbounded"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := goodInput()
			tc.mutate(&in)
			rep := evaluateDoctor(in)
			if rep.OK {
				t.Fatal("must fail")
			}
			l := lineOf(t, rep, tc.check)
			if l.Level != tc.level || !strings.Contains(l.Hint, tc.hint) {
				t.Fatalf("line %+v: want level %s and a hint with %q", l, tc.level, tc.hint)
			}
		})
	}
}

func TestDoctorWarnings(t *testing.T) {
	for _, tc := range []struct {
		name   string
		mutate func(*doctorInput)
		check  string
		level  string
	}{
		{"no bpffs", func(in *doctorInput) { in.BPFFS = false }, "bpffs", levelWarn},
		{"unreadable mountinfo", func(in *doctorInput) { in.MountInfoErr = unix.EACCES }, "net_cls/net_prio", levelOK},
		{"unreadable /proc/self/cgroup", func(in *doctorInput) { in.ProcCgroupErr = unix.EACCES }, "net_cls/net_prio", levelWarn},
		{"nothing readable", func(in *doctorInput) {
			in.ProcCgroupErr, in.MountInfoErr = unix.EACCES, unix.EACCES
		}, "net_cls/net_prio", levelWarn},
		{"no securityfs", func(in *doctorInput) { in.LSMErr = unix.ENOENT; in.LSM = "" }, "BPF LSM", levelInfo},
		{"no bpf LSM", func(in *doctorInput) { in.LSM = "capability,bpfx" }, "BPF LSM", levelInfo},
		{"sys_admin stands in", func(in *doctorInput) { in.CapEff = 1<<capSysAdmin | 1<<capNetAdmin }, "capabilities", levelOK},
		{"sys_admin alone", func(in *doctorInput) { in.CapEff = 1 << capSysAdmin }, "capabilities", levelOK},
		{"not installed", func(in *doctorInput) { in.Attached = -1 }, "datapath", levelInfo},
		{"cannot abort", func(in *doctorInput) {
			in.AbortErr = &datapath.FeatureError{Feature: "kfunc bpf_sock_destroy", Err: errors.New("not found")}
		}, "abort stranded receivers", levelWarn},
		{"fentry refused", func(in *doctorInput) {
			in.FnGuardErr = &datapath.FeatureError{Feature: "fentry programs (BPF trampolines)", Err: unix.EPERM}
		}, "syscall guard on kernel functions", levelInfo},
		{"self-test not run", func(in *doctorInput) { in.SelfTest = hazardLines(nil, errors.New("needs root")) }, "hazard self-test", levelWarn},
		{"splice present", func(in *doctorInput) {
			in.SelfTest = hazardLines(&datapath.SelfTestReport{Results: []datapath.HazardResult{
				{Hazard: datapath.HazardSplice, Status: datapath.HazardPresent},
				{Hazard: datapath.HazardBackpressure, Status: datapath.HazardGuarded}}}, nil)
		}, "hazard splice", levelWarn},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := goodInput()
			tc.mutate(&in)
			rep := evaluateDoctor(in)
			if !rep.OK {
				t.Fatalf("must not fail: %+v", rep.Lines)
			}
			if l := lineOf(t, rep, tc.check); l.Level != tc.level {
				t.Fatalf("line %+v: want level %s", l, tc.level)
			}
		})
	}
}

func TestNetClsPrioMounts(t *testing.T) {
	if got := netClsPrioMounts(mountinfoHybrid); len(got) != 0 {
		t.Fatalf("no net_cls in %v", got)
	}
	got := netClsPrioMounts(mountinfoHybrid + netClsLine + "33 26 0:30 / /sys/fs/cgroup/net_cls rw - cgroup net_cls rw,net_cls\n")
	if len(got) != 2 || got[0] != "/sys/fs/cgroup/net_cls,net_prio" || got[1] != "/sys/fs/cgroup/net_cls" {
		t.Fatalf("got %v", got)
	}
	// A cgroup2 mount with a name containing net_cls is not a v1 controller.
	if got := netClsPrioMounts("40 26 0:31 / /x rw - cgroup2 cgroup2 rw,net_cls\n"); len(got) != 0 {
		t.Fatalf("got %v", got)
	}
}

func TestNetClsPrioHierarchies(t *testing.T) {
	if got := netClsPrioHierarchies(procCgroupHybrid); len(got) != 0 {
		t.Fatalf("no net_cls in %v", got)
	}
	got := netClsPrioHierarchies("13:net_cls,net_prio:/\n9:net_prio:/x\n8:name=net_cls:/\n0::/net_cls\n7:perf_event:/\n")
	if !slices.Equal(got, []string{"13:net_cls,net_prio", "9:net_prio"}) {
		t.Fatalf("got %v", got)
	}
	in := goodInput()
	in.ProcCgroup += "13:net_cls,net_prio:/\n"
	if l := lineOf(t, evaluateDoctor(in), "net_cls/net_prio"); !strings.Contains(l.Detail, "13:net_cls,net_prio") ||
		!strings.Contains(l.Detail, "outside this mount namespace") {
		t.Fatalf("line %+v: want the hierarchy and that it is mounted outside", l)
	}
}

// TestNetClsPrioThisKernel reads this machine's /proc/self/cgroup and checks
// it against /proc/cgroups, where a controller bound to a v1 hierarchy has a
// non-zero hierarchy ID: both are the kernel's view, in any mount namespace.
func TestNetClsPrioThisKernel(t *testing.T) {
	self, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		t.Skipf("no /proc/self/cgroup: %v", err)
	}
	all, err := os.ReadFile("/proc/cgroups")
	if err != nil {
		t.Skipf("no /proc/cgroups: %v", err)
	}
	want := map[string]bool{}
	for _, line := range strings.Split(string(all), "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && (f[0] == "net_cls" || f[0] == "net_prio") && f[1] != "0" {
			want[f[0]+" in "+f[1]] = true
		}
	}
	got := map[string]bool{}
	for _, h := range netClsPrioHierarchies(string(self)) {
		id, ctrls, _ := strings.Cut(h, ":")
		for _, c := range strings.Split(ctrls, ",") {
			if c == "net_cls" || c == "net_prio" {
				got[c+" in "+id] = true
			}
		}
	}
	if !maps.Equal(got, want) {
		t.Fatalf("/proc/self/cgroup gives %v, /proc/cgroups %v", got, want)
	}
	t.Logf("net_cls/net_prio hierarchies on this kernel: %v", got)
}

func TestParseCapEff(t *testing.T) {
	status := "Name:\tsockhop\nCapInh:\t0000000000000000\nCapPrm:\t000001ffffffffff\nCapEff:\t000000c000001000\nCapBnd:\t000001ffffffffff\n"
	got, err := parseCapEff(status)
	if err != nil || got != 1<<capBPF|1<<capPerfmon|1<<capNetAdmin {
		t.Fatalf("parseCapEff = %#x, %v", got, err)
	}
	if level, _, _ := evaluateCaps(got); level != levelOK {
		t.Fatalf("CAP_BPF+CAP_PERFMON+CAP_NET_ADMIN must be enough, got %s", level)
	}
	if _, err := parseCapEff("Name:\tx\n"); err == nil {
		t.Fatal("a status without CapEff must fail")
	}
	if _, err := parseCapEff("CapEff:\tzz\n"); err == nil {
		t.Fatal("a malformed CapEff must fail")
	}
}

func TestParseKernelRelease(t *testing.T) {
	for rel, want := range map[string][2]int{"6.18.44-fc-v445": {6, 18}, "6.10": {6, 10}, "5.4.0-150-generic": {5, 4}, "6.9-rc1": {6, 9}} {
		maj, min, ok := parseKernelRelease(rel)
		if !ok || maj != want[0] || min != want[1] {
			t.Errorf("parseKernelRelease(%q) = %d, %d, %v", rel, maj, min, ok)
		}
	}
	if _, _, ok := parseKernelRelease("garbage"); ok {
		t.Error("garbage must not parse")
	}
}

func TestDoctorRendering(t *testing.T) {
	in := goodInput()
	in.MountInfo += netClsLine
	rep := evaluateDoctor(in)
	var b bytes.Buffer
	if err := renderDoctor(&b, rep); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	if !strings.Contains(out, "fail  net_cls/net_prio") || !strings.Contains(out, "hint: once net_cls") ||
		!strings.Contains(out, "cannot accelerate on this node") {
		t.Fatalf("doctor table:\n%s", out)
	}
	for _, line := range strings.Split(out, "\n") {
		if strings.Contains(line, "hint:") && len(line) > 125 {
			t.Errorf("hint not wrapped: %q", line)
		}
	}
	b.Reset()
	cliout.WriteJSON(&b, rep)
	var got doctorReport
	if err := json.Unmarshal(b.Bytes(), &got); err != nil || got.OK || len(got.Lines) != len(rep.Lines) {
		t.Fatalf("doctor JSON: %v %s", err, b.String())
	}
}

func TestBenchTable(t *testing.T) {
	rep := bench.Report{Quick: true, Rounds: 1, Duration: 3 * time.Second, Machine: bench.Machine{Kernel: "6.18", CPUs: 2},
		Cases: []bench.CaseResult{
			{ID: "pingpong-1cpu-64B", Kind: bench.KindPingPong, Metrics: []bench.Metric{
				{Name: "p50", Unit: "us", Off: 14, On: 8.2, Ratio: 14 / 8.2, LowerIsBetter: true}},
				Rounds: []bench.Round{{Mode: bench.ModeOn, Counters: bench.Counters{RedirectedBytes: 2 << 20,
					Passthrough: map[string]uint64{datapath.ReasonNoPeer: 1}}}}},
			{ID: "bulk-2cpu-64KiB", Kind: bench.KindBulk, Metrics: []bench.Metric{
				{Name: "throughput", Unit: "MiB/s", Off: 3500, On: 7000, Ratio: 2}}},
			{ID: "connrate-1cpu", Error: "client peer: connection refused"},
		}}
	var b bytes.Buffer
	if err := renderBench(&b, rep); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{"quick run", "pingpong-1cpu-64B", "p50 (µs)", "14.0", "8.20", "1.71×", "2.0 MiB", "no_peer=1",
		"throughput (MiB/s)", "3500", "7000", "2.00×", "connrate-1cpu", "connection refused", "RATIO: how many times better"} {
		if !strings.Contains(out, want) {
			t.Errorf("bench table lacks %q:\n%s", want, out)
		}
	}
}

func TestBytesText(t *testing.T) {
	for n, want := range map[uint64]string{0: "0 B", 1023: "1023 B", 1024: "1.0 KiB", 3 << 20: "3.0 MiB", 5 << 30: "5.0 GiB"} {
		if got := cliout.Bytes(n); got != want {
			t.Errorf("cliout.Bytes(%d) = %q, want %q", n, got, want)
		}
	}
}

// TestRenderHeldPrograms: the programs section appears only when the kernel
// holds a sockhop program that is not the installed one.
func TestRenderHeldPrograms(t *testing.T) {
	var b strings.Builder
	installed := []programView{{ID: 10, Name: "sockhop_sockops", Tag: "aa", Installed: true}, {ID: 11, Name: "sockhop_msg", Tag: "bb", Installed: true}}
	if err := renderPrograms(&b, installed); err != nil || b.Len() != 0 {
		t.Fatalf("only installed programs: %q, %v; want nothing", b.String(), err)
	}
	if err := renderPrograms(&b, append(installed, programView{ID: 7, Name: "sockhop_msg", Tag: "cc"})); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"1 not installed, held by connections paired before an upgrade or uninstall", "7  ", "cc", "new connections (installed)"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("programs section lacks %q:\n%s", want, b.String())
		}
	}
}
