package datapath_test

import (
	"fmt"
	"testing"

	"github.com/sockhop/sockhop/pkg/datapath"
	"github.com/sockhop/sockhop/pkg/testbed"
)

// podStats reads the per-pod counters of every attached pod, by pod name.
func (e *env) podStats(pods ...*pod) map[string]datapath.PodStats {
	e.t.Helper()
	atts, err := e.dp.Attachments()
	if err != nil {
		e.t.Fatal(err)
	}
	all, err := e.dp.PodStats()
	if err != nil {
		e.t.Fatal(err)
	}
	out := map[string]datapath.PodStats{}
	for _, p := range pods {
		for _, a := range atts {
			if a.CgroupPath != p.cgroup {
				continue
			}
			st, ok := all[a.CgroupID]
			if !ok {
				e.t.Fatalf("attached pod %s (cgroup %d) has no per-pod counters", p.name, a.CgroupID)
			}
			out[p.name] = st
		}
	}
	return out
}

// podDelta is what happened to one pod between two readings.
type podDelta struct {
	conns, dirs, redirected, retired uint64
	onTCP, unpaired                  map[string]uint64
}

func podDiff(before, after datapath.PodStats) podDelta {
	d := podDelta{
		conns: after.Connections - before.Connections, dirs: after.Directions - before.Directions,
		redirected: after.Redirected - before.Redirected, retired: after.Retired - before.Retired,
		onTCP: map[string]uint64{}, unpaired: map[string]uint64{},
	}
	for k, v := range after.OnTCP {
		if v != before.OnTCP[k] {
			d.onTCP[k] = v - before.OnTCP[k]
		}
	}
	for k, v := range after.Unpaired {
		if v != before.Unpaired[k] {
			d.unpaired[k] = v - before.Unpaired[k]
		}
	}
	return d
}

func (d podDelta) zero() bool {
	return d.conns == 0 && d.dirs == 0 && d.redirected == 0 && d.retired == 0 && len(d.onTCP) == 0 && len(d.unpaired) == 0
}

func (d podDelta) String() string {
	return fmt.Sprintf("conns=%d dirs=%d redirected=%d retired=%d on_tcp=%v unpaired=%v",
		d.conns, d.dirs, d.redirected, d.retired, d.onTCP, d.unpaired)
}

// wantSameAsNode checks that one pod's counters moved exactly as the node's
// did, while it was the only pod with traffic.
func wantSameAsNode(t *testing.T, what string, p podDelta, n delta) {
	t.Helper()
	if p.redirected != n.switches || p.retired != n.retired ||
		p.onTCP[datapath.ReasonBackpressure] != n.pass[datapath.ReasonBackpressure] ||
		p.onTCP[datapath.ReasonUnsafeRx] != n.pass[datapath.ReasonUnsafeRx] ||
		p.onTCP[datapath.ReasonNoPeer]+p.unpaired[datapath.ReasonNoPeer] != n.pass[datapath.ReasonNoPeer] {
		t.Fatalf("%s: the pod's counters (%v) do not match the node's (%v)", what, p, n)
	}
}

// Per-pod counters move exactly for what happened to each pod's sockets:
// paired connections and their directions, a socket whose peer never
// joined, a direction sent back to TCP by back-pressure; and one pod's
// connections never count in another pod's counters.
func TestPodStats(t *testing.T) {
	e := newEnv(t, datapath.Options{AppReceivers: true})
	one, two := e.pod("one", true), e.pod("two", true)
	start := e.podStats(one, two)
	for name, st := range start {
		if d := podDiff(datapath.PodStats{}, st); !d.zero() {
			t.Fatalf("pod %s starts with counters %v, want zero", name, d)
		}
	}

	// Paired connections inside pod one: each counts once, with two
	// directions, which switch to redirect once their receiver has read
	// everything (the stream peers read with plain reads; a direction whose
	// receiver never catches up before back-pressure stays on TCP).
	e.server(one, 0, testbed.PeerSpec{Mode: testbed.ModeStream, Listen: []string{"127.0.0.1:8080"}})
	before, nb := e.podStats(one, two), e.counters()
	spec := testbed.PeerSpec{Mode: testbed.ModeStream, Target: "127.0.0.1:8080", Conns: 4, Parallel: 4, Bytes: 4 << 20, MaxWrite: 64 << 10}
	mustOK(t, e.client(one, 0, spec), spec.Conns, spec.Bytes)
	after, na := e.podStats(one, two), e.counters()
	d1, n := podDiff(before["one"], after["one"]), diff(nb, na)
	t.Logf("paired: pod one %v; node %v", d1, n)
	if d1.conns != 4 || d1.dirs != 8 || d1.redirected == 0 || d1.redirected > 8 || len(d1.unpaired) != 0 {
		t.Fatalf("want 4 connections, 8 directions, 1 to 8 of them redirected, no socket unpaired in pod one: %v", d1)
	}
	wantSameAsNode(t, "paired", d1, n)
	if d2 := podDiff(before["two"], after["two"]); !d2.zero() {
		t.Fatalf("pod one's connections counted in pod two: %v", d2)
	}

	// Sockets whose peer never joins (the server's cgroup is not attached):
	// not paired, for want of a peer; not a direction of any connection.
	other, err := e.bed.Cgroup("not-attached")
	if err != nil {
		t.Fatal(err)
	}
	e.server(&pod{name: "srv", ns: one.ns, cgroup: other}, 0, testbed.PeerSpec{Mode: testbed.ModeStream, Listen: []string{"127.0.0.1:9090"}})
	before, nb = e.podStats(one, two), e.counters()
	spec = testbed.PeerSpec{Mode: testbed.ModeStream, Target: "127.0.0.1:9090", Conns: 2, Parallel: 2, Bytes: 4 << 20, MaxWrite: 64 << 10}
	mustOK(t, e.client(one, 0, spec), spec.Conns, spec.Bytes)
	after, na = e.podStats(one, two), e.counters()
	d1, n = podDiff(before["one"], after["one"]), diff(nb, na)
	t.Logf("no peer: pod one %v; node %v", d1, n)
	if d1.unpaired[datapath.ReasonNoPeer] != 2 || len(d1.unpaired) != 1 || d1.conns != 0 || d1.dirs != 0 || d1.redirected != 0 || len(d1.onTCP) != 0 {
		t.Fatalf("want exactly the 2 clients counted as not paired for want of a peer: %v", d1)
	}
	wantSameAsNode(t, "no peer", d1, n)
	if d2 := podDiff(before["two"], after["two"]); !d2.zero() {
		t.Fatalf("pod one's sockets counted in pod two: %v", d2)
	}

	// Back-pressure in pod two: a sink slower than its sender. The first
	// connection makes the pod's cgroup trusted, the second is redirected
	// from its first byte until the bound trips.
	e.server(two, 0, testbed.PeerSpec{Mode: testbed.ModeSlowSink, Listen: []string{"127.0.0.1:8080"}})
	before, nb = e.podStats(one, two), e.counters()
	bulk := testbed.PeerSpec{Mode: testbed.ModeBulk, Target: "127.0.0.1:8080", Size: 64 << 10, Bytes: 16 << 20}
	for i := range 2 {
		if res := e.client(two, 0, bulk); res.Err() != nil || res.BytesVerified != bulk.Bytes {
			t.Fatalf("bulk %d: %v, %d bytes", i, res.Err(), res.BytesVerified)
		}
	}
	after, na = e.podStats(one, two), e.counters()
	d2, n := podDiff(before["two"], after["two"]), diff(nb, na)
	t.Logf("back-pressure: pod two %v; node %v", d2, n)
	if n.pass[datapath.ReasonBackpressure] == 0 {
		t.Fatalf("the sink kept up with the sender: the bound never tripped, nothing tested (%v)", n)
	}
	if d2.conns != 2 || d2.dirs != 4 || d2.onTCP[datapath.ReasonBackpressure] == 0 || len(d2.unpaired) != 0 {
		t.Fatalf("want 2 connections, 4 directions, at least one sent back to TCP by back-pressure in pod two: %v", d2)
	}
	wantSameAsNode(t, "back-pressure", d2, n)
	if d1 := podDiff(before["one"], after["one"]); !d1.zero() {
		t.Fatalf("pod two's connections counted in pod one: %v", d1)
	}

	// Detaching a pod forgets its counters; attaching again starts at zero.
	var twoID uint64
	atts, _ := e.dp.Attachments()
	for _, a := range atts {
		if a.CgroupPath == two.cgroup {
			twoID = a.CgroupID
		}
	}
	if err := e.dp.Detach(two.cgroup); err != nil {
		t.Fatal(err)
	}
	if all, err := e.dp.PodStats(); err != nil || func() bool { _, ok := all[twoID]; return ok }() {
		t.Fatalf("a detached pod keeps its counters (%v)", err)
	}
	if err := e.dp.Attach(two.cgroup, datapath.PodConfig{}); err != nil {
		t.Fatal(err)
	}
	if d := podDiff(datapath.PodStats{}, e.podStats(two)["two"]); !d.zero() {
		t.Fatalf("a re-attached pod starts with counters %v, want zero", d)
	}
}

// A pod's counters outlive a replacement of the maps (here a new capacity,
// as an upgrade that changes a map layout does): they are carried over, and
// new connections count on in them.
func TestPodStatsCarriedOverMapReplacement(t *testing.T) {
	e := newEnv(t, datapath.Options{AppReceivers: true, MaxConnections: 1024})
	p := e.pod("app", true)
	e.server(p, 0, testbed.PeerSpec{Mode: testbed.ModeStream, Listen: []string{"127.0.0.1:8080"}})
	spec := testbed.PeerSpec{Mode: testbed.ModeStream, Target: "127.0.0.1:8080", Conns: 2, Parallel: 2, Bytes: 1 << 20, MaxWrite: 64 << 10}
	mustOK(t, e.client(p, 0, spec), spec.Conns, spec.Bytes)
	before := e.podStats(p)["app"]
	if before.Connections != 2 {
		t.Fatalf("want 2 connections before the replacement: %+v", before)
	}
	e.reloadWithCapacity(t, 2048)
	if d := podDiff(before, e.podStats(p)["app"]); !d.zero() {
		t.Fatalf("the pod's counters changed with the maps: %v", d)
	}
	mustOK(t, e.client(p, 0, spec), spec.Conns, spec.Bytes)
	if got := e.podStats(p)["app"].Connections; got != 4 {
		t.Fatalf("want 4 connections counted across the replacement, got %d", got)
	}
}
