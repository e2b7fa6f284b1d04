package metrics

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/sockhop/sockhop/pkg/datapath"
)

// counters is a CounterSource that returns what the test sets.
type counters struct {
	c   datapath.Counters
	err error
}

func (c *counters) Counters() (datapath.Counters, error) { return c.c, c.err }

func TestMetrics(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	m := New("v1.2.3")
	if err := m.Register(reg); err != nil {
		t.Fatal(err)
	}
	src := &counters{c: datapath.Counters{
		PairedSockets: 4, RedirectedMessages: 10, RedirectedBytes: 640,
		Passthrough: map[string]uint64{"no_peer": 2, "excluded_port": 1},
		MapErrors:   map[string]uint64{"sockhash_update": 3},
	}}
	m.SetCounterSource(src)
	m.Attached(3 * time.Millisecond)
	m.Attached(-1) // an update: counted, not observed
	m.AttachFailed()
	m.DatapathError(OpSetPodIPs)
	m.SetPodsAccelerated(7)
	ready := true
	m.SetReadiness(func() bool { return ready })

	want := `
# HELP sockhop_attach_total Attach operations on pod cgroups, by result.
# TYPE sockhop_attach_total counter
sockhop_attach_total{result="failure"} 1
sockhop_attach_total{result="success"} 2
# HELP sockhop_build_info Always 1; the version label is the agent's version.
# TYPE sockhop_build_info gauge
sockhop_build_info{version="v1.2.3"} 1
# HELP sockhop_datapath_errors_total Failed datapath operations, by operation: map operations inside the BPF programs and the agent's attach, detach and map updates.
# TYPE sockhop_datapath_errors_total counter
sockhop_datapath_errors_total{op="attach"} 1
sockhop_datapath_errors_total{op="set_pod_ips"} 1
sockhop_datapath_errors_total{op="sockhash_update"} 3
# HELP sockhop_datapath_ready 1 while the agent is ready (/readyz): datapath loaded, node converged, pins readable; 0 when not (yet), or degraded.
# TYPE sockhop_datapath_ready gauge
sockhop_datapath_ready 1
# HELP sockhop_paired_sockets_total Sockets put into the sockhash (two per accelerated connection).
# TYPE sockhop_paired_sockets_total counter
sockhop_paired_sockets_total 4
# HELP sockhop_passthrough_total Connections or directions of accelerated pods left on TCP, by reason.
# TYPE sockhop_passthrough_total counter
sockhop_passthrough_total{reason="excluded_port"} 1
sockhop_passthrough_total{reason="no_peer"} 2
# HELP sockhop_pods_accelerated Pods of this node whose cgroup the sockops program is attached to.
# TYPE sockhop_pods_accelerated gauge
sockhop_pods_accelerated 7
# HELP sockhop_redirected_bytes_total Bytes moved straight into the peer socket, skipping TCP.
# TYPE sockhop_redirected_bytes_total counter
sockhop_redirected_bytes_total 640
# HELP sockhop_redirected_messages_total sendmsg calls moved straight into the peer socket, skipping TCP.
# TYPE sockhop_redirected_messages_total counter
sockhop_redirected_messages_total 10
`
	names := []string{"sockhop_attach_total", "sockhop_build_info", "sockhop_datapath_errors_total", "sockhop_datapath_ready",
		"sockhop_paired_sockets_total", "sockhop_passthrough_total", "sockhop_pods_accelerated",
		"sockhop_redirected_bytes_total", "sockhop_redirected_messages_total"}
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), names...); err != nil {
		t.Error(err)
	}
	if n := testutil.CollectAndCount(m.attachLatency); n != 1 {
		t.Errorf("latency histogram series = %d", n)
	}
	if got := m.AttachCount(ResultSuccess); got != 2 {
		t.Errorf("AttachCount(success) = %d, want 2", got)
	}

	// Readiness is read at scrape time too: an agent that stops being
	// ready says so without anyone clearing the gauge.
	ready = false
	if err := testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP sockhop_datapath_ready 1 while the agent is ready (/readyz): datapath loaded, node converged, pins readable; 0 when not (yet), or degraded.
# TYPE sockhop_datapath_ready gauge
sockhop_datapath_ready 0
`), "sockhop_datapath_ready"); err != nil {
		t.Error(err)
	}

	// Counters read at scrape time: a change shows without any call.
	src.c.RedirectedBytes = 1000
	if err := testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP sockhop_redirected_bytes_total Bytes moved straight into the peer socket, skipping TCP.
# TYPE sockhop_redirected_bytes_total counter
sockhop_redirected_bytes_total 1000
`), "sockhop_redirected_bytes_total"); err != nil {
		t.Error(err)
	}

	// A failed read drops the mirrored series, counts the failure, and
	// does not fail the scrape.
	src.err = errors.New("map gone")
	if err := testutil.GatherAndCompare(reg, strings.NewReader(`
# HELP sockhop_datapath_errors_total Failed datapath operations, by operation: map operations inside the BPF programs and the agent's attach, detach and map updates.
# TYPE sockhop_datapath_errors_total counter
sockhop_datapath_errors_total{op="attach"} 1
sockhop_datapath_errors_total{op="read_counters"} 1
sockhop_datapath_errors_total{op="set_pod_ips"} 1
`), "sockhop_datapath_errors_total", "sockhop_redirected_bytes_total"); err != nil {
		t.Error(err)
	}

	// A degraded agent has no source.
	m.SetCounterSource(nil)
	if n, err := testutil.GatherAndCount(reg, "sockhop_redirected_bytes_total"); err != nil || n != 0 {
		t.Errorf("degraded: %d redirected bytes series, %v", n, err)
	}
}

func TestHistogramBucketsStartAtOneMillisecond(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := New("dev")
	if err := m.Register(reg); err != nil {
		t.Fatal(err)
	}
	m.Attached(500 * time.Microsecond)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "sockhop_attach_latency_seconds" {
			continue
		}
		b := mf.GetMetric()[0].GetHistogram().GetBucket()
		if b[0].GetUpperBound() != 0.001 || b[0].GetCumulativeCount() != 1 {
			t.Errorf("first bucket = %v ≤ %v, want 1 ≤ 0.001", b[0].GetCumulativeCount(), b[0].GetUpperBound())
		}
		return
	}
	t.Error("no sockhop_attach_latency_seconds")
}

// fillCounters also knows how full its maps are, as the datapath does.
type fillCounters struct {
	counters
	fills []datapath.MapFill
}

func (f *fillCounters) MapFill() ([]datapath.MapFill, error) { return f.fills, nil }

func TestGuardAndMapPressure(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	m := New("v1")
	if err := m.Register(reg); err != nil {
		t.Fatal(err)
	}
	m.SetCounterSource(&fillCounters{
		counters: counters{c: datapath.Counters{Switches: 5, UnsafeReceivers: 2, Stranded: 1, Aborted: 1, Retired: 3, ZeroCopyRefused: 4, ULPRefused: 6}},
		fills:    []datapath.MapFill{{Name: "sockhash", Entries: 40, Capacity: 262144}, {Name: "pending", Entries: 0, Capacity: 131072}},
	})
	want := `
# HELP sockhop_guard_events_total What the receiver guard and back-pressure did, by event: switch (a direction moved from TCP to redirect), unsafe_receiver (a paired receiver seen splicing or reading with MSG_WAITALL), stranded (...while redirected bytes were unread), aborted (a stranded receiver's connection aborted, both ends see an error), retired (a socket left the sockhash to send as plain TCP), zerocopy_refused (SO_ZEROCOPY refused on a socket in the sockhash: its sender falls back to plain sends), ulp_refused (TCP_ULP, kTLS, refused on a socket in the sockhash: the program does without kTLS).
# TYPE sockhop_guard_events_total counter
sockhop_guard_events_total{event="aborted"} 1
sockhop_guard_events_total{event="retired"} 3
sockhop_guard_events_total{event="stranded"} 1
sockhop_guard_events_total{event="switch"} 5
sockhop_guard_events_total{event="ulp_refused"} 6
sockhop_guard_events_total{event="unsafe_receiver"} 2
sockhop_guard_events_total{event="zerocopy_refused"} 4
# HELP sockhop_map_capacity Capacity of those maps (--max-connections): past it new connections stay on TCP.
# TYPE sockhop_map_capacity gauge
sockhop_map_capacity{map="pending"} 131072
sockhop_map_capacity{map="sockhash"} 262144
# HELP sockhop_map_entries Entries in the maps that bound acceleration (sockhash, receivers, pending).
# TYPE sockhop_map_entries gauge
sockhop_map_entries{map="pending"} 0
sockhop_map_entries{map="sockhash"} 40
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want), "sockhop_guard_events_total", "sockhop_map_capacity", "sockhop_map_entries"); err != nil {
		t.Error(err)
	}
}
