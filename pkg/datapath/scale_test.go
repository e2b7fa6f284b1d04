package datapath_test

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/sockhop/sockhop/pkg/datapath"
	"github.com/sockhop/sockhop/pkg/testbed"
)

// perProcessConns keeps each peer process well inside the machine's
// per-process descriptor limit (20 000).
const perProcessConns = 10000

// scaleConns is how many concurrent connections TestScale holds
// (SOCKHOP_SCALE_CONNS overrides; 100000 is the node target).
func scaleConns() int {
	if n, err := strconv.Atoi(os.Getenv("SOCKHOP_SCALE_CONNS")); err == nil && n > 0 {
		return n
	}
	return 20000
}

type scaleRun struct {
	setup    time.Duration // until every connection made its round trip
	paired   uint64
	fill     map[string]datapath.MapFill
	mapErrs  uint64
	slabDiff int64 // kB of kernel slab while held, against before
}

// holdConns opens n connections from the pod to echo servers on ports
// port.., a process per 10 000 on each side, holds them, then closes them.
func holdConns(t testing.TB, e *env, p *pod, n, port int) scaleRun {
	t.Helper()
	procs := (n + perProcessConns - 1) / perProcessConns
	var run scaleRun
	slab0 := slabKB(t)
	before := e.counters()
	start := time.Now()
	var clients []*testbed.Peer
	for i := 0; i < procs; i++ {
		each := min(perProcessConns, n-i*perProcessConns)
		addr := fmt.Sprintf("127.0.0.1:%d", port+i)
		clients = append(clients, e.startClient(p, 0, testbed.PeerSpec{Mode: testbed.ModeConnHold, Target: addr, Conns: each, Parallel: 64, Size: 16}))
	}
	for _, c := range clients {
		if err := testbed.WaitConnsHeld(c, 5*time.Minute); err != nil {
			t.Fatal(err)
		}
	}
	run.setup = time.Since(start)
	after := e.counters()
	run.paired = after.PairedSockets - before.PairedSockets
	for k, v := range after.MapErrors {
		run.mapErrs += v - before.MapErrors[k]
	}
	fills, err := e.dp.MapFill()
	if err != nil {
		t.Fatal(err)
	}
	run.fill = map[string]datapath.MapFill{}
	for _, f := range fills {
		run.fill[f.Name] = f
	}
	run.slabDiff = slabKB(t) - slab0
	for _, c := range clients {
		if err := testbed.Resume(c); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range clients {
		res, err := c.Wait()
		if err == nil {
			err = res.Err()
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	return run
}

func slabKB(t testing.TB) int64 {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "Slab:" {
			n, _ := strconv.ParseInt(f[1], 10, 64)
			return n
		}
	}
	return 0
}

// waitMapsEmpty waits until the closed connections left nothing in the
// maps: no socket, no receiver, no pending entry (none evicted, none leaked).
func waitMapsEmpty(t testing.TB, e *env) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		fills, err := e.dp.MapFill()
		if err != nil {
			t.Fatal(err)
		}
		left := 0
		for _, f := range fills {
			left += f.Entries
		}
		if left == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("closed connections left entries in the maps: %+v", fills)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Scale: many concurrent connections in one attached pod are all paired,
// without one failed map operation, cost about the same to set up as plain
// TCP, and leave the maps empty once closed.
func TestScale(t *testing.T) {
	n := scaleConns()
	e := newEnv(t, datapath.Options{AppReceivers: true})
	p := e.pod("app", false)
	// Servers for each round: the first round's client ports linger in
	// TIME_WAIT towards its servers (see BenchmarkScale).
	for i := 0; i < (n+perProcessConns-1)/perProcessConns; i++ {
		for _, port := range []int{9000, 9100} {
			e.server(p, 0, testbed.PeerSpec{Mode: testbed.ModeEcho, Listen: []string{fmt.Sprintf("127.0.0.1:%d", port+i)}})
		}
	}
	off := holdConns(t, e, p, n, 9000)
	if err := e.dp.Attach(p.cgroup, datapath.PodConfig{}); err != nil {
		t.Fatal(err)
	}
	on := holdConns(t, e, p, n, 9100)
	t.Logf("SCALE %d connections: setup %v plain TCP, %v accelerated (rate %.2f× of plain); %d sockets paired, %d map errors; fill %+v; kernel slab +%d kB plain, +%d kB accelerated (%.1f KiB more per connection)",
		n, off.setup.Round(time.Millisecond), on.setup.Round(time.Millisecond), float64(off.setup)/float64(on.setup),
		on.paired, on.mapErrs, on.fill, off.slabDiff, on.slabDiff, float64(on.slabDiff-off.slabDiff)/float64(n))
	if on.paired != uint64(2*n) || on.mapErrs != 0 {
		t.Fatalf("want all %d connections paired without a failed map operation: %d sockets paired, %d map errors", n, on.paired, on.mapErrs)
	}
	if got := on.fill["receivers"].Entries; got != 2*n {
		t.Fatalf("want %d receivers watched while held, got %d", 2*n, got)
	}
	waitMapsEmpty(t, e)
}

// BenchmarkScale holds 1k, 10k, 50k and 100k concurrent connections in one
// pod, plain and accelerated side by side, and reports the setup rate
// ratio, the sockets paired and the kernel slab per connection. Run:
// go test -run '^$' -bench Scale -benchtime 1x -timeout 30m ./pkg/datapath
func BenchmarkScale(b *testing.B) {
	for _, n := range []int{1000, 10000, 50000, 100000} {
		b.Run(strconv.Itoa(n), func(b *testing.B) {
			e := newEnv(b, datapath.Options{AppReceivers: true})
			p := e.pod("app", false)
			// A set of servers per round: a round's connections
			// leave their client ports in TIME_WAIT towards its
			// servers, which slows a later round's port search
			// towards the same ones (measured: whichever ran second
			// lost 20-40 %).
			procs := (n + perProcessConns - 1) / perProcessConns
			ports := []int{9000, 9100, 9200, 9300}
			for i := 0; i < procs; i++ {
				for _, port := range ports {
					e.server(p, 0, testbed.PeerSpec{Mode: testbed.ModeEcho, Listen: []string{fmt.Sprintf("127.0.0.1:%d", port+i)}})
				}
			}
			// Plain, accelerated, accelerated, plain: what the
			// machine's state does to a later round (TIME_WAIT
			// sockets, slab growth) falls on both alike.
			var off, on []scaleRun
			off = append(off, holdConns(b, e, p, n, ports[0]))
			if err := e.dp.Attach(p.cgroup, datapath.PodConfig{}); err != nil {
				b.Fatal(err)
			}
			on = append(on, holdConns(b, e, p, n, ports[1]))
			waitMapsEmpty(b, e)
			on = append(on, holdConns(b, e, p, n, ports[2]))
			waitMapsEmpty(b, e)
			if err := e.dp.Detach(p.cgroup); err != nil {
				b.Fatal(err)
			}
			off = append(off, holdConns(b, e, p, n, ports[3]))
			offSetup, onSetup := off[0].setup+off[1].setup, on[0].setup+on[1].setup
			b.Logf("SCALE %d: setup plain %v, %v; accelerated %v, %v", n, off[0].setup, off[1].setup, on[0].setup, on[1].setup)
			b.ReportMetric(float64(2*n)/offSetup.Seconds(), "off-conn/s")
			b.ReportMetric(float64(2*n)/onSetup.Seconds(), "on-conn/s")
			b.ReportMetric(float64(offSetup)/float64(onSetup), "ratio-setup-rate")
			b.ReportMetric(float64(on[0].paired)/float64(2*n), "share-paired")
			b.ReportMetric(float64(on[0].mapErrs+on[1].mapErrs), "map-errors")
			b.ReportMetric(float64(on[0].slabDiff-off[0].slabDiff)/float64(n), "extra-slab-kB/conn")
		})
	}
}

// No leaked or evicted pending state: a connection's pending entry (and
// its receivers' entries) go on every outcome — paired, a client that
// closes before it sends, a server in a cgroup that is not attached, a
// server end that saw data before its handshake completed — so the maps
// return to empty.
func TestPendingRemovedOnEveryOutcome(t *testing.T) {
	e := newEnv(t, datapath.Options{AppReceivers: true})
	p := e.pod("app", true)
	other, err := e.bed.Cgroup("not-attached")
	if err != nil {
		t.Fatal(err)
	}
	e.server(p, 0, testbed.PeerSpec{Mode: testbed.ModeEcho, Listen: []string{"127.0.0.1:8080"}})
	e.server(&pod{name: "srv", ns: p.ns, cgroup: other}, 0, testbed.PeerSpec{Mode: testbed.ModeEcho, Listen: []string{"127.0.0.1:8081"}})
	e.server(p, 0, testbed.PeerSpec{Mode: testbed.ModeStream, Listen: []string{"127.0.0.1:8082"}, DeferAccept: true})
	for _, c := range []struct {
		what string
		spec testbed.PeerSpec
	}{
		{"paired", testbed.PeerSpec{Mode: testbed.ModeConnRate, Target: "127.0.0.1:8080", Iterations: 200}},
		{"closed before sending", testbed.PeerSpec{Mode: testbed.ModeConnectClose, Target: "127.0.0.1:8080", Conns: 200}},
		{"server not attached", testbed.PeerSpec{Mode: testbed.ModeConnRate, Target: "127.0.0.1:8081", Iterations: 200}},
		{"server saw data first", testbed.PeerSpec{Mode: testbed.ModeStream, Target: "127.0.0.1:8082", Conns: 20, Parallel: 4, Bytes: 1 << 20, MaxWrite: 16 << 10}},
	} {
		t.Run(c.what, func(t *testing.T) {
			before := e.counters()
			if res := e.client(p, 0, c.spec); res.Err() != nil {
				t.Fatal(res.Err())
			}
			d := diff(before, e.counters())
			if d.paired == 0 {
				t.Fatalf("no socket paired: the case was not tested: %v", d)
			}
			waitMapsEmpty(t, e)
			t.Logf("%v; maps empty", d)
		})
	}
}
