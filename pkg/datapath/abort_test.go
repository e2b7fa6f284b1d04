package datapath_test

import (
	"errors"
	"fmt"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sockhop/sockhop/internal/needs"
	"github.com/sockhop/sockhop/pkg/datapath"
	"github.com/sockhop/sockhop/pkg/testbed"
)

// The abort probe tells what the kernel does: from Linux 6.5 (the kfunc
// bpf_sock_destroy for iter/tcp) it loads; before, it fails with a
// FeatureError naming the feature, which the agent reports and lives with.
func TestProbeAbort(t *testing.T) {
	requireKernel(t)
	err := datapath.ProbeAbort()
	var fe *datapath.FeatureError
	switch {
	case err == nil:
	case !errors.As(err, &fe):
		t.Fatalf("the probe failed without a FeatureError: %+v", err)
	case kernelAtLeast(t, 6, 5):
		t.Fatalf("Linux %s has bpf_sock_destroy, but the probe failed: %+v", release(t), err)
	default:
		t.Logf("Linux %s cannot abort, as expected before 6.5: %v", release(t), err)
	}
}

func release(t *testing.T) string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		t.Fatal(err)
	}
	return unix.ByteSliceToString(u.Release[:])
}

func kernelAtLeast(t *testing.T, major, minor int) bool {
	var maj, min int
	if _, err := fmt.Sscanf(release(t), "%d.%d", &maj, &min); err != nil {
		t.Fatalf("kernel release %q: %v", release(t), err)
	}
	return maj > major || maj == major && min >= minor
}

// abortBound is how long a stranded receiver may stay blocked: the issue's
// "an error both ends see within 1 s", with room for a loaded CI machine
// (and testbed.Patience's for an emulated one).
var abortBound = testbed.Patience(3 * time.Second)

// A receiver in a trusted pod (redirected into from its first byte) reads
// 1 MiB with read(2), then, with 1 MiB redirected and unread, starts a
// blocking splice: it is stranded. AbortStranded must turn that into an
// error both ends see: the splice fails (ECONNABORTED), the sender's read
// fails (reset), the abort is counted, the guard's record is gone — and
// two other connections alive at the time, one paired in the same pod and
// one unpaired in the same network namespace, are untouched and deliver
// every byte. SOCKHOP_HAZARD_DROP_GUARD=abort skips the abort: the splice
// then blocks until its 10 s receive timeout and the test fails.
func TestHazardStrandedAbort(t *testing.T) {
	requireKernel(t)
	receivers(t, func(t *testing.T, uid int) {
		if err := datapath.ProbeAbort(); err != nil {
			needs.Missing(t, "this kernel cannot abort: "+err.Error())
		}
		opts := datapath.Options{AppReceivers: true}
		dropped := dropAbort(t)
		s := newSidecarPod(t, opts, true, false)
		s.trustApp()
		// Not under the pod's cgroup: its sockets are never paired.
		outside := &pod{name: "outside", ns: s.app.ns}
		cg, err := s.bed.Cgroup("outside")
		if err != nil {
			t.Fatal(err)
		}
		outside.cgroup = cg

		// The bystanders: writers held back by stalled readers, alive
		// across the abort.
		type bystander struct {
			what   string
			reader *testbed.Peer
			writer *testbed.Peer
			bytes  int64
		}
		var bys []bystander
		for i, p := range []*pod{s.app, outside} {
			addr := []string{"127.0.0.1:7301", "127.0.0.1:7302"}[i]
			r := s.server(p, uid, testbed.PeerSpec{Mode: testbed.ModeStallSink, Listen: []string{addr}})
			spec := testbed.PeerSpec{Mode: testbed.ModeHold, Target: addr, Bytes: 16 << 20, MaxWrite: 64 << 10}
			w := s.startClient(p, appUID, spec)
			if _, err := testbed.WaitHeld(w, testbed.HazardDeadline()); err != nil {
				t.Fatalf("bystander in %s: %v", p.name, err)
			}
			bys = append(bys, bystander{"bystander in " + p.name, r, w, spec.Bytes})
		}

		before := s.counters()
		const seed = 77
		sink := s.server(s.app, uid, testbed.PeerSpec{Mode: testbed.ModeStrandSink, Listen: []string{"127.0.0.1:7300"}, Size: 1 << 20, Bytes: 2 << 20, Seed: seed})
		sender := s.startClient(s.app, appUID, testbed.PeerSpec{Mode: testbed.ModeStrandSend, Target: "127.0.0.1:7300", Bytes: 2 << 20, MaxWrite: 64 << 10, Seed: seed})

		// What the agent does: wait for the guard's record, find the
		// namespace, abort.
		var (
			strands []datapath.Strand
			aborted []datapath.Strand
		)
		end := time.Now().Add(testbed.HazardDeadline())
		for len(strands) == 0 {
			if time.Now().After(end) {
				t.Fatalf("the guard recorded no stranded receiver; sink: %s", sink.Stderr())
			}
			if strands, err = s.dp.Stranded(); err != nil {
				t.Fatal(err)
			}
			time.Sleep(10 * time.Millisecond)
		}
		if len(strands) != 1 {
			t.Fatalf("want one stranded receiver, got %+v", strands)
		}
		seen := time.Now()
		if !dropped {
			path, err := datapath.FindNetns(strands[0].Netns, []string{"/run/netns"}, nil)
			if err != nil {
				t.Fatal(err)
			}
			if aborted, err = s.dp.AbortStranded(path); err != nil {
				t.Fatalf("%+v", err)
			}
			t.Logf("aborted %+v in %v (from the guard's record: %v)", aborted, time.Since(seen), aborted[0].Waited)
		}

		// The receiver: its splice failed, soon.
		var sinkRep testbed.StrandSinkReport
		for ok := false; !ok; {
			if sinkRep, ok = testbed.StrandSink(sink); !ok {
				if time.Now().After(end) {
					t.Fatalf("the stranded receiver never returned from splice: %s", sink.Stderr())
				}
				time.Sleep(10 * time.Millisecond)
			}
		}
		sendRes := s.waitBounded(sender, "strand sender")
		sendRep, err := testbed.StrandSend(sender)
		if err != nil {
			t.Fatal(err)
		}
		d := diff(before, s.counters())
		t.Logf("receiver: %+v", sinkRep)
		t.Logf("sender: %+v (%v)", sendRep, sendRes.Errors)
		t.Logf("datapath: %v", d)
		if sinkRep.Error != "" {
			t.Fatalf("the stranded receiver could not run: %s", sinkRep.Error)
		}
		if sinkRep.Read != 1<<20 || sinkRep.Queued < 1<<20 {
			t.Fatalf("not stranded as planned: read %d, %d queued", sinkRep.Read, sinkRep.Queued)
		}
		if d.stranded != 1 {
			t.Fatalf("want one stranded receiver counted: %v", d)
		}
		if sinkRep.SpliceErrno != int(unix.ECONNABORTED) || sinkRep.Blocked > abortBound {
			t.Fatalf("the stranded receiver's splice returned %d (%s) after %v, want ECONNABORTED within %v",
				sinkRep.SpliceN, sinkRep.SpliceErr, sinkRep.Blocked, abortBound)
		}
		if sendRep.ReadErrno != int(unix.ECONNRESET) {
			t.Fatalf("the sender's read after the abort returned %q, want ECONNRESET", sendRep.ReadErr)
		}
		if sendRep.WriteErrno == 0 {
			t.Fatalf("the sender's writes after the reset all succeeded (%d)", sendRep.WritesAfter)
		}
		if len(aborted) != 1 || aborted[0].State != datapath.StrandAborted || aborted[0].Cgroup != inode(t, s.app.cgroup) {
			t.Fatalf("AbortStranded reported %+v, want one aborted receiver of cgroup %d", aborted, inode(t, s.app.cgroup))
		}
		if c := s.counters(); c.Aborted-before.Aborted != 1 {
			t.Fatalf("aborted counter moved by %d, want 1", c.Aborted-before.Aborted)
		}
		if left, err := s.dp.Stranded(); err != nil || len(left) != 0 {
			t.Fatalf("stranded receivers left after the abort: %+v %v", left, err)
		}

		// The bystanders were not touched.
		for _, b := range bys {
			if err := testbed.Resume(b.reader); err != nil {
				t.Fatal(err)
			}
			wantDelivered(t, b.what, s.waitBounded(b.writer, b.what), b.bytes)
		}
	})
}

// dropAbort: SOCKHOP_HAZARD_DROP_GUARD=abort shows what the abort prevents.
func dropAbort(t *testing.T) bool {
	if os.Getenv("SOCKHOP_HAZARD_DROP_GUARD") == "abort" {
		t.Log("ABORT DROPPED — this test is expected to fail")
		return true
	}
	return false
}

func inode(t *testing.T, path string) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// TestHazardStrandRace forces the race the guard's watch is for. A sender
// that read its receiver's guard flags just before the receiver's first
// splice set UNSAFE (nothing unread then, so the guard sees nothing
// stranded) queues its message behind that splice. The test plays that
// sender: with the splice blocked, it clears UNSAFE, lets the sender write
// 1 MiB more (redirected), and sets UNSAFE again. The watched receiver is
// then aborted like a stranded one. Not raced, the watch is cleared and
// the splice gets the sender's next bytes over TCP. Without the watch
// (or with SOCKHOP_HAZARD_DROP_GUARD=abort) the raced splice blocks until
// its receive timeout and the test fails.
func TestHazardStrandRace(t *testing.T) {
	requireKernel(t)
	for _, raced := range []bool{true, false} {
		name := "raced"
		if !raced {
			name = "not-raced"
		}
		t.Run(name, func(t *testing.T) {
			receivers(t, func(t *testing.T, uid int) {
				if err := datapath.ProbeAbort(); err != nil {
					needs.Missing(t, "this kernel cannot abort: "+err.Error())
				}
				strandRace(t, uid, raced)
			})
		})
	}
}

func strandRace(t *testing.T, uid int, raced bool) {
	dropped := dropAbort(t)
	s := newSidecarPod(t, datapath.Options{AppReceivers: true}, true, false)
	s.trustApp()
	const seed, first = 79, 1 << 20
	before := s.counters()
	// The receiver reads the first MiB with read(2), the last 64 KiB of
	// it redirected, then splices with nothing unread.
	sink := s.server(s.app, uid, testbed.PeerSpec{Mode: testbed.ModeStrandSink, Listen: []string{"127.0.0.1:7310"}, Size: first, Bytes: first, Seed: seed})
	sender := s.startClient(s.app, appUID, testbed.PeerSpec{Mode: testbed.ModeStrandSend, Target: "127.0.0.1:7310", Size: first, Bytes: 2 * first, MaxWrite: 64 << 10, Seed: seed})

	end := time.Now().Add(testbed.HazardDeadline())
	wait := func(what string, done func() (bool, error)) {
		t.Helper()
		for {
			ok, err := done()
			if err != nil {
				t.Fatal(err)
			}
			if ok {
				return
			}
			if time.Now().After(end) {
				t.Fatalf("%s: not after %v; sink: %s; sender: %s", what, testbed.HazardDeadline(), sink.Stderr(), sender.Stderr())
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	wait("the sender paused", func() (bool, error) { return testbed.StrandPaused(sender), nil })
	var watched datapath.Strand
	wait("the guard watches the splicing receiver", func() (bool, error) {
		list, err := s.dp.Stranded()
		for _, st := range list {
			if st.State == datapath.StrandWatch {
				watched = st
				return true, err
			}
		}
		return false, err
	})
	if d := diff(before, s.counters()); d.switches != 1 || d.stranded != 0 {
		t.Fatalf("not set up as planned (one direction switched to redirect before the splice, nothing stranded): %v", d)
	}

	// What the agent does, every DefaultAbortPeriod, until the watch is
	// decided: a young one is left for next time.
	path, err := datapath.FindNetns(watched.Netns, []string{"/run/netns"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var handled []datapath.Strand
	decide := func() {
		t.Helper()
		if dropped {
			return
		}
		wait("the watch decided", func() (bool, error) {
			var err error
			handled, err = s.dp.AbortStranded(path)
			return len(handled) != 0, err
		})
	}
	if !raced {
		// Decided while the splice blocks, then the sender goes on.
		decide()
		if err := testbed.Resume(sender); err != nil {
			t.Fatal(err)
		}
	} else {
		flags, err := s.dp.RxFlags(watched.Socket)
		if err != nil || flags&datapath.RxUnsafe == 0 {
			t.Fatalf("the watched receiver's guard flags: %#x, %v; want UNSAFE", flags, err)
		}
		if err := s.dp.SetRxFlags(watched.Socket, flags&^datapath.RxUnsafe); err != nil {
			t.Fatal(err)
		}
		if err := testbed.Resume(sender); err != nil {
			t.Fatal(err)
		}
		wait("the sender wrote the rest", func() (bool, error) { return testbed.StrandWritten(sender), nil })
		if flags, err = s.dp.RxFlags(watched.Socket); err == nil {
			err = s.dp.SetRxFlags(watched.Socket, flags|datapath.RxUnsafe)
		}
		if err != nil {
			t.Fatal(err)
		}
		decide()
	}

	var sinkRep testbed.StrandSinkReport
	wait("the receiver's splice returned", func() (bool, error) {
		var ok bool
		sinkRep, ok = testbed.StrandSink(sink)
		return ok, nil
	})
	t.Logf("handled %+v; receiver: %+v; datapath: %v", handled, sinkRep, diff(before, s.counters()))
	if sinkRep.Error != "" || sinkRep.Read != first {
		t.Fatalf("the receiver could not run as planned: read %d: %s", sinkRep.Read, sinkRep.Error)
	}
	if len(handled) != 1 || handled[0].Socket != watched.Socket || handled[0].Cgroup != inode(t, s.app.cgroup) {
		t.Fatalf("AbortStranded handled %+v, want the watched receiver %+v", handled, watched)
	}
	if left, err := s.dp.Stranded(); err != nil || len(left) != 0 {
		t.Fatalf("receivers left recorded: %+v %v", left, err)
	}
	d := diff(before, s.counters())
	if !raced {
		// The sender left for TCP on seeing UNSAFE: the splice got bytes.
		if handled[0].State != datapath.StrandClear || sinkRep.SpliceN <= 0 || d.stranded != 0 {
			t.Fatalf("not raced: handled %v, splice %d (%s), %v; want a cleared watch, bytes, nothing stranded",
				handled[0].State, sinkRep.SpliceN, sinkRep.SpliceErr, d)
		}
		return // the sender's writes fail once the sink closed
	}
	if handled[0].State != datapath.StrandAborted || d.stranded != 1 {
		t.Fatalf("raced: handled %v, %v; want the watched receiver aborted and counted stranded", handled[0].State, d)
	}
	if sinkRep.SpliceErrno != int(unix.ECONNABORTED) {
		t.Fatalf("the raced receiver's splice returned %d (%s) after %v, want ECONNABORTED", sinkRep.SpliceN, sinkRep.SpliceErr, sinkRep.Blocked)
	}
	if w := handled[0].Waited; w > abortBound {
		t.Fatalf("aborted %v after the guard's record, want within %v", w, abortBound)
	}
	s.waitBounded(sender, "strand sender")
	sendRep, err := testbed.StrandSend(sender)
	if err != nil {
		t.Fatal(err)
	}
	if sendRep.ReadErrno != int(unix.ECONNRESET) {
		t.Fatalf("the sender's read after the abort returned %q, want ECONNRESET", sendRep.ReadErr)
	}
	l, err := s.dp.Learnt()
	if err != nil {
		t.Fatal(err)
	}
	if l.Hazardous[inode(t, s.app.cgroup)]&datapath.SawStranded == 0 {
		t.Fatalf("the receiver's container is not learnt as stranded: %+v", l)
	}
}
