package bench

import (
	"encoding/json"
	"slices"
	"strings"
	"testing"

	"github.com/sockhop/sockhop/pkg/datapath"
)

func TestRoundModesInterleave(t *testing.T) {
	got := roundModes(3)
	want := []string{ModeOff, ModeOn, ModeOn, ModeOff, ModeOff, ModeOn}
	if !slices.Equal(got, want) {
		t.Fatalf("roundModes(3) = %v, want %v", got, want)
	}
}

func TestPercentileAndMedian(t *testing.T) {
	s := sortedCopy([]int64{9, 1, 8, 2, 7, 3, 6, 4, 5, 10})
	if p := percentile(s, 50); p != 5 {
		t.Errorf("p50 = %v, want 5", p)
	}
	if p := percentile(s, 99); p != 10 {
		t.Errorf("p99 = %v, want 10", p)
	}
	if p := percentile(nil, 50); p != 0 {
		t.Errorf("p50 of nothing = %v, want 0", p)
	}
	if m := median([]float64{3, 1, 2}); m != 2 {
		t.Errorf("median = %v, want 2", m)
	}
	lat := latencyMetric("p50", 50, []int64{20000, 20000}, []int64{10000, 10000})
	if lat.Off != 20 || lat.On != 10 || lat.Ratio != 2 || !lat.LowerIsBetter {
		t.Errorf("latency metric %+v, want 20 µs → 10 µs, ratio 2", lat)
	}
	thr := rateMetric("throughput", "MiB/s", []float64{100, 90, 110}, []float64{200, 210, 190})
	if thr.Off != 100 || thr.On != 200 || thr.Ratio != 2 {
		t.Errorf("rate metric %+v, want 100 → 200, ratio 2", thr)
	}
}

func TestPairRatiosFollowRoundsBackToBack(t *testing.T) {
	// A step in the machine's speed between the pairs: the medians of each
	// mode would claim 1.5x, the pairs see 1.0x.
	rounds := []Round{
		{Mode: ModeOff, Value: 1800}, {Mode: ModeOn, Value: 1800},
		{Mode: ModeOn, Value: 1800}, {Mode: ModeOff, Value: 1200},
		{Mode: ModeOff, Value: 1200}, {Mode: ModeOn, Value: 1200},
	}
	got := pairRatios(rounds, false)
	if !slices.Equal(got, []float64{1, 1.5, 1}) || median(got) != 1 {
		t.Fatalf("pair ratios %v (median %v), want [1 1.5 1] and 1", got, median(got))
	}
	if got := pairRatios(rounds[:2], true); !slices.Equal(got, []float64{1}) {
		t.Fatalf("latency pair ratios %v, want [1]", got)
	}
}

func TestSelected(t *testing.T) {
	for _, tc := range []struct {
		id      string
		filters []string
		want    bool
	}{
		{"pingpong-1cpu-64B", nil, true},
		{"pingpong-1cpu-64B", []string{"pingpong"}, true},
		{"pingpong-1cpu-64KiB", []string{"pingpong-1cpu-64B"}, false},
		{"app-proxy-pingpong-1cpu-1KiB", []string{"pingpong"}, false},
		{"bulk-1cpu-4KiB", []string{"bulk-1cpu"}, true},
		{"bulk-2cpu-4KiB", []string{"bulk-1cpu"}, false},
	} {
		if got := selected(tc.id, tc.filters); got != tc.want {
			t.Errorf("selected(%q, %q) = %v, want %v", tc.id, tc.filters, got, tc.want)
		}
	}
	ids := IDs()
	seen := map[string]bool{}
	for _, id := range ids {
		if seen[id] {
			t.Errorf("case id %s is used twice", id)
		}
		seen[id] = true
	}
}

// goodCase is a case whose counters show redirect in ON rounds only.
func goodCase() CaseResult {
	return CaseResult{
		ID: "pingpong-1cpu-64B", Kind: KindPingPong, Policy: PolicyDefault, Expect: ExpectRedirect,
		Metrics: []Metric{{Name: "p50", Unit: "us", Off: 14, On: 8, Ratio: 1.75, LowerIsBetter: true}},
		Rounds: []Round{
			{Mode: ModeOff, Value: 14},
			{Mode: ModeOn, Value: 8, Counters: Counters{PairedSockets: 2, RedirectedBytes: 1 << 20}, Tracepoints: true,
				SyscallGuard: "per-syscall tracepoints"},
		},
	}
}

func TestVerify(t *testing.T) {
	if err := (Report{Cases: []CaseResult{goodCase()}}).Verify(); err != nil {
		t.Fatalf("a sound report fails: %v", err)
	}
	for name, spoil := range map[string]func(*CaseResult){
		"off redirected":    func(c *CaseResult) { c.Rounds[0].Counters.RedirectedBytes = 1 },
		"on not redirected": func(c *CaseResult) { c.Rounds[1].Counters.RedirectedBytes = 0 },
		"no on round":       func(c *CaseResult) { c.Rounds = c.Rounds[:1] },
		"error":             func(c *CaseResult) { c.Error = "boom" },
		"zero figure":       func(c *CaseResult) { c.Metrics[0].On = 0 },
		"map errors":        func(c *CaseResult) { c.Rounds[1].Counters.MapErrors = 1 },
		"off traced":        func(c *CaseResult) { c.Rounds[0].Tracepoints = true },
		"on untraced":       func(c *CaseResult) { c.Rounds[1].Tracepoints = false },
		"on unguarded":      func(c *CaseResult) { c.Rounds[1].SyscallGuard = "" },
		"off guarded":       func(c *CaseResult) { c.Rounds[0].SyscallGuard = "sys_enter" },
		"guarded without":   func(c *CaseResult) { c.Policy = PolicyNoSyscallGuard },
		"mechanism guarded": func(c *CaseResult) { c.Policy = PolicyMechanism },
		"remote paired": func(c *CaseResult) {
			c.Expect = ExpectRemote
			c.Rounds[1].Counters.Passthrough = map[string]uint64{datapath.ReasonRemote: 1}
		},
	} {
		c := goodCase()
		spoil(&c)
		if err := (Report{Cases: []CaseResult{c}}).Verify(); err == nil {
			t.Errorf("%s: Verify passed", name)
		}
	}
	bare := goodCase()
	bare.Policy, bare.Rounds[1].SyscallGuard = PolicyNoSyscallGuard, ""
	if err := (Report{Cases: []CaseResult{bare}}).Verify(); err != nil {
		t.Errorf("a sound case without the syscall guard fails: %v", err)
	}
	remote := goodCase()
	remote.Expect = ExpectRemote
	remote.Rounds[1].Counters = Counters{Passthrough: map[string]uint64{datapath.ReasonRemote: 1}}
	if err := (Report{Cases: []CaseResult{remote}}).Verify(); err != nil {
		t.Errorf("a sound unpaired case fails: %v", err)
	}
	if err := (Report{}).Verify(); err == nil {
		t.Error("an empty report passes")
	}
}

func TestMarkdownAndJSON(t *testing.T) {
	c := goodCase()
	c.Rounds[1].Counters.Passthrough = map[string]uint64{datapath.ReasonBackpressure: 3}
	rep := Report{Machine: Machine{Kernel: "6.18", CPUs: 2}, Rounds: 1, Cases: []CaseResult{c,
		{ID: "bulk-1cpu-1KiB", Error: "peer | died"}}}
	md := rep.Markdown()
	for _, want := range []string{
		"| pingpong-1cpu-64B | p50 (us) | 14.00 | 8.00 | 1.75× | 1.0 MiB / 0 B | backpressure 3 |",
		`| bulk-1cpu-1KiB | error | | | | | peer \| died |`,
		"Kernel 6.18, 2 CPUs",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("Markdown lacks %q:\n%s", want, md)
		}
	}
	js, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"redirected_bytes":1048576`, `"ratio":1.75`, `"backpressure":3`} {
		if !strings.Contains(string(js), want) {
			t.Errorf("JSON lacks %s: %s", want, js)
		}
	}
}
