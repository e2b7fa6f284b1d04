package datapath_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sockhop/sockhop/pkg/datapath"
	"github.com/sockhop/sockhop/pkg/testbed"
)

// MSG_ZEROCOPY senders (docs/hazards.md). A socket in the sockhash sends
// through tcp_bpf_sendmsg, which copies the data: a redirected zerocopy
// send never raises the completion its sender waits for before it reuses
// the buffer, and one passed to TCP takes a completion id per chunk of the
// copy. An application (uid 1000) in an accelerated pod sends to a sink in
// the same pod, run as an application and as a sidecar proxy:
//
//   - early: SO_ZEROCOPY before connect. The connection is not paired, and
//     every zerocopy send completes, one id each.
//   - late: SO_ZEROCOPY on a connection already redirected. It is refused
//     with EOPNOTSUPP, as for a socket that cannot do zerocopy; the sender
//     falls back to plain sends, which all arrive. The container is learnt.
//   - after: a later connection of that container, SO_ZEROCOPY late: not
//     paired (the learnt hazard), so SO_ZEROCOPY is accepted, and every
//     send completes, one id each.
//   - listener (a fresh pod): a server whose listener has SO_ZEROCOPY, which
//     its accepted sockets inherit: its connections are not paired (the
//     client, which joined first, is taken back out: the sockhash is empty
//     while they are open), and a stream through one arrives intact.
//
// SOCKHOP_HAZARD_DROP_GUARD=receiver-guard (the mechanism alone): the late
// SO_ZEROCOPY is accepted, the zerocopy sends are redirected, none
// completes, and the test fails.
func TestHazardZeroCopySend(t *testing.T) {
	requireKernel(t)
	receivers(t, func(t *testing.T, uid int) {
		s := newSidecarPod(t, hazardOptions(t), true, false)
		s.server(s.app, uid, testbed.PeerSpec{Mode: testbed.ModeSink, Listen: []string{"127.0.0.1:7400"}})
		const sends = 16
		spec := testbed.PeerSpec{Mode: testbed.ModeZeroCopySend, Target: "127.0.0.1:7400", Iterations: sends, MaxWrite: 64 << 10}
		delivered := func(what string, rep testbed.ZeroCopyReport) {
			t.Helper()
			if rep.Error != "" || rep.SendErrno != 0 || rep.SockErrno != 0 || rep.Received != rep.Written {
				t.Fatalf("%s: wrote %d bytes, the sink counted %d (%+v)", what, rep.Written, rep.Received, rep)
			}
		}
		completed := func(what string, rep testbed.ZeroCopyReport) {
			t.Helper()
			if rep.SockoptErrno != 0 || rep.Sends != sends || rep.Completions != sends {
				t.Fatalf("%s: %d completions for %d zerocopy sends in %v (%+v), want %d", what, rep.Completions, rep.Sends, rep.Waited, rep, sends)
			}
			delivered(what, rep)
		}

		before := s.counters()
		rep := s.zeroCopy(t, spec)
		d := diff(before, s.counters())
		t.Logf("early: %+v; datapath: %v", rep, d)
		if d.paired != 0 || d.pass[datapath.ReasonZeroCopy] != 1 {
			t.Fatalf("early: a socket with SO_ZEROCOPY was paired (or not counted): %v", d)
		}
		completed("early", rep)

		spec.Size = 64 << 10
		before = s.counters()
		rep = s.zeroCopy(t, spec)
		after := s.counters()
		d = diff(before, after)
		t.Logf("late: %+v; datapath: %v", rep, d)
		if d.paired != 2 || d.switches == 0 || d.redirBytes == 0 {
			t.Fatalf("late: the connection was never redirected (nothing tested): %v", d)
		}
		if rep.SockoptErrno != int(unix.EOPNOTSUPP) || after.ZeroCopyRefused-before.ZeroCopyRefused != 1 {
			t.Fatalf("late: setsockopt(SO_ZEROCOPY) on a paired socket returned errno %d (refusals counted: %d), want EOPNOTSUPP, once (%+v)",
				rep.SockoptErrno, after.ZeroCopyRefused-before.ZeroCopyRefused, rep)
		}
		delivered("late", rep)
		wantLearnt(t, s.env, s.app, datapath.SawZeroCopySend)

		before = s.counters()
		rep = s.zeroCopy(t, spec)
		d = diff(before, s.counters())
		t.Logf("after: %+v; datapath: %v", rep, d)
		if d.paired != 0 || d.pass[datapath.ReasonHazard] == 0 {
			t.Fatalf("after: a socket of a container learnt to enable zerocopy was paired (or not counted): %v", d)
		}
		completed("after", rep)
	})

	t.Run("listener", func(t *testing.T) {
		e := newEnv(t, hazardOptions(t))
		p := e.pod("app", true)
		e.server(p, appUID, testbed.PeerSpec{Mode: testbed.ModeEcho, Listen: []string{"127.0.0.1:7401"}, ZeroCopy: true})
		e.server(p, appUID, testbed.PeerSpec{Mode: testbed.ModeStream, Listen: []string{"127.0.0.1:7402"}, ZeroCopy: true})
		before := e.counters()
		held := e.startClient(p, appUID, testbed.PeerSpec{Mode: testbed.ModeConnHold, Target: "127.0.0.1:7401", Conns: 4, Parallel: 4, Size: 16})
		if err := testbed.WaitConnsHeld(held, testbed.Patience(10*time.Second)); err != nil {
			t.Fatal(err)
		}
		n, err := e.dp.Sockets()
		if err != nil {
			t.Fatal(err)
		}
		d := diff(before, e.counters())
		t.Logf("held: %d sockets in the sockhash; datapath: %v", n, d)
		if n != 0 || d.pass[datapath.ReasonZeroCopy] != 4 {
			t.Fatalf("4 connections to a listener with SO_ZEROCOPY, open: %d sockets in the sockhash, %d counted (want 0 and 4)", n, d.pass[datapath.ReasonZeroCopy])
		}
		if err := testbed.Resume(held); err != nil {
			t.Fatal(err)
		}
		if _, err := held.Wait(); err != nil {
			t.Fatal(err)
		}
		before = e.counters()
		mustOK(t, e.client(p, appUID, testbed.PeerSpec{Mode: testbed.ModeStream, Target: "127.0.0.1:7402", Conns: 1, Parallel: 1, Bytes: 4 << 20, MaxWrite: 64 << 10}), 1, 4<<20)
		if d := diff(before, e.counters()); d.redirBytes != 0 || d.pass[datapath.ReasonZeroCopy] != 1 {
			t.Fatalf("a stream to a listener with SO_ZEROCOPY was redirected (or not counted): %v", d)
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

// Each attached pod has a setsockopt link next to its sockops link. A pod
// attached by a sockhop from before that program has none: the next Load
// attaches it, and it refuses SO_ZEROCOPY on a paired socket. Detach takes
// it away.
func TestLoadAttachesTheSockoptLink(t *testing.T) {
	e := newEnv(t, datapath.Options{AppReceivers: true})
	p := e.pod("app", true)
	pin := filepath.Join(e.pinDir, "links", fmt.Sprintf("sockopt-%d", inode(t, p.cgroup)))
	if _, err := os.Stat(pin); err != nil {
		t.Fatalf("attached, but no setsockopt link: %v", err)
	}
	if err := os.Remove(pin); err != nil { // as an older sockhop left the pod
		t.Fatal(err)
	}
	e.reload(t, e.opts)
	if _, err := os.Stat(pin); err != nil {
		t.Fatalf("after Load, no setsockopt link: %v", err)
	}
	e.server(p, appUID, testbed.PeerSpec{Mode: testbed.ModeSink, Listen: []string{"127.0.0.1:7403"}})
	c := e.startClient(p, appUID, testbed.PeerSpec{Mode: testbed.ModeZeroCopySend, Target: "127.0.0.1:7403", Size: 64 << 10, Iterations: 4, MaxWrite: 64 << 10})
	if _, err := c.Wait(); err != nil {
		t.Fatal(err)
	}
	rep, err := testbed.ZeroCopySend(c)
	if err != nil {
		t.Fatal(err)
	}
	if rep.SockoptErrno != int(unix.EOPNOTSUPP) || rep.Received != rep.Written {
		t.Fatalf("after Load, SO_ZEROCOPY on a paired socket: errno %d, want EOPNOTSUPP; %+v", rep.SockoptErrno, rep)
	}
	if err := e.dp.Detach(p.cgroup); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(pin); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("detached, but the setsockopt link is still pinned: %v", err)
	}
}
