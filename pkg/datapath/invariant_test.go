package datapath_test

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sockhop/sockhop/pkg/datapath"
	"github.com/sockhop/sockhop/pkg/testbed"
)

// Exact peer: two pods use identical 127.0.0.1 ports at the same time,
// 1000 connections each; each server's stream carries its identity, so a
// single byte delivered across would fail a client's check.
func TestExactPeerSamePortsInTwoPods(t *testing.T) {
	e := newEnv(t, datapath.Options{AppReceivers: true})
	pods := []*pod{e.pod("one", true), e.pod("two", true)}
	before := e.counters()
	var clients []*testbed.Peer
	for i, p := range pods {
		seed := uint64(1000 + i)
		e.server(p, 0, testbed.PeerSpec{Mode: testbed.ModeStream, Listen: []string{"127.0.0.1:9000"}, Seed: seed})
		clients = append(clients, e.startClient(p, 0, testbed.PeerSpec{
			Mode: testbed.ModeStream, Target: "127.0.0.1:9000", SourcePort: 20000,
			Conns: 1000, Parallel: 32, Bytes: 16 << 10, MaxWrite: 4 << 10, ExpectSeed: seed,
		}))
	}
	for _, c := range clients {
		res, err := c.Wait()
		if err != nil {
			t.Fatal(err)
		}
		mustOK(t, res, 1000, 16<<10)
	}
	d := diff(before, e.counters())
	// A burst of connections at the start may close before any switched
	// (their receivers not yet seen reading): 16 in a row make the next
	// ones short-lived until one in 16 redirects (TestShortLivedNotPaired).
	// Those are not paired at either end; every other one is, exactly.
	short := d.pass[datapath.ReasonShortLived]
	if d.paired+2*short != 4000 || d.pass[datapath.ReasonNoClient] != short || d.paired < 3800 || d.pass[datapath.ReasonAmbiguous] != 0 {
		t.Fatalf("want all 2000 connections paired (but for a few short-lived), none ambiguous: %v", d)
	}
}

// One path per direction: a connection whose first bytes went through TCP
// is never redirected later. TCP_DEFER_ACCEPT makes the server end complete
// its handshake only when the client's first data arrives (the delayed
// passive side), so the client's first send always finds no peer: that
// direction stays on TCP, and the server end, which has received data by
// then, never joins the sockhash.
func TestFirstBytesThroughTCPStayOnTCP(t *testing.T) {
	e := newEnv(t, datapath.Options{AppReceivers: true})
	p := e.pod("app", true)
	e.server(p, 0, testbed.PeerSpec{Mode: testbed.ModeStream, Listen: []string{"127.0.0.1:8080"}, DeferAccept: true})
	before := e.counters()
	spec := testbed.PeerSpec{Mode: testbed.ModeStream, Target: "127.0.0.1:8080", Conns: 8, Parallel: 4, Bytes: 4 << 20, MaxWrite: 64 << 10}
	mustOK(t, e.client(p, 0, spec), spec.Conns, spec.Bytes)
	d := diff(before, e.counters())
	n := uint64(spec.Conns)
	if d.pass[datapath.ReasonNoPeer] != n || d.pass[datapath.ReasonDataFlowed] != n || d.paired != n || d.redirBytes != 0 {
		t.Fatalf("want each client switched to TCP at its first send and no server end paired after data: %v", d)
	}
}

// A connection established before its pod was attached stays on TCP, and
// loses nothing while the attach happens under it.
func TestAttachMidStream(t *testing.T) {
	e := newEnv(t, datapath.Options{AppReceivers: true})
	p := e.pod("app", false)
	e.server(p, 0, testbed.PeerSpec{Mode: testbed.ModeStream, Listen: []string{"127.0.0.1:8080"}})
	before := e.counters()
	spec := testbed.PeerSpec{Mode: testbed.ModeStream, Target: "127.0.0.1:8080", Conns: 2, Parallel: 2, Bytes: 256 << 20, MaxWrite: 1 << 20}
	c := e.startClient(p, 0, spec)
	waitEstablished(t, p, 8080, spec.Conns)
	if err := e.dp.Attach(p.cgroup, datapath.PodConfig{}); err != nil {
		t.Fatal(err)
	}
	res, err := c.Wait()
	if err != nil {
		t.Fatal(err)
	}
	mustOK(t, res, spec.Conns, spec.Bytes)
	if d := diff(before, e.counters()); d.paired != 0 || d.redirBytes != 0 {
		t.Fatalf("connections from before the attach must stay on TCP: %v", d)
	}
}

// Only pairable sockets enter the sockhash: an attached pod's connections to
// peers outside the node's accelerated pods never do.
func TestRemotePeersNeverEnterSockhash(t *testing.T) {
	e := newEnv(t, datapath.Options{AppReceivers: true})
	app, remote := e.pod("app", true), e.pod("remote", false)
	e.link(app, remote, "198.18.0.2", "198.18.0.1")
	e.server(remote, 0, testbed.PeerSpec{Mode: testbed.ModeStream, Listen: []string{"198.18.0.1:80"}})
	before := e.counters()
	spec := testbed.PeerSpec{Mode: testbed.ModeStream, Target: "198.18.0.1:80", Conns: 4, Parallel: 4, Bytes: 64 << 20, MaxWrite: 1 << 20}
	c := e.startClient(app, 0, spec)
	maxSockets := 0
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 50 {
			n, err := e.dp.Sockets()
			if err == nil && n > maxSockets {
				maxSockets = n
			}
			time.Sleep(5 * time.Millisecond)
		}
	}()
	res, err := c.Wait()
	<-done
	if err != nil {
		t.Fatal(err)
	}
	mustOK(t, res, spec.Conns, spec.Bytes)
	d := diff(before, e.counters())
	if d.paired != 0 || maxSockets != 0 || d.pass[datapath.ReasonRemote] != uint64(spec.Conns) {
		t.Fatalf("remote connections must stay out of the sockhash (saw up to %d sockets): %v", maxSockets, d)
	}
}

// Fail open: a socket whose peer never pairs (here the server runs in a
// cgroup that is not attached) behaves exactly like plain TCP, and soon is.
func TestUnpairedSocketIsPlainTCP(t *testing.T) {
	e := newEnv(t, datapath.Options{AppReceivers: true})
	p := e.pod("app", true)
	other, err := e.bed.Cgroup("not-attached")
	if err != nil {
		t.Fatal(err)
	}
	srv := &pod{name: "srv", ns: p.ns, cgroup: other}
	e.server(srv, 0, testbed.PeerSpec{Mode: testbed.ModeStream, Listen: []string{"127.0.0.1:8080", "[::1]:8080"}})
	before := e.counters()
	for _, target := range []string{"127.0.0.1:8080", "[::1]:8080"} {
		spec := testbed.PeerSpec{Mode: testbed.ModeStream, Target: target, Conns: 4, Parallel: 4, Bytes: 16 << 20, MaxWrite: 1 << 20}
		mustOK(t, e.client(p, 0, spec), spec.Conns, spec.Bytes)
	}
	d := diff(before, e.counters())
	if d.redirBytes != 0 || d.pass[datapath.ReasonNoPeer] != 8 {
		t.Fatalf("unpaired clients must send everything through TCP: %v", d)
	}
	// ...and, having given up on a peer, leave the sockhash: they send as
	// plain TCP from then on (sk_msg saw at most their first 16 sends).
	if n, _ := e.dp.Sockets(); d.retired != 8 || n != 0 || d.tcpBytes > 8*16*(1<<20) {
		t.Fatalf("unpaired clients must retire from the sockhash (%d sockets left in it): %v", n, d)
	}
}

// Detaching and re-attaching while traffic flows loses and reorders nothing.
func TestDetachReattachUnderTraffic(t *testing.T) {
	e := newEnv(t, datapath.Options{AppReceivers: true})
	p := e.pod("app", true)
	e.server(p, 0, testbed.PeerSpec{Mode: testbed.ModeStream, Listen: []string{"127.0.0.1:8080"}})
	spec := testbed.PeerSpec{Mode: testbed.ModeStream, Target: "127.0.0.1:8080", Conns: 200, Parallel: 4, Bytes: streamBytes() / 200, MaxWrite: 1 << 20}
	before := e.counters()
	c := e.startClient(p, 0, spec)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	toggles := 0
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(3 * time.Millisecond):
			}
			if err := e.dp.Detach(p.cgroup); err != nil {
				t.Error(err)
				return
			}
			if err := e.dp.Attach(p.cgroup, datapath.PodConfig{}); err != nil {
				t.Error(err)
				return
			}
			toggles++
		}
	}()
	res, err := c.Wait()
	close(stop)
	wg.Wait()
	if err != nil {
		t.Fatal(err)
	}
	mustOK(t, res, spec.Conns, spec.Bytes)
	d := diff(before, e.counters())
	t.Logf("%d detach/attach cycles during %d connections: %v", toggles, spec.Conns, d)
	// Without cycles, or without any paired connection, the test would
	// have shown nothing about toggling under traffic.
	if toggles == 0 || d.paired == 0 || d.redirBytes == 0 {
		t.Fatalf("nothing was toggled under redirected traffic: %d cycles, %v", toggles, d)
	}
}

// A new process (agent restart or upgrade) re-opens the pins and carries on;
// an uninstall in the middle of live streams loses nothing and leaves no pin.
func TestRestartThenUninstallUnderTraffic(t *testing.T) {
	e := newEnv(t, datapath.Options{AppReceivers: true})
	p := e.pod("app", true)
	e.server(p, 0, testbed.PeerSpec{Mode: testbed.ModeStream, Listen: []string{"127.0.0.1:8080"}})
	// Long enough streams (2 GiB in all) that they still run when the
	// uninstall comes, which is checked below.
	spec := testbed.PeerSpec{Mode: testbed.ModeStream, Target: "127.0.0.1:8080", Conns: 4, Parallel: 4, Bytes: 256 << 20, MaxWrite: 64 << 10}
	start := time.Now()
	c := e.startClient(p, 0, spec)
	// The streams are under way, redirected, before the restart.
	waitSent(t, e, 1)

	// Restart: drop this process's handles, load again from the pins.
	e.reload(t, e.opts)
	atts, err := e.dp.Attachments()
	if err != nil || len(atts) != 1 || atts[0].CgroupPath != p.cgroup || !atts[0].Live {
		t.Fatalf("after a restart the attachment must still be listed: %+v, %v", atts, err)
	}
	before := e.counters()
	small := testbed.PeerSpec{Mode: testbed.ModeStream, Target: "127.0.0.1:8080", Conns: 2, Bytes: 1 << 20, MaxWrite: 4 << 10}
	mustOK(t, e.client(p, 0, small), 2, 1<<20)
	if d := diff(before, e.counters()); d.paired != 4 {
		t.Fatalf("new connections after a restart must pair: %v", d)
	}

	// The streams have not finished when the uninstall comes: the client
	// exits (and stays a zombie until Wait) once its last connection is done.
	// (Counters cannot tell: a socket retired from the sockhash after
	// back-pressure sends as plain TCP, uncounted.)
	if !peerRunning(t, c.PID()) {
		t.Fatal("the streams finished before the uninstall: it was not tested under traffic")
	}
	uninstallAt := time.Since(start)
	if err := datapath.Uninstall(e.pinDir); err != nil {
		t.Fatal(err)
	}
	res, err := c.Wait()
	t.Logf("the streams ran %s; the uninstall came after %s", res.Elapsed, uninstallAt)
	if err != nil {
		t.Fatal(err)
	}
	mustOK(t, res, spec.Conns, spec.Bytes)
	if _, err := os.Stat(e.pinDir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("uninstall left %s behind", e.pinDir)
	}
	// Connections made after the uninstall are plain TCP and work.
	mustOK(t, e.client(p, 0, small), 2, 1<<20)
}

// waitSent waits until paired sockets have sent at least n bytes, through
// the redirect or TCP.
func waitSent(t *testing.T, e *env, n uint64) {
	t.Helper()
	deadline := time.Now().Add(testbed.Patience(10 * time.Second))
	for c := e.counters(); c.RedirectedBytes+c.TCPBytes < n; c = e.counters() {
		if time.Now().After(deadline) {
			t.Fatalf("paired sockets sent fewer than %d bytes after %v: %v", n, testbed.Patience(10*time.Second), c)
		}
		time.Sleep(time.Millisecond)
	}
}

// peerRunning reports whether a peer process that was not waited for yet
// still runs (an exited one is a zombie until then).
func peerRunning(t *testing.T, pid int) bool {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the parenthesised command name.
	rest := string(b[strings.LastIndexByte(string(b), ')')+1:])
	return !strings.HasPrefix(strings.TrimSpace(rest), "Z")
}

func TestAttachIsIdempotentAndValidates(t *testing.T) {
	e := newEnv(t, datapath.Options{})
	p := e.pod("app", false)
	cfg := datapath.PodConfig{ExcludePorts: []uint16{5432, 9300}}
	for range 2 {
		if err := e.dp.Attach(p.cgroup, cfg); err != nil {
			t.Fatal(err)
		}
	}
	atts, err := e.dp.Attachments()
	if err != nil || len(atts) != 1 || len(atts[0].Config.ExcludePorts) != 2 {
		t.Fatalf("want one attachment with its config: %+v %v", atts, err)
	}
	if err := e.dp.Attach(p.cgroup+"/missing", cfg); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("attaching a missing cgroup: want ErrNotExist, got %v", err)
	}
	if err := e.dp.Attach(t.TempDir(), cfg); err == nil {
		t.Fatal("attaching a directory that is not a cgroup must fail")
	}
	mount, err := testbed.CgroupMount()
	if err != nil {
		t.Fatal(err)
	}
	if err := e.dp.Attach(mount, cfg); err == nil {
		e.dp.Detach(mount)
		t.Fatal("attaching the root cgroup (every process of the host) must be refused")
	}
	if err := e.dp.Attach(p.cgroup, datapath.PodConfig{ExcludePorts: make([]uint16, 17)}); err == nil {
		t.Fatal("17 excluded ports must be refused")
	}
	for range 2 {
		if err := e.dp.Detach(p.cgroup); err != nil {
			t.Fatal(err)
		}
	}
	if atts, _ := e.dp.Attachments(); len(atts) != 0 {
		t.Fatalf("detach left %+v", atts)
	}
}

// Excluded ports stay on TCP; other ports of the same pod pair.
func TestExcludedPorts(t *testing.T) {
	e := newEnv(t, datapath.Options{AppReceivers: true})
	p := e.pod("app", false)
	if err := e.dp.Attach(p.cgroup, datapath.PodConfig{ExcludePorts: []uint16{5432}}); err != nil {
		t.Fatal(err)
	}
	e.server(p, 0, testbed.PeerSpec{Mode: testbed.ModeStream, Listen: []string{"127.0.0.1:5432", "127.0.0.1:8080"}})
	spec := testbed.PeerSpec{Mode: testbed.ModeStream, Conns: 4, Parallel: 4, Bytes: 1 << 20, MaxWrite: 64 << 10}
	before := e.counters()
	spec.Target = "127.0.0.1:5432"
	mustOK(t, e.client(p, 0, spec), 4, 1<<20)
	if d := diff(before, e.counters()); d.paired != 0 || d.pass[datapath.ReasonExcluded] != 8 { // counted by both ends
		t.Fatalf("excluded port must stay on TCP: %v", d)
	}
	before = e.counters()
	spec.Target = "127.0.0.1:8080"
	mustOK(t, e.client(p, 0, spec), 4, 1<<20)
	if d := diff(before, e.counters()); d.paired != 8 {
		t.Fatalf("other ports must pair: %v", d)
	}
}

// The proxy-only receiver policy (Options.AppReceivers false): only
// proxy-owned sockets receive redirected data. App → proxy switches to
// redirect, proxy → app stays on TCP, and app ↔ app keeps neither socket in
// the sockhash.
func TestReceiverPolicy(t *testing.T) {
	e := newEnv(t, datapath.Options{})
	app := e.pod("app", true)
	up := e.pod("upstream", false)
	e.link(app, up, "198.18.0.2", "198.18.0.1")
	istioOutbound(e, app)
	e.proxy(app, testbed.PeerSpec{Listen: []string{"0.0.0.0:15001"}})
	e.server(up, 0, testbed.PeerSpec{Mode: testbed.ModeStream, Listen: []string{"198.18.0.1:80"}})
	e.server(app, 0, testbed.PeerSpec{Mode: testbed.ModeStream, Listen: []string{"127.0.0.1:8080"}})
	spec := testbed.PeerSpec{Mode: testbed.ModeStream, Conns: 4, Parallel: 4, Bytes: 1 << 20, MaxWrite: 16 << 10}

	// The first round makes the proxy's cgroup trusted (its connections
	// were read safely all their life): in the second every app → proxy
	// direction is redirected from its first byte.
	spec.Target = "198.18.0.1:80"
	mustOK(t, e.client(app, 0, spec), 4, 1<<20)
	before := e.counters()
	mustOK(t, e.client(app, 0, spec), 4, 1<<20)
	d := diff(before, e.counters())
	// Only the app → proxy directions may switch (at most 4), and never
	// more than they carry is redirected; the streams' small writes may
	// trip the small-message bound, after which a direction goes to TCP.
	if d.paired != 8 || d.switches == 0 || d.switches > 4 || d.redirBytes > 4*(1<<20+headerBytes) {
		t.Fatalf("want app → proxy redirected and proxy → app on TCP: %v", d)
	}

	before = e.counters()
	spec.Target = "127.0.0.1:8080"
	mustOK(t, e.client(app, 0, spec), 4, 1<<20)
	d = diff(before, e.counters())
	if n, _ := e.dp.Sockets(); d.redirBytes != 0 || n != 0 {
		t.Fatalf("app ↔ app must stay out of the sockhash (%d sockets in it): %v", n, d)
	}
}

// Open uses the installed datapath as it is: it lists what Load attached,
// reports the installed options, and attaches with the installed program
// without re-linking anything.
func TestOpenUsesTheInstalledDatapath(t *testing.T) {
	e := newEnv(t, datapath.Options{ProxyUIDs: []uint32{1337, 4242}, BacklogLimit: 1 << 20})
	p := e.pod("app", true)
	dp, err := datapath.Open(e.pinDir)
	if err != nil {
		t.Fatal(err)
	}
	defer dp.Close()
	atts, err := dp.Attachments()
	if err != nil || len(atts) != 1 || atts[0].CgroupPath != p.cgroup {
		t.Fatalf("Open must list the attachment: %+v %v", atts, err)
	}
	o := dp.Options()
	if o.AppReceivers || o.BacklogLimit != 1<<20 || len(o.ProxyUIDs) != 2 || o.ProxyUIDs[1] != 4242 {
		t.Fatalf("Open must report the installed options, got %+v", o)
	}
	other, err := e.bed.Cgroup("other")
	if err != nil {
		t.Fatal(err)
	}
	if err := dp.Attach(other, datapath.PodConfig{}); err != nil {
		t.Fatal(err)
	}
	if atts, _ := e.dp.Attachments(); len(atts) != 2 {
		t.Fatalf("an attach through Open must be seen by the loader: %+v", atts)
	}
	if _, err := datapath.Open(e.pinDir + "-absent"); !errors.Is(err, datapath.ErrNotInstalled) {
		t.Fatalf("want ErrNotInstalled, got %v", err)
	}
}

// waitEstablished waits until n connections to the port are established in
// the pod's namespace.
func waitEstablished(t *testing.T, p *pod, port, n int) {
	t.Helper()
	deadline := time.Now().Add(testbed.Patience(10 * time.Second))
	for time.Now().Before(deadline) {
		out, err := exec.Command("ip", "netns", "exec", p.ns.Name, "ss", "-Htn", "state", "established",
			fmt.Sprintf("( dport = :%d )", port)).Output()
		if err != nil {
			t.Fatal(err)
		}
		if strings.Count(string(out), "\n") >= n {
			return
		}
		time.Sleep(2 * time.Millisecond)
	}
	t.Fatalf("%d connections to port %d not established within %v", n, port, testbed.Patience(10*time.Second))
}

// A pod deleted while no agent runs leaves a severed link: the next Load
// drops it instead of failing, and keeps the live attachments.
func TestLoadDropsLinksOfRemovedCgroups(t *testing.T) {
	e := newEnv(t, datapath.Options{})
	keep := e.pod("keep", true)
	gone := e.pod("gone", true)
	if err := e.dp.Close(); err != nil {
		t.Fatal(err)
	}
	e.dp = nil
	if err := os.Remove(gone.cgroup); err != nil {
		t.Fatal(err)
	}
	dp, err := datapath.Load(e.opts)
	if err != nil {
		t.Fatalf("load after a cgroup was removed: %v", err)
	}
	e.dp = dp
	atts, err := dp.Attachments()
	if err != nil || len(atts) != 1 || atts[0].CgroupPath != keep.cgroup || !atts[0].Live {
		t.Fatalf("want only the live attachment left: %+v %v", atts, err)
	}
}

// Listing while another goroutine attaches and detaches never fails: a pin
// that disappears between the directory listing and its opening is skipped.
func TestAttachmentsWhileDetaching(t *testing.T) {
	e := newEnv(t, datapath.Options{})
	var cgs []string
	for i := range 8 {
		cgs = append(cgs, e.pod(fmt.Sprintf("p%d", i), false).cgroup)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 100 {
			for _, cg := range cgs {
				e.dp.Attach(cg, datapath.PodConfig{})
			}
			for _, cg := range cgs {
				e.dp.Detach(cg)
			}
		}
	}()
	for {
		select {
		case <-done:
			return
		default:
		}
		if _, err := e.dp.Attachments(); err != nil {
			t.Fatalf("listing while attaching and detaching: %v", err)
		}
	}
}

// Capacity: past MaxConnections new connections are not paired — they
// fail open to TCP, counted as failed sockhash operations — and every
// byte still arrives.
func TestCapacityFailsOpen(t *testing.T) {
	e := newEnv(t, datapath.Options{AppReceivers: true, MaxConnections: 4})
	p := e.pod("app", true)
	e.server(p, 0, testbed.PeerSpec{Mode: testbed.ModeStream, Listen: []string{"127.0.0.1:8080"}})
	before := e.counters()
	// 16 connections open at once: the sockhash holds 8 sockets.
	spec := testbed.PeerSpec{Mode: testbed.ModeStream, Target: "127.0.0.1:8080", Conns: 16, Parallel: 16, Bytes: 4 << 20, MaxWrite: 64 << 10}
	mustOK(t, e.client(p, 0, spec), spec.Conns, spec.Bytes)
	after := e.counters()
	d := diff(before, after)
	var failed uint64
	for k, v := range after.MapErrors {
		failed += v - before.MapErrors[k]
	}
	if d.paired == 0 || d.paired > 8 || failed == 0 {
		t.Fatalf("want at most 8 sockets paired and the rest refused for capacity: %v, %d failed inserts", d, failed)
	}
	t.Logf("%v; %d inserts refused for capacity", d, failed)
}

// A new capacity (or map layout) on a node with pinned maps: Load starts
// new maps instead of failing; connections running through the old ones
// keep every byte, and new connections pair in the new maps.
func TestResizeUnderTraffic(t *testing.T) {
	e := newEnv(t, datapath.Options{AppReceivers: true, MaxConnections: 1024})
	p := e.pod("app", true)
	e.server(p, 0, testbed.PeerSpec{Mode: testbed.ModeStream, Listen: []string{"127.0.0.1:8080"}})
	spec := testbed.PeerSpec{Mode: testbed.ModeStream, Target: "127.0.0.1:8080", Conns: 4, Parallel: 4, Bytes: 256 << 20, MaxWrite: 64 << 10}
	before := e.counters()
	c := e.startClient(p, 0, spec)
	// Wait until the streams are paired and moving.
	deadline := time.Now().Add(testbed.Patience(10 * time.Second))
	for d := diff(before, e.counters()); d.paired < 8 || d.redirBytes == 0; d = diff(before, e.counters()) {
		if time.Now().After(deadline) {
			t.Fatalf("the streams were not paired and redirected: %v", d)
		}
		time.Sleep(5 * time.Millisecond)
	}

	e.reloadWithCapacity(t, 2048)
	// The streams must still be running: the resize happened under them.
	done := make(chan struct{})
	var res testbed.Result
	var werr error
	go func() { res, werr = c.Wait(); close(done) }()
	select {
	case <-done:
		t.Fatal("the streams ended before the resize: it was not tested under traffic")
	default:
	}
	if n, err := e.dp.Sockets(); err != nil || n != 0 {
		t.Fatalf("the new sockhash must start empty: %d sockets, %v", n, err)
	}
	newBefore := e.counters()
	small := testbed.PeerSpec{Mode: testbed.ModeStream, Target: "127.0.0.1:8080", Conns: 2, Bytes: 1 << 20, MaxWrite: 4 << 10}
	mustOK(t, e.client(p, 0, small), 2, 1<<20)
	if d := diff(newBefore, e.counters()); d.paired != 4 {
		t.Fatalf("new connections after the resize must pair in the new maps: %v", d)
	}
	<-done
	if werr != nil {
		t.Fatal(werr)
	}
	mustOK(t, res, spec.Conns, spec.Bytes)

	// The old generation (its maps and receive-side tracepoints, which
	// kept guarding the old connections' receivers) goes once its last
	// connection has closed.
	deadline = time.Now().Add(testbed.Patience(10 * time.Second))
	for {
		left, err := datapath.SweepRetired(e.pinDir)
		if err != nil {
			t.Fatal(err)
		}
		if left == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the retired datapath generation is still there after its connections closed")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if entries, _ := os.ReadDir(filepath.Join(e.pinDir, "retired")); len(entries) != 0 {
		t.Fatalf("retired generations left: %v", entries)
	}
}

// Never slower than TCP after back-pressure: a one-way bulk sender whose
// receiver falls behind by the bound goes to TCP for good and leaves the
// sockhash, so that its sends no longer run sk_msg (they are plain
// tcp_sendmsg), and its receiver after it, once it read what was redirected;
// every byte arrives in order.
func TestBackpressureRetiresTheSender(t *testing.T) {
	requireKernel(t)
	for _, c := range []struct {
		name  string
		write int
		bound uint64 // bytes at most redirected before the trip
	}{
		{"64KiB-writes", 64 << 10, datapath.DefaultBacklogLimit + 64<<10},
		// Small writes trip a lower bound: redirected one message at a
		// time they are slower than TCP, which coalesces them.
		{"1KiB-writes", 1 << 10, 256<<10 + 1<<10},
	} {
		t.Run(c.name, func(t *testing.T) { testRetire(t, c.write, c.bound) })
	}
}

func testRetire(t *testing.T, write int, bound uint64) {
	e := newEnv(t, datapath.Options{AppReceivers: true})
	p := e.pod("app", true)
	// A sink slower than any sender (64 KiB a millisecond at most), on any
	// CPU, so that the bound trips; the first connection, read with plain
	// reads all its life, makes the pod's cgroup trusted.
	e.server(p, 0, testbed.PeerSpec{Mode: testbed.ModeSlowSink, Listen: []string{"127.0.0.1:8080"}})
	spec := testbed.PeerSpec{Mode: testbed.ModeBulk, Target: "127.0.0.1:8080", Size: write, Bytes: 16 << 20}
	// The first connection makes the pod's cgroup trusted (the sink read
	// it with plain reads all its life): the second is redirected from its
	// first byte, as in a running pod.
	if res := e.client(p, 0, spec); res.Err() != nil || res.BytesVerified != spec.Bytes {
		t.Fatalf("first bulk: %v, %d bytes", res.Err(), res.BytesVerified)
	}
	before := e.counters()
	res := e.client(p, 0, spec)
	if err := res.Err(); err != nil || res.BytesVerified != spec.Bytes {
		t.Fatalf("bulk: %v, sink counted %d of %d bytes", err, res.BytesVerified, spec.Bytes)
	}
	d := diff(before, e.counters())
	t.Logf("%v", d)
	if d.pass[datapath.ReasonBackpressure] == 0 {
		t.Fatalf("the sink kept up with the sender: the bound never tripped, nothing tested (%v)", d)
	}
	// Both ends left: the sender, then its receiver once it had read
	// what was redirected into it (it kept only tcp_bpf's receive path).
	if d.retired != 2 {
		t.Fatalf("the sender went to TCP for good: want it and its receiver out of the sockhash, %d left: %v", d.retired, d)
	}
	if d.pass[datapath.ReasonNoPeer] != 0 {
		t.Fatalf("the receiver's reply ran sk_msg (it should have left the sockhash before): %v", d)
	}
	// The receiver may drain some while the sender writes: a few bounds'
	// worth at most before the trip.
	if d.redirBytes > 4*bound {
		t.Fatalf("%d bytes redirected before the bound (%d) tripped: %v", d.redirBytes, bound, d)
	}
	// sk_msg counts what it passes to TCP: after retiring, the sender's
	// sends bypass it, so it saw far less than what went through TCP.
	if tcp := uint64(spec.Bytes) - d.redirBytes; d.tcpBytes >= tcp/2 {
		t.Fatalf("sk_msg still ran on %d of the %d bytes sent through TCP: %v", d.tcpBytes, tcp, d)
	}
}

// Two threads on one socket: a send that leaves the redirect path cannot
// tell its receiver "my redirects are done" while another thread of the
// socket is in its send path — that thread's redirect is queued after its
// program ran, with the socket lock released, and a receiver that left the
// sockhash before it lands loses it. Every thread in the socket's tcp_bpf
// send or receive path holds its psock: so while one does (here a reader
// thread blocked in read(2), which holds it as a second writer would), the
// receiver stays in the sockhash; once the socket's psock is gone, the
// receiver leaves. Every byte arrives.
func TestRetireWaitsForTheSocketsOtherThreads(t *testing.T) {
	e := newEnv(t, datapath.Options{AppReceivers: true})
	p := e.pod("app", true)
	e.server(p, 0, testbed.PeerSpec{Mode: testbed.ModeSlowSink, Listen: []string{"127.0.0.1:8080"}})
	// The first connection makes the pod's cgroup trusted: the second is
	// redirected from its first byte, as in a running pod.
	first := testbed.PeerSpec{Mode: testbed.ModeBulk, Target: "127.0.0.1:8080", Size: 64 << 10, Bytes: 8 << 20}
	if res := e.client(p, 0, first); res.Err() != nil || res.BytesVerified != first.Bytes {
		t.Fatalf("first bulk: %v, %d bytes", res.Err(), res.BytesVerified)
	}
	before := e.counters()
	spec := testbed.PeerSpec{Mode: testbed.ModeReaderHeld, Target: "127.0.0.1:8080", Size: 64 << 10, Bytes: 6 << 20}
	c := e.startClient(p, 0, spec)
	rep, err := testbed.WaitReaderHeld(c, testbed.Patience(30*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if rep.Error != "" {
		t.Fatalf("reader-held client: %s", rep.Error)
	}
	// The sink has read everything (the client saw it all acknowledged,
	// and waited), the sender went to TCP for good at the bound and left
	// the sockhash; its receiver has nothing unread and would have left on
	// the sender's last ACKs, but for the reader thread.
	held := diff(before, e.counters())
	t.Logf("reader blocked: %v (reader woken %d times)", held, rep.Wakeups)
	if held.pass[datapath.ReasonBackpressure] == 0 {
		t.Fatalf("the bound never tripped: the direction never left the redirect path, nothing tested (%v)", held)
	}
	if rep.Wakeups != 0 {
		t.Fatalf("the reader thread was woken %d times while it was to be held: the test could not hold it (%v)", rep.Wakeups, held)
	}
	if held.retireHeld == 0 || held.retired != 1 {
		t.Fatalf("with a reader thread in the sender's socket, want the sender out of the sockhash and its receiver kept, its sends counted as holding it: %v", held)
	}
	if err := testbed.Resume(c); err != nil {
		t.Fatal(err)
	}
	res, err := c.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if err := res.Err(); err != nil || res.BytesVerified != 2*spec.Bytes || res.BytesSent != 2*spec.Bytes {
		t.Fatalf("reader-held client: %v, sent %d, the sink counted %d, want %d", res.Err(), res.BytesSent, res.BytesVerified, 2*spec.Bytes)
	}
	// The reader returned, the socket's psock went with it: the sender's
	// next ACKs took the receiver out.
	if d := diff(before, e.counters()); d.retired != 2 {
		t.Fatalf("after the reader thread returned, want the receiver out of the sockhash too: %v", d)
	}
}

// Map fill is what an operator reads to see how close a node is to its
// capacity: it counts the paired sockets and their receive-side entries.
func TestMapFill(t *testing.T) {
	e := newEnv(t, datapath.Options{AppReceivers: true, MaxConnections: 64})
	p := e.pod("app", true)
	e.server(p, 0, testbed.PeerSpec{Mode: testbed.ModeStream, Listen: []string{"127.0.0.1:8080"}})
	c := e.startClient(p, 0, testbed.PeerSpec{Mode: testbed.ModeStream, Target: "127.0.0.1:8080", Conns: 8, Parallel: 8, Bytes: 64 << 20, MaxWrite: 64 << 10})
	// While the 8 streams run: 16 sockets (less those that retired to
	// plain TCP), 16 receivers, no pending entry once every client sent.
	before := e.counters()
	deadline := time.Now().Add(testbed.Patience(10 * time.Second))
	for {
		fills, err := e.dp.MapFill()
		if err != nil {
			t.Fatal(err)
		}
		retired := int(diff(before, e.counters()).retired)
		got := map[string]datapath.MapFill{}
		for _, f := range fills {
			got[f.Name] = f
		}
		if got["sockhash"].Entries+retired == 16 && got["receivers"].Entries == 16 && got["pending"].Entries == 0 {
			if got["sockhash"].Capacity != 128 || got["receivers"].Capacity != 128 || got["pending"].Capacity != 64 {
				t.Fatalf("capacities must follow MaxConnections 64: %+v", fills)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("want 16 sockets and receivers and no pending entry while 8 streams run: %+v", fills)
		}
		time.Sleep(10 * time.Millisecond)
	}
	res, err := c.Wait()
	if err != nil {
		t.Fatal(err)
	}
	mustOK(t, res, 8, 64<<20)
	// Closed connections leave nothing behind (their sockets may have
	// retired from the sockhash earlier).
	waitMapsEmpty(t, e)
}

// A pod detached while its connections are open: they keep running, and
// when they close they leave nothing behind in the maps, although the pod's
// sockops program no longer sees them close (the close tracepoint does).
func TestDetachedConnectionsLeaveNothing(t *testing.T) {
	e := newEnv(t, datapath.Options{AppReceivers: true, MaxConnections: 64})
	p := e.pod("app", true)
	e.server(p, 0, testbed.PeerSpec{Mode: testbed.ModeStream, Listen: []string{"127.0.0.1:8080"}})
	c := e.startClient(p, 0, testbed.PeerSpec{Mode: testbed.ModeStream, Target: "127.0.0.1:8080", Conns: 8, Parallel: 8, Bytes: 64 << 20, MaxWrite: 64 << 10})
	fill := func() map[string]int {
		t.Helper()
		fills, err := e.dp.MapFill()
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]int{}
		for _, f := range fills {
			got[f.Name] = f.Entries
		}
		return got
	}
	deadline := time.Now().Add(testbed.Patience(10 * time.Second))
	for fill()["receivers"] != 16 {
		if time.Now().After(deadline) {
			t.Fatalf("want 16 receivers while 8 streams run: %v", fill())
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := e.dp.Detach(p.cgroup); err != nil {
		t.Fatal(err)
	}
	if !peerRunning(t, c.PID()) {
		t.Fatalf("the streams ended before the detach; make them longer: %v", fill())
	}
	res, err := c.Wait()
	if err != nil {
		t.Fatal(err)
	}
	mustOK(t, res, 8, 64<<20)
	waitMapsEmpty(t, e)
}

// A client of a detached pod whose server never joined (it runs in a cgroup
// that is not attached) leaves no pending entry when it closes, although
// its pod's sockops program no longer sees it close.
func TestDetachedClientLeavesNoPending(t *testing.T) {
	e := newEnv(t, datapath.Options{AppReceivers: true, MaxConnections: 64})
	p := e.pod("app", true)
	other, err := e.bed.Cgroup("not-attached")
	if err != nil {
		t.Fatal(err)
	}
	srv := &pod{name: "srv", ns: p.ns, cgroup: other}
	e.server(srv, 0, testbed.PeerSpec{Mode: testbed.ModeEcho, Listen: []string{"127.0.0.1:8080"}})
	c := e.startClient(p, 0, testbed.PeerSpec{Mode: testbed.ModeConnHold, Target: "127.0.0.1:8080", Conns: 4, Parallel: 4, Size: 16})
	if err := testbed.WaitConnsHeld(c, testbed.Patience(10*time.Second)); err != nil {
		t.Fatal(err)
	}
	fills, err := e.dp.MapFill()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fills {
		if f.Name == "pending" && f.Entries != 4 {
			t.Fatalf("want the 4 clients waiting for their server: %+v", fills)
		}
	}
	if err := e.dp.Detach(p.cgroup); err != nil {
		t.Fatal(err)
	}
	if err := testbed.Resume(c); err != nil {
		t.Fatal(err)
	}
	if res, err := c.Wait(); err != nil || res.Err() != nil {
		t.Fatalf("held connections: %v %v", err, res.Err())
	}
	waitMapsEmpty(t, e)
}
