package datapath_test

import (
	"context"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sockhop/sockhop/pkg/datapath"
)

// The self-test runs on the real kernel; its report must be complete and
// consistent, whatever the kernel: each hazard either present or absent
// (the back-pressure one guarded or absent: never present, which would mean
// sockhop's bound failed), the app-receivers verdict following splice and
// MSG_WAITALL, and nothing left behind. What this kernel does is the hazard
// tests' business (hazard_test.go), not this test's.
func TestSelfTest(t *testing.T) {
	requireKernel(t)
	nsBefore := netnsCount(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rep, err := datapath.SelfTest(ctx)
	if err != nil {
		t.Fatalf("%v\npartial report:\n%v", err, rep)
	}
	t.Logf("\n%v", rep)

	allowed := map[datapath.Hazard][]datapath.HazardStatus{
		datapath.HazardSplice:       {datapath.HazardPresent, datapath.HazardAbsent},
		datapath.HazardWaitAll:      {datapath.HazardPresent, datapath.HazardAbsent},
		datapath.HazardBackpressure: {datapath.HazardGuarded, datapath.HazardAbsent},
		datapath.HazardTCPInfo:      {datapath.HazardPresent, datapath.HazardAbsent},
	}
	if len(rep.Results) != len(datapath.Hazards) {
		t.Fatalf("report has %d results, want one per hazard (%d)", len(rep.Results), len(datapath.Hazards))
	}
	safe := true
	for i, h := range datapath.Hazards {
		res := rep.Results[i]
		if res.Hazard != h || res.Detail == "" || strings.Contains(res.Detail, "\n") {
			t.Errorf("result %d: want hazard %s with a one-line detail, got %+v", i, h, res)
		}
		if !slices.Contains(allowed[h], res.Status) {
			t.Errorf("%s: status %s, want one of %v (%s): %s", h, res.Status, allowed[h], rep.Kernel, res.Detail)
		}
		if (h == datapath.HazardSplice || h == datapath.HazardWaitAll) && res.Status != datapath.HazardAbsent {
			safe = false
		}
	}
	if rep.AppReceiversSafe() != safe {
		t.Errorf("the report calls unguarded application receivers safe=%v, but its splice and MSG_WAITALL results say %v", rep.AppReceiversSafe(), safe)
	}
	if after := netnsCount(t); after != nsBefore {
		t.Errorf("network namespaces: %d before, %d after the self-test", nsBefore, after)
	}
}

// A cancelled context ends the self-test at once with an error.
func TestSelfTestCancelled(t *testing.T) {
	requireRoot(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	start := time.Now()
	if _, err := datapath.SelfTest(ctx); err == nil {
		t.Fatal("a cancelled self-test reported no error")
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("a cancelled self-test took %v", d)
	}
}

func TestSelfTestReportString(t *testing.T) {
	rep := datapath.SelfTestReport{Kernel: "6.18.0", Elapsed: 312 * time.Millisecond, Results: []datapath.HazardResult{
		{Hazard: datapath.HazardSplice, Status: datapath.HazardPresent, Detail: "splice() returned EAGAIN"},
		{Hazard: datapath.HazardWaitAll, Status: datapath.HazardAbsent, Detail: "full read"},
	}}
	s := rep.String()
	for _, want := range []string{"kernel 6.18.0", "312ms", "splice", "present", "msg_waitall", "absent", "full read"} {
		if !strings.Contains(s, want) {
			t.Errorf("report %q lacks %q", s, want)
		}
	}
	if rep.AppReceiversSafe() {
		t.Error("splice present, yet application receivers are called safe")
	}
	rep.Results[0].Status = datapath.HazardAbsent
	if !rep.AppReceiversSafe() {
		t.Error("splice and MSG_WAITALL absent, yet application receivers are not called safe")
	}
	if _, ok := rep.Result(datapath.HazardTCPInfo); ok {
		t.Error("Result found a hazard the report does not hold")
	}
}

// netnsCount counts the network namespaces of live processes and of
// `ip netns` (a leaked namespace shows up in one or the other).
func netnsCount(t *testing.T) int {
	t.Helper()
	seen := map[string]bool{}
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		if l, err := os.Readlink("/proc/" + p.Name() + "/ns/net"); err == nil {
			seen[l] = true
		}
		tasks, _ := os.ReadDir("/proc/" + p.Name() + "/task")
		for _, task := range tasks {
			if l, err := os.Readlink("/proc/" + p.Name() + "/task/" + task.Name() + "/ns/net"); err == nil {
				seen[l] = true
			}
		}
	}
	named, _ := os.ReadDir("/run/netns")
	return len(seen) + len(named)
}
