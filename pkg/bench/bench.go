// Package bench measures what sockhop's datapath changes, side by side: for
// each case it runs the same client against the same servers with the pod's
// cgroup detached (OFF) and attached (ON), in interleaved rounds, and reports
// the ratios with the datapath counters that show which path the bytes took.
//
// It builds everything it uses with pkg/testbed (cgroups, network
// namespaces, peer processes) and loads its own datapath under
// /sys/fs/bpf/sockhop-bench-<id>; Run removes all of it before it returns.
// Peers are the running binary re-executed: a program or test binary that
// calls Run must call testbed.RunPeerIfRequested first thing in main or
// TestMain.
package bench

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sockhop/sockhop/pkg/datapath"
	"github.com/sockhop/sockhop/pkg/testbed"
)

// Config selects what Run measures.
type Config struct {
	// Quick runs every case with few iterations and one round per mode: a
	// correctness check that takes seconds, not a measurement.
	Quick bool
	// Rounds per mode; 0 means 3 (1 when Quick). Rounds alternate
	// off, on, on, off, off, on, ... so that drift hits both modes alike.
	Rounds int
	// Cases restricts the run to these case ids, or to the ids that start
	// with one of them followed by '-' ("bulk-1cpu"). Empty runs them all.
	Cases []string
	// Progress, when set, is called with each case's id as it starts.
	Progress func(caseID string)
}

// IDs lists the ids of every case Run can measure, in order.
func IDs() []string {
	var ids []string
	for _, c := range suiteCases() {
		ids = append(ids, c.id)
	}
	return ids
}

// PinRootPrefix starts the bpffs directory of each Run's datapaths.
const PinRootPrefix = "/sys/fs/bpf/sockhop-bench-"

// Run builds a throwaway bed, loads the datapath, measures the selected
// cases and removes everything, also on error or when ctx is cancelled. A
// case that fails is recorded with its error and the others still run; the
// returned error then names the failed cases. The report holds what was
// measured either way.
func Run(ctx context.Context, cfg Config) (rep Report, err error) {
	if cfg.Rounds <= 0 {
		cfg.Rounds = 3
		if cfg.Quick {
			cfg.Rounds = 1
		}
	}
	rep = Report{Quick: cfg.Quick, Rounds: cfg.Rounds, Started: time.Now(), Machine: machine()}
	defer func() {
		rep.Duration = time.Since(rep.Started)
		rep.Machine.LoadAfter = loadAvg()
	}()

	var specs []caseSpec
	for _, c := range suiteCases() {
		if c.placement == "2cpu" && runtime.NumCPU() < 2 {
			continue // a one-CPU machine has no second CPU to place a server on
		}
		if selected(c.id, cfg.Cases) {
			specs = append(specs, c)
		}
	}
	if len(specs) == 0 {
		return rep, fmt.Errorf("no case matches %q (cases: %s)", cfg.Cases, strings.Join(IDs(), ", "))
	}

	bed, err := testbed.New()
	if err != nil {
		return rep, fmt.Errorf("build test bed: %w", err)
	}
	rep.ID = bed.ID()
	s := &suite{cfg: cfg, bed: bed, pinRoot: PinRootPrefix + bed.ID(), variants: map[string]*variant{}}
	defer func() { err = errors.Join(err, s.close()) }()

	var failed []string
	for _, c := range specs {
		if err := ctx.Err(); err != nil {
			return rep, err
		}
		res := s.runCase(ctx, c)
		rep.Cases = append(rep.Cases, res)
		if res.Error != "" {
			failed = append(failed, c.id)
			continue
		}
		// The receiver fell behind and a direction left the redirect path:
		// measure the mechanism without the bound too.
		if c.kind == KindBulk && c.policy == PolicyDefault && res.Sum(ModeOn).Passthrough[datapath.ReasonBackpressure] > 0 {
			res := s.runCase(ctx, unboundedCase(c))
			rep.Cases = append(rep.Cases, res)
			if res.Error != "" {
				failed = append(failed, res.ID)
			}
		}
	}
	if err := ctx.Err(); err != nil {
		return rep, err
	}
	if len(failed) > 0 {
		return rep, fmt.Errorf("%d of %d cases failed: %s", len(failed), len(rep.Cases), strings.Join(failed, ", "))
	}
	return rep, nil
}

// variant is one loaded datapath: a receiver policy and backlog limit.
type variant struct {
	pinDir string
	dp     *datapath.Datapath
	err    error // why it did not load
}

type suite struct {
	cfg      Config
	bed      *testbed.Bed
	pinRoot  string
	variants map[string]*variant
	pods     int
}

func (s *suite) variant(policy string) (*variant, error) {
	if v, ok := s.variants[policy]; ok {
		return v, v.err
	}
	opts := datapath.Options{AppReceivers: true}
	dir := "default"
	switch policy {
	case PolicyMechanism:
		opts.Unguarded, dir = true, "mechanism"
	case PolicyProxyReceivers:
		opts, dir = datapath.Options{}, "proxy"
	case PolicyUnbounded:
		opts.Unguarded, opts.BacklogLimit, dir = true, -1, "unbounded"
	case PolicyNoSyscallGuard:
		dir = "nosyscallguard"
	}
	opts.NoSyscallGuard = !syscallGuarded(policy)
	opts.PinDir = filepath.Join(s.pinRoot, dir)
	v := &variant{pinDir: opts.PinDir}
	// Registered before loading: close uninstalls whatever a failed load pinned.
	s.variants[policy] = v
	v.dp, v.err = datapath.Load(opts)
	if v.err != nil {
		v.err = fmt.Errorf("load datapath (%s): %w", policy, v.err)
	}
	return v, v.err
}

// close uninstalls every datapath, then ends the bed's processes and
// removes its namespaces and cgroups.
func (s *suite) close() error {
	var errs []error
	for _, v := range s.variants {
		if v.dp != nil {
			v.dp.Close()
		}
		if err := datapath.Uninstall(v.pinDir); err != nil {
			errs = append(errs, fmt.Errorf("uninstall benchmark datapath: %w", err))
		}
	}
	if err := os.Remove(s.pinRoot); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("remove %s: %w", s.pinRoot, err))
	}
	if err := s.bed.Close(); err != nil {
		errs = append(errs, fmt.Errorf("tear down test bed: %w", err))
	}
	return errors.Join(errs...)
}

type pod struct {
	ns     *testbed.NetNS
	cgroup string
}

// pod makes a network namespace and a cgroup for one case.
func (s *suite) pod() (*pod, error) {
	s.pods++
	name := "p" + strconv.Itoa(s.pods)
	ns, err := s.bed.NetNS(name)
	if err != nil {
		return nil, err
	}
	cg, err := s.bed.Cgroup(name)
	if err != nil {
		return nil, err
	}
	return &pod{ns: ns, cgroup: cg}, nil
}

func (s *suite) start(p *pod, spec testbed.PeerSpec) (*testbed.Peer, error) {
	spec.NetNS, spec.Cgroup = p.ns.Name, p.cgroup
	peer, err := s.bed.Start(spec)
	if err != nil {
		return nil, fmt.Errorf("start %s %s: %w", spec.Mode, spec.Role, err)
	}
	return peer, nil
}

// client runs a client peer to completion; cancelling ctx kills it.
func (s *suite) client(ctx context.Context, p *pod, spec testbed.PeerSpec) (testbed.Result, error) {
	spec.Role = testbed.RoleClient
	peer, err := s.start(p, spec)
	if err != nil {
		return testbed.Result{}, err
	}
	type outcome struct {
		res testbed.Result
		err error
	}
	done := make(chan outcome, 1)
	go func() {
		res, err := peer.Wait()
		done <- outcome{res, err}
	}()
	select {
	case o := <-done:
		if o.err == nil {
			o.err = o.res.Err()
		}
		return o.res, o.err
	case <-ctx.Done():
		peer.Stop()
		<-done
		return testbed.Result{}, ctx.Err()
	}
}

// params are the iteration counts of a run.
type params struct {
	pingPong, pingPongLarge, chain, unpaired, connRate int
	bulkBytes, bulkBytesSmall                          int64
}

func (s *suite) params() params {
	if s.cfg.Quick {
		return params{pingPong: 500, pingPongLarge: 300, chain: 300, unpaired: 500, connRate: 100,
			bulkBytes: 32 << 20, bulkBytesSmall: 16 << 20}
	}
	return params{pingPong: 20000, pingPongLarge: 10000, chain: 10000, unpaired: 50000, connRate: 3000,
		bulkBytes: 1 << 30, bulkBytesSmall: 256 << 20}
}

// setup is a case ready to measure: the cgroup that ON attaches, the pod
// its client runs in and the client's spec.
type setup struct {
	attach string
	client *pod
	spec   testbed.PeerSpec
	peers  []*testbed.Peer
	undo   func()
}

func (s *suite) setup(c caseSpec, v *variant) (*setup, error) {
	st := &setup{}
	p, err := s.pod()
	if err != nil {
		return st, err
	}
	st.attach, st.client = p.cgroup, p
	clientCPUs, serverCPUs := c.cpus()
	prm := s.params()
	server := func(on *pod, mode, listen string) error {
		peer, err := s.start(on, testbed.PeerSpec{Role: testbed.RoleServer, Mode: mode, Listen: []string{listen}, Size: c.size,
			UID: c.serverUID, CPUs: serverCPUs})
		if err == nil {
			st.peers = append(st.peers, peer)
		}
		return err
	}
	iters := prm.pingPong
	if c.size >= 64<<10 {
		iters = prm.pingPongLarge
	}
	switch c.kind {
	case KindPingPong:
		st.spec = testbed.PeerSpec{Mode: testbed.ModePingPong, Target: "127.0.0.1:8080", Size: c.size, Iterations: iters}
		err = server(p, testbed.ModeEcho, "127.0.0.1:8080")
	case KindChain:
		st.spec = testbed.PeerSpec{Mode: testbed.ModePingPong, Target: "127.0.0.1:15001", Size: c.size, Iterations: prm.chain}
		if err = server(p, testbed.ModeEcho, "127.0.0.1:8080"); err == nil {
			var relay *testbed.Peer
			relay, err = s.start(p, testbed.PeerSpec{Role: testbed.RoleProxy, Listen: []string{"127.0.0.1:15001"},
				Target: "127.0.0.1:8080", UID: proxyUID, CPUs: serverCPUs})
			if err == nil {
				st.peers = append(st.peers, relay)
			}
		}
	case KindHTTP:
		// A load generator, its sidecar (a proxy, uid 1337) and a Go HTTP
		// app in one pod: client → proxy → app, keep-alive.
		st.spec = testbed.PeerSpec{Mode: testbed.ModeHTTPClient, Target: "127.0.0.1:15001", Size: c.size, Iterations: prm.chain}
		if err = server(p, testbed.ModeHTTPServer, "127.0.0.1:8080"); err == nil {
			var relay *testbed.Peer
			relay, err = s.start(p, testbed.PeerSpec{Role: testbed.RoleProxy, Listen: []string{"127.0.0.1:15001"},
				Target: "127.0.0.1:8080", UID: proxyUID, CPUs: serverCPUs})
			if err == nil {
				st.peers = append(st.peers, relay)
			}
		}
	case KindBulk:
		n := prm.bulkBytes
		if c.size < 16<<10 {
			n = prm.bulkBytesSmall
		}
		st.spec = testbed.PeerSpec{Mode: testbed.ModeBulk, Target: "127.0.0.1:8080", Size: c.size, Bytes: n}
		err = server(p, testbed.ModeSink, "127.0.0.1:8080")
	case KindConnRate:
		st.spec = testbed.PeerSpec{Mode: testbed.ModeConnRate, Target: "127.0.0.1:8080", Iterations: prm.connRate}
		err = server(p, testbed.ModeEcho, "127.0.0.1:8080")
	case KindUnpaired:
		// The server's pod is never attached and its IP is not a pod IP:
		// the attached pod's connections to it must stay as they were.
		var remote *pod
		if remote, err = s.pod(); err != nil {
			return st, err
		}
		app, srv := netip.MustParsePrefix("198.18.0.1/24"), netip.MustParsePrefix("198.18.0.2/24")
		if err = s.bed.Veth(p.ns, app, remote.ns, srv); err != nil {
			return st, err
		}
		if err = v.dp.SetPodIPs([]netip.Addr{app.Addr()}); err != nil {
			return st, err
		}
		st.undo = func() { v.dp.SetPodIPs(nil) }
		st.spec = testbed.PeerSpec{Mode: testbed.ModePingPong, Target: "198.18.0.2:8080", Size: c.size, Iterations: prm.unpaired}
		err = server(remote, testbed.ModeEcho, "198.18.0.2:8080")
	default:
		err = fmt.Errorf("unknown case kind %q", c.kind)
	}
	st.spec.CPUs = clientCPUs
	return st, err
}

func (st *setup) teardown() {
	for _, p := range st.peers {
		p.Stop()
	}
	if st.undo != nil {
		st.undo()
	}
}

// modeWarmup is the unmeasured first round (attached).
const modeWarmup = "warmup"

// roundModes interleaves the modes: off on on off off on ... (ABBA), so a
// steady drift of the machine weighs on both alike.
func roundModes(rounds int) []string {
	modes := make([]string, 0, 2*rounds)
	for i := 0; i < rounds; i++ {
		if i%2 == 0 {
			modes = append(modes, ModeOff, ModeOn)
		} else {
			modes = append(modes, ModeOn, ModeOff)
		}
	}
	return modes
}

func (s *suite) runCase(ctx context.Context, c caseSpec) CaseResult {
	res := CaseResult{ID: c.id, Kind: c.kind, Description: c.description, Size: c.size,
		Placement: c.placement, Policy: c.policy, Expect: c.expect}
	if s.cfg.Progress != nil {
		s.cfg.Progress(c.id)
	}
	if err := s.measure(ctx, c, &res); err != nil {
		res.Error = err.Error()
	}
	return res
}

func (s *suite) measure(ctx context.Context, c caseSpec, res *CaseResult) error {
	v, err := s.variant(c.policy)
	if err != nil {
		return err
	}
	st, err := s.setup(c, v)
	defer st.teardown()
	if err != nil {
		return err
	}

	samples := map[string][]int64{} // pooled latencies per mode
	rates := map[string][]float64{} // per-round rates per mode
	// One unmeasured round first, attached: it warms caches and the page
	// allocator, and its connections, read safely all their life, make
	// the pod's cgroups trusted as they would be in a running pod, so that
	// the measured rounds' connections redirect from their first byte
	// under the receiver guard (docs/datapath.md).
	modes := append([]string{modeWarmup}, roundModes(s.cfg.Rounds)...)
	for _, mode := range modes {
		if err := ctx.Err(); err != nil {
			return err
		}
		r, lat, rate, err := s.round(ctx, v, st, c, mode)
		if err != nil {
			return fmt.Errorf("%s round: %w", mode, err)
		}
		if mode == modeWarmup {
			continue
		}
		samples[mode] = append(samples[mode], lat...)
		rates[mode] = append(rates[mode], rate)
		res.Rounds = append(res.Rounds, r)
	}

	switch c.kind {
	case KindBulk:
		res.Metrics = []Metric{rateMetric("throughput", "MiB/s", rates[ModeOff], rates[ModeOn])}
	case KindConnRate:
		res.Metrics = []Metric{rateMetric("rate", "conn/s", rates[ModeOff], rates[ModeOn])}
	default:
		off, on := sortedCopy(samples[ModeOff]), sortedCopy(samples[ModeOn])
		res.Metrics = []Metric{latencyMetric("p50", 50, off, on), latencyMetric("p99", 99, off, on)}
	}
	res.Metrics[0].PairRatios = pairRatios(res.Rounds, res.Metrics[0].LowerIsBetter)
	res.Metrics[0].Ratio = median(res.Metrics[0].PairRatios)
	return nil
}

// releaseGuards takes every loaded datapath's node-wide tracepoints away
// before an OFF round, so that it runs as on a node without sockhop: no pod
// is attached then, and the last round's paired connections close within
// moments (their server ends close after their clients').
func (s *suite) releaseGuards(ctx context.Context) error {
	end := time.Now().Add(testbed.Patience(10 * time.Second))
	for _, v := range s.variants {
		for v.dp != nil {
			attached, err := v.dp.ReleaseIdleGuards()
			if err != nil {
				return fmt.Errorf("release the node-wide tracepoints: %w", err)
			}
			if !attached {
				break
			}
			if time.Now().After(end) {
				return fmt.Errorf("the node-wide tracepoints are still needed %v after the last ON round: a paired connection is still open", testbed.Patience(10*time.Second))
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(10 * time.Millisecond):
			}
		}
	}
	return nil
}

// guardsAttached says whether any loaded datapath's node-wide tracepoints
// are attached.
func (s *suite) guardsAttached() bool {
	for _, v := range s.variants {
		if v.dp != nil && v.dp.GuardsAttached() {
			return true
		}
	}
	return false
}

// round runs the client once in one mode. It returns the round, its
// latency samples (ns) and its rate (MiB/s or conn/s).
func (s *suite) round(ctx context.Context, v *variant, st *setup, c caseSpec, mode string) (Round, []int64, float64, error) {
	r := Round{Mode: mode}
	if mode == ModeOn || mode == modeWarmup {
		if err := v.dp.Attach(st.attach, datapath.PodConfig{}); err != nil {
			return r, nil, 0, err
		}
	} else if err := s.releaseGuards(ctx); err != nil {
		return r, nil, 0, err
	}
	r.Tracepoints = s.guardsAttached()
	r.SyscallGuard = v.dp.SyscallGuard()
	before, err := v.dp.Counters()
	if err != nil {
		return r, nil, 0, err
	}
	out, err := s.client(ctx, st.client, st.spec)
	after, cerr := v.dp.Counters()
	if mode == ModeOn || mode == modeWarmup {
		// New connections only: the round's own are closed by now.
		err = errors.Join(err, v.dp.Detach(st.attach))
	}
	if err = errors.Join(err, cerr); err != nil {
		return r, nil, 0, err
	}
	r.Counters = diffCounters(before, after)
	r.Elapsed = out.Elapsed

	var rate float64
	switch c.kind {
	case KindBulk:
		if out.BytesVerified != st.spec.Bytes || len(out.LatenciesNs) != 1 || out.LatenciesNs[0] <= 0 {
			return r, nil, 0, fmt.Errorf("sink counted %d of %d bytes", out.BytesVerified, st.spec.Bytes)
		}
		rate = float64(out.BytesVerified) / (1 << 20) / (float64(out.LatenciesNs[0]) / 1e9)
		r.Value = rate
		return r, nil, rate, nil
	case KindConnRate:
		var total int64
		for _, l := range out.LatenciesNs {
			total += l
		}
		if out.Conns != st.spec.Iterations || total <= 0 {
			return r, nil, 0, fmt.Errorf("%d of %d connections completed", out.Conns, st.spec.Iterations)
		}
		rate = float64(out.Conns) / (float64(total) / 1e9)
		r.Value = rate
		return r, nil, rate, nil
	}
	if len(out.LatenciesNs) != st.spec.Iterations || out.BytesVerified == 0 {
		return r, nil, 0, fmt.Errorf("%d of %d round trips measured", len(out.LatenciesNs), st.spec.Iterations)
	}
	r.Value = percentile(sortedCopy(out.LatenciesNs), 50) / 1e3
	return r, out.LatenciesNs, 0, nil
}

func machine() Machine {
	m := Machine{CPUs: runtime.NumCPU(), LoadBefore: loadAvg()}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		m.Kernel = unix.ByteSliceToString(u.Release[:])
	}
	return m
}

// loadAvg is the 1-minute load average; 0 when unknown.
func loadAvg() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}
