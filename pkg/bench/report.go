package bench

import (
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/sockhop/sockhop/pkg/datapath"
)

// Report is the outcome of one Run: every case's OFF and ON figures,
// measured side by side.
type Report struct {
	// ID is the run's random suffix, in the names of everything it made.
	ID    string `json:"id"`
	Quick bool   `json:"quick"`
	// Rounds is how many measured rounds each case ran per mode.
	Rounds   int           `json:"rounds"`
	Started  time.Time     `json:"started"`
	Duration time.Duration `json:"duration_ns"`
	Machine  Machine       `json:"machine"`
	Cases    []CaseResult  `json:"cases"`
}

// Machine describes where the report was measured.
type Machine struct {
	Kernel string `json:"kernel"`
	CPUs   int    `json:"cpus"`
	// LoadBefore and LoadAfter are /proc/loadavg's 1-minute figures: other
	// work on the machine skews both modes, and says how far to trust them.
	LoadBefore float64 `json:"load_before"`
	LoadAfter  float64 `json:"load_after"`
}

// Case kinds.
const (
	KindPingPong = "pingpong" // one connection, request/response of Size bytes
	KindChain    = "chain"    // client → relay → server, ping-pong of Size bytes
	KindBulk     = "bulk"     // one connection, writes of Size bytes into a sink
	KindConnRate = "connrate" // connect, 1-byte round trip, close
	KindUnpaired = "unpaired" // ping-pong to a server in another namespace, never paired
	KindHTTP     = "http"     // keep-alive HTTP GETs through a proxy sidecar to a net/http server
)

// Receiver policies (the datapath Options a case ran with).
const (
	// PolicyDefault is what the agent runs with by default: any receiver,
	// behind the receiver guard, with the back-pressure bound.
	PolicyDefault = "default"
	// PolicyMechanism is the redirect alone: every direction from its
	// first byte, no receiver guard (Options.Unguarded) and so no syscall
	// guard, bounded.
	PolicyMechanism      = "mechanism"
	PolicyProxyReceivers = "proxy-receivers" // --app-receivers=false: redirect into uid 1337/2102/5678 only, guarded
	PolicyUnbounded      = "mechanism, no backlog limit"
	// PolicyNoSyscallGuard is the default without the syscall guard
	// (--syscall-guard=false): what the syscall tracepoints cost where
	// the kernel refuses fentry programs, and about what the default
	// gives where it runs them (the guard is then on the kernel
	// functions, which syscalls that do not read a socket never reach).
	PolicyNoSyscallGuard = "default, no syscall guard"
)

// syscallGuarded says whether a policy's datapath has the syscall guard.
// The mechanism redirects whatever its receiver does: there is nothing for
// the guard to mark.
func syscallGuarded(policy string) bool {
	switch policy {
	case PolicyMechanism, PolicyUnbounded, PolicyNoSyscallGuard:
		return false
	}
	return true
}

// What a case's ON rounds must show in the counters.
const (
	ExpectRedirect = "redirect" // ON rounds redirect bytes
	ExpectPaired   = "paired"   // ON rounds pair sockets (short connections need not redirect)
	ExpectRemote   = "remote"   // ON rounds redirect nothing and count remote passthrough
)

// Modes of a round.
const (
	ModeOff = "off" // the pod's cgroup is not attached
	ModeOn  = "on"  // attached
)

// CaseResult is one case's figures.
type CaseResult struct {
	// ID names the case: kind-placement-size, e.g. "pingpong-1cpu-64B".
	ID          string `json:"id"`
	Kind        string `json:"kind"`
	Description string `json:"description"`
	Size        int    `json:"size,omitempty"`
	// Placement: "1cpu" (every peer on CPU 0) or "2cpu" (client on 0, server on 1).
	Placement string   `json:"placement"`
	Policy    string   `json:"policy"`
	Expect    string   `json:"expect"`
	Metrics   []Metric `json:"metrics,omitempty"`
	Rounds    []Round  `json:"rounds,omitempty"`
	Error     string   `json:"error,omitempty"`
}

// Metric is one figure of a case with and without sockhop.
type Metric struct {
	Name string  `json:"name"` // p50, p99, throughput, rate
	Unit string  `json:"unit"` // us, MiB/s, conn/s
	Off  float64 `json:"off"`
	On   float64 `json:"on"`
	// Ratio is how many times better ON is: off/on for latencies, on/off
	// for throughput and rates. Above 1 means faster with sockhop. For a
	// case's headline metric (p50, throughput, rate) it is the median of
	// PairRatios, which compare rounds run back to back, so that the
	// machine's drift between pairs cancels; otherwise it is Off/On.
	Ratio float64 `json:"ratio"`
	// PairRatios are the ratios of each off/on pair of rounds.
	PairRatios []float64 `json:"pair_ratios,omitempty"`
	// LowerIsBetter is true for latencies.
	LowerIsBetter bool `json:"lower_is_better"`
}

// Round is one measured run of a case's client in one mode.
type Round struct {
	Mode string `json:"mode"`
	// Value is the round's headline figure in the first metric's unit
	// (p50 for latency cases).
	Value    float64       `json:"value"`
	Elapsed  time.Duration `json:"elapsed_ns"`
	Counters Counters      `json:"counters"`
	// Tracepoints: the node-wide tracepoints were attached during the
	// round (ON rounds: always; OFF rounds: never, as on a node without
	// sockhop).
	Tracepoints bool `json:"node_tracepoints"`
	// SyscallGuard is the form the syscall guard was attached in during
	// the round (datapath.SyscallGuard), "" when it was not.
	SyscallGuard string `json:"syscall_guard,omitempty"`
}

// Counters is what the datapath counted during one round.
type Counters struct {
	PairedSockets   uint64 `json:"paired_sockets"`
	RedirectedBytes uint64 `json:"redirected_bytes"`
	TCPBytes        uint64 `json:"tcp_bytes"`
	// Passthrough holds the non-zero reasons (datapath.Reason*).
	Passthrough map[string]uint64 `json:"passthrough,omitempty"`
	MapErrors   uint64            `json:"map_errors,omitempty"`
}

func diffCounters(before, after datapath.Counters) Counters {
	c := Counters{
		PairedSockets:   after.PairedSockets - before.PairedSockets,
		RedirectedBytes: after.RedirectedBytes - before.RedirectedBytes,
		TCPBytes:        after.TCPBytes - before.TCPBytes,
	}
	for k, v := range after.Passthrough {
		if d := v - before.Passthrough[k]; d != 0 {
			if c.Passthrough == nil {
				c.Passthrough = map[string]uint64{}
			}
			c.Passthrough[k] = d
		}
	}
	for k, v := range after.MapErrors {
		c.MapErrors += v - before.MapErrors[k]
	}
	return c
}

// Sum adds up the counters of the rounds in one mode.
func (c CaseResult) Sum(mode string) Counters {
	var s Counters
	for _, r := range c.Rounds {
		if r.Mode != mode {
			continue
		}
		s.PairedSockets += r.Counters.PairedSockets
		s.RedirectedBytes += r.Counters.RedirectedBytes
		s.TCPBytes += r.Counters.TCPBytes
		s.MapErrors += r.Counters.MapErrors
		for k, v := range r.Counters.Passthrough {
			if s.Passthrough == nil {
				s.Passthrough = map[string]uint64{}
			}
			s.Passthrough[k] += v
		}
	}
	return s
}

// Metric returns the case's metric of that name.
func (c CaseResult) Metric(name string) (Metric, bool) {
	for _, m := range c.Metrics {
		if m.Name == name {
			return m, true
		}
	}
	return Metric{}, false
}

// Verify checks that the report is sound, not that it is fast: every case
// ran without error in both modes, produced finite figures, and the
// counters show that ON rounds took the path the case is about while OFF
// rounds were untouched.
func (r Report) Verify() error {
	var errs []error
	if len(r.Cases) == 0 {
		errs = append(errs, errors.New("no case ran"))
	}
	for _, c := range r.Cases {
		if err := c.verify(); err != nil {
			errs = append(errs, fmt.Errorf("case %s: %w", c.ID, err))
		}
	}
	return errors.Join(errs...)
}

func (c CaseResult) verify() error {
	if c.Error != "" {
		return errors.New(c.Error)
	}
	var errs []error
	n := map[string]int{}
	for i, rd := range c.Rounds {
		n[rd.Mode]++
		cs := rd.Counters
		if cs.MapErrors != 0 {
			errs = append(errs, fmt.Errorf("round %d (%s): %d failed map operations", i, rd.Mode, cs.MapErrors))
		}
		if rd.Tracepoints != (rd.Mode == ModeOn) {
			errs = append(errs, fmt.Errorf("round %d (%s): node-wide tracepoints attached: %v (want them in ON rounds only: OFF is plain TCP as without sockhop)", i, rd.Mode, rd.Tracepoints))
		}
		if want := rd.Mode == ModeOn && syscallGuarded(c.Policy); (rd.SyscallGuard != "") != want {
			errs = append(errs, fmt.Errorf("round %d (%s): syscall guard %q, want one: %v (ON rounds of policy %q)", i, rd.Mode, rd.SyscallGuard, want, c.Policy))
		}
		switch {
		case rd.Mode == ModeOff:
			if cs.PairedSockets != 0 || cs.RedirectedBytes != 0 || len(cs.Passthrough) != 0 {
				errs = append(errs, fmt.Errorf("round %d (off): the datapath touched an unattached pod: %+v", i, cs))
			}
		case c.Expect == ExpectRedirect:
			if cs.RedirectedBytes == 0 || cs.PairedSockets == 0 {
				errs = append(errs, fmt.Errorf("round %d (on): nothing was redirected: %+v", i, cs))
			}
		case c.Expect == ExpectPaired:
			if cs.PairedSockets == 0 {
				errs = append(errs, fmt.Errorf("round %d (on): nothing was paired: %+v", i, cs))
			}
		case c.Expect == ExpectRemote:
			if cs.RedirectedBytes != 0 || cs.PairedSockets != 0 || cs.Passthrough[datapath.ReasonRemote] == 0 {
				errs = append(errs, fmt.Errorf("round %d (on): want no pairing and remote passthrough, got %+v", i, cs))
			}
		}
	}
	if n[ModeOff] == 0 || n[ModeOn] == 0 {
		errs = append(errs, fmt.Errorf("%d off and %d on rounds, want both", n[ModeOff], n[ModeOn]))
	}
	if len(c.Metrics) == 0 {
		errs = append(errs, errors.New("no figures"))
	}
	for _, m := range c.Metrics {
		for _, v := range []float64{m.Off, m.On, m.Ratio} {
			if v <= 0 || math.IsNaN(v) || math.IsInf(v, 0) {
				errs = append(errs, fmt.Errorf("metric %s: off %v on %v ratio %v", m.Name, m.Off, m.On, m.Ratio))
				break
			}
		}
	}
	return errors.Join(errs...)
}
