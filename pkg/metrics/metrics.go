// Package metrics defines the agent's Prometheus metrics. Counters kept by
// the datapath are read from it at scrape time, by a collector: there is no
// polling goroutine, and an idle node costs nothing between scrapes.
//
// No metric carries a pod name or any other per-pod label: the series count
// of a node does not grow with its pods.
package metrics

import (
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/sockhop/sockhop/pkg/datapath"
)

// Results in sockhop_attach_total.
const (
	ResultSuccess = "success"
	ResultFailure = "failure"
)

// Agent-side operations counted in sockhop_datapath_errors_total{op}, next
// to the datapath's own failed map operations.
const (
	OpAttach      = "attach"
	OpDetach      = "detach"
	OpAttachments = "list_attachments"
	OpSetPodIPs   = "set_pod_ips"
	OpCounters    = "read_counters"
)

// CounterSource is what the metrics read at scrape time: the loaded datapath.
type CounterSource interface {
	Counters() (datapath.Counters, error)
}

// Metrics are the agent's metrics. The zero value is not usable: call New.
type Metrics struct {
	podsAccelerated prometheus.Gauge
	attachTotal     *prometheus.CounterVec
	attachLatency   prometheus.Histogram
	datapathReady   prometheus.GaugeFunc
	ready           atomic.Pointer[func() bool]
	buildInfo       *prometheus.GaugeVec
	datapath        *datapathCollector
}

// New creates the metrics of an agent of the given version.
func New(version string) *Metrics {
	m := &Metrics{
		podsAccelerated: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "sockhop_pods_accelerated",
			Help: "Pods of this node whose cgroup the sockops program is attached to.",
		}),
		attachTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sockhop_attach_total",
			Help: "Attach operations on pod cgroups, by result.",
		}, []string{"result"}),
		attachLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "sockhop_attach_latency_seconds",
			Help: "Time from a pod's cgroup first being seen by the agent to the pod being attached.",
			// 1 ms to ~33 s.
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 16),
		}),
		buildInfo: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "sockhop_build_info",
			Help: "Always 1; the version label is the agent's version.",
		}, []string{"version"}),
		datapath: newDatapathCollector(),
	}
	m.datapathReady = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "sockhop_datapath_ready",
		Help: "1 while the agent is ready (/readyz): datapath loaded, node converged, pins readable; 0 when not (yet), or degraded.",
	}, func() float64 {
		if f := m.ready.Load(); f != nil && (*f)() {
			return 1
		}
		return 0
	})
	// Both results exist from the start, so that rate() sees the first failure.
	m.attachTotal.WithLabelValues(ResultSuccess)
	m.attachTotal.WithLabelValues(ResultFailure)
	m.buildInfo.WithLabelValues(version).Set(1)
	return m
}

// Register registers every metric with reg, e.g. controller-runtime's
// metrics.Registry.
func (m *Metrics) Register(reg prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{
		m.podsAccelerated, m.attachTotal, m.attachLatency, m.datapathReady, m.buildInfo, m.datapath,
	} {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

// SetCounterSource sets where the datapath counters are read at scrape
// time; nil (a degraded agent) reports none of them.
func (m *Metrics) SetCounterSource(src CounterSource) { m.datapath.setSource(src) }

// Attached counts a successful attach that took latency since the pod's
// cgroup was first seen; a negative latency (the pod was attached before,
// e.g. by an earlier agent) is not observed.
func (m *Metrics) Attached(latency time.Duration) {
	m.attachTotal.WithLabelValues(ResultSuccess).Inc()
	if latency >= 0 {
		m.attachLatency.Observe(latency.Seconds())
	}
}

// AttachFailed counts a failed attach.
func (m *Metrics) AttachFailed() {
	m.attachTotal.WithLabelValues(ResultFailure).Inc()
	m.DatapathError(OpAttach)
}

// AttachCount is the number of attach operations with that result.
func (m *Metrics) AttachCount(result string) uint64 {
	return uint64(counterValue(m.attachTotal.WithLabelValues(result)))
}

// SetPodsAccelerated sets how many pods are attached.
func (m *Metrics) SetPodsAccelerated(n int) { m.podsAccelerated.Set(float64(n)) }

// SetReadiness sets what sockhop_datapath_ready reads at scrape time: the
// agent's readiness check, so that the metric and /readyz never disagree.
// Until it is set the metric is 0.
func (m *Metrics) SetReadiness(ready func() bool) { m.ready.Store(&ready) }

// DatapathError counts a failed datapath operation of the agent.
func (m *Metrics) DatapathError(op string) { m.datapath.agentError(op) }

// datapathCollector mirrors the datapath's counters at scrape time and adds
// the agent's own failed datapath operations to the errors.
type datapathCollector struct {
	redirectedBytes    *prometheus.Desc
	redirectedMessages *prometheus.Desc
	tcpBytes           *prometheus.Desc
	pairedSockets      *prometheus.Desc
	passthrough        *prometheus.Desc
	errors             *prometheus.Desc
	guard              *prometheus.Desc
	mapEntries         *prometheus.Desc
	mapCapacity        *prometheus.Desc

	mu        sync.Mutex
	src       CounterSource
	agentErrs map[string]uint64
}

func newDatapathCollector() *datapathCollector {
	return &datapathCollector{
		redirectedBytes: prometheus.NewDesc("sockhop_redirected_bytes_total",
			"Bytes moved straight into the peer socket, skipping TCP.", nil, nil),
		redirectedMessages: prometheus.NewDesc("sockhop_redirected_messages_total",
			"sendmsg calls moved straight into the peer socket, skipping TCP.", nil, nil),
		tcpBytes: prometheus.NewDesc("sockhop_tcp_bytes_total",
			"Bytes paired sockets sent through TCP while in the sockhash (a direction not, or no longer, redirected; sockets retired to plain TCP are not counted).", nil, nil),
		pairedSockets: prometheus.NewDesc("sockhop_paired_sockets_total",
			"Sockets put into the sockhash (two per accelerated connection).", nil, nil),
		passthrough: prometheus.NewDesc("sockhop_passthrough_total",
			"Connections or directions of accelerated pods left on TCP, by reason.", []string{"reason"}, nil),
		errors: prometheus.NewDesc("sockhop_datapath_errors_total",
			"Failed datapath operations, by operation: map operations inside the BPF programs and the agent's attach, detach and map updates.", []string{"op"}, nil),
		guard: prometheus.NewDesc("sockhop_guard_events_total",
			"What the receiver guard and back-pressure did, by event: switch (a direction moved from TCP to redirect), unsafe_receiver (a paired receiver seen splicing or reading with MSG_WAITALL), stranded (...while redirected bytes were unread), aborted (a stranded receiver's connection aborted, both ends see an error), retired (a socket left the sockhash to send as plain TCP), zerocopy_refused (SO_ZEROCOPY refused on a socket in the sockhash: its sender falls back to plain sends), ulp_refused (TCP_ULP, kTLS, refused on a socket in the sockhash: the program does without kTLS).", []string{"event"}, nil),
		mapEntries: prometheus.NewDesc("sockhop_map_entries",
			"Entries in the maps that bound acceleration (sockhash, receivers, pending).", []string{"map"}, nil),
		mapCapacity: prometheus.NewDesc("sockhop_map_capacity",
			"Capacity of those maps (--max-connections): past it new connections stay on TCP.", []string{"map"}, nil),
		agentErrs: map[string]uint64{},
	}
}

// FillSource is what a CounterSource that also knows how full its maps
// are offers (the loaded datapath does).
type FillSource interface {
	MapFill() ([]datapath.MapFill, error)
}

func (c *datapathCollector) setSource(src CounterSource) {
	c.mu.Lock()
	c.src = src
	c.mu.Unlock()
}

func (c *datapathCollector) agentError(op string) {
	c.mu.Lock()
	c.agentErrs[op]++
	c.mu.Unlock()
}

func (c *datapathCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.redirectedBytes
	ch <- c.redirectedMessages
	ch <- c.tcpBytes
	ch <- c.pairedSockets
	ch <- c.passthrough
	ch <- c.errors
	ch <- c.guard
	ch <- c.mapEntries
	ch <- c.mapCapacity
}

func (c *datapathCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	src := c.src
	c.mu.Unlock()

	var (
		counters datapath.Counters
		ok       bool
	)
	if src != nil {
		var err error
		if counters, err = src.Counters(); err != nil {
			c.agentError(OpCounters)
		} else {
			ok = true
		}
	}

	errs := map[string]uint64{}
	c.mu.Lock()
	for op, n := range c.agentErrs {
		errs[op] += n
	}
	c.mu.Unlock()
	if ok {
		ch <- prometheus.MustNewConstMetric(c.redirectedBytes, prometheus.CounterValue, float64(counters.RedirectedBytes))
		ch <- prometheus.MustNewConstMetric(c.redirectedMessages, prometheus.CounterValue, float64(counters.RedirectedMessages))
		ch <- prometheus.MustNewConstMetric(c.tcpBytes, prometheus.CounterValue, float64(counters.TCPBytes))
		ch <- prometheus.MustNewConstMetric(c.pairedSockets, prometheus.CounterValue, float64(counters.PairedSockets))
		for _, reason := range sortedKeys(counters.Passthrough) {
			ch <- prometheus.MustNewConstMetric(c.passthrough, prometheus.CounterValue, float64(counters.Passthrough[reason]), reason)
		}
		for op, n := range counters.MapErrors {
			errs[op] += n
		}
		for _, g := range []struct {
			event string
			n     uint64
		}{{"switch", counters.Switches}, {"unsafe_receiver", counters.UnsafeReceivers}, {"stranded", counters.Stranded}, {"aborted", counters.Aborted}, {"retired", counters.Retired}, {"zerocopy_refused", counters.ZeroCopyRefused}, {"ulp_refused", counters.ULPRefused}} {
			ch <- prometheus.MustNewConstMetric(c.guard, prometheus.CounterValue, float64(g.n), g.event)
		}
		if fs, isFill := src.(FillSource); isFill {
			if fills, err := fs.MapFill(); err == nil {
				for _, f := range fills {
					ch <- prometheus.MustNewConstMetric(c.mapEntries, prometheus.GaugeValue, float64(f.Entries), f.Name)
					ch <- prometheus.MustNewConstMetric(c.mapCapacity, prometheus.GaugeValue, float64(f.Capacity), f.Name)
				}
			} else {
				errs[OpCounters]++
			}
		}
	}
	for _, op := range sortedKeys(errs) {
		ch <- prometheus.MustNewConstMetric(c.errors, prometheus.CounterValue, float64(errs[op]), op)
	}
}

func sortedKeys(m map[string]uint64) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// counterValue reads a counter's current value.
func counterValue(c prometheus.Counter) float64 {
	ch := make(chan prometheus.Metric, 1)
	c.Collect(ch)
	var pb dto.Metric
	if err := (<-ch).Write(&pb); err != nil {
		return 0
	}
	return pb.GetCounter().GetValue()
}
