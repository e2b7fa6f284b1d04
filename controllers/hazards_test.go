package controllers

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	"github.com/sockhop/sockhop/pkg/datapath"
)

// learntSource serves what the datapath learnt, as read from its maps.
type learntSource struct {
	learnt datapath.Learnt
	atts   []datapath.Attachment
}

func (s *learntSource) Learnt() (datapath.Learnt, error)            { return s.learnt, nil }
func (s *learntSource) Attachments() ([]datapath.Attachment, error) { return s.atts, nil }
func (s *learntSource) Counters() (datapath.Counters, error)        { return datapath.Counters{}, nil }

type hazardEvent struct{ obj, typ, reason, note string }

type hazardEventLog struct{ events []hazardEvent }

func (l *hazardEventLog) Eventf(regarding, _ runtime.Object, eventtype, reason, _, note string, args ...any) {
	name := regarding.(client.Object).GetName()
	l.events = append(l.events, hazardEvent{name, eventtype, reason, fmt.Sprintf(note, args...)})
}

func inode(t *testing.T, dir string) uint64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(dir, &st); err != nil {
		t.Fatal(err)
	}
	return st.Ino
}

// The reporter maps a learnt cgroup id to the container directory under an
// attached pod's cgroup and to that pod, and says it once per hazard.
func TestHazardReporterNamesThePod(t *testing.T) {
	const uid = "8b4c1d2e-3f40-4a5b-9c6d-7e8f90a1b2c3"
	podDir := filepath.Join(t.TempDir(), "kubepods", "besteffort", "pod"+uid)
	app, sidecar := filepath.Join(podDir, "aaaa"), filepath.Join(podDir, "bbbb")
	for _, d := range []string{app, sidecar} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "web-0", Namespace: "shop", UID: uid}}
	cl := fake.NewClientBuilder().WithObjects(pod).
		WithIndex(&corev1.Pod{}, podUIDField, func(o client.Object) []string { return []string{string(o.GetUID())} }).
		Build()
	src := &learntSource{
		atts: []datapath.Attachment{{CgroupPath: podDir, CgroupID: inode(t, podDir), Live: true}},
		learnt: datapath.Learnt{Hazardous: map[uint64]datapath.ReaderHazards{
			inode(t, app): datapath.SawSplice,
			12345:         datapath.SawWaitAll, // not under an attached pod
		}},
	}
	log := &hazardEventLog{}
	h := &HazardReporter{Source: src, Client: cl, Recorder: log}
	ctx := context.Background()
	if err := h.Report(ctx); err != nil {
		t.Fatal(err)
	}
	if len(log.events) != 1 || log.events[0].obj != "web-0" || log.events[0].typ != corev1.EventTypeNormal ||
		log.events[0].reason != "HazardousReader" || !strings.Contains(log.events[0].note, app) || !strings.Contains(log.events[0].note, "splice") {
		t.Fatalf("want one HazardousReader event naming the app container: %+v", log.events)
	}
	// Reported once...
	if err := h.Report(ctx); err != nil || len(log.events) != 1 {
		t.Fatalf("the same hazard was reported again: %+v, %v", log.events, err)
	}
	// ...until it becomes a stranded reader: a Warning.
	src.learnt.Hazardous[inode(t, app)] |= datapath.SawStranded
	if err := h.Report(ctx); err != nil {
		t.Fatal(err)
	}
	if len(log.events) != 2 || log.events[1].typ != corev1.EventTypeWarning || log.events[1].reason != "ReceiverStranded" {
		t.Fatalf("want a ReceiverStranded warning: %+v", log.events)
	}
}
