package datapath_test

import (
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"testing"

	"github.com/sockhop/sockhop/internal/needs"
	"github.com/sockhop/sockhop/pkg/datapath"
	"github.com/sockhop/sockhop/pkg/testbed"
)

func TestMain(m *testing.M) {
	// Peer processes of the kernel tests are this binary, re-executed.
	testbed.RunPeerIfRequested()
	os.Exit(m.Run())
}

// requireRoot: the kernel tests follow the needs rule (skipped under
// -short; without root skipped, or failed in CI).
func requireRoot(t testing.TB) {
	t.Helper()
	needs.Root(t, "to load BPF programs and create cgroups and network namespaces")
}

// requireKernel is requireRoot on a kernel that can run sockhop: where
// Probe names a missing feature the test is skipped with it (failed in CI,
// whose host kernel must run everything). TestUnsupportedKernel checks what
// sockhop does on such a kernel instead. newEnv calls it; a test whose
// subtests make the env calls it first too, so that it is reported skipped,
// not passed with every subtest skipped.
func requireKernel(t testing.TB) {
	t.Helper()
	requireRoot(t)
	if err := datapath.Probe(); err != nil {
		needs.Missing(t, "this kernel cannot run sockhop: "+err.Error())
	}
}

// streamBytes is how many bytes each stream test moves per topology and
// direction (SOCKHOP_TEST_MIB overrides, in MiB).
func streamBytes() int64 {
	if v, err := strconv.Atoi(os.Getenv("SOCKHOP_TEST_MIB")); err == nil && v > 0 {
		return int64(v) << 20
	}
	return 512 << 20 // 512 MiB each way: 1 GiB per topology
}

type env struct {
	t      testing.TB
	bed    *testbed.Bed
	dp     *datapath.Datapath
	pinDir string
	opts   datapath.Options
}

func newEnv(t testing.TB, opts datapath.Options) *env {
	t.Helper()
	requireKernel(t)
	bed, err := testbed.New()
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, bed: bed, pinDir: "/sys/fs/bpf/sockhop-test-" + bed.ID()}
	t.Cleanup(func() {
		if e.dp != nil {
			e.dp.Close()
		}
		if err := datapath.Uninstall(e.pinDir); err != nil {
			t.Error(err)
		}
		if err := bed.Close(); err != nil {
			t.Error(err)
		}
	})
	opts.PinDir = e.pinDir
	e.opts = opts
	e.dp, err = datapath.Load(opts)
	if err != nil {
		t.Fatalf("load datapath: %+v", err)
	}
	return e
}

type pod struct {
	name   string
	ns     *testbed.NetNS
	cgroup string
	ip     netip.Addr
}

// pod makes a network namespace and a cgroup; attach says whether the
// datapath accelerates it.
func (e *env) pod(name string, attach bool) *pod {
	e.t.Helper()
	ns, err := e.bed.NetNS(name)
	if err != nil {
		e.t.Fatal(err)
	}
	cg, err := e.bed.Cgroup(name)
	if err != nil {
		e.t.Fatal(err)
	}
	if attach {
		if err := e.dp.Attach(cg, datapath.PodConfig{}); err != nil {
			e.t.Fatal(err)
		}
	}
	return &pod{name: name, ns: ns, cgroup: cg}
}

// container is another container of pod p: its own cgroup under the pod's
// (as kubelet makes them), in the pod's network namespace.
func (e *env) container(p *pod, name string) *pod {
	e.t.Helper()
	cg, err := e.bed.Cgroup(p.name + "/" + name)
	if err != nil {
		e.t.Fatal(err)
	}
	return &pod{name: p.name + "/" + name, ns: p.ns, cgroup: cg, ip: p.ip}
}

// link joins two pods with a veth and gives them addresses in 198.18.0.0/24
// (the benchmarking range, private to these namespaces).
func (e *env) link(a, z *pod, aIP, zIP string) {
	e.t.Helper()
	a.ip, z.ip = netip.MustParseAddr(aIP), netip.MustParseAddr(zIP)
	bits := 24
	if a.ip.Is6() {
		bits = 64
	}
	if err := e.bed.Veth(a.ns, netip.PrefixFrom(a.ip, bits), z.ns, netip.PrefixFrom(z.ip, bits)); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) server(p *pod, uid int, spec testbed.PeerSpec) *testbed.Peer {
	e.t.Helper()
	spec.Role = testbed.RoleServer
	spec.NetNS, spec.Cgroup, spec.UID = p.ns.Name, p.cgroup, uid
	peer, err := e.bed.Start(spec)
	if err != nil {
		e.t.Fatal(err)
	}
	return peer
}

func (e *env) proxy(p *pod, spec testbed.PeerSpec) *testbed.Peer {
	e.t.Helper()
	spec.Role = testbed.RoleProxy
	spec.NetNS, spec.Cgroup, spec.UID = p.ns.Name, p.cgroup, istioProxyUID
	peer, err := e.bed.Start(spec)
	if err != nil {
		e.t.Fatal(err)
	}
	return peer
}

func (e *env) client(p *pod, uid int, spec testbed.PeerSpec) testbed.Result {
	e.t.Helper()
	res, err := e.startClient(p, uid, spec).Wait()
	if err != nil {
		e.t.Fatal(err)
	}
	return res
}

func (e *env) startClient(p *pod, uid int, spec testbed.PeerSpec) *testbed.Peer {
	e.t.Helper()
	spec.Role = testbed.RoleClient
	spec.NetNS, spec.Cgroup, spec.UID = p.ns.Name, p.cgroup, uid
	peer, err := e.bed.Start(spec)
	if err != nil {
		e.t.Fatal(err)
	}
	return peer
}

func (e *env) counters() datapath.Counters {
	e.t.Helper()
	c, err := e.dp.Counters()
	if err != nil {
		e.t.Fatal(err)
	}
	return c
}

func (e *env) run(ns *testbed.NetNS, args ...string) {
	e.t.Helper()
	if err := ns.Run(args...); err != nil {
		e.t.Fatal(err)
	}
}

// reload closes the env's datapath and loads it again from the pins, as a
// restarted agent does.
func (e *env) reload(t testing.TB, opts datapath.Options) {
	t.Helper()
	if err := e.dp.Close(); err != nil {
		t.Fatal(err)
	}
	dp, err := datapath.Load(opts)
	if err != nil {
		t.Fatalf("load again: %v", err)
	}
	e.dp = dp
}

// reloadWithCapacity reloads with another MaxConnections: the pinned maps
// no longer fit, so Load replaces them (established connections keep the
// old ones).
func (e *env) reloadWithCapacity(t testing.TB, conns int) {
	t.Helper()
	opts := e.opts
	opts.MaxConnections = conns
	e.reload(t, opts)
}

// delta is what happened between two counter readings.
type delta struct {
	paired, redirBytes, tcpBytes uint64
	switches, unsafeRx, stranded uint64
	retired, retireHeld          uint64
	pass                         map[string]uint64
}

func diff(before, after datapath.Counters) delta {
	d := delta{
		paired:     after.PairedSockets - before.PairedSockets,
		redirBytes: after.RedirectedBytes - before.RedirectedBytes,
		tcpBytes:   after.TCPBytes - before.TCPBytes,
		switches:   after.Switches - before.Switches,
		unsafeRx:   after.UnsafeReceivers - before.UnsafeReceivers,
		stranded:   after.Stranded - before.Stranded,
		retired:    after.Retired - before.Retired,
		retireHeld: after.RetireHeld - before.RetireHeld,
		pass:       map[string]uint64{},
	}
	for k, v := range after.Passthrough {
		d.pass[k] = v - before.Passthrough[k]
	}
	return d
}

func (d delta) String() string {
	return fmt.Sprintf("paired=%d redirected=%dB tcp=%dB switches=%d retired=%d retire_held=%d unsafe_rx=%d stranded=%d pass=%v",
		d.paired, d.redirBytes, d.tcpBytes, d.switches, d.retired, d.retireHeld, d.unsafeRx, d.stranded, d.pass)
}

func mustOK(t testing.TB, res testbed.Result, wantConns int, bytesEach int64) {
	t.Helper()
	if err := res.Err(); err != nil {
		t.Fatal(err)
	}
	if res.Conns != wantConns {
		t.Fatalf("%d connections completed, want %d", res.Conns, wantConns)
	}
	if want := int64(wantConns) * bytesEach; res.BytesVerified != want || res.BytesSent != want {
		t.Fatalf("sent %d and verified %d bytes, want %d each", res.BytesSent, res.BytesVerified, want)
	}
}

const istioProxyUID = 1337
