package controllers

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	"github.com/sockhop/sockhop/pkg/datapath"
)

// strandSource plays the datapath: the guard's records, and what the
// iterator makes of them.
type strandSource struct {
	atts      []datapath.Attachment
	strands   []datapath.Strand
	outcome   map[uint64]datapath.StrandState // by socket
	abortErr  error
	abortedIn []string
	forgotten []uint64
}

func (s *strandSource) Stranded() ([]datapath.Strand, error)        { return s.strands, nil }
func (s *strandSource) Attachments() ([]datapath.Attachment, error) { return s.atts, nil }
func (s *strandSource) ForgetStranded(st datapath.Strand) error {
	s.forgotten = append(s.forgotten, st.Socket)
	return nil
}

func (s *strandSource) AbortStranded(path string) ([]datapath.Strand, error) {
	s.abortedIn = append(s.abortedIn, path)
	if s.abortErr != nil {
		return nil, s.abortErr
	}
	var done []datapath.Strand
	for _, st := range s.strands {
		if path == netnsPath(st.Netns) {
			st.State = s.outcome[st.Socket]
			done = append(done, st)
		}
	}
	s.strands = nil
	return done, nil
}

func netnsPath(inode uint64) string { return "/run/netns/ns-" + string(rune('a'+inode%26)) }

// The aborter runs the abort in each stranded receiver's namespace and
// puts a Warning on the pod for each aborted connection, naming the
// container; a kernel that cannot abort leaves it idle.
func TestStrandAborterAbortsAndNamesThePod(t *testing.T) {
	const uid = "0d9f5a7e-1b2c-4d3e-8f40-5a6b7c8d9e0f"
	podDir := filepath.Join(t.TempDir(), "kubepods", "burstable", "pod"+uid)
	relay := filepath.Join(podDir, "cccc")
	if err := os.MkdirAll(relay, 0o755); err != nil {
		t.Fatal(err)
	}
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "relay-0", Namespace: "shop", UID: uid}}
	cl := fake.NewClientBuilder().WithObjects(pod).
		WithIndex(&corev1.Pod{}, podUIDField, func(o client.Object) []string { return []string{string(o.GetUID())} }).
		Build()
	src := &strandSource{
		atts: []datapath.Attachment{{CgroupPath: podDir, CgroupID: inode(t, podDir), Live: true}},
		strands: []datapath.Strand{
			{Socket: 1, Netns: 7, Cgroup: inode(t, relay), Waited: 40 * time.Millisecond},
			{Socket: 2, Netns: 7, Cgroup: inode(t, relay)},
			{Socket: 3, Netns: 8, Cgroup: 99, Waited: time.Hour}, // its namespace is gone
		},
		outcome: map[uint64]datapath.StrandState{1: datapath.StrandAborted, 2: datapath.StrandRecovered},
	}
	events := &hazardEventLog{}
	a := &StrandAborter{Source: src, Client: cl, Recorder: events, FindNetns: func(ino uint64) (string, error) {
		if ino == 8 {
			return "", os.ErrNotExist
		}
		return netnsPath(ino), nil
	}}
	ctx := context.Background()
	n, err := a.Abort(ctx)
	if err != nil || n != 1 {
		t.Fatalf("Abort = %d, %v; want 1 aborted", n, err)
	}
	if len(src.abortedIn) != 1 || src.abortedIn[0] != netnsPath(7) {
		t.Fatalf("aborted in %v, want once in %s", src.abortedIn, netnsPath(7))
	}
	if len(src.forgotten) != 1 || src.forgotten[0] != 3 {
		t.Fatalf("forgot %v, want the receiver whose namespace is gone", src.forgotten)
	}
	if len(events.events) != 1 || events.events[0].obj != "relay-0" || events.events[0].typ != corev1.EventTypeWarning ||
		events.events[0].reason != "ReceiverStranded" || !strings.Contains(events.events[0].note, relay) ||
		!strings.Contains(events.events[0].note, "aborted") {
		t.Fatalf("want one ReceiverStranded warning saying the relay's connection was aborted: %+v", events.events)
	}

	// Nothing recorded: nothing done.
	if n, err := a.Abort(ctx); err != nil || n != 0 || len(src.abortedIn) != 1 {
		t.Fatalf("an empty look aborted: %d %v %v", n, err, src.abortedIn)
	}

	// A kernel without bpf_sock_destroy: said once, then idle.
	src.strands = []datapath.Strand{{Socket: 4, Netns: 7, Cgroup: inode(t, relay)}}
	src.abortErr = &datapath.FeatureError{Feature: "bpf_sock_destroy", Err: errors.New("nope")}
	if n, err := a.Abort(ctx); err != nil || n != 0 {
		t.Fatalf("unsupported kernel: %d, %v", n, err)
	}
	if _, err := a.Abort(ctx); err != nil || len(src.abortedIn) != 2 {
		t.Fatalf("the aborter kept trying on a kernel that cannot: %v", src.abortedIn)
	}
}
