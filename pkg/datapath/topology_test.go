package datapath_test

import (
	"testing"

	"github.com/sockhop/sockhop/pkg/datapath"
	"github.com/sockhop/sockhop/pkg/testbed"
)

// streamSpec moves `total` bytes each way over 4 parallel connections, in
// writes of 1 B to 1 MiB, every byte checked in place.
func streamSpec(target string, total int64) testbed.PeerSpec {
	return testbed.PeerSpec{
		Mode: testbed.ModeStream, Target: target,
		Conns: 4, Parallel: 4, Bytes: total / 4, MaxWrite: 1 << 20,
	}
}

const headerBytes = 24 // the stream header each client sends first

// wantPaired checks that both ends of every connection were paired and no
// direction was left on TCP for want of a peer or a safe receiver; a
// direction may still have gone to TCP after its receiver fell behind
// (back-pressure). That every byte arrived, in order, the streams check.
// (TCPBytes counts per verdict and can miss bytes the kernel pushes under
// one verdict, so it is not summed here.)
func wantPaired(t *testing.T, d delta, conns int, bytesEach int64) {
	t.Helper()
	max := uint64(conns) * uint64(2*bytesEach+headerBytes)
	if d.paired != uint64(2*conns) || d.redirBytes == 0 || d.redirBytes > max ||
		d.pass[datapath.ReasonNoPeer] != 0 || d.pass[datapath.ReasonUnsafeRx] != 0 {
		t.Fatalf("want %d sockets paired, up to %d bytes redirected, no direction on TCP for want of a peer; got %v", 2*conns, max, d)
	}
	if d.pass[datapath.ReasonBackpressure] == 0 && d.redirBytes != max {
		t.Fatalf("no direction fell behind, yet %d of %d bytes were redirected", d.redirBytes, max)
	}
	t.Logf("%v", d)
}

// (a) and (e): two processes of one pod over loopback, IPv4, IPv6 and a
// dual-stack listener taking IPv4 (v4-mapped addresses).
func TestLoopback(t *testing.T) {
	e := newEnv(t, datapath.Options{AppReceivers: true})
	p := e.pod("app", true)
	e.server(p, 0, testbed.PeerSpec{Mode: testbed.ModeStream, Listen: []string{"127.0.0.1:8080", "[::1]:8081", "dual:[::]:8082"}})
	total := streamBytes()
	for _, tc := range []struct{ name, target string }{
		{"ipv4", "127.0.0.1:8080"},
		{"ipv6", "[::1]:8081"},
		{"v4-mapped", "127.0.0.1:8082"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := e.counters()
			spec := streamSpec(tc.target, total)
			res := e.client(p, 0, spec)
			mustOK(t, res, spec.Conns, spec.Bytes)
			wantPaired(t, diff(before, e.counters()), spec.Conns, spec.Bytes)
		})
		total /= 4 // the full volume once is enough
	}
}
