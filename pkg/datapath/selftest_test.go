package datapath_test

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/sockhop/sockhop/pkg/datapath"
)

// The self-test runs on the real kernel; what it must find is what the
// hazard tests (hazard_test.go) found on this kernel (6.18): splice and
// MSG_WAITALL miss redirected data, TCP_INFO misses redirected bytes, and
// back-pressure is absent without sockhop's bound and restored with it. A
// kernel that fixes one of them makes this test fail on purpose: update
// docs/hazards.md, and consider Options.AppReceivers.
func TestSelfTest(t *testing.T) {
	requireRoot(t)
	nsBefore := netnsCount(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rep, err := datapath.SelfTest(ctx)
	if err != nil {
		t.Fatalf("%v\npartial report:\n%v", err, rep)
	}
	t.Logf("\n%v", rep)

	want := map[datapath.Hazard]datapath.HazardStatus{
		datapath.HazardSplice:       datapath.HazardPresent,
		datapath.HazardWaitAll:      datapath.HazardPresent,
		datapath.HazardBackpressure: datapath.HazardGuarded,
		datapath.HazardTCPInfo:      datapath.HazardPresent,
	}
	if len(rep.Results) != len(datapath.Hazards) {
		t.Fatalf("report has %d results, want one per hazard (%d)", len(rep.Results), len(datapath.Hazards))
	}
	for i, h := range datapath.Hazards {
		res := rep.Results[i]
		if res.Hazard != h || res.Detail == "" || strings.Contains(res.Detail, "\n") {
			t.Errorf("result %d: want hazard %s with a one-line detail, got %+v", i, h, res)
		}
		if res.Status != want[h] {
			t.Errorf("%s: status %s, want %s on this kernel (%s): %s", h, res.Status, want[h], rep.Kernel, res.Detail)
		}
	}
	if rep.AppReceiversSafe() {
		t.Errorf("the report calls application receivers safe on a kernel where splice and MSG_WAITALL miss redirected data")
	}
	if rep.Elapsed > 2*time.Second {
		t.Errorf("the self-test took %v, want well under 2 s", rep.Elapsed)
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
