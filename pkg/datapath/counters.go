package datapath

import (
	"encoding/binary"
	"fmt"
	"strings"
)

// Counters are the datapath's totals since it was first loaded on this node.
type Counters struct {
	// PairedSockets counts sockets put into the sockhash (two per connection).
	PairedSockets      uint64
	RedirectedMessages uint64
	RedirectedBytes    uint64
	// TCPMessages and TCPBytes count sends of paired sockets that went
	// through TCP (a direction that left the redirect path, or never took it).
	TCPMessages uint64
	TCPBytes    uint64
	// Switches counts directions that moved from TCP to redirect (once
	// their receiver had read everything and was seen reading safely).
	Switches uint64
	// UnsafeReceivers counts paired sockets seen splicing, using
	// sendfile or zerocopy receive from, or reading with MSG_WAITALL;
	// Stranded those of them that had redirected bytes unread then, and
	// Poisoned the directions kept on redirect for them (docs/hazards.md).
	UnsafeReceivers uint64
	Stranded        uint64
	Poisoned        uint64
	// ZeroCopyRefused counts setsockopt(SO_ZEROCOPY) calls refused on
	// sockets in the sockhash (EOPNOTSUPP: the sender falls back to
	// plain sends).
	ZeroCopyRefused uint64
	// ULPRefused counts setsockopt(TCP_ULP) calls (kTLS) refused on
	// sockets in the sockhash (EOPNOTSUPP: the program does without kTLS).
	ULPRefused uint64
	// Aborted counts the connections of stranded receivers aborted
	// (AbortStranded): both ends saw an error instead of a stall.
	Aborted uint64
	// Retired counts sockets whose sends went to TCP for good and that
	// left the sockhash, to send as plain TCP.
	Retired uint64
	// RetireHeld counts sends that could not yet let their peer leave
	// the sockhash: another thread was in their socket's send or receive
	// path, and a redirect of its may still be on its way.
	RetireHeld uint64
	// Passthrough counts, by reason, connections or directions left on TCP.
	Passthrough map[string]uint64
	// MapErrors counts failed map operations, by map.
	MapErrors map[string]uint64
}

// Reasons in Counters.Passthrough.
const (
	ReasonNoPeer       = "no_peer"         // a direction whose peer was not paired by its first send, or left
	ReasonUnsafeRx     = "unsafe_receiver" // a direction into a receiver that splices or waits for all (or the policy excludes)
	ReasonBackpressure = "backpressure"    // a direction whose receiver fell behind the bound
	ReasonDataFlowed   = "data_flowed"     // a connection that carried data before it was established (TFO)
	ReasonRemote       = "remote"          // a connection to a peer outside this node's accelerated pods
	ReasonExcluded     = "excluded_port"   // a connection on an excluded port
	ReasonNoPod        = "no_pod"          // a socket of a cgroup without a pod entry
	ReasonNoClient     = "no_client"       // a server end whose client end is not accelerated
	ReasonAmbiguous    = "ambiguous"       // two sockets claimed one connection: none paired
	ReasonHazard       = "hazard_learnt"   // a socket of a cgroup seen splicing or waiting for all
	// A connection with an end that has SO_ZEROCOPY: not paired (a
	// redirected zerocopy send never completes).
	ReasonZeroCopy = "zerocopy_sender"
	// A client end whose container's last connections to that port were
	// short-lived (closed with nothing redirected): not paired, but for
	// one in 16 (docs/datapath.md, "Short-lived connections").
	ReasonShortLived = "short_lived"
)

// Counters sums the per-CPU counters.
func (d *Datapath) Counters() (Counters, error) {
	var per []uint64
	get := func(s sockhopShStat) uint64 {
		if err := d.objs.SockhopStats.Lookup(uint32(s), &per); err != nil {
			return 0
		}
		var sum uint64
		for _, v := range per {
			sum += v
		}
		return sum
	}
	// Probe one key first so that a broken map is an error, not zeros.
	if err := d.objs.SockhopStats.Lookup(uint32(0), &per); err != nil {
		return Counters{}, fmt.Errorf("read counters: %w", err)
	}
	return Counters{
		PairedSockets:      get(sockhopShStatSH_STAT_PAIRED_CLIENT) + get(sockhopShStatSH_STAT_PAIRED_SERVER),
		RedirectedMessages: get(sockhopShStatSH_STAT_REDIR_MSGS),
		RedirectedBytes:    get(sockhopShStatSH_STAT_REDIR_BYTES),
		TCPMessages:        get(sockhopShStatSH_STAT_TCP_MSGS),
		TCPBytes:           get(sockhopShStatSH_STAT_TCP_BYTES),
		Switches:           get(sockhopShStatSH_STAT_TX_SWITCH),
		UnsafeReceivers:    get(sockhopShStatSH_STAT_RX_UNSAFE),
		Stranded:           get(sockhopShStatSH_STAT_RX_STRANDED),
		Poisoned:           get(sockhopShStatSH_STAT_TX_POISONED),
		ZeroCopyRefused:    get(sockhopShStatSH_STAT_ZC_REFUSED),
		ULPRefused:         get(sockhopShStatSH_STAT_ULP_REFUSED),
		Aborted:            d.aborts(),
		Retired:            get(sockhopShStatSH_STAT_RETIRED),
		RetireHeld:         get(sockhopShStatSH_STAT_INCOMING_HELD),
		Passthrough: map[string]uint64{
			ReasonNoPeer:       get(sockhopShStatSH_STAT_TX_NO_PEER),
			ReasonUnsafeRx:     get(sockhopShStatSH_STAT_TX_UNSAFE_RX),
			ReasonBackpressure: get(sockhopShStatSH_STAT_TX_BACKPRESSURE),
			ReasonDataFlowed:   get(sockhopShStatSH_STAT_SKIP_DATA),
			ReasonRemote:       get(sockhopShStatSH_STAT_SKIP_REMOTE),
			ReasonExcluded:     get(sockhopShStatSH_STAT_SKIP_EXCLUDED),
			ReasonNoPod:        get(sockhopShStatSH_STAT_SKIP_NO_POD),
			ReasonNoClient:     get(sockhopShStatSH_STAT_SKIP_NO_CLIENT),
			ReasonAmbiguous:    get(sockhopShStatSH_STAT_SKIP_AMBIGUOUS),
			ReasonHazard:       get(sockhopShStatSH_STAT_SKIP_HAZARD),
			ReasonZeroCopy:     get(sockhopShStatSH_STAT_SKIP_ZEROCOPY),
			ReasonShortLived:   get(sockhopShStatSH_STAT_SKIP_SHORT),
		},
		MapErrors: map[string]uint64{
			"sockhash":       get(sockhopShStatSH_STAT_ERR_SOCKHASH),
			"socket_storage": get(sockhopShStatSH_STAT_ERR_STORAGE),
			"pending":        get(sockhopShStatSH_STAT_ERR_PENDING),
			"receivers":      get(sockhopShStatSH_STAT_ERR_RX),
		},
	}, nil
}

// nativeU32 reads 4 bytes of a network-order address as the BPF program
// sees them in a __u32 (little-endian hosts: bpfel objects).
func nativeU32(b []byte) uint32 { return binary.LittleEndian.Uint32(b) }

// Sockets counts the sockets in the sockhash now.
func (d *Datapath) Sockets() (int, error) {
	var (
		key sockhopShKey
		n   int
	)
	iter := d.objs.SockhopSocks.Iterate()
	var val uint64
	for iter.Next(&key, &val) {
		n++
	}
	if err := iter.Err(); err != nil {
		return n, fmt.Errorf("list sockhash: %w", err)
	}
	return n, nil
}

// Learnt is what the receiver guard has learnt of the node's cgroups
// (containers): those seen splicing or reading with MSG_WAITALL on a paired
// socket, whose later sockets are not paired, and those whose paired
// sockets were read safely all their life, whose new connections are
// redirected from their first byte.
type Learnt struct {
	Hazardous map[uint64]ReaderHazards // by cgroup id
	Trusted   []uint64
	// ShortLived: where a container's connections to a port are not
	// paired (but for one in 16), their last ones having redirected
	// nothing.
	ShortLived []ShortLived
}

// ShortLived is a client container (cgroup id) and a server port.
type ShortLived struct {
	Cgroup uint64
	Port   uint16
}

// shortStreak is SH_SHORT_STREAK (bpf/lib/maps.h): wasted connections in a
// row after which the container's connections to that port are not paired.
const shortStreak = 16

// ReaderHazards is what a cgroup was seen doing on a paired socket.
type ReaderHazards uint64

// ReaderHazards bits.
const (
	SawSplice   = ReaderHazards(sockhopShHazardFlagsSH_HAZARD_SPLICE)   // splice or sendfile from it
	SawWaitAll  = ReaderHazards(sockhopShHazardFlagsSH_HAZARD_WAITALL)  // recv with MSG_WAITALL
	SawZeroCopy = ReaderHazards(sockhopShHazardFlagsSH_HAZARD_ZEROCOPY) // TCP_ZEROCOPY_RECEIVE
	// SawStranded: one of those while redirected bytes were unread: that
	// connection may stall (docs/hazards.md).
	SawStranded = ReaderHazards(sockhopShHazardFlagsSH_HAZARD_STRANDED)
	// SawZeroCopySend: a paired socket tried to enable SO_ZEROCOPY (a
	// sender's hazard: its zerocopy completions).
	SawZeroCopySend = ReaderHazards(sockhopShHazardFlagsSH_HAZARD_ZCSEND)
	// SawULP: a paired socket tried to set a TCP ULP (kTLS), which
	// redirected bytes would bypass.
	SawULP = ReaderHazards(sockhopShHazardFlagsSH_HAZARD_ULP)
)

func (h ReaderHazards) String() string {
	var parts []string
	for _, b := range []struct {
		bit  ReaderHazards
		name string
	}{{SawSplice, "splice"}, {SawWaitAll, "MSG_WAITALL"}, {SawZeroCopy, "zerocopy receive"}, {SawZeroCopySend, "SO_ZEROCOPY sends"}, {SawULP, "kTLS (TCP_ULP)"}} {
		if h&b.bit != 0 {
			parts = append(parts, b.name)
		}
	}
	s := strings.Join(parts, ", ")
	if h&SawStranded != 0 {
		s += " (with redirected bytes unread)"
	}
	return s
}

// Learnt lists the cgroups the receiver guard has learnt about.
func (d *Datapath) Learnt() (Learnt, error) {
	l := Learnt{Hazardous: map[uint64]ReaderHazards{}}
	var id, v uint64
	iter := d.objs.SockhopHazard.Iterate()
	for iter.Next(&id, &v) {
		l.Hazardous[id] = ReaderHazards(v)
	}
	if err := iter.Err(); err != nil {
		return l, fmt.Errorf("list hazardous cgroups: %w", err)
	}
	iter = d.objs.SockhopTrust.Iterate()
	for iter.Next(&id, &v) {
		l.Trusted = append(l.Trusted, id)
	}
	if err := iter.Err(); err != nil {
		return l, fmt.Errorf("list trusted cgroups: %w", err)
	}
	if d.objs.SockhopShort == nil {
		return l, nil // installed by a sockhop from before it
	}
	var (
		key   sockhopShShortKey
		short sockhopShShort
	)
	iter = d.objs.SockhopShort.Iterate()
	for iter.Next(&key, &short) {
		if short.Wasted >= shortStreak {
			l.ShortLived = append(l.ShortLived, ShortLived{Cgroup: key.Cgroup, Port: uint16(key.Port)})
		}
	}
	if err := iter.Err(); err != nil {
		return l, fmt.Errorf("list short-lived connections: %w", err)
	}
	return l, nil
}
