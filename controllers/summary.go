package controllers

import (
	"context"
	"maps"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/sockhop/sockhop/pkg/datapath"
)

// Reasons of the per-pod summary Events.
const (
	// ReasonAccelerating: some of the pod's directions were redirected.
	ReasonAccelerating = "Accelerating"
	// ReasonNotAccelerating: the pod's sockets were seen for a while, but
	// none of its directions was redirected (yet).
	ReasonNotAccelerating = "NotAccelerating"
)

// Defaults of the PodSummaryReporter's timing.
const (
	// DefaultSummaryPeriod is how often the per-pod counters are read.
	DefaultSummaryPeriod = 10 * time.Second
	// DefaultSummaryMinInterval is the least time between two summaries of
	// one pod, and how long its sockets are seen before NotAccelerating is
	// said (most directions switch to redirect within their first reads).
	DefaultSummaryMinInterval = time.Minute
	// DefaultSummaryRepeatInterval is the least time between two summaries
	// of one pod with the same reason. The events.k8s.io recorder folds an
	// Event into the series of an earlier one with the same regarding
	// object, type, reason and action for up to 12 minutes (client-go
	// tools/events: 6-minute series, swept every 6 minutes), keeping the
	// earlier note: a summary repeated sooner would never be read.
	DefaultSummaryRepeatInterval = 15 * time.Minute
	// DefaultSummaryMaxInterval: the repeat interval doubles with each
	// summary of the same reason, up to this.
	DefaultSummaryMaxInterval = time.Hour
)

// PodStatsSource is what the summary reporter reads of the datapath
// (*datapath.Datapath).
type PodStatsSource interface {
	Attachments() ([]datapath.Attachment, error)
	PodStats() (map[uint64]datapath.PodStats, error)
}

// PodSummaryReporter tells, by an Event on each attached pod, what was
// accelerated in it: connections paired, directions redirected, and what
// stayed on TCP and why (the datapath's per-pod counters, totals since the
// pod was attached). Never one Event per connection, and only when the
// counters moved since the last summary:
//   - Accelerating as soon as one of the pod's directions was redirected;
//   - NotAccelerating once the pod's sockets were seen for MinInterval
//     without any direction redirected;
//   - the same reason again no sooner than RepeatInterval, doubling with
//     each repeat up to MaxInterval, or RepeatInterval again when the note
//     names a reason (kept on TCP, not paired) the last one did not;
//   - never two summaries of one pod within MinInterval.
type PodSummaryReporter struct {
	Source   PodStatsSource
	Client   client.Client // the manager's cache, with the pod UID index
	Recorder EventRecorder
	// The timing; 0 means the Default* above.
	Period, MinInterval, RepeatInterval, MaxInterval time.Duration
	// Now is the clock (tests); nil means time.Now.
	Now func() time.Time

	pods map[uint64]*summaryState // by attach cgroup id
}

type summaryState struct {
	uid     string
	seen    time.Time         // when its counters first moved
	told    datapath.PodStats // counters in the last summary
	reason  string            // of the last summary
	reasons map[string]bool   // reasons the last summary named
	at      time.Time         // of the last summary
	every   time.Duration     // before the same reason again
}

// NeedLeaderElection: every node's agent reports its own pods.
func (s *PodSummaryReporter) NeedLeaderElection() bool { return false }

// Start runs until ctx ends.
func (s *PodSummaryReporter) Start(ctx context.Context) error {
	return every(ctx, s.Period, DefaultSummaryPeriod, "report per-pod summaries", s.Report)
}

// Report emits the summaries that are due.
func (s *PodSummaryReporter) Report(ctx context.Context) error {
	now := time.Now
	if s.Now != nil {
		now = s.Now
	}
	minEvery := orDefault(s.MinInterval, DefaultSummaryMinInterval)
	repeat := orDefault(s.RepeatInterval, DefaultSummaryRepeatInterval)
	maxEvery := max(orDefault(s.MaxInterval, DefaultSummaryMaxInterval), repeat)
	if s.pods == nil {
		s.pods = map[uint64]*summaryState{}
	}
	atts, err := s.Source.Attachments()
	if err != nil {
		return err
	}
	stats, err := s.Source.PodStats()
	if err != nil {
		return err
	}
	live := map[uint64]bool{}
	for _, a := range atts {
		uid, ok := podUIDFromCgroup(a.CgroupPath)
		st, have := stats[a.CgroupID]
		if !ok || !have || !a.Live {
			continue
		}
		live[a.CgroupID] = true
		ps := s.pods[a.CgroupID]
		if ps == nil || ps.uid != uid {
			ps = &summaryState{uid: uid}
			s.pods[a.CgroupID] = ps
		}
		if statsEqual(st, ps.told) {
			continue // nothing new
		}
		t := now()
		if ps.seen.IsZero() {
			ps.seen = t
		}
		reason, note, reasons := Summary(st)
		switch {
		case !ps.at.IsZero() && t.Sub(ps.at) < minEvery:
			continue
		case reason == ReasonNotAccelerating && t.Sub(ps.seen) < minEvery:
			continue // its directions may switch yet
		case reason == ps.reason:
			since := t.Sub(ps.at)
			if !subset(reasons, ps.reasons) && since >= repeat {
				ps.every = repeat // news: and often again for a while
			} else if since < ps.every {
				continue
			}
		default:
			ps.every = repeat // a new verdict
		}
		var pods corev1.PodList
		if err := s.Client.List(ctx, &pods, client.MatchingFields{podUIDField: uid}); err != nil || len(pods.Items) == 0 {
			continue // not in the cache (yet): next time
		}
		s.Recorder.Eventf(&pods.Items[0], nil, corev1.EventTypeNormal, reason, "Summary", "%s", note)
		if reason == ps.reason {
			ps.every = min(2*ps.every, maxEvery)
		}
		ps.told, ps.reason, ps.reasons, ps.at = st, reason, reasons, t
	}
	for id := range s.pods {
		if !live[id] {
			delete(s.pods, id) // detached: a new attachment starts afresh
		}
	}
	return nil
}

func statsEqual(a, b datapath.PodStats) bool {
	return a.Connections == b.Connections && a.Directions == b.Directions && a.Redirected == b.Redirected &&
		a.Poisoned == b.Poisoned && a.Retired == b.Retired &&
		maps.Equal(nonZero(a.OnTCP), nonZero(b.OnTCP)) && maps.Equal(nonZero(a.Unpaired), nonZero(b.Unpaired))
}

func nonZero(m map[string]uint64) map[string]uint64 {
	out := map[string]uint64{}
	for k, v := range m {
		if v != 0 {
			out[k] = v
		}
	}
	return out
}

func subset(a, b map[string]bool) bool {
	for k := range a {
		if !b[k] {
			return false
		}
	}
	return true
}

// Summary says in words what the counters of one pod tell: the Event
// reason (Accelerating, or NotAccelerating while no direction was
// redirected), its note, and the reasons the note names, e.g. "since
// attach: 12 connections paired, 20 of 24 directions redirected; on TCP for
// good: 2 back-pressure, 2 receiver guard; 14 sockets not paired: 14 peer
// not in an accelerated pod of this node".
func Summary(st datapath.PodStats) (reason, note string, reasons map[string]bool) {
	if st.Redirected == 0 {
		return ReasonNotAccelerating, "attached, but no direction was redirected yet: " + st.String(), st.Reasons()
	}
	return ReasonAccelerating, "since attach: " + st.String(), st.Reasons()
}
