package bench

import (
	"fmt"
	"strings"
)

// caseSpec is one case of the suite.
type caseSpec struct {
	id          string
	kind        string
	description string
	size        int
	placement   string // "1cpu" or "2cpu"
	policy      string
	expect      string
	// serverUID owns the receiving end (1337: a sidecar).
	serverUID int
}

const proxyUID = 1337 // Istio's sidecar uid

func (c caseSpec) cpus() (client, server string) {
	if c.placement == "2cpu" {
		return "0", "1"
	}
	return "0", "0"
}

var (
	pingPongSizes = []int{64, 1 << 10, 16 << 10, 64 << 10}
	bulkSizes     = []int{1 << 10, 4 << 10, 16 << 10, 64 << 10, 256 << 10}
)

// suiteCases lists every case in the order they run.
func suiteCases() []caseSpec {
	var cs []caseSpec
	for _, pl := range []string{"1cpu", "2cpu"} {
		for _, s := range pingPongSizes {
			cs = append(cs, caseSpec{
				id: fmt.Sprintf("pingpong-%s-%s", pl, sizeName(s)), kind: KindPingPong, size: s, placement: pl,
				description: fmt.Sprintf("ping-pong %s, %s, one pod over loopback", sizeName(s), placementText(pl)),
				policy:      PolicyDefault, expect: ExpectRedirect,
			})
		}
	}
	for _, s := range pingPongSizes {
		cs = append(cs, caseSpec{
			id: "chain-1cpu-" + sizeName(s), kind: KindChain, size: s, placement: "1cpu",
			description: fmt.Sprintf("client → relay → server ping-pong %s, one pod, one CPU", sizeName(s)),
			policy:      PolicyDefault, expect: ExpectRedirect, serverUID: proxyUID,
		})
	}
	for _, pl := range []string{"2cpu", "1cpu"} {
		for _, s := range bulkSizes {
			cs = append(cs, caseSpec{
				id: fmt.Sprintf("bulk-%s-%s", pl, sizeName(s)), kind: KindBulk, size: s, placement: pl,
				description: fmt.Sprintf("bulk send in %s writes into a sink, %s", sizeName(s), placementText(pl)),
				policy:      PolicyDefault, expect: ExpectRedirect,
			})
		}
	}
	cs = append(cs,
		caseSpec{
			id: "connrate-1cpu", kind: KindConnRate, size: 1, placement: "1cpu",
			description: "connect, 1-byte round trip, close; one pod, one CPU",
			policy:      PolicyDefault, expect: ExpectPaired,
		},
		caseSpec{
			id: "unpaired-1cpu-64B", kind: KindUnpaired, size: 64, placement: "1cpu",
			description: "ping-pong 64 B from an attached pod to a server in another namespace over a veth (not a pod IP)",
			policy:      PolicyDefault, expect: ExpectRemote,
		},
	)
	for _, s := range []int{64, 1 << 10, 16 << 10} {
		cs = append(cs, caseSpec{
			id: "app-proxy-pingpong-1cpu-" + sizeName(s), kind: KindPingPong, size: s, placement: "1cpu",
			description: fmt.Sprintf("app (uid 0) ping-pong %s with a uid-1337 server (its sidecar), default options: both directions redirected", sizeName(s)),
			policy:      PolicyDefault, expect: ExpectRedirect, serverUID: proxyUID,
		})
	}
	cs = append(cs,
		caseSpec{
			id: "app-proxy-pingpong-1cpu-1KiB-proxyonly", kind: KindPingPong, size: 1 << 10, placement: "1cpu",
			description: "the same with --app-receivers=false: only app → proxy is redirected",
			policy:      PolicyProxyReceivers, expect: ExpectRedirect, serverUID: proxyUID,
		},
		caseSpec{
			id: "app-proxy-bulk-2cpu-64KiB", kind: KindBulk, size: 64 << 10, placement: "2cpu",
			description: "app (uid 0) bulk send in 64 KiB writes to a uid-1337 sink, default options",
			policy:      PolicyDefault, expect: ExpectRedirect, serverUID: proxyUID,
		},
	)
	cs = append(cs, caseSpec{
		id: "http-proxy-1cpu-1KiB", kind: KindHTTP, size: 1 << 10, placement: "1cpu",
		description: "keep-alive HTTP GETs of 1 KiB from a load generator through a proxy sidecar (uid 1337) to a net/http app, one pod, one CPU, default options",
		policy:      PolicyDefault, expect: ExpectRedirect,
	})
	// The mechanism alone, next to the defaults: no receiver guard.
	for _, s := range []int{64, 16 << 10} {
		cs = append(cs, caseSpec{
			id: "pingpong-1cpu-" + sizeName(s) + "-mechanism", kind: KindPingPong, size: s, placement: "1cpu",
			description: fmt.Sprintf("ping-pong %s, both ends on CPU 0, mechanism alone (no receiver guard)", sizeName(s)),
			policy:      PolicyMechanism, expect: ExpectRedirect,
		})
	}
	// The defaults without the syscall guard, next to the same cases
	// with it: what its tracepoints cost where the kernel refuses fentry.
	for _, c := range cs {
		switch c.id {
		case "app-proxy-pingpong-1cpu-64B", "app-proxy-pingpong-1cpu-16KiB", "http-proxy-1cpu-1KiB",
			"bulk-1cpu-1KiB", "bulk-1cpu-64KiB", "bulk-2cpu-1KiB", "bulk-2cpu-64KiB":
			cs = append(cs, noSyscallGuardCase(c))
		}
	}
	return cs
}

// noSyscallGuardCase is the same case on the default datapath without the
// syscall guard (--syscall-guard=false).
func noSyscallGuardCase(c caseSpec) caseSpec {
	c.id += "-nosyscallguard"
	c.policy = PolicyNoSyscallGuard
	c.description += ", without the syscall guard (--syscall-guard=false)"
	return c
}

// unboundedCase is the same bulk case on a datapath without a backlog limit.
func unboundedCase(c caseSpec) caseSpec {
	c.id += "-nolimit"
	c.policy = PolicyUnbounded
	c.description += " (BacklogLimit -1)"
	return c
}

func placementText(pl string) string {
	if pl == "2cpu" {
		return "client on CPU 0, server on CPU 1"
	}
	return "both ends on CPU 0"
}

func sizeName(n int) string {
	switch {
	case n >= 1<<20 && n%(1<<20) == 0:
		return fmt.Sprintf("%dMiB", n>>20)
	case n >= 1<<10 && n%(1<<10) == 0:
		return fmt.Sprintf("%dKiB", n>>10)
	}
	return fmt.Sprintf("%dB", n)
}

// selected reports whether a case id matches one of the filters: the id
// itself or a leading part of it ending before a '-' ("bulk-1cpu" selects
// every one-CPU bulk case). No filters select everything.
func selected(id string, filters []string) bool {
	if len(filters) == 0 {
		return true
	}
	for _, f := range filters {
		if id == f || strings.HasPrefix(id, strings.TrimSuffix(f, "-")+"-") {
			return true
		}
	}
	return false
}
