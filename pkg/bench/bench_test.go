package bench_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sockhop/sockhop/internal/needs"
	"github.com/sockhop/sockhop/pkg/bench"
	"github.com/sockhop/sockhop/pkg/datapath"
	"github.com/sockhop/sockhop/pkg/testbed"
)

func TestMain(m *testing.M) {
	// Peer processes of the suite are this binary, re-executed.
	testbed.RunPeerIfRequested()
	os.Exit(m.Run())
}

// requireRoot: the kernel benchmarks follow the needs rule (skipped under
// -short; without root skipped, or failed in CI).
func requireRoot(tb testing.TB) {
	tb.Helper()
	needs.Root(tb, "to load BPF programs and create cgroups and network namespaces")
}

// TestQuickSuite runs every case at CI size and checks that it measured
// what it claims: both modes ran, ON rounds took the redirect path (or, for
// unpaired connections, were seen and left alone), OFF rounds were not
// touched, and nothing was left behind. It asserts no timing.
func TestQuickSuite(t *testing.T) {
	requireRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	rep, err := bench.Run(ctx, bench.Config{Quick: true})
	t.Logf("\n%s", rep.Markdown())
	if err != nil {
		t.Fatal(err)
	}
	if err := rep.Verify(); err != nil {
		t.Fatal(err)
	}
	ran := map[string]bool{}
	for _, c := range rep.Cases {
		ran[c.ID] = true
	}
	for _, id := range bench.IDs() {
		if !ran[id] && (!strings.Contains(id, "-2cpu") || rep.Machine.CPUs >= 2) {
			t.Errorf("case %s did not run", id)
		}
	}
	for _, c := range rep.Cases {
		if c.Policy == bench.PolicyProxyReceivers && c.Kind == bench.KindPingPong {
			// Proxy receivers only: the echo back into the app (uid 0) stays on TCP.
			if c.Sum(bench.ModeOn).Passthrough[datapath.ReasonUnsafeRx] == 0 {
				t.Errorf("case %s: the reply into the app was not counted as unsafe_receiver: %+v", c.ID, c.Sum(bench.ModeOn))
			}
		}
	}
	if _, err := json.Marshal(rep); err != nil {
		t.Fatal(err)
	}
	wantNoLeftovers(t, rep.ID)
}

// TestCancel stops a run midway: Run returns the context's error and
// leaves nothing behind.
func TestCancel(t *testing.T) {
	requireRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	rep, err := bench.Run(ctx, bench.Config{Cases: []string{"bulk-1cpu-1KiB"}, Rounds: 50})
	if err == nil {
		t.Fatal("a cancelled run returned no error")
	}
	wantNoLeftovers(t, rep.ID)
}

// wantNoLeftovers checks that the run's pins, cgroups, namespaces and
// peer processes are gone (its names carry its id).
func wantNoLeftovers(t *testing.T, id string) {
	t.Helper()
	if id == "" {
		t.Fatal("the report has no run id")
	}
	mount, err := testbed.CgroupMount()
	if err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{bench.PinRootPrefix + id, filepath.Join(mount, "sockhop-test-"+id)} {
		if _, err := os.Stat(path); !os.IsNotExist(err) {
			t.Errorf("%s is left behind (stat: %v)", path, err)
		}
	}
	nses, _ := os.ReadDir("/run/netns")
	for _, ns := range nses {
		if strings.Contains(ns.Name(), id) {
			t.Errorf("network namespace %s is left behind", ns.Name())
		}
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/environ")
	for _, p := range procs {
		env, err := os.ReadFile(p)
		if err == nil && strings.Contains(string(env), testbed.PeerEnv+"=") && strings.Contains(string(env), id) {
			t.Errorf("peer process %s is left behind", filepath.Dir(p))
		}
	}
}

// BenchmarkDatapath runs the full suite once and reports every case's
// figures as sub-benchmark metrics:
//
//	go test -run '^$' -bench BenchmarkDatapath -benchtime 1x -timeout 60m ./pkg/bench
//
// SOCKHOP_BENCH_OUT=dir also writes report.md and report.json there;
// SOCKHOP_BENCH_CASES=id,id restricts the cases.
func BenchmarkDatapath(b *testing.B) {
	requireRoot(b)
	cfg := bench.Config{Progress: func(id string) { b.Logf("measuring %s", id) }}
	if v := os.Getenv("SOCKHOP_BENCH_CASES"); v != "" {
		cfg.Cases = strings.Split(v, ",")
	}
	rep, err := bench.Run(context.Background(), cfg)
	if err != nil {
		b.Error(err)
	}
	if err := rep.Verify(); err != nil {
		b.Error(err)
	}
	if dir := os.Getenv("SOCKHOP_BENCH_OUT"); dir != "" {
		js, _ := json.MarshalIndent(rep, "", "  ")
		if err := os.WriteFile(filepath.Join(dir, "report.json"), js, 0o644); err != nil {
			b.Error(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "report.md"), []byte(rep.Markdown()), 0o644); err != nil {
			b.Error(err)
		}
	}
	b.Logf("\n%s", rep.Markdown())
	for _, c := range rep.Cases {
		if c.Error != "" {
			continue
		}
		b.Run(c.ID, func(b *testing.B) {
			for _, m := range c.Metrics {
				unit := strings.ReplaceAll(m.Unit, "/", "-per-")
				b.ReportMetric(m.Off, "off-"+m.Name+"-"+unit)
				b.ReportMetric(m.On, "on-"+m.Name+"-"+unit)
				b.ReportMetric(m.Ratio, "ratio-"+m.Name)
			}
			on := c.Sum(bench.ModeOn)
			b.ReportMetric(float64(on.RedirectedBytes), "on-redirected-B")
			b.ReportMetric(float64(on.Passthrough[datapath.ReasonBackpressure]), "on-backpressure")
		})
	}
}
