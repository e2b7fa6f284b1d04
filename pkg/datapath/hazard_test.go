package datapath_test

import (
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sockhop/sockhop/pkg/datapath"
	"github.com/sockhop/sockhop/pkg/testbed"
)

// The kernel hazards of sk_msg redirect (docs/hazards.md), each behind an
// accelerated Istio-style sidecar: a pod (network namespace + attached
// cgroup) whose inbound connections iptables REDIRECTs to a proxy on 15006
// (uid 1337), which connects to the application from 127.0.0.6; the
// client lives in another namespace across a veth. The application under
// test is its own process in the pod, uid appUID.
//
// Every test runs with the agent's default options (AppReceivers: every
// receiver may be redirected into, guarded), the receivers of the
// splice/MSG_WAITALL tests once as an application (uid 1000) and once as
// a sidecar proxy (uid 1337): the guard does not trust a uid.
// SOCKHOP_HAZARD_DROP_GUARD removes a guard to show that the tests then
// fail:
//
//	receiver-guard  redirect every direction from its first byte
//	backpressure    Options.BacklogLimit = -1 (unbounded)
//	both            both of them
//	abort           do not abort stranded receivers (TestHazardStrandedAbort)
//	syscall-guard   Options.NoSyscallGuard (no sys_enter, no io_uring tracepoint)

const (
	appUID      = 1000
	hazardBytes = 32 << 20
	// holdCap is how much a writer may queue before the back-pressure
	// tests stop writing: far above what TCP queues (a few MB).
	holdCap = 256 << 20
)

func hazardOptions(t testing.TB) datapath.Options {
	t.Helper()
	opts := datapath.Options{AppReceivers: true}
	switch g := os.Getenv("SOCKHOP_HAZARD_DROP_GUARD"); g {
	case "":
		return opts
	case "receiver-guard":
		opts.Unguarded = true
	case "backpressure":
		opts.BacklogLimit = -1
	case "both":
		opts.BacklogLimit = -1
		opts.Unguarded = true
	case "syscall-guard":
		opts.NoSyscallGuard = true
	case "abort":
		return opts // TestHazardStrandedAbort's
	default:
		t.Fatalf("SOCKHOP_HAZARD_DROP_GUARD=%q: want receiver-guard, backpressure, both, syscall-guard or abort", g)
	}
	t.Logf("GUARD DROPPED (%s) — this test is expected to fail", os.Getenv("SOCKHOP_HAZARD_DROP_GUARD"))
	return opts
}

// sidecarPod is a pod behind an Istio-style sidecar and a client pod.
type sidecarPod struct {
	*env
	app, client *pod
}

// newSidecarPod builds the pods; the app pod is attached when attach is
// set (else call attachApp later). outbound adds Istio's outbound rules
// and an outbound proxy on 15001.
func newSidecarPod(t *testing.T, opts datapath.Options, attach, outbound bool) *sidecarPod {
	e := newEnv(t, opts)
	s := &sidecarPod{env: e, app: e.pod("app", attach), client: e.pod("client", false)}
	e.link(s.app, s.client, "198.18.0.2", "198.18.0.1")
	istioInbound(e, s.app)
	e.proxy(s.app, testbed.PeerSpec{Listen: []string{"0.0.0.0:15006"}, Source: "127.0.0.6"})
	if outbound {
		istioOutbound(e, s.app)
		e.proxy(s.app, testbed.PeerSpec{Listen: []string{"0.0.0.0:15001"}})
	}
	return s
}

func (s *sidecarPod) attachApp() {
	s.t.Helper()
	if err := s.dp.Attach(s.app.cgroup, datapath.PodConfig{}); err != nil {
		s.t.Fatal(err)
	}
}

// trustApp makes the app pod's cgroup trusted, as a pod that has been
// running for a while is: a loopback stream inside the pod, read with
// plain reads all its life. Its new receivers are then redirected into
// from their first byte, before they read anything.
func (s *sidecarPod) trustApp() {
	s.t.Helper()
	s.server(s.app, 0, testbed.PeerSpec{Mode: testbed.ModeStream, Listen: []string{"127.0.0.1:7999"}})
	spec := testbed.PeerSpec{Mode: testbed.ModeStream, Target: "127.0.0.1:7999", Conns: 1, Parallel: 1, Bytes: 1 << 20, MaxWrite: 16 << 10}
	mustOK(s.t, s.env.client(s.app, 0, spec), 1, 1<<20)
	// Trust is learnt when a socket reaches TCP_CLOSE, which happens in
	// softirq after the peers' processes have exited (the last FIN and
	// ACK): on a loaded machine, a moment later.
	deadline := time.Now().Add(10 * time.Second)
	for {
		l, err := s.dp.Learnt()
		if err != nil {
			s.t.Fatal(err)
		}
		if len(l.Trusted) != 0 {
			return
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("the pod's cgroup is not trusted 10s after a stream read safely all its life: %+v", l)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitBounded waits for a client peer, turning a hang into a failure.
func (e *env) waitBounded(p *testbed.Peer, what string) testbed.Result {
	e.t.Helper()
	type outcome struct {
		res testbed.Result
		err error
	}
	done := make(chan outcome, 1)
	go func() {
		res, err := p.Wait()
		done <- outcome{res, err}
	}()
	limit := testbed.HazardDeadline() + 30*time.Second
	select {
	case o := <-done:
		if o.err != nil {
			e.t.Fatalf("%s: %v", what, o.err)
		}
		return o.res
	case <-time.After(limit):
		p.Stop()
		e.t.Fatalf("%s: client still running after %v (hung); its stderr: %s", what, limit, p.Stderr())
	}
	return testbed.Result{}
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

// wantDelivered fails unless every byte arrived in order, saying how much did.
func wantDelivered(t *testing.T, what string, res testbed.Result, want int64) {
	t.Helper()
	if err := res.Err(); err != nil || res.BytesVerified != want {
		t.Fatalf("%s delivered %s of %s in order (%d of %d bytes): %v", what, mib(res.BytesVerified), mib(want), res.BytesVerified, want, err)
	}
}

// wantGuarded checks that the receiver guard is what kept the hazardous
// reader safe: its connection was paired (so it could have been
// redirected into) and the guard saw the reader (unsafe receiver counted).
func wantGuarded(t *testing.T, d delta) {
	t.Helper()
	if d.paired == 0 || d.unsafeRx == 0 {
		t.Fatalf("the guard did not see the hazardous reader (nothing tested): %v", d)
	}
	t.Logf("datapath: %v", d)
}

// wantLearnt checks that the guard learnt the container's hazard, by the
// id of its cgroup (what the agent maps back to the pod for its Event).
func wantLearnt(t *testing.T, e *env, c *pod, want datapath.ReaderHazards) {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(c.cgroup, &st); err != nil {
		t.Fatal(err)
	}
	l, err := e.dp.Learnt()
	if err != nil {
		t.Fatal(err)
	}
	if got := l.Hazardous[st.Ino]; got&want != want {
		t.Fatalf("the guard did not learn %v of container %s (cgroup %d): %+v", want, c.name, st.Ino, l)
	}
}

// receivers runs fn with the hazardous reader as an application and as a
// sidecar proxy.
func receivers(t *testing.T, fn func(t *testing.T, uid int)) {
	for _, r := range []struct {
		name string
		uid  int
	}{{"app", appUID}, {"proxy-uid", istioProxyUID}} {
		t.Run(r.name, func(t *testing.T) { fn(t, r.uid) })
	}
}

// (a) A Go relay in the pod, io.Copy between two *net.TCPConn (splice),
// forwards a full-duplex checked stream from the client to an upstream
// server behind the outbound sidecar: app → proxy and proxy → app on both
// of its connections.
func TestHazardRelaySplice(t *testing.T) {
	requireKernel(t)
	receivers(t, func(t *testing.T, uid int) {
		s := newSidecarPod(t, hazardOptions(t), true, true)
		s.server(s.client, 0, testbed.PeerSpec{Mode: testbed.ModeStream, Listen: []string{"198.18.0.1:9000"}, Seed: 31})
		// The relay is its own container: learning that it splices keeps
		// its connections out, not the sidecar's.
		relay := s.container(s.app, "relay")
		s.server(relay, uid, testbed.PeerSpec{Mode: testbed.ModeRelay, Listen: []string{"0.0.0.0:8080"}, Target: "198.18.0.1:9000"})

		before := s.counters()
		spec := testbed.PeerSpec{
			Mode: testbed.ModeDeadlineStream, Target: "198.18.0.2:8080",
			Conns: 4, Parallel: 4, Bytes: hazardBytes, MaxWrite: 1 << 20, ExpectSeed: 31,
		}
		res := s.waitBounded(s.startClient(s.client, 0, spec), "relay client")
		wantDelivered(t, "the io.Copy relay", res, int64(spec.Conns)*spec.Bytes)
		d := diff(before, s.counters())
		// (Whether the other hops were redirected depends on whether
		// their bulk senders ever paused for their receivers to catch up:
		// not asserted.)
		wantGuarded(t, d)
		wantLearnt(t, s.env, relay, datapath.SawSplice)
	})
}

// (b) An application that reads with splice(2) into a pipe.
func TestHazardSplice(t *testing.T) {
	requireKernel(t)
	receivers(t, func(t *testing.T, uid int) {
		s := newSidecarPod(t, hazardOptions(t), true, false)
		reader := s.container(s.app, "reader")
		s.server(reader, uid, testbed.PeerSpec{Mode: testbed.ModeSpliceSink, Listen: []string{"0.0.0.0:8080"}})
		before := s.counters()
		spec := testbed.PeerSpec{Mode: testbed.ModeSendReport, Target: "198.18.0.2:8080", Bytes: hazardBytes, MaxWrite: 256 << 10}
		w := s.startClient(s.client, 0, spec)
		res := s.waitBounded(w, "splice client")
		wantDelivered(t, "the splice() reader", res, spec.Bytes)
		rep, err := testbed.Report(w)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("splice reader: %d splices", rep.Sink.Reads)
		wantGuarded(t, diff(before, s.counters()))
		wantLearnt(t, s.env, reader, datapath.SawSplice)
	})
}

// (c) An application that reads with blocking recv(100000, MSG_WAITALL)
// while the client writes 1 B to 64 KiB at a time: every read must return
// exactly 100000 bytes until the last (the remainder), then EOF.
func TestHazardWaitAll(t *testing.T) {
	requireKernel(t)
	receivers(t, func(t *testing.T, uid int) {
		s := newSidecarPod(t, hazardOptions(t), true, false)
		reader := s.container(s.app, "reader")
		s.server(reader, uid, testbed.PeerSpec{Mode: testbed.ModeWaitAllSink, Listen: []string{"0.0.0.0:8080"}, Size: 100000})
		before := s.counters()
		spec := testbed.PeerSpec{Mode: testbed.ModeSendReport, Target: "198.18.0.2:8080", Bytes: hazardBytes, MaxWrite: 64 << 10}
		w := s.startClient(s.client, 0, spec)
		res := s.waitBounded(w, "MSG_WAITALL client")
		rep, err := testbed.Report(w)
		if err != nil {
			t.Fatal(err)
		}
		wantDelivered(t, "the MSG_WAITALL reader", res, spec.Bytes)
		if want := int((spec.Bytes + 99999) / 100000); rep.Sink.Reads != want || rep.Sink.ShortReads != 0 {
			t.Fatalf("MSG_WAITALL reader: %d reads (%d short, first: %s), want %d full reads", rep.Sink.Reads, rep.Sink.ShortReads, rep.Sink.FirstShort, want)
		}
		t.Logf("MSG_WAITALL reader: %d full reads", rep.Sink.Reads)
		wantGuarded(t, diff(before, s.counters()))
		wantLearnt(t, s.env, reader, datapath.SawWaitAll)
	})
}

// holdRun is one back-pressure measurement.
type holdRun struct {
	held testbed.HazardReport // when the writer was held back
	rep  testbed.HazardReport // at the end
	res  testbed.Result
}

// hold starts a stalled reader, lets a non-blocking writer run until it is
// held back, resumes the reader, and checks that every byte arrives.
func (s *sidecarPod) hold(t *testing.T, what string, reader testbed.PeerSpec, readerPod *pod, readerUID int, writer testbed.PeerSpec, writerPod *pod, writerUID int) holdRun {
	t.Helper()
	r := s.server(readerPod, readerUID, reader)
	defer r.Stop() // the next run needs a reader that stalls again
	w := s.startClient(writerPod, writerUID, writer)
	held, err := testbed.WaitHeld(w, testbed.HazardDeadline())
	if err != nil {
		w.Stop()
		t.Fatalf("%s: %v", what, err)
	}
	if err := testbed.Resume(r); err != nil {
		t.Fatal(err)
	}
	run := holdRun{held: held, res: s.waitBounded(w, what)}
	if run.rep, err = testbed.Report(w); err != nil {
		t.Fatal(err)
	}
	wantDelivered(t, what+", after the reader resumed,", run.res, writer.Bytes)
	return run
}

// (d) Back-pressure: a writer whose reader stopped reading is held back as
// by TCP. Each case runs first without any attach (plain TCP), then with
// the pod attached and trusted (so that the stalled reader is redirected
// into from the first byte), side by side in one test; the writer queues
// at most the bound more than plain TCP lets it queue, then the reader
// resumes and every byte arrives in order.
func TestHazardBackpressure(t *testing.T) {
	requireKernel(t)
	opts := hazardOptions(t)
	writer := func(target string) testbed.PeerSpec {
		return testbed.PeerSpec{Mode: testbed.ModeHold, Target: target, Bytes: holdCap, MaxWrite: 64 << 10}
	}
	compare := func(t *testing.T, what string, plain, accel holdRun, d delta) {
		t.Helper()
		t.Logf("BACK-PRESSURE %s: writer held back after %s with plain TCP, after %s with sockhop (%.2f×; bound %s); then all %s arrived in order",
			what, mib(plain.held.Queued), mib(accel.held.Queued), float64(accel.held.Queued)/float64(plain.held.Queued), boundOf(opts), mib(holdCap))
		if !plain.held.Held {
			t.Fatalf("plain TCP did not hold the writer back after %s: the test cannot measure", mib(plain.held.Queued))
		}
		if !accel.held.Held {
			t.Fatalf("with sockhop the writer was never held back: %s queued without EAGAIN (plain TCP: %s)", mib(accel.held.Queued), mib(plain.held.Queued))
		}
		// At most the bound (plus the message that crossed it) on top of
		// what TCP queues alone.
		if limit := int64(opts.BacklogLimit); limit >= 0 {
			if limit == 0 {
				limit = datapath.DefaultBacklogLimit
			}
			if allowed := plain.held.Queued + limit + 1<<20; accel.held.Queued > allowed {
				t.Fatalf("with sockhop the writer queued %s before EAGAIN, more than plain TCP's %s + the %s bound", mib(accel.held.Queued), mib(plain.held.Queued), mib(limit))
			}
			// The stalled reader was redirected into (its cgroup is
			// trusted) until the bound tripped: the guard was tested.
			// (The small-message bound may trip first, when the proxy
			// relays in writes under 4 KiB.)
			if d.pass[datapath.ReasonBackpressure] == 0 || d.redirBytes == 0 {
				t.Fatalf("the bound never tripped (nothing tested): %v", d)
			}
		}
		if d.paired == 0 {
			t.Fatalf("the datapath paired nothing (nothing tested): %v", d)
		}
		t.Logf("datapath: %v", d)
	}

	// TCP's own figure is the yardstick, so it must be reproducible: on
	// 6.18 (tcp_rmem max 32 MiB) receive-buffer autotuning makes plain TCP
	// queue anywhere from 7 to 38 MiB in the app-stops chain, depending on
	// how fast the proxy read before it blocked. The pods' namespaces turn
	// autotuning off; runs with and without sockhop are alike otherwise.
	fixedBuffers := func(s *sidecarPod) {
		for _, p := range []*pod{s.app, s.client} {
			s.run(p.ns, "sysctl", "-qw", "net.ipv4.tcp_moderate_rcvbuf=0")
		}
	}

	// The app writes to a remote service through the outbound sidecar,
	// which stops reading it (its upstream is slow): app → proxy is
	// redirected, into a proxy-owned socket (uid 1337).
	t.Run("proxy-stops-reading", func(t *testing.T) {
		s := newSidecarPod(t, opts, false, false)
		fixedBuffers(s)
		istioOutbound(s.env, s.app)
		s.server(s.client, 0, testbed.PeerSpec{Mode: testbed.ModeReadSink, Listen: []string{"198.18.0.1:9000"}})
		proxy := testbed.PeerSpec{Mode: testbed.ModeStallProxy, Listen: []string{"0.0.0.0:15001"}}
		run := func(what string) holdRun {
			return s.hold(t, what, proxy, s.app, istioProxyUID, writer("198.18.0.1:9000"), s.app, appUID)
		}
		plain := run("plain TCP")
		s.attachApp()
		s.trustApp()
		before := s.counters()
		accel := run("sockhop")
		d := diff(before, s.counters())
		compare(t, "(proxy stops reading its client)", plain, accel, d)
	})

	// The client writes into the pod; the application behind the inbound
	// sidecar stops reading: proxy → app.
	t.Run("app-stops-reading", func(t *testing.T) {
		s := newSidecarPod(t, opts, false, false)
		fixedBuffers(s)
		app := testbed.PeerSpec{Mode: testbed.ModeStallSink, Listen: []string{"0.0.0.0:8080"}}
		run := func(what string) holdRun {
			return s.hold(t, what, app, s.app, appUID, writer("198.18.0.2:8080"), s.client, 0)
		}
		plain := run("plain TCP")
		s.attachApp()
		s.trustApp()
		before := s.counters()
		accel := run("sockhop")
		compare(t, "(application stops reading)", plain, accel, diff(before, s.counters()))
	})
}

func boundOf(o datapath.Options) string {
	switch {
	case o.BacklogLimit < 0:
		return "none"
	case o.BacklogLimit == 0:
		return mib(datapath.DefaultBacklogLimit)
	}
	return mib(int64(o.BacklogLimit))
}

// Observability: TCP_INFO (and so `ss -i`) does not count redirected
// bytes; sockhop's counters do. The app sends 2 MiB (below the
// back-pressure bound, so all of it is redirected) to a proxy-owned socket
// on loopback, first without attach, then accelerated (twice: see below).
func TestHazardTCPInfo(t *testing.T) {
	e := newEnv(t, datapath.Options{})
	p := e.pod("app", false)
	e.server(p, istioProxyUID, testbed.PeerSpec{Mode: testbed.ModeReadSink, Listen: []string{"127.0.0.1:7000"}})
	const size = 2 << 20
	send := func(what string) testbed.HazardReport {
		w := e.startClient(p, appUID, testbed.PeerSpec{Mode: testbed.ModeSendReport, Target: "127.0.0.1:7000", Bytes: size, MaxWrite: 64 << 10})
		wantDelivered(t, what, e.waitBounded(w, what), size)
		rep, err := testbed.Report(w)
		if err != nil {
			t.Fatal(err)
		}
		return rep
	}
	plain := send("plain TCP")
	if err := e.dp.Attach(p.cgroup, datapath.PodConfig{}); err != nil {
		t.Fatal(err)
	}
	// The first accelerated connection starts on TCP until the receiver
	// has been seen reading; once it closed, read safely all its life,
	// the receiver's cgroup is trusted and the next connection is
	// redirected from its first byte (docs/datapath.md).
	send("sockhop, first connection")
	before := e.counters()
	accel := send("sockhop")
	d := diff(before, e.counters())
	t.Logf("TCP_INFO after %s app → proxy: plain TCP sender bytes_sent=%d bytes_acked=%d, receiver bytes_received=%d; "+
		"accelerated sender bytes_sent=%d bytes_acked=%d, receiver bytes_received=%d; sockhop redirected_bytes +%d",
		mib(size), plain.TCPInfo.BytesSent, plain.TCPInfo.BytesAcked, plain.Sink.TCPInfo.BytesReceived,
		accel.TCPInfo.BytesSent, accel.TCPInfo.BytesAcked, accel.Sink.TCPInfo.BytesReceived, d.redirBytes)
	if plain.TCPInfo.BytesAcked < size || plain.Sink.TCPInfo.BytesReceived < size {
		t.Fatalf("plain TCP: TCP_INFO should count all %d bytes: %+v / %+v", size, plain.TCPInfo, plain.Sink.TCPInfo)
	}
	if d.redirBytes < size {
		t.Fatalf("sockhop's counters should count the %d redirected bytes: %v", size, d)
	}
	if accel.TCPInfo.BytesSent >= size/16 || accel.Sink.TCPInfo.BytesReceived >= size/16 {
		t.Fatalf("TCP_INFO counts redirected bytes after all (sender %+v, receiver %+v): docs/hazards.md is wrong for this kernel", accel.TCPInfo, accel.Sink.TCPInfo)
	}
}

// BenchmarkGuardCost measures what the guards cost on the hot path:
// ping-pong p50 at 64 B and 64 KiB, client and echo server on one CPU, the
// app (uid 1000) and a proxy-owned echo server (uid 1337), with the default
// options, the mechanism without the receiver guard, without the bound
// too, and with proxy receivers only (and, for reference, without attach).
// Rounds alternate the configurations; each figure is the median of the
// rounds' p50s. Run: go test -run '^$' -bench GuardCost -benchtime 1x ./pkg/datapath
func BenchmarkGuardCost(b *testing.B) {
	requireKernel(b)
	configs := []struct {
		name   string
		opts   datapath.Options
		attach bool
	}{
		{"off", datapath.Options{}, false},
		{"default", datapath.Options{AppReceivers: true}, true},
		{"mechanism", datapath.Options{AppReceivers: true, Unguarded: true}, true},
		{"unbounded", datapath.Options{AppReceivers: true, Unguarded: true, BacklogLimit: -1}, true},
		{"proxy-only", datapath.Options{}, true},
	}
	type setup struct {
		e *env
		p *pod
	}
	setups := make([]setup, len(configs))
	for i, c := range configs {
		e := newEnv(b, c.opts)
		p := e.pod("app", c.attach)
		e.server(p, istioProxyUID, testbed.PeerSpec{Mode: testbed.ModeEcho, Listen: []string{"127.0.0.1:7100"}, CPUs: "0"})
		setups[i] = setup{e, p}
	}
	sizes := []struct {
		size, iters int
		label       string
	}{{64, 10000, "64B"}, {64 << 10, 2000, "64KiB"}}
	const rounds = 5
	p50s := map[string][]float64{}
	for r := 0; r < rounds; r++ {
		for i, c := range configs {
			for _, sz := range sizes {
				res := setups[i].e.client(setups[i].p, appUID, testbed.PeerSpec{
					Mode: testbed.ModePingPong, Target: "127.0.0.1:7100", Size: sz.size, Iterations: sz.iters, CPUs: "0",
				})
				if err := res.Err(); err != nil {
					b.Fatal(err)
				}
				lat := slices.Clone(res.LatenciesNs)
				slices.Sort(lat)
				key := c.name + "/" + sz.label
				p50s[key] = append(p50s[key], float64(lat[len(lat)/2])/1000)
			}
		}
	}
	median := func(v []float64) float64 {
		v = slices.Clone(v)
		slices.Sort(v)
		return v[len(v)/2]
	}
	var tab strings.Builder
	fmt.Fprintf(&tab, "ping-pong p50 (µs), one CPU, median of %d rounds:\n%-16s %8s %8s\n", rounds, "config", "64B", "64KiB")
	for _, c := range configs {
		fmt.Fprintf(&tab, "%-16s", c.name)
		for _, sz := range sizes {
			m := median(p50s[c.name+"/"+sz.label])
			fmt.Fprintf(&tab, " %8.2f", m)
			b.ReportMetric(m, "µs-p50-"+c.name+"-"+sz.label)
		}
		tab.WriteString("\n")
	}
	for _, sz := range sizes {
		for _, d := range []struct{ what, with, without string }{
			{"receiver guard", "default", "mechanism"}, {"bound", "mechanism", "unbounded"},
		} {
			w, wo := median(p50s[d.with+"/"+sz.label]), median(p50s[d.without+"/"+sz.label])
			fmt.Fprintf(&tab, "%s cost at %s: %+.2f µs (%+.1f%%)\n", d.what, sz.label, w-wo, 100*(w-wo)/wo)
		}
	}
	b.Log("\n" + tab.String())
}

// BenchmarkNodeSyscallCost measures what the receive-side tracepoints cost
// every process on the node, attached pod or not: a getppid(2) loop with no
// sockhop loaded, with the default datapath and a pod attached (the
// syscall guard on kernel functions where the kernel runs fentry programs,
// else the per-syscall tracepoints; and sock_recv_length), with the
// per-syscall tracepoints (SyscallGuardTracepoints), with the syscall guard
// as sys_enter (SyscallGuardBTF), with NoSyscallGuard, and with no pod
// attached. Run: go test -run '^$' -bench
// NodeSyscallCost ./pkg/datapath
func BenchmarkNodeSyscallCost(b *testing.B) {
	requireKernel(b)
	loop := func(b *testing.B) {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			unix.Getppid()
		}
	}
	b.Run("no-sockhop", loop)
	for _, c := range []struct {
		name string
		opts datapath.Options
	}{
		{"default", datapath.Options{AppReceivers: true}},
		{"syscall-guard-tracepoints", datapath.Options{AppReceivers: true, SyscallGuardTracepoints: true}},
		{"syscall-guard-sys_enter", datapath.Options{AppReceivers: true, SyscallGuardBTF: true}},
		{"no-syscall-guard", datapath.Options{AppReceivers: true, NoSyscallGuard: true}},
	} {
		b.Run(c.name, func(b *testing.B) {
			withIdlePod(b, c.opts)
			loop(b)
		})
	}
	b.Run("default-no-pod-attached", func(b *testing.B) {
		newEnv(b, datapath.Options{AppReceivers: true})
		loop(b)
	})
}

// withIdlePod loads a datapath with an attached pod that runs nothing: the
// node-wide tracepoints are attached only while a pod is (guards.go).
func withIdlePod(b *testing.B, opts datapath.Options) {
	b.Helper()
	e := newEnv(b, opts)
	e.pod("idle", true)
	if !e.dp.GuardsAttached() {
		b.Fatal("a pod is attached, but the node-wide tracepoints are not")
	}
}

// BenchmarkNodeSocketCost measures what the node-wide tracepoints cost a TCP
// connection of a process in no attached pod: a 64-byte ping-pong over
// loopback (sys_enter, sock_recv_length and sk_data_ready run for every
// message) and a connect, accept and close loop (inet_sock_set_state), with
// no sockhop loaded, with the default datapath and a pod attached elsewhere
// on the node, without the syscall guard, and with no pod attached. Run: go test -run '^$'
// -bench NodeSocketCost ./pkg/datapath
func BenchmarkNodeSocketCost(b *testing.B) {
	requireKernel(b)
	listen := func(b *testing.B, serve func(net.Conn)) net.Listener {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { ln.Close() })
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go serve(c)
			}
		}()
		return ln
	}
	pingpong := func(b *testing.B) {
		ln := listen(b, func(c net.Conn) {
			defer c.Close()
			io.Copy(c, c)
		})
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		buf := make([]byte, 64)
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if _, err := c.Write(buf); err != nil {
				b.Fatal(err)
			}
			if _, err := io.ReadFull(c, buf); err != nil {
				b.Fatal(err)
			}
		}
	}
	connect := func(b *testing.B) {
		ln := listen(b, func(c net.Conn) { c.Close() })
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			c, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				b.Fatal(err)
			}
			c.Read(make([]byte, 1)) // until the server closed
			c.Close()
		}
	}
	for _, c := range []struct {
		name string
		opts *datapath.Options
	}{
		{"no-sockhop", nil},
		{"default", &datapath.Options{AppReceivers: true}},
		{"syscall-guard-tracepoints", &datapath.Options{AppReceivers: true, SyscallGuardTracepoints: true}},
		{"syscall-guard-sys_enter", &datapath.Options{AppReceivers: true, SyscallGuardBTF: true}},
		{"no-syscall-guard", &datapath.Options{AppReceivers: true, NoSyscallGuard: true}},
	} {
		b.Run(c.name, func(b *testing.B) {
			if c.opts != nil {
				withIdlePod(b, *c.opts)
			}
			b.Run("pingpong-64B", pingpong)
			b.Run("connect-close", connect)
		})
	}
	b.Run("default-no-pod-attached", func(b *testing.B) {
		newEnv(b, datapath.Options{AppReceivers: true})
		b.Run("pingpong-64B", pingpong)
		b.Run("connect-close", connect)
	})
}
