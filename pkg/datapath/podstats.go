package datapath

import (
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/cilium/ebpf"
)

// PodStats is what happened to the connections of one attached pod since it
// was attached (its counters start at zero then). Counted once per
// connection event, never per message.
type PodStats struct {
	// Connections paired with an end in this pod: both ends joined the
	// sockhash. A connection inside the pod counts once.
	Connections uint64 `json:"connections"`
	// Directions are this pod's paired sockets, each the sending end of
	// one direction (two per connection inside the pod, one per
	// connection to another pod).
	Directions uint64 `json:"directions"`
	// Redirected counts directions that switched from TCP to redirect.
	Redirected uint64 `json:"redirected"`
	// OnTCP counts directions on TCP for good, by reason (ReasonNoPeer:
	// the peer left or retired, ReasonUnsafeRx: the receiver guard,
	// ReasonBackpressure). A direction that was redirected before counts
	// in both.
	OnTCP map[string]uint64 `json:"on_tcp"`
	// Poisoned counts directions kept on redirect for a receiver that
	// started splicing with redirected bytes unread (docs/hazards.md).
	Poisoned uint64 `json:"poisoned"`
	// Retired counts sockets that left the sockhash to send as plain TCP.
	Retired uint64 `json:"retired"`
	// Unpaired counts this pod's sockets that were not paired, by reason
	// (ReasonNoPeer: no peer end joined; ReasonRemote, ReasonExcluded,
	// ReasonHazard, ReasonPolicy, ReasonDataFlowed, ReasonMapFull,
	// ReasonZeroCopy, ReasonShortLived).
	Unpaired map[string]uint64 `json:"unpaired"`
}

// Reasons only the per-pod counters use.
const (
	ReasonPolicy  = "receiver_policy" // neither end is a receiver the policy allows
	ReasonMapFull = "map_full"        // a map refused the entry (full)
)

func podStatsOf(v *sockhopShPodst) PodStats {
	n := func(s sockhopShPodstStat) uint64 { return v.N[s] }
	return PodStats{
		Connections: n(sockhopShPodstStatSH_PODST_CONNS),
		Directions:  n(sockhopShPodstStatSH_PODST_DIRS),
		Redirected:  n(sockhopShPodstStatSH_PODST_SWITCHED),
		OnTCP: map[string]uint64{
			ReasonNoPeer:       n(sockhopShPodstStatSH_PODST_TX_NO_PEER),
			ReasonUnsafeRx:     n(sockhopShPodstStatSH_PODST_TX_UNSAFE_RX),
			ReasonBackpressure: n(sockhopShPodstStatSH_PODST_TX_BACKPRESSURE),
		},
		Poisoned: n(sockhopShPodstStatSH_PODST_POISONED),
		Retired:  n(sockhopShPodstStatSH_PODST_RETIRED),
		Unpaired: map[string]uint64{
			ReasonNoPeer:     n(sockhopShPodstStatSH_PODST_SKIP_NO_PEER),
			ReasonRemote:     n(sockhopShPodstStatSH_PODST_SKIP_REMOTE),
			ReasonExcluded:   n(sockhopShPodstStatSH_PODST_SKIP_EXCLUDED),
			ReasonHazard:     n(sockhopShPodstStatSH_PODST_SKIP_HAZARD),
			ReasonPolicy:     n(sockhopShPodstStatSH_PODST_SKIP_POLICY),
			ReasonDataFlowed: n(sockhopShPodstStatSH_PODST_SKIP_DATA),
			ReasonMapFull:    n(sockhopShPodstStatSH_PODST_SKIP_MAP_FULL),
			ReasonZeroCopy:   n(sockhopShPodstStatSH_PODST_SKIP_ZEROCOPY),
			ReasonShortLived: n(sockhopShPodstStatSH_PODST_SKIP_SHORT),
		},
	}
}

// PodStats reads the per-pod counters of every attached pod, by attach
// cgroup id. A datapath installed by a sockhop without them has none.
func (d *Datapath) PodStats() (map[uint64]PodStats, error) {
	out := map[uint64]PodStats{}
	if d.objs.SockhopPodst == nil {
		return out, nil
	}
	var (
		id uint64
		v  sockhopShPodst
	)
	iter := d.objs.SockhopPodst.Iterate()
	for iter.Next(&id, &v) {
		out[id] = podStatsOf(&v)
	}
	if err := iter.Err(); err != nil {
		return nil, fmt.Errorf("read per-pod counters: %w", err)
	}
	return out, nil
}

// addPodStats creates the zeroed counters of a pod, keeping those it has.
func (d *Datapath) addPodStats(id uint64) error {
	err := d.objs.SockhopPodst.Update(id, &sockhopShPodst{}, ebpf.UpdateNoExist)
	if err != nil && !errors.Is(err, ebpf.ErrKeyExist) {
		return fmt.Errorf("create per-pod counters of cgroup %d: %w", id, err)
	}
	return nil
}

// ensurePodStats gives every attached pod its counters: pods attached by a
// sockhop without them, or whose counters stayed with maps of another
// layout (see retireMaps), count from now on.
func (d *Datapath) ensurePodStats() error {
	var (
		id  uint64
		pod sockhopShPod
		ids []uint64
	)
	iter := d.objs.SockhopPods.Iterate()
	for iter.Next(&id, &pod) {
		ids = append(ids, id)
	}
	if err := iter.Err(); err != nil {
		return fmt.Errorf("list pods: %w", err)
	}
	for _, id := range ids {
		if err := d.addPodStats(id); err != nil {
			return err
		}
	}
	return nil
}

// What each reason means in words.
var (
	onTCPWords = map[string]string{
		ReasonBackpressure: "back-pressure",
		ReasonUnsafeRx:     "receiver guard",
		ReasonNoPeer:       "peer left",
	}
	unpairedWords = map[string]string{
		ReasonNoPeer:     "no peer end",
		ReasonRemote:     "peer not in an accelerated pod of this node",
		ReasonExcluded:   "excluded port",
		ReasonHazard:     "container seen splicing or waiting for all",
		ReasonPolicy:     "receiver policy",
		ReasonDataFlowed: "data before the handshake ended",
		ReasonMapFull:    "maps full",
		ReasonZeroCopy:   "SO_ZEROCOPY sender",
		ReasonShortLived: "short-lived connections to that port",
	}
)

// String says the counters in words, e.g. "12 connections paired, 20 of 24
// directions redirected; on TCP for good: 2 back-pressure, 2 receiver
// guard; 14 sockets not paired: 14 peer not in an accelerated pod of this
// node". Reasons are listed largest first.
func (s PodStats) String() string {
	var b strings.Builder
	if s.Directions == 0 {
		b.WriteString("no connection paired")
	} else {
		fmt.Fprintf(&b, "%d connection%s paired, %d of %d directions redirected", s.Connections, plural(s.Connections), s.Redirected, s.Directions)
	}
	if part := countsInWords(s.OnTCP, onTCPWords); part != "" {
		b.WriteString("; on TCP for good: " + part)
	}
	if s.Poisoned > 0 {
		fmt.Fprintf(&b, "; %d kept on redirect for a receiver that started splicing (docs/hazards.md)", s.Poisoned)
	}
	var unpaired uint64
	for _, n := range s.Unpaired {
		unpaired += n
	}
	if unpaired > 0 {
		fmt.Fprintf(&b, "; %d socket%s not paired: %s", unpaired, plural(unpaired), countsInWords(s.Unpaired, unpairedWords))
	}
	return b.String()
}

// Reasons are the reasons with a non-zero count, as "on_tcp/<reason>",
// "unpaired/<reason>" and "poisoned".
func (s PodStats) Reasons() map[string]bool {
	out := map[string]bool{}
	for k, v := range s.OnTCP {
		if v != 0 {
			out["on_tcp/"+k] = true
		}
	}
	for k, v := range s.Unpaired {
		if v != 0 {
			out["unpaired/"+k] = true
		}
	}
	if s.Poisoned != 0 {
		out["poisoned"] = true
	}
	return out
}

// countsInWords lists the non-zero counts, largest first.
func countsInWords(counts map[string]uint64, words map[string]string) string {
	keys := slices.Collect(maps.Keys(counts))
	keys = slices.DeleteFunc(keys, func(k string) bool { return counts[k] == 0 })
	slices.SortFunc(keys, func(a, b string) int {
		if counts[a] != counts[b] {
			if counts[a] > counts[b] {
				return -1
			}
			return 1
		}
		return strings.Compare(a, b)
	})
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		w, ok := words[k]
		if !ok {
			w = k
		}
		parts = append(parts, fmt.Sprintf("%d %s", counts[k], w))
	}
	return strings.Join(parts, ", ")
}

func plural(n uint64) string {
	if n == 1 {
		return ""
	}
	return "s"
}
