package datapath_test

import (
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sockhop/sockhop/pkg/datapath"
	"github.com/sockhop/sockhop/pkg/testbed"
)

// kTLS (docs/hazards.md). Kernel TLS decrypts records from TCP's queue
// and encrypts before TCP; redirected bytes bypass both. Debian's 6.12
// accepts TCP_ULP "tls" on a socket in a sockmap and then refuses its keys
// (EINVAL): kTLS is lost for every paired connection. A server and its
// client in an accelerated pod exchange plain bytes, then one TLS record;
// one end turns kTLS on between the two (rx: the client, for receiving;
// tx: the server, for sending), as a TLS library does after its handshake,
// run as an application and as a sidecar proxy:
//
//   - paired: the connection is redirected by then; TCP_ULP is refused with
//     EOPNOTSUPP, as on a kernel without kTLS, and the peers seal and open
//     the record themselves, as a TLS library that does without kTLS does:
//     intact. The container is learnt.
//   - after: a later connection of that container is not paired, and kTLS
//     works where the kernel has it (Debian's 6.12 in the kernel matrix:
//     the kernel decrypts or encrypts the record; this project's CI host has
//     no tls module: TCP_ULP fails there with ENOENT, and the peers do it).
//
// SOCKHOP_HAZARD_DROP_GUARD=receiver-guard (the mechanism alone): TCP_ULP
// is accepted on the paired socket (6.12; ENOENT on the CI host) and the
// later connection is paired as well, without kTLS: the test fails.
func TestHazardKTLS(t *testing.T) {
	requireKernel(t)
	t.Run("rx", func(t *testing.T) { receivers(t, ktlsReceiver) })
	t.Run("tx", func(t *testing.T) { receivers(t, ktlsSender) })
}

func ktlsReceiver(t *testing.T, uid int) {
	{
		s := newSidecarPod(t, hazardOptions(t), true, false)
		s.server(s.app, appUID, testbed.PeerSpec{Mode: testbed.ModeTLSRecords, Listen: []string{"127.0.0.1:7500"}, Size: 64 << 10})
		spec := testbed.PeerSpec{Mode: testbed.ModeKTLSRecv, Target: "127.0.0.1:7500", Size: 64 << 10}
		recv := func() testbed.KTLSReport {
			t.Helper()
			p := s.startClient(s.app, uid, spec)
			s.waitBounded(p, "kTLS receiver")
			rep, err := testbed.KTLSRecv(p)
			if err != nil {
				t.Fatal(err)
			}
			if rep.Error != "" {
				t.Fatalf("the kTLS receiver could not run: %s", rep.Error)
			}
			return rep
		}

		before := s.counters()
		rep := recv()
		after := s.counters()
		d := diff(before, after)
		t.Logf("paired: %+v; datapath: %v", rep, d)
		if d.paired != 2 || d.switches == 0 || d.redirBytes == 0 {
			t.Fatalf("paired: the connection was never redirected (nothing tested): %v", d)
		}
		if !rep.Intact {
			t.Fatalf("paired: the receiver read %x... instead of the record's plaintext (kernel TLS: %v)", rep.Got, rep.Kernel)
		}
		if rep.ULPErrno != int(unix.EOPNOTSUPP) || after.ULPRefused-before.ULPRefused != 1 {
			t.Fatalf("paired: setsockopt(TCP_ULP) on a paired socket returned errno %d (refusals counted: %d), want EOPNOTSUPP, once",
				rep.ULPErrno, after.ULPRefused-before.ULPRefused)
		}
		wantLearnt(t, s.env, s.app, datapath.SawULP)

		before = s.counters()
		rep = recv()
		d = diff(before, s.counters())
		t.Logf("after: %+v; datapath: %v", rep, d)
		if d.paired != 0 || d.pass[datapath.ReasonHazard] == 0 {
			t.Fatalf("after: a socket of a container learnt to set kTLS was paired (or not counted): %v", d)
		}
		if !rep.Intact {
			t.Fatalf("after: the receiver read %x... instead of the record's plaintext (kernel TLS: %v)", rep.Got, rep.Kernel)
		}
		// This kernel's own answer: kTLS, or no tls module.
		if rep.ULPErrno == 0 && !rep.Kernel || rep.ULPErrno != 0 && rep.ULPErrno != int(unix.ENOENT) {
			t.Fatalf("after: kernel TLS on an unpaired socket: TCP_ULP errno %d, TLS_RX errno %d", rep.ULPErrno, rep.RxErrno)
		}
	}
}

// ktlsSender: the server turns kernel TLS on for sending (TLS_TX) and its
// client, as uid, opens the record itself. Without the guard kTLS would
// run the sk_msg program on the plaintext, before encryption.
func ktlsSender(t *testing.T, uid int) {
	s := newSidecarPod(t, hazardOptions(t), true, false)
	step := func(what, addr string) (testbed.KTLSReport, testbed.KTLSReport, delta, datapath.Counters, datapath.Counters) {
		t.Helper()
		srv := s.server(s.app, appUID, testbed.PeerSpec{Mode: testbed.ModeKTLSSend, Listen: []string{addr}, Size: 64 << 10})
		before := s.counters()
		p := s.startClient(s.app, uid, testbed.PeerSpec{Mode: testbed.ModeRecordRecv, Target: addr, Size: 64 << 10})
		s.waitBounded(p, "record receiver")
		after := s.counters()
		rep, err := testbed.KTLSRecv(p)
		if err != nil {
			t.Fatal(err)
		}
		var srep testbed.KTLSReport
		for end := time.Now().Add(testbed.Patience(10 * time.Second)); ; time.Sleep(10 * time.Millisecond) {
			if srep, err = testbed.KTLSRecv(srv); err == nil {
				break
			}
			if time.Now().After(end) {
				t.Fatal(err)
			}
		}
		d := diff(before, after)
		t.Logf("%s: sender %+v, receiver %+v; datapath: %v", what, srep, rep, d)
		if rep.Error != "" || srep.Error != "" {
			t.Fatalf("%s: the peers could not run: %s / %s", what, srep.Error, rep.Error)
		}
		if !rep.Intact {
			t.Fatalf("%s: the receiver read %x... instead of the record (kernel TLS sender: %v)", what, rep.Got, srep.Kernel)
		}
		return srep, rep, d, before, after
	}
	srep, _, d, before, after := step("paired", "127.0.0.1:7501")
	if d.paired != 2 || d.switches == 0 || d.redirBytes == 0 {
		t.Fatalf("paired: the connection was never redirected (nothing tested): %v", d)
	}
	if srep.ULPErrno != int(unix.EOPNOTSUPP) || after.ULPRefused-before.ULPRefused != 1 {
		t.Fatalf("paired: setsockopt(TCP_ULP) on a paired socket returned errno %d (refusals counted: %d), want EOPNOTSUPP, once",
			srep.ULPErrno, after.ULPRefused-before.ULPRefused)
	}
	wantLearnt(t, s.env, s.app, datapath.SawULP)
	srep, _, d, _, _ = step("after", "127.0.0.1:7502")
	if d.paired != 0 || d.pass[datapath.ReasonHazard] == 0 {
		t.Fatalf("after: a socket of a container learnt to set kTLS was paired (or not counted): %v", d)
	}
	if srep.ULPErrno == 0 && !srep.Kernel || srep.ULPErrno != 0 && srep.ULPErrno != int(unix.ENOENT) {
		t.Fatalf("after: kernel TLS on an unpaired socket: TCP_ULP errno %d, TLS_TX errno %d", srep.ULPErrno, srep.RxErrno)
	}
}
