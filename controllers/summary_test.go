package controllers

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	"github.com/sockhop/sockhop/pkg/datapath"
	"github.com/sockhop/sockhop/pkg/testbed"
)

// statsSource serves per-pod counters as the datapath would.
type statsSource struct {
	atts  []datapath.Attachment
	stats map[uint64]datapath.PodStats
}

func (s *statsSource) Attachments() ([]datapath.Attachment, error)     { return s.atts, nil }
func (s *statsSource) PodStats() (map[uint64]datapath.PodStats, error) { return s.stats, nil }

func TestSummaryWords(t *testing.T) {
	for _, c := range []struct {
		st     datapath.PodStats
		reason string
		note   string
	}{
		{
			datapath.PodStats{Connections: 12, Directions: 24, Redirected: 20,
				OnTCP:    map[string]uint64{datapath.ReasonBackpressure: 2, datapath.ReasonUnsafeRx: 2, datapath.ReasonNoPeer: 0},
				Unpaired: map[string]uint64{datapath.ReasonRemote: 14}},
			ReasonAccelerating,
			"since attach: 12 connections paired, 20 of 24 directions redirected; on TCP for good: 2 back-pressure, 2 receiver guard; 14 sockets not paired: 14 peer not in an accelerated pod of this node",
		},
		{
			datapath.PodStats{Unpaired: map[string]uint64{datapath.ReasonNoPeer: 10, datapath.ReasonExcluded: 4}},
			ReasonNotAccelerating,
			"attached, but no direction was redirected yet: no connection paired; 14 sockets not paired: 10 no peer end, 4 excluded port",
		},
		{
			datapath.PodStats{Connections: 1, Directions: 2, OnTCP: map[string]uint64{datapath.ReasonUnsafeRx: 2}},
			ReasonNotAccelerating,
			"attached, but no direction was redirected yet: 1 connection paired, 0 of 2 directions redirected; on TCP for good: 2 receiver guard",
		},
	} {
		reason, note, _ := Summary(c.st)
		if reason != c.reason || note != c.note {
			t.Errorf("Summary(%+v) =\n  %s: %s\nwant\n  %s: %s", c.st, reason, note, c.reason, c.note)
		}
	}
}

// One summary Event when a pod's counters first move, then at most one per
// interval (doubling), none while they do not move, one soon for news.
func TestPodSummaryRateLimited(t *testing.T) {
	const uid = "0f6a3c2e-5d4b-4a39-8e71-2c9b0d1e7f55"
	podDir := filepath.Join("/sys/fs/cgroup/kubepods/besteffort", "pod"+uid)
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "web-0", Namespace: "shop", UID: uid}}
	cl := fake.NewClientBuilder().WithObjects(pod).
		WithIndex(&corev1.Pod{}, podUIDField, func(o client.Object) []string { return []string{string(o.GetUID())} }).
		Build()
	src := &statsSource{
		atts:  []datapath.Attachment{{CgroupPath: podDir, CgroupID: 42, Live: true}},
		stats: map[uint64]datapath.PodStats{42: {}},
	}
	events := &hazardEventLog{}
	clock := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	s := &PodSummaryReporter{Source: src, Client: cl, Recorder: events, Now: func() time.Time { return clock }}
	ctx := context.Background()
	tick := func(d time.Duration) {
		t.Helper()
		clock = clock.Add(d)
		if err := s.Report(ctx); err != nil {
			t.Fatal(err)
		}
	}
	want := func(n int, reason, part string) {
		t.Helper()
		if len(events.events) != n {
			t.Fatalf("at +%s: want %d events, got %+v", clock.Sub(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)), n, events.events)
		}
		if reason == "" {
			return // only how many
		}
		e := events.events[n-1]
		if e.obj != "web-0" || e.typ != corev1.EventTypeNormal || e.reason != reason || !strings.Contains(e.note, part) {
			t.Fatalf("want a Normal %s event on web-0 containing %q: %+v", reason, part, e)
		}
	}
	set := func(st datapath.PodStats) { src.stats[42] = st }

	tick(0)
	want(0, "", "") // nothing happened yet: nothing to say
	// Sockets seen but nothing redirected: said after a minute (most
	// directions switch within their first reads).
	set(datapath.PodStats{Unpaired: map[string]uint64{datapath.ReasonNoPeer: 3}})
	for range 6 {
		tick(10 * time.Second)
	}
	want(0, "", "")
	tick(10 * time.Second)
	want(1, ReasonNotAccelerating, "3 sockets not paired: 3 no peer end")
	// More of the same: not before the repeat interval, 15 minutes.
	set(datapath.PodStats{Unpaired: map[string]uint64{datapath.ReasonNoPeer: 5}})
	tick(14*time.Minute + 50*time.Second)
	want(1, "", "")
	tick(10 * time.Second)
	want(2, ReasonNotAccelerating, "5 sockets not paired")
	// Unchanged counters: never again.
	tick(2 * time.Hour)
	want(2, "", "")
	// A new verdict is told at once (the last summary is over a minute
	// old)...
	set(datapath.PodStats{Connections: 2, Directions: 4, Redirected: 3, Unpaired: map[string]uint64{datapath.ReasonNoPeer: 5}})
	tick(10 * time.Second)
	want(3, ReasonAccelerating, "since attach: 2 connections paired, 3 of 4 directions redirected; 5 sockets not paired")
	// ...then the same reason again after 15, 30, 60, 60 minutes.
	for i, every := range []time.Duration{15 * time.Minute, 30 * time.Minute, time.Hour, time.Hour} {
		st := src.stats[42]
		st.Connections++
		set(st)
		tick(every - 10*time.Second)
		want(3+i, "", "")
		tick(10 * time.Second)
		want(4+i, ReasonAccelerating, "connections paired")
	}
	// A reason not named before is news: after 15 minutes, not 60.
	st := src.stats[42]
	st.OnTCP = map[string]uint64{datapath.ReasonBackpressure: 1}
	set(st)
	tick(14*time.Minute + 50*time.Second)
	want(7, "", "")
	tick(10 * time.Second)
	want(8, ReasonAccelerating, "on TCP for good: 1 back-pressure")

	// A detached pod is forgotten: attached again, its first summary
	// comes as soon as its counters move.
	src.atts, src.stats = nil, map[uint64]datapath.PodStats{}
	tick(time.Second)
	src.atts = []datapath.Attachment{{CgroupPath: podDir, CgroupID: 43, Live: true}}
	src.stats[43] = datapath.PodStats{Connections: 1, Directions: 2, Redirected: 2, Unpaired: map[string]uint64{datapath.ReasonRemote: 1}}
	tick(time.Second)
	want(9, ReasonAccelerating, "1 connection paired, 2 of 2 directions redirected; 1 socket not paired: 1 peer not in an accelerated pod")
}

// The summary Event of a pod lands in the API with what the real datapath
// counted for its real connections, and is not repeated within the
// interval however much more happens.
func TestPodSummaryEventInTheAPI(t *testing.T) {
	n := newTestNode(t)
	ns := n.namespace(true)
	web := n.pod(ns, "web", nil)
	n.mkCgroup(web)
	a := n.startAgent(agentOptions{})
	a.waitAttached(web)

	bed, err := testbed.New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := bed.Close(); err != nil {
			t.Error(err)
		}
	})
	netns, err := bed.NetNS("web")
	if err != nil {
		t.Fatal(err)
	}
	// Two containers of the pod talking over loopback: the pod's cgroup
	// (attached by the agent), a network namespace of the test's own;
	// as a sidecar's uid, which the agents' datapath here redirects into.
	if _, err := bed.Start(testbed.PeerSpec{Role: testbed.RoleServer, Mode: testbed.ModeStream, UID: 1337,
		NetNS: netns.Name, Cgroup: n.cgroupDir(web), Listen: []string{"127.0.0.1:8080"}}); err != nil {
		t.Fatal(err)
	}
	talk := func(conns int) {
		t.Helper()
		res, err := bed.Run(testbed.PeerSpec{Mode: testbed.ModeStream, UID: 1337, NetNS: netns.Name, Cgroup: n.cgroupDir(web),
			Target: "127.0.0.1:8080", Conns: conns, Parallel: conns, Bytes: 4 << 20, MaxWrite: 16 << 10})
		if err == nil {
			err = res.Err()
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	talk(2)

	clock := time.Now()
	s := &PodSummaryReporter{Source: a.dp, Client: a.rec.Client, Recorder: a.events, Now: func() time.Time { return clock }}
	report := func() {
		t.Helper()
		// The cache has the pod once it is attached; Report skips a pod
		// it cannot find there, so retry until it does.
		if err := s.Report(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 10*time.Second, func() (bool, string) {
		report()
		if a.events.count(web.UID, ReasonAccelerating) == 1 {
			return true, ""
		}
		a.events.mu.Lock()
		defer a.events.mu.Unlock()
		return false, fmt.Sprintf("no Accelerating summary yet: %+v", a.events.events)
	})
	a.waitEvent(web, corev1.EventTypeNormal, ReasonAccelerating, "since attach: 2 connections paired, ")
	a.waitEvent(web, corev1.EventTypeNormal, ReasonAccelerating, " of 4 directions redirected")

	// More connections: counted, not announced within the repeat
	// interval...
	talk(3)
	clock = clock.Add(DefaultSummaryRepeatInterval - time.Second)
	report()
	if got := a.events.count(web.UID, ReasonAccelerating); got != 1 {
		t.Fatalf("%d Accelerating summaries within %s, want 1", got, DefaultSummaryRepeatInterval)
	}
	// ...then the new totals. (The API server would show them only if the
	// repeat interval had really passed: the recorder folds a repeat
	// within 12 minutes into the first Event's series.)
	clock = clock.Add(time.Second)
	report()
	a.events.mu.Lock()
	last := a.events.events[len(a.events.events)-1]
	a.events.mu.Unlock()
	if last.reason != ReasonAccelerating || !strings.Contains(last.note, "since attach: 5 connections paired, ") {
		t.Fatalf("want a second summary with 5 connections: %+v", last)
	}
	// Why the repeat interval is what it is: sent within 12 minutes of
	// the first, the second summary only bumps the first one's series in
	// the API, its note lost.
	eventually(t, 15*time.Second, func() (bool, string) {
		var list eventsv1.EventList
		if err := a.node.client.List(context.Background(), &list, client.InNamespace(web.Namespace)); err != nil {
			return false, err.Error()
		}
		var seen []string
		for _, e := range list.Items {
			if e.Regarding.UID != web.UID || e.Reason != ReasonAccelerating {
				continue
			}
			if strings.Contains(e.Note, "5 connections") {
				t.Fatalf("the events recorder no longer folds a repeat into a series: the repeat interval can be shorter (%q)", e.Note)
			}
			if e.Series != nil && e.Series.Count >= 2 && strings.Contains(e.Note, "2 connections") {
				return true, ""
			}
			seen = append(seen, fmt.Sprintf("%s (series %+v)", e.Note, e.Series))
		}
		return false, fmt.Sprintf("no Accelerating event with a series of 2: %q", seen)
	})
}
