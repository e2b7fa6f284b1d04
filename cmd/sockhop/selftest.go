package main

import (
	"context"
	"errors"
	"os"

	"github.com/sockhop/sockhop/pkg/datapath"
)

// runSelfTest runs the datapath's hazard self-test: sockhop's sk_msg
// program, loaded unpinned, on loopback pairs in a throwaway network
// namespace. It changes nothing on the node.
func runSelfTest(ctx context.Context) (*datapath.SelfTestReport, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("the self-test needs root (it loads a BPF program in a throwaway network namespace)")
	}
	rep, err := datapath.SelfTest(ctx)
	return &rep, err
}

// hazardLines turns a self-test into doctor lines. A hazard that is
// present is a warning when sockhop's default receiver policy (sidecar
// proxies only) avoids it, and a failure when a guard that sockhop relies
// on did not hold.
func hazardLines(rep *datapath.SelfTestReport, err error) []doctorLine {
	if rep == nil || len(rep.Results) == 0 {
		msg := "did not run"
		if err != nil {
			msg = err.Error()
		}
		return []doctorLine{{Check: "hazard self-test", Level: levelWarn, Detail: msg,
			Hint: "run 'sockhop doctor' as root on the node to learn which redirect hazards this kernel has"}}
	}
	var lines []doctorLine
	if err != nil {
		lines = append(lines, doctorLine{Check: "hazard self-test", Level: levelWarn, Detail: "incomplete: " + err.Error()})
	}
	for _, r := range rep.Results {
		l := doctorLine{Check: "hazard " + string(r.Hazard), Detail: string(r.Status) + ": " + r.Detail}
		switch {
		case r.Status == datapath.HazardAbsent:
			l.Level = levelOK
		case r.Status == datapath.HazardGuarded:
			l.Level = levelOK
			l.Detail = "present, guarded by sockhop: " + r.Detail
		case r.Hazard == datapath.HazardSplice || r.Hazard == datapath.HazardWaitAll:
			l.Level = levelWarn
			l.Hint = "the receiver guard redirects only into sockets seen reading with recvmsg and keeps those that " +
				"splice or wait for all on TCP (docs/hazards.md); keep --syscall-guard on, on this kernel"
		case r.Hazard == datapath.HazardTCPInfo:
			l.Level = levelInfo
			l.Hint = "TCP_INFO and 'ss -i' miss redirected bytes: read 'sockhop status' or the sockhop_ metrics instead"
		case r.Hazard == datapath.HazardBackpressure:
			l.Level = levelFail
			l.Hint = "the backlog guard did not hold back a writer whose reader stopped: a stalled reader could queue unbounded memory; " +
				"do not accelerate on this kernel and report it to the sockhop maintainers"
		default:
			l.Level = levelWarn
		}
		lines = append(lines, l)
	}
	if err == nil {
		l := doctorLine{Check: "app receivers", Level: levelInfo}
		if rep.AppReceiversSafe() {
			l.Detail = "splice and MSG_WAITALL see redirected data on this kernel"
		} else {
			l.Detail = "splice or MSG_WAITALL miss redirected data on this kernel: the receiver guard keeps such readers on TCP"
		}
		lines = append(lines, l)
	}
	return lines
}

// hazardView is a self-test result in status's JSON.
type hazardView struct {
	Hazard string `json:"hazard"`
	Status string `json:"status"`
	Detail string `json:"detail"`
}

func hazardViews(rep *datapath.SelfTestReport) []hazardView {
	var v []hazardView
	if rep == nil {
		return v
	}
	for _, r := range rep.Results {
		v = append(v, hazardView{Hazard: string(r.Hazard), Status: string(r.Status), Detail: r.Detail})
	}
	return v
}
