package datapath_test

import (
	"slices"
	"testing"
	"time"

	"github.com/sockhop/sockhop/pkg/datapath"
	"github.com/sockhop/sockhop/pkg/testbed"
)

// TestShortLivedNotPaired: once a container's last 16 paired connections
// to a port closed with nothing redirected, its new connections to that
// port are not paired, but for one in 16; one of those that redirects
// makes it pair them all again. Other ports are not affected.
func TestShortLivedNotPaired(t *testing.T) {
	e := newEnv(t, datapath.Options{AppReceivers: true})
	p := e.pod("app", true)
	e.server(p, 0, testbed.PeerSpec{Mode: testbed.ModeEcho, Listen: []string{"127.0.0.1:8080", "127.0.0.1:9090"}})
	cg := inode(t, p.cgroup)
	short := func(port uint16) bool {
		l, err := e.dp.Learnt()
		if err != nil {
			t.Fatal(err)
		}
		return slices.Contains(l.ShortLived, datapath.ShortLived{Cgroup: cg, Port: port})
	}
	// A connection's client end counts once it is closed, a moment after
	// the client's close returned.
	waitShort := func(port uint16, want bool) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); short(port) != want; {
			if time.Now().After(deadline) {
				t.Fatalf("container %d, port %d: short-lived %v, want %v", cg, port, !want, want)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	conns := func(target string, n int) delta {
		t.Helper()
		before := e.counters()
		res := e.client(p, 0, testbed.PeerSpec{Mode: testbed.ModeConnRate, Target: target, Iterations: n})
		mustOK(t, res, n, 0)
		return diff(before, e.counters())
	}

	// 16 connections of one byte each way: paired, nothing redirected.
	if d := conns("127.0.0.1:8080", 16); d.paired != 32 || d.redirBytes != 0 || d.pass[datapath.ReasonShortLived] != 0 {
		t.Fatalf("the first 16 short connections must be paired, and redirect nothing: %v", d)
	}
	waitShort(8080, true)

	// Now 15 in 16 are not paired: the client ends count as short_lived,
	// their server ends as no_client.
	d := conns("127.0.0.1:8080", 32)
	if d.paired != 4 || d.pass[datapath.ReasonShortLived] != 30 || d.pass[datapath.ReasonNoClient] != 30 {
		t.Fatalf("32 short connections after the streak: want 2 paired (one in 16), 30 short_lived: %v", d)
	}
	if got := e.podStats(p)[p.name].Unpaired[datapath.ReasonShortLived]; got != 30 {
		t.Fatalf("the pod's counters: %d sockets not paired as short-lived, want 30", got)
	}
	// Another port of the same container is not affected.
	if d := conns("127.0.0.1:9090", 4); d.paired != 8 || d.pass[datapath.ReasonShortLived] != 0 {
		t.Fatalf("connections to another port must pair: %v", d)
	}
	if short(9090) {
		t.Fatal("4 short connections to port 9090 made it short-lived")
	}

	// 15 more are skipped; the 16th is paired, and this one redirects:
	// the container's connections to the port pair again.
	if d := conns("127.0.0.1:8080", 15); d.paired != 0 || d.pass[datapath.ReasonShortLived] != 15 {
		t.Fatalf("want 15 more not paired: %v", d)
	}
	before := e.counters()
	res := e.client(p, 0, testbed.PeerSpec{Mode: testbed.ModePingPong, Target: "127.0.0.1:8080", Size: 1 << 10, Iterations: 200})
	if err := res.Err(); err != nil {
		t.Fatal(err)
	}
	if d := diff(before, e.counters()); d.paired != 2 || d.redirBytes == 0 {
		t.Fatalf("the sampled connection must be paired and redirected: %v", d)
	}
	waitShort(8080, false)
	if d := conns("127.0.0.1:8080", 4); d.paired != 8 || d.pass[datapath.ReasonShortLived] != 0 {
		t.Fatalf("after a connection that redirected, the container's connections must pair again: %v", d)
	}
}
