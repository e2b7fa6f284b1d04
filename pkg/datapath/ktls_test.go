package datapath_test

import (
	"testing"

	"golang.org/x/sys/unix"

	"github.com/sockhop/sockhop/pkg/datapath"
	"github.com/sockhop/sockhop/pkg/testbed"
)

// kTLS receivers (docs/hazards.md). Kernel TLS decrypts records from TCP's
// queue; bytes redirected into the socket's psock bypass it, and
// tls_sw_recvmsg returns them as they are, as if they were plaintext. A
// server in an accelerated pod writes plain bytes and then a TLS record;
// its client in the same pod (an application, and a sidecar proxy) reads
// the plain bytes, turns kernel TLS on for receiving, and reads the record:
//
//   - paired: the connection is redirected by then; TCP_ULP is refused with
//     EOPNOTSUPP, as on a kernel without kTLS, and the client decrypts the
//     record itself, as a TLS library that does without kTLS does. The
//     container is learnt.
//   - after: a later connection of that container is not paired, and kTLS
//     works where the kernel has it (Debian's 6.12 in the kernel matrix;
//     this project's CI host has no tls module: TCP_ULP fails there with
//     ENOENT, and the client decrypts).
//
// SOCKHOP_HAZARD_DROP_GUARD=receiver-guard (the mechanism alone): TCP_ULP
// is accepted where the kernel has kTLS, and the client reads the record's
// ciphertext as plaintext; where it has not, TCP_ULP fails with ENOENT
// rather than EOPNOTSUPP. Either way the test fails.
func TestHazardKTLS(t *testing.T) {
	requireKernel(t)
	receivers(t, func(t *testing.T, uid int) {
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
	})
}
