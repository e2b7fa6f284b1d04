package datapath_test

import (
	"testing"

	"github.com/sockhop/sockhop/pkg/datapath"
	"github.com/sockhop/sockhop/pkg/testbed"
)

// MSG_ZEROCOPY senders (docs/hazards.md). A socket in the sockhash sends
// through tcp_bpf_sendmsg, which copies the data: a redirected zerocopy
// send never raises the completion its sender waits for before it reuses
// the buffer. An application (uid 1000) in an accelerated pod sends to a
// sink in the same pod, run as an application and as a sidecar proxy:
//
//   - early: SO_ZEROCOPY before connect. The connection is not paired, and
//     every zerocopy send completes.
//   - late: SO_ZEROCOPY on a connection already redirected, then zerocopy
//     sends. The direction goes to TCP for good at the first of them, so
//     they all complete; the socket stays in the sockhash (outside, its
//     completions, numbered ahead by tcp_bpf's chunks, would free buffers
//     the kernel still uses); the container is learnt.
//   - after: a later connection of that container: not paired (the learnt
//     hazard), every send completes.
//
// SOCKHOP_HAZARD_DROP_GUARD=receiver-guard (redirect everything): the late
// sends are redirected, none completes, and the test fails.
func TestHazardZeroCopySend(t *testing.T) {
	requireKernel(t)
	receivers(t, func(t *testing.T, uid int) {
		s := newSidecarPod(t, hazardOptions(t), true, false)
		s.server(s.app, uid, testbed.PeerSpec{Mode: testbed.ModeSink, Listen: []string{"127.0.0.1:7400"}})
		const sends = 16
		spec := testbed.PeerSpec{Mode: testbed.ModeZeroCopySend, Target: "127.0.0.1:7400", Iterations: sends, MaxWrite: 64 << 10}
		complete := func(what string, rep testbed.ZeroCopyReport) {
			t.Helper()
			if rep.Error != "" || rep.Sends != sends || rep.Completions < sends || rep.SockErrno != 0 {
				t.Fatalf("%s: %d of %d zerocopy sends completed in %v (%+v), want all", what, rep.Completions, sends, rep.Waited, rep)
			}
		}

		before := s.counters()
		rep := s.zeroCopy(t, spec)
		d := diff(before, s.counters())
		t.Logf("early: %+v; datapath: %v", rep, d)
		if d.paired != 0 || d.pass[datapath.ReasonZeroCopy] == 0 {
			t.Fatalf("early: a socket with SO_ZEROCOPY was paired (or not counted): %v", d)
		}
		complete("early", rep)

		spec.Size = 64 << 10
		before = s.counters()
		rep = s.zeroCopy(t, spec)
		d = diff(before, s.counters())
		t.Logf("late: %+v; datapath: %v", rep, d)
		if d.paired != 2 || d.switches == 0 || d.redirBytes == 0 {
			t.Fatalf("late: the connection was never redirected (nothing tested): %v", d)
		}
		complete("late", rep)
		if d.pass[datapath.ReasonZeroCopy] != 1 || d.retired != 0 {
			t.Fatalf("late: want the zerocopy sender's direction on TCP (1) and no socket out of the sockhash (0): %v", d)
		}
		wantLearnt(t, s.env, s.app, datapath.SawZeroCopySend)

		before = s.counters()
		rep = s.zeroCopy(t, spec)
		d = diff(before, s.counters())
		t.Logf("after: %+v; datapath: %v", rep, d)
		if d.paired != 0 || d.pass[datapath.ReasonHazard] == 0 {
			t.Fatalf("after: a socket of a container learnt to send zerocopy was paired (or not counted): %v", d)
		}
		complete("after", rep)
		if rep.Completions != sends {
			t.Fatalf("after: %d completions for %d sends on plain TCP", rep.Completions, sends)
		}
	})
}

// zeroCopy runs a ModeZeroCopySend client to its end.
func (s *sidecarPod) zeroCopy(t *testing.T, spec testbed.PeerSpec) testbed.ZeroCopyReport {
	t.Helper()
	p := s.startClient(s.app, appUID, spec)
	s.waitBounded(p, "zerocopy sender")
	rep, err := testbed.ZeroCopySend(p)
	if err != nil {
		t.Fatal(err)
	}
	return rep
}
